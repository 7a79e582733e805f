"""DBKSVDDictionaryLearning as a user sees it."""

import pickle
import re

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.decomposition import MiniBatchDictionaryLearning
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_dbksvd import DBKSVDDictionaryLearning
from sklearn_dbksvd.datasets import make_sparse_dictionary_problem
from sklearn_dbksvd.metrics import atom_recovery
from tests import _oracles as oracles


@pytest.fixture(scope="module")
def planted_problem():
    """The paper's toy problem at a CI size: d=32, m=64, k=3."""
    return make_sparse_dictionary_problem(4096, 32, 64, 3, random_state=0)


def small_model(**params):
    defaults = dict(n_components=16, n_nonzero_coefs=3, max_iter=3, random_state=0)
    return DBKSVDDictionaryLearning(**{**defaults, **params})


def small_data(n_samples=200, n_features=10, dtype=np.float64, seed=0):
    return np.random.RandomState(seed).randn(n_samples, n_features).astype(dtype)


def test_recovers_planted_dictionary(planted_problem):
    X, true_atoms, _ = planted_problem
    model = DBKSVDDictionaryLearning(
        64, n_nonzero_coefs=3, max_iter=60, max_no_improvement=None, random_state=0
    ).fit(X)
    assert atom_recovery(true_atoms, model.components_, threshold=0.99) >= 0.9
    errors = np.array([record["relative_error"] for record in model.history_])
    # Smoothed over 5 steps the batch error falls at every step.
    smoothed = np.convolve(errors, np.ones(5) / 5, mode="valid")
    assert np.all(np.diff(smoothed) <= 1e-3)
    assert errors[-1] < 0.5 * errors[0]


def test_replacement_is_what_unsticks_recovery(planted_problem):
    X, true_atoms, _ = planted_problem
    params = dict(max_iter=30, max_no_improvement=None, random_state=0)
    without = DBKSVDDictionaryLearning(64, n_nonzero_coefs=3, replace_until=0, **params)
    with_replacement = DBKSVDDictionaryLearning(64, n_nonzero_coefs=3, **params)
    assert atom_recovery(true_atoms, with_replacement.fit(X).components_) > (
        atom_recovery(true_atoms, without.fit(X).components_)
    )
    assert sum(r["n_replaced"] for r in without.history_) == 0
    assert sum(r["n_replaced"] for r in with_replacement.history_) > 0


def test_fitted_attributes_and_shapes():
    X = small_data()
    model = small_model(batch_size=64).fit(X)
    assert model.components_.shape == (16, 10)
    np.testing.assert_allclose(np.linalg.norm(model.components_, axis=1), 1.0)
    # 200 samples in batches of at most 64: 4 even batches per epoch.
    assert model.n_steps_ == 12 and model.n_iter_ == 3
    assert len(model.history_) == 12
    assert model.history_[-1]["n_samples_seen"] == 600
    assert set(model.history_[0]) >= {
        "step", "relative_error", "variance_explained", "n_replaced", "seconds",
        "n_samples_seen",
    }
    code = model.transform(X)
    assert code.shape == (200, 16)
    assert np.all((code != 0).sum(axis=1) <= 3)
    assert list(model.get_feature_names_out()) == [
        f"dbksvddictionarylearning{i}" for i in range(16)
    ]


def test_defaults_follow_scikit_learn():
    X = small_data(n_features=25)
    model = DBKSVDDictionaryLearning(max_iter=1, random_state=0).fit(X)
    assert model.components_.shape == (25, 25)  # n_components=None -> n_features
    assert np.all((model.transform(X) != 0).sum(axis=1) <= 2)  # k = 25 // 10


