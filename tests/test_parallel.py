"""Threads and compiled kernels change the speed, never the result.

Every kernel has a compiled (numba) and a pure NumPy version; both are run
here whatever is installed, so the fallback is tested wherever numba is.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from sklearn_dbksvd import _numba, sparse_encode_mp, sparse_encode_omp
from sklearn_dbksvd._encode import _matching_pursuit_gram, _mp_encode, selections_to_csr
from sklearn_dbksvd._parallel import WorkerPool, blas_threads, parallel_map
from sklearn_dbksvd._step import dbksvd_step
from sklearn_dbksvd._update import update_dictionary
from sklearn_dbksvd.datasets import make_sparse_dictionary_problem
from tests import _helpers

needs_numba = pytest.mark.skipif(_numba.numba is None, reason="numba not installed")


@pytest.fixture(params=["compiled", "numpy"])
def kernels(request, monkeypatch):
    """Run a test with the compiled kernels, then with the NumPy fallback."""
    if request.param == "compiled" and _numba.numba is None:
        pytest.skip("numba not installed")
    monkeypatch.setattr(_numba, "USE_NUMBA", request.param == "compiled")
    return request.param


def random_problem(n_samples, n_features, n_components, dtype=np.float64, seed=0):
    rng = np.random.RandomState(seed)
    D = rng.randn(n_components, n_features).astype(dtype)
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    return rng.randn(n_samples, n_features).astype(dtype), D


def step_settings(n_jobs, **overrides):
    return _helpers.step_settings(
        **{
            "n_nonzero_coefs": 4,
            "update_batch_size": 8,
            "random_state": np.random.RandomState(3),
            "n_jobs": n_jobs,
            **overrides,
        }
    )


@needs_numba
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("positive", [False, True])
@pytest.mark.parametrize("tol", [None, 0.6])
def test_compiled_matching_pursuit_makes_numpys_selections(dtype, positive, tol, monkeypatch):
    # 300 atoms: one full group of the compiled arg-max and a partial one.
    X, D = random_problem(50, 20, 300, dtype)
    gram = D @ D.T
    corr = X @ D.T
    sq_norms = np.einsum("ij,ij->i", X, X) if tol else None
    compiled = _matching_pursuit_gram(corr.copy(), gram, 7, positive, sq_norms, tol)
    monkeypatch.setattr(_numba, "USE_NUMBA", False)
    fallback = _matching_pursuit_gram(corr.copy(), gram, 7, positive, sq_norms, tol)
    np.testing.assert_array_equal(compiled[0], fallback[0])
    np.testing.assert_array_equal(compiled[1], fallback[1])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_step_is_the_same_for_any_n_jobs(kernels, dtype):
    X, _, _ = make_sparse_dictionary_problem(3000, 16, 48, 4, noise=0.05, random_state=0)
    _, D = random_problem(1, 16, 48, dtype, seed=1)
    X = X.astype(dtype)
    one, info_one = dbksvd_step(X, D, **step_settings(1))
    two, info_two = dbksvd_step(X, D, **step_settings(2))
    np.testing.assert_array_equal(one, two)
    assert info_one == info_two
    assert one.dtype == dtype


@needs_numba
def test_compiled_and_numpy_updates_agree(monkeypatch):
    X, _, _ = make_sparse_dictionary_problem(2000, 16, 40, 4, noise=0.05, random_state=0)
    _, D = random_problem(1, 16, 40, seed=1)
    compiled, _ = dbksvd_step(X, D, **step_settings(2, replace=False))
    monkeypatch.setattr(_numba, "USE_NUMBA", False)
    fallback, _ = dbksvd_step(X, D, **step_settings(2, replace=False))
    np.testing.assert_allclose(compiled, fallback, rtol=1e-8, atol=1e-8)


def test_update_keeps_the_residual_exact(kernels):
    # After the update the corrected residual must equal X - codes @ atoms,
    # including rows shared by atoms of one inner batch.
    X, D = random_problem(500, 10, 30)
    indices, values, residual = _mp_encode(X, D, 5, return_residual=True)
    codes = sp.csc_matrix(selections_to_csr(indices, values, len(D)))
    codes.sort_indices()
    D = D.copy()
    order = np.random.RandomState(0).permutation(len(D))
    update_dictionary(residual, D, codes, order, update_batch_size=10, n_jobs=2)
    np.testing.assert_allclose(residual, X - codes @ D, atol=1e-10)
    np.testing.assert_allclose(np.linalg.norm(D, axis=1), 1.0)


def test_encoder_blocks_and_threads_do_not_change_codes(kernels, monkeypatch):
    from sklearn_dbksvd import _encode

    X, D = random_problem(700, 12, 40, np.float32)
    whole = _mp_encode(X, D, 5, return_residual=True, n_jobs=1)
    # Tiny blocks: many blocks, several per thread.
    monkeypatch.setattr(_encode, "_BLOCK_BYTES", 64 * 40 * 4)
    expected = _mp_encode(X, D, 5, return_residual=True, n_jobs=1)
    got = _mp_encode(X, D, 5, return_residual=True, n_jobs=2)
    # Threads never change a bit: the blocks do not depend on n_jobs.
    for a, b in zip(expected, got, strict=True):
        np.testing.assert_array_equal(a, b)
    # Block sizes change only BLAS rounding of the float32 correlations.
    np.testing.assert_array_equal(whole[0], expected[0])
    for a, b in zip(whole[1:], expected[1:], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_worker_pool_keeps_order_and_limits_blas():
    from threadpoolctl import threadpool_info

    with WorkerPool(2) as pool:
        assert pool.n_workers == 2
        assert pool.map(lambda x: x * x, range(7)) == [x * x for x in range(7)]
        blas = [i for i in threadpool_info() if i["user_api"] == "blas"]
        assert all(i["num_threads"] == 1 for i in blas)
    assert parallel_map(str, [1, 2], n_jobs=4) == ["1", "2"]
    with WorkerPool(None) as pool:
        assert pool.n_workers == 1 and pool.map(abs, [-1]) == [1]


@pytest.mark.parametrize("value, compiled", [("0", False), ("1", True)])
def test_environment_variable_selects_the_kernels(value, compiled):
    # numba is a required dependency: compiled by default, NumPy on request.
    env = {**os.environ, "SKLEARN_DBKSVD_NUMBA": value}
    out = subprocess.run(
        [sys.executable, "-c",
         "from sklearn_dbksvd import _numba; print(_numba.use_numba())"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout
    assert out.strip() == str(compiled)


def test_codes_do_not_depend_on_blas_threads_through_n_jobs():
    # Several blocks of correlations, and products large enough that
    # OpenBLAS rounds them differently with two threads than with one.
    rng = np.random.default_rng(0)
    X = rng.standard_normal((9000, 64), dtype=np.float32)
    D = rng.standard_normal((2048, 64), dtype=np.float32)
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    if blas_threads() < 2:
        pytest.skip("BLAS has one thread")
    threaded = X[:4096] @ D.T
    with threadpool_limits(limits=1, user_api="blas"):
        single = X[:4096] @ D.T
    if np.array_equal(threaded, single):
        pytest.skip("this BLAS rounds alike with any number of threads")
    for coder in (sparse_encode_mp, sparse_encode_omp):
        one, two = coder(X, D, 5, n_jobs=1), coder(X, D, 5, n_jobs=2)
        np.testing.assert_array_equal(one, two)
