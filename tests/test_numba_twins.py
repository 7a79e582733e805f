"""Every compiled kernel and its NumPy twin on one shared set of edge cases.

Each pair is reached through one dispatch point (``_numba.twins``); here both
twins of every pair run on the same cases (exact ties, zero rows, k=1, k=m, in
float32 and float64) and are compared with a plain reference written from the
definition, not with each other.
"""

import importlib
import pkgutil

import numpy as np
import pytest

import sklearn_dbksvd
from sklearn_dbksvd import _backend, _encode, _numba, _omp, _replace, _update, metrics
from sklearn_dbksvd._gram_rows import GramRows, plan_gram
from tests import _oracles

CASES = ["ties", "zero_rows", "k=1", "k=m"]
DTYPES = [np.float32, np.float64]
N_FEATURES, N_COMPONENTS = 10, 6


@pytest.fixture(params=["compiled", "numpy"])
def twin(request, monkeypatch):
    """Which twin runs: the dispatch points read the switch at each call."""
    if request.param == "compiled" and _numba.numba is None:
        pytest.skip("numba is not installed")
    monkeypatch.setattr(_numba, "USE_NUMBA", request.param == "compiled")
    return request.param


def edge_case(case, dtype):
    """``(X, D, k)``: unit atoms, 40 samples, and the number of selections.

    "ties": the atoms are the first rows of the identity and the samples
    small integers, so that correlations tie exactly, in any order of
    operations (the first atom must win). "zero_rows": every third sample is
    zero. "k=1", "k=m": one selection, or as many as atoms.
    """
    rng = np.random.RandomState(0)
    if case == "ties":
        D = np.eye(N_FEATURES)[:N_COMPONENTS]
        X = rng.randint(-2, 3, size=(40, N_FEATURES)).astype(float)
        X[:, :N_COMPONENTS] = np.sort(np.abs(X[:, :N_COMPONENTS]), axis=1)
    else:
        D = np.linalg.qr(rng.randn(N_FEATURES, N_COMPONENTS))[0].T
        D = D + 0.3 * rng.randn(*D.shape)  # correlated, well conditioned
        D /= np.linalg.norm(D, axis=1, keepdims=True)
        X = rng.randn(40, N_FEATURES)
    if case == "zero_rows":
        X[::3] = 0
    k = {"k=1": 1, "k=m": N_COMPONENTS}.get(case, 3)
    return X.astype(dtype), D.astype(dtype), k


def tolerance(dtype):
    return 2e-4 if dtype == np.float32 else 1e-10


def codes_of(indices, values, n_components):
    codes = np.zeros((len(indices), n_components))
    for i in range(len(indices)):
        np.add.at(codes[i], indices[i], values[i])
    return codes