def test_max_steps_caps_the_fit():
    model = small_model(batch_size=50, max_steps=5, max_iter=100).fit(small_data())
    assert model.n_steps_ == 5 and model.n_iter_ == 2


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_jobs", [1, 2])
def test_dtype_is_preserved(dtype, n_jobs):
    # scikit-learn 1.9's sparse_encode returns float64 for float32 with n_jobs > 1.
    X = small_data(dtype=dtype)
    # scikit-learn's coders run in processes with n_jobs > 1: keep that case short.
    algorithms = ["mp", "omp"]
    if n_jobs == 1:
        algorithms += ["lasso_lars", "threshold"]
    for algorithm in algorithms:
        model = small_model(
            n_jobs=n_jobs, transform_algorithm=algorithm, transform_alpha=0.1
        ).fit(X)
        assert model.components_.dtype == dtype
        assert model.transform(X).dtype == dtype
        assert model.inverse_transform(model.transform(X)).dtype == dtype


def test_same_result_for_any_n_jobs():
    X = small_data(n_samples=6000, n_features=8)
    one = small_model(n_jobs=1, update_batch_size=4).fit(X)
    two = small_model(n_jobs=2, update_batch_size=4).fit(X)
    np.testing.assert_array_equal(one.components_, two.components_)
    np.testing.assert_array_equal(one.transform(X), two.transform(X))


def test_same_random_state_same_dictionary():
    X = small_data()
    np.testing.assert_array_equal(
        small_model().fit(X).components_, small_model().fit(X).components_
    )
    assert not np.array_equal(
        small_model().fit(X).components_, small_model(random_state=1).fit(X).components_
    )


def test_atom_signs_are_deterministic():
    model = small_model().fit(small_data())
    atoms = model.components_
    # Like svd_flip: the largest-magnitude entry of each updated atom is positive.
    updated = [r["n_replaced"] for r in model.history_][-1] == 0
    assert updated
    assert np.all(atoms[np.arange(len(atoms)), np.abs(atoms).argmax(axis=1)] > 0)


def test_k_larger_than_n_components_is_a_clear_error():
    # scikit-learn 1.9 answers this with a message about n_features instead.
    with pytest.raises(ValueError, match="n_nonzero_coefs=20 exceeds n_components=16"):
        small_model(n_nonzero_coefs=20).fit(small_data())


@pytest.mark.parametrize("init", ["uniform", "samples", "auto"])
def test_init_options(init):
    X = small_data()
    model = small_model(init=init, max_iter=1).fit(X)
    np.testing.assert_allclose(np.linalg.norm(model.components_, axis=1), 1.0)


def test_dict_init_is_used_and_not_modified():
    X = small_data()
    dict_init = np.random.RandomState(3).randn(16, 10)
    original = dict_init.copy()
    model = small_model(dict_init=dict_init, max_steps=1, replace_until=0).fit(X)
    np.testing.assert_array_equal(dict_init, original)
    # One step from dict_init keeps each atom near its start.
    start = dict_init / np.linalg.norm(dict_init, axis=1, keepdims=True)
    assert np.median(np.abs(np.sum(start * model.components_, axis=1))) > 0.5


def test_input_is_not_modified():
    X = small_data()
    original = X.copy()
    model = small_model().fit(X)
    model.partial_fit(X)
    model.transform(X)
    model.score(X)
    np.testing.assert_array_equal(X, original)


def test_partial_fit_runs_one_step_per_call():
    X = small_data()
    model = small_model()
    for i, batch in enumerate(np.array_split(X, 4)):
        model.partial_fit(batch)
        assert model.n_steps_ == i + 1
    assert len(model.history_) == 4
    assert model.history_[-1]["n_samples_seen"] == 200


def test_early_stopping_and_callback():
    X = small_data()
    model = small_model(max_iter=200, tol=0.5, max_no_improvement=2).fit(X)
    assert model.n_steps_ < 200
    calls = []

    def stop_after_three(info):
        calls.append(info)
        return len(calls) == 3

    model = small_model(max_iter=50, callback=stop_after_three).fit(X)
    assert model.n_steps_ == 3 and len(calls) == 3
    assert calls[0]["step"] == 0 and "relative_error" in calls[0]


def test_verbose_shows_progress(capsys):
    small_model(verbose=True, max_iter=2).fit(small_data())
    captured = capsys.readouterr()
    assert "DB-KSVD" in captured.err and "rel_err" in captured.err


