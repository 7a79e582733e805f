"""Coders within a memory budget of Gram rows, against the full-Gram coders."""

import pickle

import numpy as np
import pytest
from sklearn.linear_model import orthogonal_mp_gram

from sklearn_dbksvd import (
    DBKSVDDictionaryLearning,
    _encode,
    _numba,
    _omp,
    _replace,
    sparse_encode_mp,
    sparse_encode_omp,
)
from sklearn_dbksvd._encode import _mp_encode
from sklearn_dbksvd._gram_rows import (
    CacheHint,
    GramRows,
    plan_gram,
    resolve_gram_memory,
)
from sklearn_dbksvd._omp import _omp_encode
from sklearn_dbksvd._step import dbksvd_step

from . import _helpers
from .test_encode import textbook_matching_pursuit
from .test_update import count_gram_calls


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
def test_codes_do_not_depend_on_n_jobs(kernels, share, monkeypatch):
    # Many blocks of 64 samples, bit for bit.
    monkeypatch.setattr(_encode, "_ROWS_BLOCK_BYTES", 2**10)
    X, dictionary = problem(n_samples=1000, n_components=256, n_features=16)
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


@pytest.mark.parametrize("share", [1.0, 0.3, "one row"])
@pytest.mark.parametrize("positive", [False, True])
def test_batch_omp_equals_full_gram_batch_omp(kernels, share, positive):
    X, dictionary = problem(n_samples=200, n_components=120)
    full = sparse_encode_omp(X, dictionary, 6, positive=positive, gram_memory=None)
    code = sparse_encode_omp(
        X, dictionary, 6, positive=positive, gram_memory=budget(dictionary, share)
    )
    assert code.dtype == np.float32
    np.testing.assert_array_equal(code != 0, full != 0)
    np.testing.assert_allclose(code, full, rtol=1e-5, atol=2e-6)
    # scikit-learn's OMP on the same atoms, in float64, as the oracle.
    if not positive:
        X64, D64 = X.astype(np.float64), dictionary.astype(np.float64)
        reference = orthogonal_mp_gram(D64 @ D64.T, D64 @ X64.T, n_nonzero_coefs=6).T
        np.testing.assert_allclose(code, reference, rtol=1e-3, atol=1e-4)


def test_batch_omp_rows_do_not_depend_on_n_jobs(kernels, monkeypatch):
    monkeypatch.setattr(_omp, "_ROWS_BLOCK_BYTES", 2**10)
    X, dictionary = problem(n_samples=600, n_components=256, n_features=16)
    runs = [
        _omp_encode(X, dictionary, 5, n_jobs=n_jobs, gram_memory=row_bytes(dictionary))
        for n_jobs in (1, 2)
    ]
    for first, second in zip(runs[0], runs[1], strict=True):
        np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_near_duplicates_without_the_gram_matrix(kernels, monkeypatch, dtype):
    rng = np.random.default_rng(3)
    atoms = rng.standard_normal((90, 10))
    # Planted near-duplicates (both signs), some among the same block.
    atoms[10:20] = atoms[:10] + 1e-3 * rng.standard_normal((10, 10))
    atoms[70:80] = -atoms[30:40] + 1e-3 * rng.standard_normal((10, 10))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    atoms = atoms.astype(dtype)
    usage = rng.integers(0, 3, 90)
    expected = _replace.near_duplicates(atoms @ atoms.T, usage, 0.99)
    assert len(expected) == 20
    monkeypatch.setattr(_replace, "_OVERLAP_BLOCK_BYTES", 7 * 90 * atoms.itemsize)
    found = _replace.near_duplicates_of_atoms(atoms, usage, 0.99)
    np.testing.assert_array_equal(found, expected)


@pytest.mark.parametrize("fit_algorithm", ["mp", "omp"])
def test_step_within_a_budget_equals_the_full_gram_step(fit_algorithm):
    X, start = _helpers.planted(n_samples=400, n_components=40)
    X, start = X.astype(np.float32), start.astype(np.float32)
    settings = dict(fit_algorithm=fit_algorithm, return_gram=True)
    full = dbksvd_step(
        X, start, **_helpers.step_settings(**settings, gram_memory=None)
    )
    small = dbksvd_step(
        X, start,
        **_helpers.step_settings(**settings, gram_memory=5 * row_bytes(start)),
    )
    np.testing.assert_allclose(small[0], full[0], atol=2e-5)
    assert small[1]["n_replaced"] == full[1]["n_replaced"]
    assert isinstance(full[2], (np.ndarray, type(None)))
    # The next step caches the rows of the atoms this step used most.
    hint = small[2]
    assert isinstance(hint, CacheHint)
    assert hint.usage.sum() > 0
    again = dbksvd_step(
        X, small[0], gram=hint,
        **_helpers.step_settings(**settings, gram_memory=5 * row_bytes(start)),
    )
    follow = dbksvd_step(
        X, full[0], gram=full[2],
        **_helpers.step_settings(**settings, gram_memory=None),
    )
    np.testing.assert_allclose(again[0], follow[0], atol=1e-4)


