"""Coders within a memory budget of Gram rows, against the full-Gram coders."""

import numpy as np
import pytest

from sklearn_dbksvd import _numba, sparse_encode_mp
from sklearn_dbksvd._encode import _mp_encode
from sklearn_dbksvd._gram_rows import (
    GramRows,
    plan_gram,
    resolve_gram_memory,
)

from .test_encode import textbook_matching_pursuit


@pytest.fixture(params=["compiled", "numpy"])
def kernels(request, monkeypatch):
    monkeypatch.setattr(_numba, "USE_NUMBA", request.param == "compiled")
    return request.param


def problem(n_samples=300, n_features=24, n_components=160, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    dictionary = rng.standard_normal((n_components, n_features))
    dictionary /= np.linalg.norm(dictionary, axis=1, keepdims=True)
    X = rng.standard_normal((n_samples, n_features))
    return X.astype(dtype), dictionary.astype(dtype)


def row_bytes(dictionary):
    return dictionary.shape[0] * dictionary.itemsize


# From the whole matrix to a single row (no cache, one row on demand).
BUDGETS = [None, 1.0, 0.5, 0.05, "one row"]


def budget(dictionary, share):
    if share is None:
        return None
    if share == "one row":
        return row_bytes(dictionary)
    return share * dictionary.shape[0] * row_bytes(dictionary)


@pytest.mark.parametrize("share", BUDGETS)
@pytest.mark.parametrize("positive", [False, True])
def test_codes_equal_full_gram_pursuit_for_any_budget(kernels, share, positive):
    X, dictionary = problem()
    k = 7
    full = sparse_encode_mp(X, dictionary, k, positive=positive, gram_memory=None)
    code = sparse_encode_mp(
        X, dictionary, k, positive=positive, gram_memory=budget(dictionary, share)
    )
    assert code.dtype == np.float32
    np.testing.assert_array_equal(code != 0, full != 0)
    np.testing.assert_allclose(code, full, rtol=1e-5, atol=1e-6)
    # And against a plain per-sample pursuit with explicit residual.
    reference = np.array(
        [textbook_matching_pursuit(x, dictionary, k, positive) for x in X[:40]]
    )
    np.testing.assert_allclose(code[:40], reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("share", [0.05, "one row"])
def test_tolerance_and_refit_within_budget(kernels, share):
    X, dictionary = problem(dtype=np.float64)
    for kwargs in ({"tol": 0.6}, {"refit": True}):
        full = sparse_encode_mp(X, dictionary, 6, gram_memory=None, **kwargs)
        code = sparse_encode_mp(
            X, dictionary, 6, gram_memory=budget(dictionary, share), **kwargs
        )
        np.testing.assert_allclose(code, full, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("share", [0.3, "one row"])
def test_codes_do_not_depend_on_n_jobs(kernels, share):
    # Many blocks (larger than one correlation block), bit for bit.
    X, dictionary = problem(n_samples=3000, n_components=2048, n_features=16)
    limit = budget(dictionary, share)
    runs = [
        _mp_encode(X, dictionary, 5, n_jobs=n_jobs, gram_memory=limit)
        for n_jobs in (1, 2)
    ]
    for first, second in zip(runs[0], runs[1], strict=True):
        np.testing.assert_array_equal(first, second)


def test_whole_gram_when_it_fits_else_rows_of_the_most_used():
    _, dictionary = problem(n_components=64)
    full = plan_gram(dictionary, 64 * row_bytes(dictionary))
    assert isinstance(full, np.ndarray)
    np.testing.assert_allclose(full, dictionary @ dictionary.T, rtol=1e-6)
    usage = np.arange(64)[::-1].copy()  # atom 0 used most
    usage[40] = 1000
    rows = plan_gram(dictionary, 32 * row_bytes(dictionary), usage=usage)
    assert isinstance(rows, GramRows)
    n_cached = rows.cache_rows.shape[0]
    assert 0 < n_cached < 32
    cached = np.flatnonzero(rows.cache_slot >= 0)
    np.testing.assert_array_equal(cached, np.sort([40, *range(n_cached - 1)]))
    np.testing.assert_allclose(
        rows.cache_rows, (dictionary @ dictionary.T)[cached], rtol=1e-6, atol=1e-7
    )
    # Cache and per-worker tables together stay within the budget.
    assert n_cached + rows.table_rows * 2 <= 32


def test_cache_hit_rate_on_heavy_tailed_usage(kernels):
    # Samples made of a few atoms drawn with Zipf-like frequencies: the pilot
    # ranks the frequent atoms first, so a cache of a quarter of the rows
    # serves most reads.
    rng = np.random.default_rng(1)
    _, dictionary = problem(n_components=400, n_features=64)
    weights = 1.0 / np.arange(1, 401) ** 1.2
    atoms = rng.choice(400, size=(2000, 3), p=weights / weights.sum())
    X = np.einsum("nk,nkd->nd", rng.standard_normal((2000, 3)), dictionary[atoms])
    X = X.astype(np.float32)
    rows = plan_gram(
        dictionary, 100 * row_bytes(dictionary), X=X, n_nonzero_coefs=3
    )
    _mp_encode(X, dictionary, 3, gram=rows)
    assert rows.hit_rate > 0.6
    assert rows.stats["computed"] > 0


def test_gram_memory_is_validated():
    X, dictionary = problem()
    with pytest.raises(ValueError, match="gram_memory"):
        sparse_encode_mp(X, dictionary, 2, gram_memory=-1)
    with pytest.raises(ValueError, match="gram_memory"):
        sparse_encode_mp(X, dictionary, 2, gram_memory="all")
    assert resolve_gram_memory(None) == np.inf
    assert 0 < resolve_gram_memory("auto") < np.inf