def test_score_is_variance_explained_and_beats_random_atoms():
    X, _, _ = make_sparse_dictionary_problem(1000, 16, 32, 3, random_state=0)
    model = DBKSVDDictionaryLearning(32, n_nonzero_coefs=3, random_state=0).fit(X)
    # Eq. 7 of the paper on the textbook matching-pursuit reconstruction.
    atoms = model.components_
    reconstruction = oracles.matching_pursuit(X, atoms, 3) @ atoms
    assert model.score(X) == pytest.approx(
        oracles.variance_explained(X, reconstruction), rel=1e-10
    )
    assert 0.8 < model.score(X) <= 1.0
    random_atoms = DBKSVDDictionaryLearning(
        32, n_nonzero_coefs=3, max_steps=1, replace_until=0, init="uniform",
        random_state=0,
    ).fit(X)
    assert model.score(X) > random_atoms.score(X)


def test_lower_error_than_minibatch_dictionary_learning():
    X, _, _ = make_sparse_dictionary_problem(3000, 16, 32, 3, random_state=0)
    ours = DBKSVDDictionaryLearning(
        32, n_nonzero_coefs=3, transform_algorithm="omp", random_state=0
    ).fit(X)
    theirs = MiniBatchDictionaryLearning(
        32, transform_algorithm="omp", transform_n_nonzero_coefs=3, random_state=0
    ).fit(X)
    residual = X - theirs.transform(X) @ theirs.components_
    assert ours.score(X) > 1 - np.mean(residual.var(axis=0) / X.var(axis=0))


def test_pipeline_grid_search_clone_pickle():
    X, _, _ = make_sparse_dictionary_problem(600, 12, 24, 3, random_state=0)
    pipeline = make_pipeline(StandardScaler(), small_model(n_components=24))
    search = GridSearchCV(
        pipeline, {"dbksvddictionarylearning__n_nonzero_coefs": [1, 3]}, cv=2
    ).fit(X)
    assert search.best_params_ == {"dbksvddictionarylearning__n_nonzero_coefs": 3}
    model = small_model().fit(X)
    restored = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(restored.transform(X), model.transform(X))
    assert clone(model).get_params() == model.get_params()
    assert not hasattr(clone(model), "components_")


def test_set_output_pandas():
    pd = pytest.importorskip("pandas")
    X = pd.DataFrame(small_data(), columns=[f"f{i}" for i in range(10)])
    model = small_model().set_output(transform="pandas").fit(X)
    codes = model.transform(X)
    assert list(codes.columns) == list(model.get_feature_names_out())


def test_inverse_transform_accepts_sparse_codes():
    import scipy.sparse as sp

    X = small_data()
    model = small_model().fit(X)
    code = model.transform(X)
    np.testing.assert_allclose(
        model.inverse_transform(sp.csr_matrix(code)), code @ model.components_
    )
    with pytest.raises(ValueError, match="16 atoms"):
        model.inverse_transform(code[:, :5])


@pytest.mark.parametrize(
    "X, message",
    [
        (np.full((20, 10), np.nan), "NaN"),
        (np.full((20, 10), np.inf), "infinity"),
        (np.ones((20, 10)) * 1j, "[Cc]omplex"),
        (np.ones((0, 10)), "0 sample"),
        ("not an array", "array"),
    ],
)
def test_bad_training_data_raises(X, message):
    with pytest.raises((ValueError, TypeError), match=message):
        small_model().fit(X)


def test_sparse_input_is_rejected_with_a_clear_error():
    import scipy.sparse as sp

    with pytest.raises(TypeError, match="[Ss]parse"):
        small_model().fit(sp.csr_matrix(small_data()))


@pytest.mark.parametrize(
    "params, message",
    [
        ({"n_nonzero_coefs": 0}, "n_nonzero_coefs"),
        ({"fit_algorithm": "lasso"}, "fit_algorithm"),
        ({"dict_init": np.ones((3, 3))}, "dict_init has shape"),
        ({"batch_size": 0}, "batch_size"),
        ({"replace_coherence": 2.0}, "replace_coherence"),
    ],
)
def test_bad_parameters_raise(params, message):
    with pytest.raises(ValueError, match=message):
        small_model(**params).fit(small_data())