def partial_fits(batches, *, forget=False, edit=None, **params):
    """``partial_fit`` on each batch; ``forget`` drops the carried state."""
    model = DBKSVDDictionaryLearning(
        n_components=20, n_nonzero_coefs=3, random_state=0, **params
    )
    for position, batch in enumerate(batches):
        if forget and position:
            model = pickle.loads(pickle.dumps(model))
            assert model._carried_gram.for_atoms(model.components_) is None
        if edit is not None and position == 2:
            edit(model.components_)
        model.partial_fit(batch)
    return model


def test_partial_fit_carries_the_gram_matrix(monkeypatch):
    X, _ = _helpers.planted(n_samples=600)
    batches = np.array_split(X, 5)
    calls = count_gram_calls(monkeypatch)
    carried = partial_fits(batches)
    n_calls = len(calls)
    calls.clear()
    fresh = partial_fits(batches, forget=True)
    assert len(calls) == 2 * len(batches)  # the encoder's and the check's
    # One D Dᵀ per call but the first, unless duplicates were replaced.
    assert n_calls <= len(batches) + 1 + sum(
        h["n_replaced"] > 0 for h in carried.history_
    )
    assert n_calls < 2 * len(batches)
    np.testing.assert_array_equal(carried.components_, fresh.components_)
    assert carried.history_ == fresh.history_


def test_partial_fit_does_not_carry_a_gram_matrix_to_edited_atoms():
    X, _ = _helpers.planted(n_samples=600)
    batches = np.array_split(X, 4)

    def edit(atoms):
        atoms[3] = atoms[4]

    carried = partial_fits(batches, edit=edit)
    fresh = partial_fits(batches, edit=edit, forget=True)
    np.testing.assert_array_equal(carried.components_, fresh.components_)


def test_partial_fit_within_a_budget_carries_the_usage():
    X, _ = _helpers.planted(n_samples=600)
    batches = np.array_split(X.astype(np.float32), 4)
    model = partial_fits(batches, gram_memory=20 * 4 * 5)
    assert isinstance(model._carried_gram.gram, CacheHint)
    full = partial_fits(batches, gram_memory=None)
    np.testing.assert_allclose(model.components_, full.components_, atol=1e-4)


def test_partial_fit_does_not_copy_the_batch(monkeypatch):
    from sklearn_dbksvd import _fit_loop

    X, _ = _helpers.planted(n_samples=300)
    X = X.astype(np.float32)
    shared = []
    step = _fit_loop.dbksvd_step

    def spy(batch, *args, **kwargs):
        shared.append(np.shares_memory(batch, X))
        return step(batch, *args, **kwargs)

    monkeypatch.setattr(_fit_loop, "dbksvd_step", spy)
    model = DBKSVDDictionaryLearning(n_components=20, n_nonzero_coefs=3)
    model.partial_fit(X).partial_fit(X)
    assert shared == [True, True]


def test_fit_refuses_a_fit_that_cannot_fit_and_stays_unfitted(monkeypatch):
    from sklearn_dbksvd import _gram_rows

    X, _ = _helpers.planted(n_samples=300)
    model = DBKSVDDictionaryLearning(n_components=20, n_nonzero_coefs=3)
    monkeypatch.setattr(_gram_rows, "available_memory", lambda: 10_000)
    message = r"needs at least .* of memory .* is available"
    with pytest.raises(ValueError, match=message):
        model.fit(X)
    assert not hasattr(model, "components_")
    monkeypatch.undo()
    model.fit(X)
    assert model.components_.shape == (20, 12)


def test_gram_rows_travel_by_pickle(kernels):
    # dask ships the transform's Gram rows to its workers.
    X, dictionary = problem()
    rows = plan_gram(dictionary, 20 * row_bytes(dictionary), X=X, n_nonzero_coefs=4)
    expected = _mp_encode(X, dictionary, 4, gram=rows)
    shipped = pickle.loads(pickle.dumps(rows))
    got = _mp_encode(X, dictionary, 4, gram=shipped)
    for part, want in zip(got, expected, strict=True):
        np.testing.assert_array_equal(part, want)


def test_transform_of_a_wide_dictionary_within_the_budget():
    X, _ = _helpers.planted(n_samples=300)
    X = X.astype(np.float32)
    params = dict(n_components=20, n_nonzero_coefs=3, random_state=0, max_iter=2)
    small = DBKSVDDictionaryLearning(gram_memory=4 * 20 * 4, **params).fit(X)
    assert small._atom_usage is not None  # ranks the transform's cache
    assert isinstance(small._transform_gram(np.dtype(np.float32)), GramRows)
    full = DBKSVDDictionaryLearning(gram_memory=None, **params).fit(X)
    np.testing.assert_allclose(small.components_, full.components_, atol=1e-4)
    np.testing.assert_allclose(small.transform(X), full.transform(X), atol=1e-4)
