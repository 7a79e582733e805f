"""Matching pursuit against a per-sample textbook implementation."""

import numpy as np
import pytest
from sklearn.linear_model import orthogonal_mp_gram

from sklearn_dbksvd import sparse_encode_mp


def textbook_matching_pursuit(x, dictionary, n_selections, positive=False):
    """Mallat-Zhang matching pursuit on one sample, with explicit residual."""
    residual = x.astype(np.float64).copy()
    code = np.zeros(len(dictionary))
    for _ in range(n_selections):
        corr = dictionary @ residual
        j = np.argmax(corr) if positive else np.argmax(np.abs(corr))
        a = max(corr[j], 0.0) if positive else corr[j]
        code[j] += a
        residual -= a * dictionary[j]
    return code


def random_problem(n_samples=40, n_features=20, n_components=50, seed=0):
    rng = np.random.RandomState(seed)
    dictionary = rng.randn(n_components, n_features)
    dictionary /= np.linalg.norm(dictionary, axis=1, keepdims=True)
    return rng.randn(n_samples, n_features), dictionary


@pytest.mark.parametrize("positive", [False, True])
@pytest.mark.parametrize("k", [1, 5, 30])
def test_equals_textbook_matching_pursuit(k, positive):
    X, dictionary = random_problem()
    code = sparse_encode_mp(X, dictionary, k, positive=positive)
    expected = np.array(
        [textbook_matching_pursuit(x, dictionary, k, positive) for x in X]
    )
    np.testing.assert_allclose(code, expected, rtol=1e-10, atol=1e-12)
    assert np.all((code != 0).sum(axis=1) <= k)
    if positive:
        assert np.all(code >= 0)


def test_selected_atoms_accumulate():
    # Selections: atom 1 (0.6), atom 0 (-0.48), atom 1 again (0.384).
    dictionary = np.array([[1.0, 0.0], [0.8, 0.6]])
    code = sparse_encode_mp(np.array([[0.0, 1.0]]), dictionary, 3)
    np.testing.assert_allclose(code, [[-0.48, 0.6 + 0.384]])


def test_gram_and_cov_give_the_same_codes():
    X, dictionary = random_problem()
    gram = dictionary @ dictionary.T
    cov = dictionary @ X.T
    expected = sparse_encode_mp(X, dictionary, 4)
    np.testing.assert_allclose(sparse_encode_mp(X, dictionary, 4, gram=gram), expected)
    np.testing.assert_allclose(
        sparse_encode_mp(None, dictionary, 4, gram=gram, cov=cov), expected
    )


def test_float32_stays_float32_with_threads():
    X, dictionary = random_problem()
    code = sparse_encode_mp(
        X.astype(np.float32), dictionary.astype(np.float32), 5, n_jobs=2
    )
    assert code.dtype == np.float32
    expected = sparse_encode_mp(X, dictionary, 5)
    np.testing.assert_allclose(code, expected, rtol=1e-3, atol=1e-4)


def test_n_jobs_does_not_change_codes():
    # More samples than one block so that threads really split the work.
    X, dictionary = random_problem(n_samples=9000, n_features=8, n_components=16)
    np.testing.assert_array_equal(
        sparse_encode_mp(X, dictionary, 3, n_jobs=1),
        sparse_encode_mp(X, dictionary, 3, n_jobs=2),
    )


def test_residual_tolerance_stops_early():
    X, dictionary = random_problem()
    code = sparse_encode_mp(X, dictionary, 30, tol=0.5)
    relative = np.linalg.norm(X - code @ dictionary, axis=1) / np.linalg.norm(X, axis=1)
    assert np.all(relative <= 0.5 + 1e-12)
    # Stopping as soon as the tolerance is met: one selection fewer is not enough.
    full = sparse_encode_mp(X, dictionary, 30)
    assert (code != 0).sum() < (full != 0).sum()


def test_refit_is_least_squares_on_the_support():
    X, dictionary = random_problem()
    code = sparse_encode_mp(X, dictionary, 5, refit=True)
    for x, c in zip(X, code):
        support = np.flatnonzero(c)
        best, *_ = np.linalg.lstsq(dictionary[support].T, x, rcond=None)
        np.testing.assert_allclose(c[support], best, rtol=1e-8, atol=1e-10)


def test_matches_omp_on_orthonormal_dictionary():
    # With orthonormal atoms matching pursuit and OMP coincide.
    rng = np.random.RandomState(0)
    dictionary = np.linalg.qr(rng.randn(10, 10))[0].T
    X = rng.randn(7, 10)
    omp = orthogonal_mp_gram(dictionary @ dictionary.T, dictionary @ X.T, n_nonzero_coefs=3).T
    np.testing.assert_allclose(sparse_encode_mp(X, dictionary, 3), omp, atol=1e-12)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_nonzero_coefs": 0}, "n_nonzero_coefs"),
        ({"X": np.ones((2, 3))}, "3 features"),
        ({"gram": np.eye(3)}, "gram has shape"),
        ({"X": None}, "needs X or cov"),
        ({"refit": True, "positive": True}, "refit"),
        ({"X": np.full((2, 20), np.nan)}, "NaN"),
    ],
)
def test_bad_input_raises_clear_error(kwargs, message):
    X, dictionary = random_problem()
    arguments = {"X": X, "dictionary": dictionary, "n_nonzero_coefs": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        sparse_encode_mp(**arguments)