def test_failed_partial_fit_leaves_state_untouched():
    X = small_data()
    model = small_model().fit(X)
    state = pickle.dumps(model)
    components = model.components_.copy()
    for bad in [np.full((5, 10), np.nan), small_data(n_features=7), np.ones((0, 10))]:
        with pytest.raises(ValueError):
            model.partial_fit(bad)
    model.set_params(n_nonzero_coefs=99)
    with pytest.raises(ValueError, match="exceeds"):
        model.partial_fit(X)
    model.set_params(n_nonzero_coefs=3)
    np.testing.assert_array_equal(model.components_, components)
    assert pickle.dumps(model) == state


def test_transform_checks_features_and_fit():
    with pytest.raises(Exception, match="not fitted"):
        small_model().transform(small_data())
    model = small_model().fit(small_data())
    with pytest.raises(ValueError, match="10 features"):
        model.transform(small_data(n_features=7))


# ----------------------------------------------------------------------
# MiniBatchDictionaryLearning's arguments
# ----------------------------------------------------------------------
def _nonnegative_problem(seed=0, n=600, d=16, m=12, k=2, noise=0.05):
    """Planted nonnegative atoms (half their entries zero), coherent."""
    rng = np.random.RandomState(seed)
    atoms = np.abs(rng.randn(m, d))
    atoms[rng.rand(m, d) < 0.5] = 0
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    codes = np.zeros((n, m))
    for i in range(n):
        codes[i, rng.choice(m, k, replace=False)] = rng.uniform(1, 2, k)
    return codes @ atoms + noise * rng.randn(n, d), atoms


def _omp_error(X, atoms, k):
    from sklearn.decomposition import sparse_encode

    code = sparse_encode(X, atoms, algorithm="omp", n_nonzero_coefs=k)
    return np.linalg.norm(X - code @ atoms) / np.linalg.norm(X)


@pytest.mark.parametrize("positive_code", [False, True])
def test_positive_dict_beats_clipping_an_unconstrained_fit(positive_code):
    X, _ = _nonnegative_problem()
    params = dict(
        n_components=12, n_nonzero_coefs=2, max_iter=40, batch_size=300,
        max_no_improvement=None, positive_code=positive_code, random_state=0,
    )
    nonnegative = DBKSVDDictionaryLearning(positive_dict=True, **params).fit(X)
    free = DBKSVDDictionaryLearning(**params).fit(X)
    assert np.all(nonnegative.components_ >= 0)
    np.testing.assert_allclose(np.linalg.norm(nonnegative.components_, axis=1), 1)
    assert np.any(free.components_ < 0)
    clipped = np.maximum(free.components_, 0)
    clipped /= np.maximum(np.linalg.norm(clipped, axis=1, keepdims=True), 1e-300)
    assert _omp_error(X, nonnegative.components_, 2) < _omp_error(X, clipped, 2) - 0.02
    code = nonnegative.transform(X)
    if positive_code:
        assert np.all(code >= 0)
    else:
        assert np.any(code < 0)


@pytest.mark.parametrize("init", ["uniform", "samples"])
def test_positive_dict_initial_and_replaced_atoms_are_nonnegative(init):
    X = small_data()  # signed data: samples and residuals have negative parts
    model = small_model(
        positive_dict=True, init=init, max_steps=1, replace_min_usage=1.0,
        batch_size=200,
    ).fit(X)
    assert model.history_[0]["n_replaced"] > 0
    assert np.all(model.components_ >= 0)
    start = small_model(positive_dict=True, init=init, max_iter=0).fit(X)
    assert np.all(start.components_ >= 0)
    np.testing.assert_allclose(np.linalg.norm(start.components_, axis=1), 1)


