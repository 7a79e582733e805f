"""Batch-OMP against a plain per-sample OMP and scikit-learn's orthogonal_mp_gram."""

import numpy as np
import pytest
from sklearn.linear_model import orthogonal_mp_gram

from sklearn_dbksvd import (
    DBKSVDDictionaryLearning,
    MatryoshkaDBKSVD,
    _numba,
    _omp,
    sparse_encode_mp,
    sparse_encode_omp,
)
from sklearn_dbksvd._step import encode_batch


@pytest.fixture(params=["compiled", "numpy"])
def kernel(request, monkeypatch):
    """Run a test with the numba kernel and with the NumPy fallback."""
    if request.param == "compiled" and _numba.numba is None:
        pytest.skip("numba not installed")
    monkeypatch.setattr(_numba, "USE_NUMBA", request.param == "compiled")
    return request.param


def problem(n_samples=40, n_features=30, n_components=60, seed=0, dtype=np.float64):
    """Gaussian unit atoms (well conditioned for small supports) and dense data."""
    rng = np.random.RandomState(seed)
    D = rng.randn(n_components, n_features)
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    X = rng.randn(n_samples, n_features)
    return X.astype(dtype), D.astype(dtype)


def plain_omp(x, D, k, tol=None):
    """Textbook OMP of one sample: correlations of the residual, least squares."""
    support, coef = [], np.zeros(0)
    residual = x.copy()
    for _ in range(k):
        if tol is not None and np.linalg.norm(residual) <= tol * np.linalg.norm(x):
            break
        corr = D @ residual
        j = int(np.argmax(np.abs(corr)))
        if corr[j] == 0:
            break
        support.append(j)
        coef = np.linalg.lstsq(D[support].T, x, rcond=None)[0]
        residual = x - coef @ D[support]
    code = np.zeros(len(D))
    code[support] = coef
    return code


def plain_nonnegative_omp(x, D, k):
    """Lawson and Hanson's NNLS over all atoms, stopped at k atoms in the support.

    The textbook active-set loop: add the atom of largest positive gradient
    ``D r``; while the least squares on the support has a negative entry, cut
    the step where the first coefficient reaches zero and drop it. At most
    ``3 k`` additions, as in the kernel.
    """
    support, coef = [], np.zeros(0)
    for _ in range(3 * k):
        if len(support) == k:
            break
        corr = D @ (x - coef @ D[support])
        corr[support] = -np.inf
        j = int(np.argmax(corr))
        if corr[j] <= 0:
            break
        support, coef = support + [j], np.append(coef, 0.0)
        while True:
            target = np.linalg.lstsq(D[support].T, x, rcond=None)[0]
            if np.all(target > 0):
                coef = target
                break
            negative = target <= 0
            steps = coef[negative] / (coef[negative] - target[negative])
            coef = coef + steps.min() * (target - coef)
            blocking = np.flatnonzero(negative)[np.argmin(steps)]
            keep = [i for i in range(len(support)) if i != blocking and coef[i] > 0]
            support, coef = [support[i] for i in keep], coef[keep]
    code = np.zeros(len(D))
    code[support] = coef
    return code


def test_equals_plain_omp(kernel):
    X, D = problem()
    expected = np.array([plain_omp(x, D, 6) for x in X])
    code = sparse_encode_omp(X, D, 6)
    np.testing.assert_array_equal(code != 0, expected != 0)
    np.testing.assert_allclose(code, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-10), (np.float32, 1e-4)])
def test_equals_orthogonal_mp_gram(kernel, dtype, rtol):
    X, D = problem(dtype=dtype)
    gram = D @ D.T
    expected = orthogonal_mp_gram(gram, D @ X.T, n_nonzero_coefs=8).T
    code = sparse_encode_omp(X, D, 8, gram=gram)
    assert code.dtype == dtype
    np.testing.assert_array_equal(code != 0, expected != 0)
    atol = rtol * np.abs(expected).max()
    np.testing.assert_allclose(code, expected, rtol=rtol, atol=atol)


def test_float32_stays_float32(kernel):
    X, D = problem(dtype=np.float32)
    code = sparse_encode_omp(X, D, 5)
    assert code.dtype == np.float32
    reference = sparse_encode_omp(X.astype(np.float64), D.astype(np.float64), 5)
    np.testing.assert_allclose(code, reference, rtol=1e-4, atol=1e-5)


def test_cov_equals_X(kernel):
    X, D = problem()
    np.testing.assert_allclose(
        sparse_encode_omp(None, D, 5, cov=D @ X.T), sparse_encode_omp(X, D, 5)
    )


def test_independent_of_n_jobs(kernel, monkeypatch):
    X, D = problem(n_samples=300, dtype=np.float32)
    # Blocks of 64 samples: several blocks, coded in two threads.
    monkeypatch.setattr(_omp, "_block_size", lambda *_: 64)
    one = sparse_encode_omp(X, D, 7, n_jobs=1)
    two = sparse_encode_omp(X, D, 7, n_jobs=2)
    np.testing.assert_array_equal(one, two)


def test_compiled_equals_numpy(monkeypatch):
    if _numba.numba is None:
        pytest.skip("numba not installed")
    X, D = problem(dtype=np.float32)
    for positive in (False, True):
        monkeypatch.setattr(_numba, "USE_NUMBA", True)
        compiled = sparse_encode_omp(X, D, 7, positive=positive)
        monkeypatch.setattr(_numba, "USE_NUMBA", False)
        fallback = sparse_encode_omp(X, D, 7, positive=positive)
        np.testing.assert_array_equal(compiled != 0, fallback != 0)
        np.testing.assert_allclose(compiled, fallback, rtol=1e-5, atol=1e-6)