def reference_omp(X, atoms, k):
    """Orthogonal matching pursuit from its definition, one sample at a time."""
    X, atoms = np.asarray(X, np.float64), np.asarray(atoms, np.float64)
    codes = np.zeros((len(X), len(atoms)))
    for i, x in enumerate(X):
        support, residual = [], x.copy()
        for _ in range(k):
            correlations = np.abs(atoms @ residual)
            correlations[support] = -1
            j = int(np.argmax(correlations))
            if correlations[j] <= 1e-12 * max(1.0, np.linalg.norm(x)):
                break
            support.append(j)
            solution = np.linalg.lstsq(atoms[support].T, x, rcond=None)[0]
            residual = x - solution @ atoms[support]
        if support:
            codes[i, support] = solution
    return codes


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_matching_pursuit_on_the_whole_gram_matrix(twin, case, dtype):
    X, D, k = edge_case(case, dtype)
    corr = X @ D.T
    indices, values = _encode._matching_pursuit_gram(corr, D @ D.T, k, False)
    expected = _oracles.matching_pursuit(X, D, k)
    np.testing.assert_allclose(
        codes_of(indices, values, len(D)), expected, atol=tolerance(dtype)
    )
    if case == "ties":
        # Exact ties: the very selections of the definition, first atom first.
        assert np.array_equal(codes_of(indices, values, len(D)) != 0, expected != 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_matching_pursuit_on_gram_rows(twin, case, dtype):
    X, D, k = edge_case(case, dtype)
    rows = plan_gram(D, 2 * D.shape[0] * D.itemsize)  # two rows of six
    assert isinstance(rows, GramRows)
    indices, values = _encode._matching_pursuit_gram(X @ D.T, rows, k, False)
    np.testing.assert_allclose(
        codes_of(indices, values, len(D)),
        _oracles.matching_pursuit(X, D, k),
        atol=tolerance(dtype),
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_batch_omp(twin, case, dtype):
    X, D, k = edge_case(case, dtype)
    indices, values = _omp._batch_omp_gram(X @ D.T, D @ D.T, k, False)
    np.testing.assert_allclose(
        codes_of(indices, values, len(D)), reference_omp(X, D, k),
        atol=10 * tolerance(dtype),
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_subtract_selections(twin, case, dtype):
    X, D, k = edge_case(case, dtype)
    rng = np.random.RandomState(1)
    indices = rng.randint(0, len(D), size=(len(X), k))
    if case == "ties":
        indices[:, :] = 2  # one atom selected k times
    values = rng.randn(len(X), k).astype(dtype)
    if case == "zero_rows":
        values[::3] = 0
    out = X.copy()
    _backend._subtract_selections(out, indices, values, D)
    expected = X.astype(np.float64)
    for i in range(len(X)):
        for t in range(k):
            expected[i] -= float(values[i, t]) * D[indices[i, t]].astype(np.float64)
    np.testing.assert_allclose(out, expected, atol=tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_near_duplicates(twin, case, dtype):
    _, D, _ = edge_case(case, dtype)
    D = np.vstack([D, D[:2], -D[3:4]])  # atoms 6, 7 copy 0, 1; 8 is -3
    rng = np.random.RandomState(2)
    usage = rng.randint(0, 3, size=len(D))
    if case == "ties":
        usage[:] = 1  # equal usage: the later atom of a pair goes
    if case == "zero_rows":
        usage[:] = 0
    gram = D @ D.T
    expected = set()
    for i in range(len(D)):
        for j in range(i + 1, len(D)):
            if abs(gram[i, j]) > 0.99:
                expected.add(i if usage[i] < usage[j] else j)
    found = _replace.near_duplicates(gram, usage, 0.99)
    assert found.tolist() == sorted(expected)
    assert len(expected) >= 3
    blocks = _replace.near_duplicates_of_atoms(D, usage, 0.99)
    assert blocks.tolist() == sorted(expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_batch_metrics(twin, case, dtype):
    X, D, k = edge_case(case, dtype)
    codes = _oracles.matching_pursuit(X, D, k)
    residual = (X - codes @ D).astype(dtype)
    error, explained, sq_norms = metrics._batch_metrics(
        X, residual, return_sq_norms=True
    )
    X64, R64 = X.astype(np.float64), residual.astype(np.float64)
    norms = np.linalg.norm(X64, axis=1)
    ratios = np.linalg.norm(R64, axis=1)[norms > 0] / norms[norms > 0]
    assert error == pytest.approx(ratios.sum() / len(X), rel=1e-5)
    keep = X64.var(axis=0) > 0
    expected = 1 - np.mean(R64.var(axis=0)[keep] / X64.var(axis=0)[keep])
    assert explained == pytest.approx(expected, rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(sq_norms, np.sum(R64**2, axis=1), rtol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_leading_singular_pair(twin, case, dtype):
    X, _, k = edge_case(case, dtype)
    E = X[: 4 * k]  # the error matrix of an atom with 4k users
    if not np.any(E):
        E = E.copy()
        E[0, 0] = 1
    atom, code = _update.leading_singular_pair(E, np.ones(E.shape[1], dtype))
    _, sigma, vt = np.linalg.svd(E.astype(np.float64))
    if case == "ties" and sigma.size > 1 and np.isclose(sigma[0], sigma[1]):
        pytest.skip("no unique leading pair")
    assert abs(float(atom @ vt[0])) == pytest.approx(1, abs=10 * tolerance(dtype))
    np.testing.assert_allclose(
        code, E.astype(np.float64) @ atom.astype(np.float64),
        rtol=1e-3, atol=10 * tolerance(dtype),
    )
    assert np.linalg.norm(code) == pytest.approx(sigma[0], rel=1e-3)


def _all_twins():
    """Every dispatch point made by ``_numba.twins`` in the package's kernels."""
    found = {}
    for info in pkgutil.iter_modules(sklearn_dbksvd.__path__, "sklearn_dbksvd."):
        if info.name.endswith("__main__"):
            continue  # runs the command line
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if callable(value) and hasattr(value, "compiled") and hasattr(
                value, "numpy"
            ):
                found[id(value)] = value
    return found


def test_every_twin_is_tested_here():
    tested = [
        _encode._matching_pursuit_dense,
        _encode._matching_pursuit_from_rows,
        _omp._batch_omp_pass,
        _backend._subtract_selections,
        _replace._mark_near_duplicates,
        metrics._block_stats,
        _update._lanczos_dense,
    ]
    # A new pair needs its cases here: no dispatch point goes untested.
    assert set(_all_twins()) == {id(pair) for pair in tested}


@pytest.mark.parametrize("use_numba", [True, False])
def test_dispatch_follows_the_switch(monkeypatch, use_numba):
    if use_numba and _numba.numba is None:
        pytest.skip("numba is not installed")
    monkeypatch.setattr(_numba, "USE_NUMBA", use_numba)
    calls = []
    pair = _numba.twins(
        lambda x: calls.append("compiled"), lambda x: calls.append("numpy")
    )
    pair(1)
    assert calls == ["compiled" if use_numba else "numpy"]