def test_max_iter_zero_keeps_dict_init_as_given():
    X = small_data()
    dict_init = np.random.RandomState(3).randn(16, 10)
    model = small_model(max_iter=0, dict_init=dict_init).fit(X)
    np.testing.assert_array_equal(model.components_, dict_init)
    assert model.n_steps_ == 0 and model.n_iter_ == 0 and model.history_ == []
    assert model.transform(X).shape == (200, 16)
    # Without dict_init: the initial dictionary, normalised samples.
    start = small_model(max_iter=0).fit(X)
    np.testing.assert_allclose(np.linalg.norm(start.components_, axis=1), 1)
    normalised = X / np.linalg.norm(X, axis=1, keepdims=True)
    assert np.all(np.max(start.components_ @ normalised.T, axis=1) > 1 - 1e-12)
    # partial_fit then continues from the (normalised) given atoms.
    model.partial_fit(X)
    np.testing.assert_allclose(np.linalg.norm(model.components_, axis=1), 1)
    assert model.n_steps_ == 1


def test_split_sign_transform_names_and_inverse():
    pytest.importorskip("pandas")
    X = small_data()
    signed = small_model().fit(X)
    split = small_model(split_sign=True).fit(X)
    code = signed.transform(X)
    split_code = split.transform(X)
    np.testing.assert_array_equal(
        split_code, np.hstack([np.maximum(code, 0), np.maximum(-code, 0)])
    )
    expected = oracles.matching_pursuit(X, split.components_, 3)
    np.testing.assert_allclose(split_code, oracles.split_signs(expected), atol=1e-12)
    np.testing.assert_allclose(
        split.inverse_transform(split_code), code @ split.components_
    )
    names = split.get_feature_names_out()
    assert list(names[:2]) == [
        "dbksvddictionarylearning0_pos", "dbksvddictionarylearning1_pos"
    ]
    assert names[16] == "dbksvddictionarylearning0_neg" and len(names) == 32
    frame = split.set_output(transform="pandas").transform(X)
    assert list(frame.columns) == list(names) and frame.shape == (200, 32)
    assert split.score(X) == pytest.approx(signed.score(X))
    sparse = small_model(split_sign=True, sparse_output=True).fit(X).transform(X)
    np.testing.assert_array_equal(sparse.toarray(), split_code)


@pytest.mark.parametrize("fit_algorithm", ["lars", "cd"])
def test_lasso_coders_during_fit(fit_algorithm):
    X, _, _ = make_sparse_dictionary_problem(400, 12, 16, 3, random_state=0)
    params = dict(n_components=16, alpha=0.5, max_iter=5, random_state=0)
    model = DBKSVDDictionaryLearning(fit_algorithm=fit_algorithm, **params).fit(X)
    start = DBKSVDDictionaryLearning(fit_algorithm=fit_algorithm, max_steps=1, **params)
    start.set_params(max_iter=0).fit(X)
    assert model.score(X) > start.score(X) + 0.05
    np.testing.assert_allclose(np.linalg.norm(model.components_, axis=1), 1)
    positive = DBKSVDDictionaryLearning(
        fit_algorithm=fit_algorithm, positive_code=True, positive_dict=True,
        transform_algorithm="lasso_lars", **params,
    ).fit(X)
    assert np.all(positive.components_ >= 0) and np.all(positive.transform(X) >= 0)


@pytest.mark.parametrize(
    "params",
    [
        {"replace_until": 1.0},
        {"replace_until": 0.0},
        {"replace_until": 0.5, "max_steps": 12},
        {"replace_until": 1.0, "positive_dict": True, "positive_code": True},
    ],
)
@pytest.mark.parametrize("model_class", ["dbksvd", "matryoshka"])
def test_fit_equals_partial_fit_on_the_same_batches(params, model_class):
    from sklearn_dbksvd import MatryoshkaDBKSVD

    X = small_data(n_samples=240)
    settings = dict(
        batch_size=60, max_iter=3, shuffle=False, max_no_improvement=None,
        replace_min_usage=0.5, **params,
    )
    if model_class == "matryoshka":
        settings["n_nonzero_coefs"] = 4  # a share for each of its 4 groups
        fitted = MatryoshkaDBKSVD(16, random_state=0, **settings).fit(X)
        looped = MatryoshkaDBKSVD(16, random_state=0, **settings)
    else:
        fitted = small_model(**settings).fit(X)
        looped = small_model(**settings)
    for _ in range(3):
        for batch in np.array_split(X, 4):
            looped.partial_fit(batch)
    assert fitted.n_steps_ == looped.n_steps_ == 12
    replaced = [r["n_replaced"] for r in fitted.history_]
    assert replaced == [r["n_replaced"] for r in looped.history_]
    if params["replace_until"] > 0:
        assert sum(replaced) > 0  # the schedule is exercised
    np.testing.assert_allclose(
        looped.components_, fitted.components_, rtol=1e-6, atol=1e-12
    )


