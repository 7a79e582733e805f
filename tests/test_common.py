"""scikit-learn's estimator checks on every public estimator."""

from sklearn.utils.estimator_checks import parametrize_with_checks

from sklearn_dbksvd import DBKSVDDictionaryLearning, MatryoshkaDBKSVD

# Small, fast settings: the checks fit dozens of times on tiny data.
ESTIMATORS = [
    DBKSVDDictionaryLearning(max_iter=2, random_state=0),
    MatryoshkaDBKSVD(max_iter=2, random_state=0),
    # MiniBatchDictionaryLearning's options: nonnegative atoms and split codes
    # (twice the output columns), and its lasso coder during fit.
    DBKSVDDictionaryLearning(
        max_iter=2, positive_dict=True, split_sign=True, random_state=0
    ),
    MatryoshkaDBKSVD(
        max_iter=2, positive_dict=True, split_sign=True, random_state=0
    ),
    DBKSVDDictionaryLearning(max_iter=2, fit_algorithm="lars", random_state=0),
]


@parametrize_with_checks(ESTIMATORS)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)