def test_tol_stops_like_orthogonal_mp_gram(kernel):
    X, D = problem()
    tol = 0.6
    code = sparse_encode_omp(X, D, 10, tol=tol)
    gram = D @ D.T
    for x, c in zip(X, code, strict=True):
        sq_norm = x @ x
        # scikit-learn's tol is the absolute squared residual norm.
        expected = orthogonal_mp_gram(
            gram, (D @ x)[:, None], n_nonzero_coefs=10, tol=tol**2 * sq_norm,
            norms_squared=[sq_norm],
        ).ravel()
        np.testing.assert_allclose(c, expected, atol=1e-10)
        np.testing.assert_allclose(c, plain_omp(x, D, 10, tol=tol), atol=1e-10)
    residual = np.linalg.norm(X - code @ D, axis=1) / np.linalg.norm(X, axis=1)
    assert np.all(residual <= tol + 1e-12)
    assert np.count_nonzero(code, axis=1).max() < 10


def test_positive_equals_plain_nonnegative_omp(kernel):
    # Atoms with a common offset are correlated, so least squares on the
    # support often goes negative and atoms have to leave it again.
    rng = np.random.RandomState(0)
    D = rng.randn(60, 30) + 0.3
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    X = rng.randn(60, 30) + 0.3
    code = sparse_encode_omp(X, D, 15, positive=True)
    expected = np.array([plain_nonnegative_omp(x, D, 15) for x in X])
    assert code.min() >= 0
    np.testing.assert_allclose(code, expected, atol=1e-10)
    # The constraint is active: unconstrained codes have negative entries.
    assert np.any(np.count_nonzero(sparse_encode_omp(X, D, 15) < 0, axis=1))


def test_positive_beats_positive_mp(kernel):
    X, D = problem(n_samples=60)
    omp = sparse_encode_omp(X, D, 6, positive=True)
    mp = sparse_encode_mp(X, D, 6, positive=True)
    assert np.count_nonzero(omp, axis=1).max() <= 6
    error_omp = np.linalg.norm(X - omp @ D, axis=1)
    error_mp = np.linalg.norm(X - mp @ D, axis=1)
    assert np.all(error_omp <= error_mp + 1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_dependent_atoms_and_zero_samples(kernel, dtype):
    rng = np.random.RandomState(3)
    base = rng.randn(4, 10)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    combo = base[0] + base[1]
    # Atom 4 repeats atom 0; atom 5 lies in the span of atoms 0 and 1.
    D = np.vstack([base, base[0], combo / np.linalg.norm(combo)]).astype(dtype)
    X = np.vstack([np.zeros(10), 3 * combo, base[2] - 2 * base[3]]).astype(dtype)
    code = sparse_encode_omp(X, D, 5)
    assert np.all(np.isfinite(code))
    assert not code[0].any()
    np.testing.assert_allclose(code @ D, X, atol=1e-4 if dtype == np.float32 else 1e-10)
    assert np.count_nonzero(code[1]) <= 2
    positive = sparse_encode_omp(X, D, 5, positive=True)
    assert np.all(np.isfinite(positive)) and positive.min() >= 0


def test_bad_input():
    X, D = problem()
    with pytest.raises(ValueError, match="needs X or cov"):
        sparse_encode_omp(None, D, 3)
    with pytest.raises(ValueError, match="tol needs X"):
        sparse_encode_omp(None, D, 3, cov=D @ X.T, tol=0.1)
    with pytest.raises(ValueError, match="features"):
        sparse_encode_omp(X[:, :5], D, 3)
    with pytest.raises(ValueError, match="gram has shape"):
        sparse_encode_omp(X, D, 3, gram=np.eye(3))
    with pytest.raises(ValueError, match="cov has"):
        sparse_encode_omp(None, D, 3, cov=np.ones((3, 4)))


def test_estimator_and_step_use_batch_omp():
    X, D = problem(dtype=np.float32)
    model = DBKSVDDictionaryLearning(
        60, n_nonzero_coefs=4, transform_algorithm="omp", max_steps=1, random_state=0
    ).fit(X)
    components = model.components_
    code = model.transform(X)
    assert code.dtype == np.float32
    np.testing.assert_array_equal(code, sparse_encode_omp(X, components, 4))
    batch = encode_batch(
        X, components, n_nonzero_coefs=4, algorithm="omp", positive=False, n_jobs=None
    )
    np.testing.assert_array_equal(batch.toarray(), code)


@pytest.mark.parametrize("Estimator", [DBKSVDDictionaryLearning, MatryoshkaDBKSVD])
def test_estimators_code_nonnegative_with_omp(Estimator):
    rng = np.random.RandomState(0)
    X = np.abs(rng.randn(200, 12))
    model = Estimator(
        24, n_nonzero_coefs=3, fit_algorithm="omp", transform_algorithm="omp",
        positive_code=True, max_steps=2, random_state=0,
    ).fit(X)
    code = model.transform(X)
    assert code.min() >= 0 and code.max() > 0
    assert np.count_nonzero(code, axis=1).max() <= 3
    if Estimator is DBKSVDDictionaryLearning:
        expected = sparse_encode_omp(X, model.components_, 3, positive=True)
        np.testing.assert_allclose(code, expected)


def test_transform_of_a_device_array_with_omp():
    torch = pytest.importorskip("torch")
    pytest.importorskip("array_api_compat")
    import sklearn

    X, _ = problem(dtype=np.float32)
    model = DBKSVDDictionaryLearning(
        60, n_nonzero_coefs=4, transform_algorithm="omp", max_steps=1, random_state=0
    ).fit(X)
    with sklearn.config_context(array_api_dispatch=True):
        code = model.transform(torch.as_tensor(X))
    assert torch.is_tensor(code)
    np.testing.assert_allclose(code.numpy(), model.transform(X), rtol=1e-4, atol=1e-5)