@pytest.mark.parametrize("model_class", ["dbksvd", "matryoshka"])
def test_fit_is_scale_invariant(model_class):
    from sklearn_dbksvd import MatryoshkaDBKSVD

    # A problem the fit converges on: float32 rounding differences (1e18 and
    # 1e-30 are not powers of two) then stay at rounding level.
    X, _, _ = make_sparse_dictionary_problem(
        2000, 12, 24, 3, noise=0.01, dtype=np.float32, random_state=0
    )
    Model = DBKSVDDictionaryLearning if model_class == "dbksvd" else MatryoshkaDBKSVD
    params = dict(
        n_components=24, n_nonzero_coefs=3, max_iter=10, batch_size=500,
        max_no_improvement=None, random_state=0,
    )
    reference = Model(**params).fit(X)
    for factor in [1e18, 1e-30]:
        model = Model(**params).fit(X * np.float32(factor))
        assert model.components_.dtype == np.float32
        np.testing.assert_allclose(
            model.components_, reference.components_, rtol=1e-4, atol=1e-4
        )
        code = model.transform(X * np.float32(factor))
        assert np.all(np.isfinite(code))
        np.testing.assert_allclose(
            code / np.float32(factor), reference.transform(X), rtol=1e-3, atol=1e-4
        )


def test_matryoshka_takes_minibatch_dictionary_learning_arguments():
    from sklearn_dbksvd import MatryoshkaDBKSVD

    X, _ = _nonnegative_problem()
    params = dict(n_components=12, n_nonzero_coefs=4, max_iter=5, random_state=0)
    model = MatryoshkaDBKSVD(
        positive_dict=True, positive_code=True, split_sign=True, **params
    ).fit(X)
    assert np.all(model.components_ >= 0)
    code = model.transform(X)
    assert code.shape == (600, 24) and np.all(code[:, 12:] == 0)
    assert model.get_feature_names_out()[12] == "matryoshkadbksvd0_neg"
    lasso = MatryoshkaDBKSVD(fit_algorithm="lars", alpha=0.5, **params).fit(X)
    start = MatryoshkaDBKSVD(fit_algorithm="lars", alpha=0.5, **params)
    start.set_params(max_iter=0).fit(X)
    assert lasso.score(X) > start.score(X)


@pytest.mark.parametrize("model_class", ["dbksvd", "matryoshka"])
def test_every_minibatch_dictionary_learning_argument_is_accepted(model_class):
    import inspect

    from sklearn_dbksvd import MatryoshkaDBKSVD

    Model = DBKSVDDictionaryLearning if model_class == "dbksvd" else MatryoshkaDBKSVD
    theirs = inspect.signature(MiniBatchDictionaryLearning).parameters
    ours = Model().get_params()
    assert set(theirs) <= set(ours)
    assert set(theirs) <= set(Model._parameter_constraints)


# ----------------------------------------------------------------------
# Robustness: odd input and failed calls (issue 19)
# ----------------------------------------------------------------------
def _fitted_state(model):
    """Everything a fitted estimator holds, comparable with ==."""
    return pickle.dumps(model)


@pytest.mark.parametrize(
    "bad_fit, message",
    [
        (lambda m: m.fit(np.full((30, 10), np.nan)), "NaN"),
        (lambda m: m.fit(small_data(n_features=7), None), None),
        (lambda m: m.set_params(n_nonzero_coefs=99).fit(small_data()), "exceeds"),
        (lambda m: m.set_params(n_nonzero_coefs=True).fit(small_data()), "bool"),
        (lambda m: m.set_params(n_components=10**11).fit(small_data()), "memory"),
        (
            lambda m: m.set_params(callback=_raise_at_second_step).fit(small_data()),
            "callback failed",
        ),
    ],
    ids=["nan", "pandas-other-features", "k", "bool", "memory", "callback"],
)
def test_failed_fit_leaves_a_fitted_estimator_exactly_as_it_was(bad_fit, message):
    pd = pytest.importorskip("pandas")
    X = pd.DataFrame(small_data(), columns=[f"f{i}" for i in range(10)])
    model = small_model().fit(X)
    before = _fitted_state(model)
    components = model.components_.copy()
    if message is None:
        # A fit that fails late, after X (7 features, no names) was validated.
        message = "exceeds"
        model.set_params(n_nonzero_coefs=99)
        bad_fit = lambda m: m.fit(small_data(n_features=7))  # noqa: E731
    with pytest.raises((ValueError, RuntimeError), match=message):
        bad_fit(model)
    model.set_params(n_nonzero_coefs=3, n_components=16, callback=None)
    assert _fitted_state(model) == before
    assert model.n_features_in_ == 10
    assert list(model.feature_names_in_) == [f"f{i}" for i in range(10)]
    np.testing.assert_array_equal(model.components_, components)
    model.transform(X)  # still usable


def _raise_at_second_step(info):
    if info["step"] == 1:
        raise RuntimeError("callback failed")


def test_failed_partial_fit_keeps_features_and_names():
    pd = pytest.importorskip("pandas")
    X = pd.DataFrame(small_data(), columns=[f"f{i}" for i in range(10)])
    model = small_model().partial_fit(X)
    before = _fitted_state(model)
    with pytest.raises(ValueError, match="feature names"):
        model.partial_fit(pd.DataFrame(small_data(), columns=list("abcdefghij")))
    model.set_params(n_nonzero_coefs=True)
    with pytest.raises(ValueError, match="not a bool"):
        model.partial_fit(X)
    # A step that ran, then a callback that failed: the step is not kept,
    # nor the random numbers it drew.
    model.set_params(n_nonzero_coefs=3, callback=_raise_at_second_step)
    with pytest.raises(RuntimeError, match="callback failed"):
        model.partial_fit(X)
    model.set_params(callback=None)
    assert _fitted_state(model) == before


@pytest.mark.parametrize("method", ["fit", "partial_fit"])
def test_failed_first_fit_leaves_the_estimator_unfitted(method):
    from sklearn.exceptions import NotFittedError

    model = small_model(n_nonzero_coefs=99)
    with pytest.raises(ValueError, match="exceeds"):
        getattr(model, method)(small_data())
    assert not hasattr(model, "n_features_in_")
    with pytest.raises(NotFittedError):
        model.transform(small_data())


def test_refit_without_names_drops_the_old_names():
    pd = pytest.importorskip("pandas")
    X = small_data()
    model = small_model().fit(pd.DataFrame(X, columns=[f"f{i}" for i in range(10)]))
    model.fit(X)
    assert not hasattr(model, "feature_names_in_")


@pytest.mark.parametrize(
    "param", ["n_nonzero_coefs", "n_components", "max_iter", "batch_size", "n_jobs"]
)
def test_bools_are_not_integers(param):
    with pytest.raises(ValueError, match=f"'{param}' parameter .* not a bool"):
        small_model(**{param: True}).fit(small_data())


def test_bool_transform_nonzeros_set_after_fit_is_refused():
    model = small_model().fit(small_data())
    model.set_params(transform_n_nonzero_coefs=True)
    with pytest.raises(ValueError, match="'transform_n_nonzero_coefs' .* not a bool"):
        model.transform(small_data())


@pytest.mark.parametrize("algorithm", ["mp", "omp", "lasso_lars"])
def test_transform_refuses_more_nonzeros_than_atoms(algorithm):
    # fit refuses n_nonzero_coefs > n_components; transform follows the same
    # rule rather than clipping k=17 to the 16 atoms.
    model = small_model(transform_algorithm=algorithm).fit(small_data())
    model.set_params(transform_n_nonzero_coefs=17)
    message = "transform_n_nonzero_coefs=17 exceeds n_components=16"
    with pytest.raises(ValueError, match=message):
        model.transform(small_data())
    with pytest.raises(ValueError, match=message):
        next(model.iter_transform(small_data()))
    model.set_params(transform_n_nonzero_coefs=16)
    assert model.transform(small_data()).shape == (200, 16)


def test_huge_dictionary_is_refused_with_a_memory_estimate_before_allocating():
    # 10**11 atoms of 10 float64 features: 7.28 TiB of atoms alone, and a
    # Gram matrix beyond any machine. Refused at once, naming the estimate.
    for method in ("fit", "partial_fit"):
        with pytest.raises(ValueError, match="n_components=100000000000") as error:
            getattr(small_model(n_components=10**11), method)(small_data())
        needed = re.search(r"needs at least ([\d.]+) TiB of memory", str(error.value))
        assert needed and float(needed.group(1)) >= 10**11 * 10 * 8 / 2**40


@pytest.mark.parametrize(
    "dtype, exponent, rtol",
    # Subnormal magnitudes: 2**-1040 keeps 34 of float64's 52 mantissa bits,
    # 2**-130 keeps 19 of float32's 23.
    [(np.float64, -1040, 1e-8), (np.float32, -130, 1e-3)],
)
def test_subnormal_data_is_encoded_like_the_same_data_at_unit_scale(
    dtype, exponent, rtol
):
    X = small_data(dtype=dtype)
    tiny = X * dtype(2.0**exponent) if dtype == np.float64 else np.ldexp(X, exponent)
    assert 0 < np.abs(tiny).max() < np.finfo(dtype).tiny  # subnormal
    model = small_model(max_iter=1).fit(X)
    expected = model.transform(X)
    codes = np.ldexp(model.transform(tiny).astype(np.float64), -exponent)
    atol = rtol * abs(expected).max()
    np.testing.assert_allclose(codes, expected, rtol=rtol, atol=atol)
    # Fitting on it works too, and learns atoms as good as at unit scale.
    fitted = small_model(max_iter=1).fit(tiny)
    assert np.all(np.isfinite(fitted.components_))
    np.testing.assert_allclose(
        np.linalg.norm(fitted.components_, axis=1), 1, rtol=1e-5
    )


def test_more_atoms_than_samples_warns():
    X = small_data(n_samples=12)
    with pytest.warns(UserWarning, match="n_components=16 is at least n_samples=12"):
        model = small_model(n_nonzero_coefs=1).fit(X)
    # What the warning is about: the fit reconstructs its samples exactly.
    assert model.history_[-1]["variance_explained"] > 0.99


def test_provenance_is_recorded_from_a_harvest_and_kept_by_partial_fit():
    from sklearn_dbksvd._data import RowConcatenation

    X = small_data()
    rows = RowConcatenation([X[:120], X[120:]])
    provenance = {"model_name": "m", "hook_name": "blocks.1.hook_resid_post",
                  "harvest": {"path": "h", "fingerprint": "ab", "n_rows": 200}}
    rows.provenance = provenance
    model = small_model().fit(rows)
    assert model.provenance_ == provenance
    assert model.provenance_ is not provenance
    provenance["harvest"]["n_rows"] = 0  # the copy is the estimator's own
    assert model.provenance_["harvest"]["n_rows"] == 200
    model.partial_fit(X)  # a batch without provenance keeps it
    assert model.provenance_["model_name"] == "m"
    assert small_model().fit(X).provenance_ is None
    assert small_model().partial_fit(X).provenance_ is None


def test_score_of_a_dataframe(recwarn):
    pd = pytest.importorskip("pandas")
    X = small_data()
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(10)])
    model = small_model().fit(frame)
    atoms = model.components_
    expected = oracles.variance_explained(
        X, oracles.matching_pursuit(X, atoms, 3) @ atoms
    )
    assert model.score(frame) == pytest.approx(expected, rel=1e-10)
    assert not [w for w in recwarn if "feature names" in str(w.message)]
