"""Matching pursuit on the Gram matrix (DB-KSVD paper, section 4.1).

With ``gram = D Dᵀ`` and the correlations ``c = D y`` precomputed, one
matching-pursuit selection for a sample is an arg-max over ``c``, a look-up
and a vector update ``c -= a * gram[j]``: no matrix-vector product with the
dictionary inside the loop. Samples go in blocks: the block's correlations
(one GEMM, in the array backend), its selections, then its residual, so the
correlations of a whole batch never exist at once; blocks run in parallel
threads. The selections are compiled with numba when it is installed (one
sample at a time, the arg-max on the correlations' bits as integers, which
vectorises) and vectorised over chunks of samples in NumPy otherwise; both
make the same selections.
"""

import queue
import weakref
from contextlib import contextmanager
from numbers import Integral, Real

import numpy as np
import scipy.sparse as sp
from sklearn.utils._param_validation import Interval, validate_params
from sklearn.utils.validation import check_array

from . import _backend, _numba
from ._argmax import _ARGMAX_GROUP, _argmax_key
from ._gram_rows import (
    _ROWS_BLOCK_BYTES,
    GRAM_MEMORY_CONSTRAINT,
    GramRows,
    plan_gram,
)
from ._parallel import ScratchBuffers, map_blocks

# Samples per chunk of the NumPy fallback of matching pursuit: three (chunk,
# n_components) buffers (correlations, scores, gathered Gram rows) should stay
# in a 2 MiB L2/L3 slice, so each selection streams from cache, not memory.
_MP_CHUNK_BYTES = 2**19

# Bytes of one block of correlations ``X_block @ Dᵀ``: 32 MiB is 2048 samples
# at 4096 float32 atoms, large enough for an efficient GEMM, small enough
# that the blocks in flight (one per thread) never dominate memory: the
# correlations of a whole batch (1 GiB at the paper's size) never exist.
_BLOCK_BYTES = 2**25


def _mp_chunk_size(n_components, itemsize):
    return max(8, _MP_CHUNK_BYTES // (3 * n_components * itemsize))


def _block_size(n_components, itemsize, block_bytes=_BLOCK_BYTES):
    """Samples per correlation block; a multiple of 64 for the GEMM."""
    return max(64, block_bytes // (n_components * itemsize) // 64 * 64)


def encode_block_rows(n_components, itemsize, whole_gram=True):
    """Samples per correlation block of :func:`_mp_encode`.

    Larger blocks (``_ROWS_BLOCK_BYTES``) when the Gram rows are computed on
    demand (``whole_gram`` false), so that more samples share each computed
    row. The fit's memory estimates size their blocks with it too.
    """
    block_bytes = _BLOCK_BYTES if whole_gram else _ROWS_BLOCK_BYTES
    return _block_size(n_components, itemsize, block_bytes)


def _matching_pursuit_numpy(corr, gram, n_nonzero_coefs, positive, sq_norms, tol):
    """NumPy fallback of :func:`_matching_pursuit_gram`, one chunk at a time."""
    n_samples = corr.shape[0]
    indices = np.empty((n_samples, n_nonzero_coefs), dtype=np.intp)
    values = np.empty((n_samples, n_nonzero_coefs), dtype=corr.dtype)
    chunk = _mp_chunk_size(gram.shape[0], gram.itemsize)
    for start in range(0, n_samples, chunk):
        part = slice(start, start + chunk)
        indices[part], values[part] = _matching_pursuit_chunk(
            corr[part],
            gram,
            n_nonzero_coefs,
            positive,
            None if sq_norms is None else sq_norms[part],
            tol,
        )
    return indices, values


def _matching_pursuit_chunk(corr, gram, n_nonzero_coefs, positive, sq_norms, tol):
    n_samples = corr.shape[0]
    rows = np.arange(n_samples)
    indices = np.empty((n_samples, n_nonzero_coefs), dtype=np.intp)
    values = np.empty((n_samples, n_nonzero_coefs), dtype=corr.dtype)
    score = np.empty_like(corr)
    gram_rows = np.empty_like(corr)
    if tol is not None:
        sq_residual = sq_norms.copy()
        sq_target = tol**2 * sq_norms
    for t in range(n_nonzero_coefs):
        if positive:
            best = corr.argmax(axis=1)
            coef = np.maximum(corr[rows, best], 0)
        else:
            best = np.abs(corr, out=score).argmax(axis=1)
            coef = corr[rows, best]
        if tol is not None:
            coef[sq_residual <= sq_target] = 0
            sq_residual -= coef * coef
        indices[:, t] = best
        values[:, t] = coef
        if t + 1 == n_nonzero_coefs:
            break  # the last update is never read
        # c <- c - a * G[:, j]: the Gram row replaces a product with D.
        if callable(gram):
            gram(best, gram_rows)
        else:
            np.take(gram, best, axis=0, out=gram_rows)
        gram_rows *= coef[:, None]
        corr -= gram_rows
    return indices, values


@_numba.jit()
def _matching_pursuit_jit(
    corr, keys, gram, positive, sq_norms, sq_target, indices, values
):  # pragma: no cover
    """Compiled matching pursuit, one sample at a time (same selections).

    ``keys`` is ``corr`` viewed as integers; ``sq_norms`` is empty without a
    tolerance. A selection whose coefficient is zero leaves the correlations
    unchanged, so every later selection repeats it: they are filled at once.
    """
    n_samples, n_components = corr.shape
    n_nonzero_coefs = indices.shape[1]
    n_groups = (n_components + _ARGMAX_GROUP - 1) // _ARGMAX_GROUP
    group_max = np.empty(n_groups, keys.dtype)
    use_tol = sq_norms.shape[0] > 0
    for i in range(n_samples):
        c = corr[i]
        key = keys[i]
        sq_residual = sq_norms[i] if use_tol else c[0]
        for t in range(n_nonzero_coefs):
            best = _argmax_key(key, positive, group_max)
            coef = c[best]
            # ``coef - coef`` is a zero of the array's dtype (a literal 0
            # would promote float32 to float64).
            if positive and coef < 0:
                coef = coef - coef
            if use_tol:
                if sq_residual <= sq_target[i]:
                    coef = coef - coef
                sq_residual -= coef * coef
            indices[i, t] = best
            values[i, t] = coef
            if coef == 0:
                for rest in range(t + 1, n_nonzero_coefs):
                    indices[i, rest] = best
                    values[i, rest] = coef
                break
            if t + 1 < n_nonzero_coefs:
                g = gram[best]
                for j in range(n_components):
                    c[j] = c[j] - coef * g[j]


@_numba.jit()
def _matching_pursuit_rows_jit(
    corr, keys, cache_rows, cache_slot, table_rows, table_slot, table_uses,
    positive, sq_norms, sq_target, indices, values, progress, sq_state, pending,
    todo, parked, counts,
):  # pragma: no cover
    """:func:`_matching_pursuit_jit` on Gram rows that may be missing.

    Runs the samples ``todo`` as far as the rows at hand allow: atom ``j``'s
    row is ``cache_rows[cache_slot[j]]`` or ``table_rows[table_slot[j]]``
    (slot -1: absent). A sample whose next update needs an absent row is
    parked: ``progress[i]`` selections are recorded, the last one's update not
    applied yet, ``pending[i]`` is the atom whose row it waits for and
    ``sq_state[i]`` its tracked squared residual. Resumed, it applies that
    update first, so every sample makes the operations of the full-Gram
    kernel in the same order. Returns the number of samples written to
    ``parked``; ``counts`` accumulates cache and table reads.
    """
    n_components = corr.shape[1]
    n_nonzero_coefs = indices.shape[1]
    n_groups = (n_components + _ARGMAX_GROUP - 1) // _ARGMAX_GROUP
    group_max = np.empty(n_groups, keys.dtype)
    use_tol = sq_norms.shape[0] > 0
    n_parked = 0
    for position in range(todo.shape[0]):
        i = todo[position]
        c = corr[i]
        key = keys[i]
        t = progress[i]
        if t == 0:
            sq_residual = sq_norms[i] if use_tol else c[0]
        else:
            sq_residual = sq_state[i]
            # Apply the update the sample was parked on, if its row is here.
            j = pending[i]
            slot = cache_slot[j]
            if slot >= 0:
                g = cache_rows[slot]
                counts[0] += 1
            else:
                slot = table_slot[j]
                if slot < 0:
                    parked[n_parked] = i
                    n_parked += 1
                    continue
                g = table_rows[slot]
                table_uses[slot] += 1
                counts[1] += 1
            coef = values[i, t - 1]
            for m in range(n_components):
                c[m] = c[m] - coef * g[m]
        waiting = False
        while t < n_nonzero_coefs:
            best = _argmax_key(key, positive, group_max)
            coef = c[best]
            if positive and coef < 0:
                coef = coef - coef
            if use_tol:
                if sq_residual <= sq_target[i]:
                    coef = coef - coef
                sq_residual -= coef * coef
            indices[i, t] = best
            values[i, t] = coef
            t += 1
            if coef == 0:
                for rest in range(t, n_nonzero_coefs):
                    indices[i, rest] = best
                    values[i, rest] = coef
                t = n_nonzero_coefs
                break
            if t < n_nonzero_coefs:
                slot = cache_slot[best]
                if slot >= 0:
                    g = cache_rows[slot]
                    counts[0] += 1
                else:
                    slot = table_slot[best]
                    if slot < 0:
                        waiting = True
                        pending[i] = best
                        break
                    g = table_rows[slot]
                    table_uses[slot] += 1
                    counts[1] += 1
                for m in range(n_components):
                    c[m] = c[m] - coef * g[m]
        progress[i] = t
        sq_state[i] = sq_residual
        if waiting:
            parked[n_parked] = i
            n_parked += 1
    return n_parked


@contextmanager
def _row_table(rows, min_capacity=1):
    """A free :class:`_RowTable` of ``rows`` (one per block running at once)."""
    pool = rows.__dict__.setdefault("_tables", queue.SimpleQueue())
    try:
        table = pool.get_nowait()
    except queue.Empty:
        table = None
    if table is None or table.capacity < min_capacity:
        table = _RowTable(rows, max(rows.table_rows, min_capacity))
    try:
        yield table
    finally:
        pool.put(table)


class _RowTable:
    """One worker's Gram rows computed on demand: at most ``capacity`` rows.

    Rows live for one block of samples (so that a block's codes never depend
    on which blocks its worker ran before). Matching pursuit's passes fetch
    the atoms most samples wait for first; when they do not fit beside the
    rows held, the rows read least in this block make room (``uses``).
    """

    def __init__(self, rows, capacity):
        # A proxy: ``rows`` holds its tables, and a strong reference back
        # would make a cycle that keeps the row cache (gigabytes) alive after
        # the call until the cyclic garbage collector happens to run.
        self.rows = weakref.proxy(rows)
        n_components = rows.dictionary.shape[0]
        self.capacity = capacity
        self.table = np.empty((capacity, n_components), dtype=rows.dtype)
        self.slot = np.full(n_components, -1, dtype=np.intp)
        self.atoms = np.empty(capacity, dtype=np.intp)
        self.uses = np.zeros(capacity, dtype=np.int64)
        self.n_held = 0
        self.computed = 0

    def clear(self):
        self.slot[self.atoms[: self.n_held]] = -1
        self.uses[: self.n_held] = 0
        self.n_held = 0

    def fetch(self, waiting):
        """Compute the rows of the ``waiting`` atoms, the most waited for first.

        As many as the table holds; the rows read least so far give way.
        """
        atoms, counts = np.unique(waiting, return_counts=True)
        absent = (self.rows.cache_slot[atoms] < 0) & (self.slot[atoms] < 0)
        atoms, counts = atoms[absent], counts[absent]
        if len(atoms) == 0:
            return
        if len(atoms) > self.capacity:
            first = np.argsort(-counts, kind="stable")[: self.capacity]
            atoms = np.sort(atoms[first])
        if self.n_held + len(atoms) > self.capacity:
            self._evict(self.capacity - len(atoms))
        self._compute(atoms)

    def _evict(self, n_keep):
        """Keep the ``n_keep`` rows read most, moved to the first slots."""
        held = self.n_held
        keep = np.sort(np.argsort(-self.uses[:held], kind="stable")[:n_keep])
        self.slot[self.atoms[:held]] = -1
        for target, source in enumerate(keep):
            if target != source:
                self.table[target] = self.table[source]
        self.atoms[: len(keep)] = self.atoms[keep]
        self.uses[: len(keep)] = self.uses[keep]
        self.uses[len(keep) : held] = 0
        self.slot[self.atoms[: len(keep)]] = np.arange(len(keep))
        self.n_held = len(keep)

    def fetch_supports(self, needs):
        """Rows for whole supports, first come first served (Batch-OMP).

        ``needs[s, :needs[s, -1]]`` are the atoms sample ``s`` needs at once.
        The first sample's (at most ``k`` rows, within the capacity) are
        always all there afterwards, so every pass makes progress.
        """
        wanted = []
        seen = set()
        for need in needs:
            atoms = [
                a for a in need[: need[-1]]
                if a not in seen and self.rows.cache_slot[a] < 0
            ]
            if wanted and len(wanted) + len(atoms) > self.capacity:
                break
            wanted.extend(atoms)
            seen.update(atoms)
        wanted = np.unique(np.asarray(wanted, dtype=np.intp))
        absent = wanted[self.slot[wanted] < 0]
        if len(absent) == 0:
            return
        if self.n_held + len(absent) > self.capacity:
            self.clear()
            absent = wanted
        self._compute(absent)

    def _compute(self, waiting):
        lo, hi = self.n_held, self.n_held + len(waiting)
        self.rows.compute_rows(waiting, out=self.table[lo:hi])
        self.atoms[lo:hi] = waiting
        self.slot[waiting] = np.arange(lo, hi)
        self.n_held = hi
        self.computed += len(waiting)


def _matching_pursuit_rows(corr, rows, n_nonzero_coefs, positive, sq_norms, tol, table):
    """Matching pursuit from :class:`~._gram_rows.GramRows` (compiled).

    Passes over the block: each runs the waiting samples as far as the rows
    at hand allow, then the rows they wait for are computed together (one
    product ``D[sel] Dᵀ``), until every sample is done.
    """
    n_samples = corr.shape[0]
    indices = np.empty((n_samples, n_nonzero_coefs), dtype=np.intp)
    values = np.empty((n_samples, n_nonzero_coefs), dtype=corr.dtype)
    int_dtype = np.int32 if corr.itemsize == 4 else np.int64
    if tol is None:
        sq_norms = sq_target = np.empty(0, dtype=corr.dtype)
    else:
        sq_target = tol**2 * sq_norms
    progress = np.zeros(n_samples, dtype=np.intp)
    sq_state = np.zeros(n_samples, dtype=corr.dtype)
    pending = np.zeros(n_samples, dtype=np.intp)
    parked = np.empty(n_samples, dtype=np.intp)
    counts = np.zeros(2, dtype=np.int64)
    todo = np.arange(n_samples, dtype=np.intp)
    table.clear()
    table.computed = 0
    while len(todo):
        n_parked = _matching_pursuit_rows_jit(
            corr, corr.view(int_dtype), rows.cache_rows, rows.cache_slot,
            table.table, table.slot, table.uses, positive, sq_norms, sq_target,
            indices,
            values, progress, sq_state, pending, todo, parked, counts,
        )
        todo = parked[:n_parked].copy()
        if n_parked:
            table.fetch(pending[todo])
    rows.add_stats(counts[0], counts[1], table.computed)
    table.clear()
    return indices, values


def _matching_pursuit_rows_numpy(
    corr, rows, n_nonzero_coefs, positive, sq_norms, tol, table
):
    """NumPy version of :func:`_matching_pursuit_rows`, one chunk at a time.

    As :func:`_matching_pursuit_numpy`, the selected atoms' rows gathered
    from the cache or computed, at most the table's capacity at once.
    """
    n_samples = corr.shape[0]
    indices = np.empty((n_samples, n_nonzero_coefs), dtype=np.intp)
    values = np.empty((n_samples, n_nonzero_coefs), dtype=corr.dtype)
    chunk = _mp_chunk_size(corr.shape[1], corr.itemsize)

    def gather(best, out):
        cached = rows.cache_slot[best]
        hit = cached >= 0
        out[hit] = rows.cache_rows[cached[hit]]
        missing = np.unique(best[~hit])
        for start in range(0, len(missing), table.capacity):
            atoms = missing[start : start + table.capacity]
            computed = rows.compute_rows(atoms, out=table.table[: len(atoms)])
            where = np.flatnonzero(~hit & np.isin(best, atoms))
            out[where] = computed[np.searchsorted(atoms, best[where])]
            table.computed += len(atoms)
        rows.add_stats(np.count_nonzero(hit), 0, 0)

    table.computed = 0
    for start in range(0, n_samples, chunk):
        part = slice(start, start + chunk)
        indices[part], values[part] = _matching_pursuit_chunk(
            corr[part], gather, n_nonzero_coefs, positive,
            None if sq_norms is None else sq_norms[part], tol,
        )
    rows.add_stats(0, 0, table.computed)
    return indices, values


def _matching_pursuit_gram(
    corr, gram, n_nonzero_coefs, positive, sq_norms=None, tol=None
):
    """Run ``n_nonzero_coefs`` matching-pursuit selections on correlations.

    Compiled with numba when available, else vectorised NumPy over chunks of
    samples; both make the same selections (the compiled one is a few times
    faster: ``benchmarks/RESULTS.md``, Performance).

    Parameters
    ----------
    corr : ndarray of shape (n_samples, n_components)
        C-ordered correlations ``X @ D.T`` of the samples with the atoms;
        overwritten (with the correlations of intermediate residuals).
    gram : ndarray of shape (n_components, n_components)
        ``D @ D.T``.
    n_nonzero_coefs : int
        Number of selections per sample. An atom may be selected again; its
        coefficients then accumulate.
    positive : bool
        Select the largest positive correlation only; once no correlation is
        positive the remaining selections add zero.
    sq_norms : ndarray of shape (n_samples,), default=None
        Squared norms of the samples; needed with ``tol``.
    tol : float, default=None
        Stop a sample's selections once ``‖r‖ ≤ tol ‖x‖``. With unit atoms a
        selection with coefficient ``a`` lowers ``‖r‖²`` by exactly ``a²``, so
        the residual norm is tracked without touching the residual.

    Returns
    -------
    indices : ndarray of shape (n_samples, n_nonzero_coefs)
        Selected atom of each selection.
    values : ndarray of shape (n_samples, n_nonzero_coefs)
        Coefficient added by each selection (zero once a sample has stopped).
    """
    if isinstance(gram, GramRows):
        with _row_table(gram) as table:
            return _matching_pursuit_from_rows(
                corr, gram, n_nonzero_coefs, positive, sq_norms, tol, table
            )
    return _matching_pursuit_dense(corr, gram, n_nonzero_coefs, positive, sq_norms, tol)


def _matching_pursuit_compiled(corr, gram, n_nonzero_coefs, positive, sq_norms, tol):
    """:func:`_matching_pursuit_numpy` by the compiled kernel (same selections)."""
    n_samples = corr.shape[0]
    indices = np.empty((n_samples, n_nonzero_coefs), dtype=np.intp)
    values = np.empty((n_samples, n_nonzero_coefs), dtype=corr.dtype)
    int_dtype = np.int32 if corr.itemsize == 4 else np.int64
    if tol is None:
        sq_norms = sq_target = np.empty(0, dtype=corr.dtype)
    else:
        sq_target = tol**2 * sq_norms
    _matching_pursuit_jit(
        corr, corr.view(int_dtype), gram, positive, sq_norms, sq_target,
        indices, values,
    )
    return indices, values


# Matching pursuit on the whole Gram matrix, and on Gram rows computed on demand.
_matching_pursuit_dense = _numba.twins(
    _matching_pursuit_compiled, _matching_pursuit_numpy
)
_matching_pursuit_from_rows = _numba.twins(
    _matching_pursuit_rows, _matching_pursuit_rows_numpy
)


def _refit_on_support(indices, values, corr0, gram):
    """Least-squares coefficients on each sample's selected atoms.

    Solves ``G[S, S] x_S = (D x)[S]`` per sample, batched. Repeated atoms and
    selections that added zero are masked out of the system (identity row,
    zero right-hand side), so each system has the size of the true support.
    A pseudo-inverse keeps linearly dependent supports finite.
    """
    n_samples, n_selections = indices.shape
    rows = np.arange(n_samples)[:, None]
    order = np.argsort(indices, axis=1, kind="stable")
    indices = np.take_along_axis(indices, order, axis=1)
    values = np.take_along_axis(values, order, axis=1)
    # Net coefficient per distinct atom decides whether it is in the support.
    start = np.ones_like(indices, dtype=bool)
    start[:, 1:] = indices[:, 1:] != indices[:, :-1]
    group = np.cumsum(start, axis=1) - 1
    net = np.zeros(indices.shape, dtype=values.dtype)
    np.add.at(net, (np.broadcast_to(rows, indices.shape), group), values)
    active = start & (np.take_along_axis(net, group, axis=1) != 0)
    if isinstance(gram, GramRows):
        system = gram.support_system(indices)
    else:
        system = gram[indices[:, :, None], indices[:, None, :]]
    system *= active[:, :, None] & active[:, None, :]
    eye = np.eye(n_selections, dtype=bool)
    system[:, eye] = np.where(active, system[:, eye], 1)
    rhs = np.where(active, corr0[rows, indices], 0)
    coefs = np.einsum("nij,nj->ni", np.linalg.pinv(system), rhs)
    return indices, np.where(active, coefs, 0).astype(values.dtype, copy=False)


def _block_correlations(backend, X_block, cov, block, dictionary_dev, out):
    """``X_block Dᵀ`` (or the block's columns of ``cov``, transposed) in ``out``."""
    if cov is None:
        return _backend.correlations(backend, X_block, dictionary_dev, out=out)
    out[...] = cov[:, block].T
    return out


def _pursue_block(
    block, corr, X, dictionary, dictionary_dev, gram, n_nonzero_coefs, positive,
    tol, refit, backend, residual,
):
    """Matching pursuit of one block of samples from its correlations, residual."""
    X_block = None if X is None else X[block, :]
    corr0 = corr.copy() if refit else None
    sq_norms = None
    if tol is not None:
        sq_norms = _backend.sq_norms(backend, X_block).astype(gram.dtype, copy=False)
    indices, values = _matching_pursuit_gram(
        corr, gram, n_nonzero_coefs, positive, sq_norms, tol
    )
    del corr
    if refit:
        indices, values = _refit_on_support(indices, values, corr0, gram)
    if residual is not None:
        _backend.residual(
            backend, X_block, indices, values, dictionary, dictionary_dev,
            out=residual[block],
        )
    return indices, values


def _mp_encode(
    X,
    dictionary,
    n_nonzero_coefs,
    *,
    gram=None,
    cov=None,
    positive=False,
    tol=None,
    refit=False,
    n_jobs=None,
    backend=None,
    return_residual=False,
    residual_out=None,
    gram_memory="auto",
    usage=None,
):
    """Matching-pursuit codes in selection form (no validation).

    Returns ``indices, values`` of shape (n_samples, n_nonzero_coefs); the
    code of sample ``i`` is the sum of ``values[i, t] * e_{indices[i, t]}``.
    With ``return_residual`` also the host residual ``X - code @ D`` of shape
    (n_samples, n_features), computed block by block while the block is at
    hand. ``backend`` (an :class:`~sklearn_dbksvd._backend.ArrayBackend`,
    default: from ``X``) runs the products; ``X`` may live on its device.
    Results do not depend on ``n_jobs``: every sample is encoded alone.
    ``gram`` is ``D Dᵀ`` or a :class:`~._gram_rows.GramRows`; when None,
    :func:`~._gram_rows.plan_gram` makes one within ``gram_memory`` bytes
    (its cache ranked by ``usage`` if given, else by a pilot of ``X``).
    """
    if backend is None:
        backend = _backend.resolve_backend("numpy", X)
    dictionary = _backend.to_numpy(dictionary)
    dictionary_dev = backend.asarray(dictionary)
    if gram is None:
        gram = plan_gram(
            dictionary, gram_memory, n_jobs=n_jobs, usage=usage, X=X,
            n_nonzero_coefs=n_nonzero_coefs, backend=backend,
        )
    n_samples = X.shape[0] if cov is None else cov.shape[1]
    step = encode_block_rows(
        gram.shape[0], gram.itemsize, whole_gram=not isinstance(gram, GramRows)
    )
    blocks = [
        slice(start, min(start + step, n_samples))
        for start in range(0, n_samples, step)
    ]
    residual = None
    if return_residual:
        residual = (
            residual_out
            if residual_out is not None
            else np.empty((n_samples, dictionary.shape[1]), dtype=gram.dtype)
        )

    def correlate(block, out):
        X_block = None if X is None else X[block, :]
        return _block_correlations(backend, X_block, cov, block, dictionary_dev, out)

    def pursue(block, corr):
        return _pursue_block(
            block, corr, X, dictionary, dictionary_dev, gram, n_nonzero_coefs,
            positive, tol, refit, backend, residual,
        )

    scratch = ScratchBuffers((step, gram.shape[0]), gram.dtype)
    parts = map_blocks(correlate, pursue, blocks, scratch, n_jobs=n_jobs)
    if parts:
        indices = np.concatenate([p[0] for p in parts])
        values = np.concatenate([p[1] for p in parts])
    else:
        indices = np.empty((0, n_nonzero_coefs), dtype=np.intp)
        values = np.empty((0, n_nonzero_coefs), dtype=gram.dtype)
    if return_residual:
        return indices, values, residual
    return indices, values


def selections_to_csr(indices, values, n_components):
    """Sparse code matrix from selections, summing repeated atoms.

    Parameters
    ----------
    indices, values : ndarray of shape (n_samples, n_selections)
        Output of matching pursuit.
    n_components : int
        Number of atoms.

    Returns
    -------
    code : scipy.sparse.csr_matrix of shape (n_samples, n_components)
        Sorted indices, no duplicates and no explicit zeros.
    """
    n_samples, n_selections = indices.shape
    indptr = np.arange(0, n_samples * n_selections + 1, n_selections)
    code = sp.csr_matrix(
        (values.ravel(), indices.ravel(), indptr),
        shape=(n_samples, n_components),
    )
    code.sum_duplicates()
    _drop_rounding_level(code)
    code.eliminate_zeros()
    return code


# Coefficients at most this many machine epsilons of their row's largest are
# rounding noise: the selections made once a sample is reproduced exactly
# (such as a sample taken as an initial atom) pick arbitrary atoms with
# coefficients of the size of the rounding error, and a support that depends
# on rounding makes the K-SVD update depend on it at full size. The rounding
# of a residual is about sqrt(n_features) eps of the sample.
_ROUNDING_EPS = 64


def _drop_rounding_level(code):
    """Zero the entries of each CSR row that are rounding noise of its largest."""
    if code.nnz == 0:
        return
    magnitude = np.abs(code.data)
    starts = code.indptr[:-1][np.diff(code.indptr) > 0]
    top = np.zeros(code.shape[0], dtype=magnitude.dtype)
    top[np.diff(code.indptr) > 0] = np.maximum.reduceat(magnitude, starts)
    threshold = _ROUNDING_EPS * np.finfo(code.dtype).eps * top
    code.data[magnitude <= np.repeat(threshold, np.diff(code.indptr))] = 0


def check_coder_inputs(
    name, X, dictionary, gram, cov, tol, *, n_nonzero_coefs=None, unit_norm=False
):
    """Validate the arguments shared by the public Gram-domain coders.

    Returns ``X``, ``dictionary``, ``gram`` and ``cov`` as arrays of the
    dictionary's dtype (float32 or float64); ``gram`` C-ordered, as the
    kernels read its rows. ``name`` is the public function, for messages.
    ``n_nonzero_coefs`` above the number of atoms is refused; with
    ``unit_norm`` so are atoms whose norm is not 1 within 1e-3.
    """
    dictionary = check_array(dictionary, dtype=[np.float64, np.float32])
    dtype = dictionary.dtype
    n_components, n_features = dictionary.shape
    if n_nonzero_coefs is not None and n_nonzero_coefs > n_components:
        raise ValueError(
            f"n_nonzero_coefs={n_nonzero_coefs} exceeds the {n_components} "
            "atoms of the dictionary: a code cannot use more atoms than it has."
        )
    if X is None and cov is None:
        raise ValueError(f"{name} needs X or cov; both are None.")
    if tol is not None and X is None:
        raise ValueError("tol needs X: the residual norm is relative to ‖x‖.")
    if X is not None:
        X = check_array(X, dtype=dtype)
        if X.shape[1] != n_features:
            raise ValueError(
                f"X has {X.shape[1]} features but the dictionary has {n_features}."
            )
    if gram is not None:
        gram = check_array(gram, dtype=dtype, order="C")
        if gram.shape != (n_components, n_components):
            raise ValueError(
                f"gram has shape {gram.shape}; expected "
                f"({n_components}, {n_components})."
            )
    if cov is not None:
        cov = check_array(cov, dtype=dtype)
        if cov.shape[0] != n_components:
            raise ValueError(
                f"cov has {cov.shape[0]} rows; expected n_components={n_components}."
            )
        if X is not None and cov.shape[1] != X.shape[0]:
            raise ValueError(
                f"cov has {cov.shape[1]} columns but X has {X.shape[0]} samples."
            )
    if unit_norm:
        _check_unit_atoms(name, dictionary, gram)
    return X, dictionary, gram, cov


def _check_unit_atoms(name, dictionary, gram):
    """Refuse atoms whose norm is not 1 (matching pursuit's steps assume it)."""
    if gram is not None:
        norms = np.sqrt(np.abs(np.diagonal(gram)))
    else:
        norms = np.linalg.norm(dictionary, axis=1)
    bad = np.flatnonzero(~(np.abs(norms - 1) <= 1e-3))
    if len(bad):
        raise ValueError(
            f"{name} needs unit-norm atoms; atom {bad[0]} has norm "
            f"{norms[bad[0]]:.6g} ({len(bad)} atom(s) off by more than 1e-3). "
            "Normalise the rows of the dictionary first."
        )


@validate_params(
    {
        "X": ["array-like", None],
        "dictionary": ["array-like"],
        "n_nonzero_coefs": [Interval(Integral, 1, None, closed="left")],
        "gram": ["array-like", None],
        "cov": ["array-like", None],
        "positive": ["boolean"],
        "tol": [Interval(Real, 0, 1, closed="both"), None],
        "refit": ["boolean"],
        "n_jobs": [Integral, None],
        "gram_memory": GRAM_MEMORY_CONSTRAINT,
    },
    prefer_skip_nested_validation=True,
)
def sparse_encode_mp(
    X,
    dictionary,
    n_nonzero_coefs,
    *,
    gram=None,
    cov=None,
    positive=False,
    tol=None,
    refit=False,
    n_jobs=None,
    gram_memory="auto",
):
    """Sparse codes by matching pursuit on the Gram matrix.

    Each code is built by ``n_nonzero_coefs`` greedy selections (Mallat and
    Zhang's matching pursuit): pick the atom ``j`` most correlated with the
    residual, add the correlation ``a`` to ``code[j]`` and subtract ``a d_j``
    from the residual. An atom may be selected more than once; its coefficient
    accumulates, so a code has at most ``n_nonzero_coefs`` nonzeros. The
    correlations are updated with the Gram matrix ``D Dᵀ`` (DB-KSVD paper,
    section 4.1), so after one product ``X Dᵀ`` no further product with the
    dictionary is needed.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features) or None
        Data. May be None when ``cov`` is given.
    dictionary : array-like of shape (n_components, n_features)
        Atoms, as rows, of unit norm: matching pursuit's steps assume it,
        and a ``ValueError`` names the first atom whose norm is not 1
        within 1e-3 (normalise the rows first).
    n_nonzero_coefs : int
        Number of selections per sample (``k``).
    gram : array-like of shape (n_components, n_components), default=None
        Precomputed ``dictionary @ dictionary.T``.
    cov : array-like of shape (n_components, n_samples), default=None
        Precomputed ``dictionary @ X.T``, as in
        :func:`sklearn.decomposition.sparse_encode`.
    positive : bool, default=False
        Only select atoms with a positive correlation, giving nonnegative
        codes.
    tol : float, default=None
        Stop selecting for a sample once its relative residual
        ``‖x − code @ D‖ / ‖x‖`` is at most ``tol`` (needs ``X``). None always
        makes ``n_nonzero_coefs`` selections.
    refit : bool, default=False
        After the selections, replace the coefficients by the least-squares
        fit on the selected atoms (as orthogonal matching pursuit would give
        for that support). Not available with ``positive=True``.
    n_jobs : int, default=None
        Number of threads encoding blocks of samples in parallel. ``None``
        means 1 unless in a :obj:`joblib.parallel_backend` context. The result
        does not depend on it.
    gram_memory : "auto", float or None, default="auto"
        Bytes of Gram rows the pursuit may hold when ``gram`` is not given.
        When the whole ``(n_components, n_components)`` matrix fits it is
        computed once; otherwise the rows of the most used atoms (ranked on
        the top correlations of the first samples) are cached and the others
        computed per block of samples as they are selected, never more than
        this many bytes in all. The codes are the same to float32 rounding.
        "auto" is a quarter of the memory available at the call; None holds
        the whole matrix whatever its size.

    Returns
    -------
    code : ndarray of shape (n_samples, n_components)
        Sparse codes, in the dtype of ``dictionary`` (float32 stays float32).

    See Also
    --------
    sklearn.linear_model.orthogonal_mp_gram : Orthogonal matching pursuit on
        the Gram matrix; more accurate per code, much slower.
    sklearn.decomposition.sparse_encode : Other sparse coders.

    References
    ----------
    R. Valentin, S. M. Katz, V. Vanhoucke, M. J. Kochenderfer, "DB-KSVD:
    Scalable Alternating Optimization for Disentangling High-Dimensional
    Embedding Spaces", 2025, section 4.1.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_dbksvd import sparse_encode_mp
    >>> dictionary = np.eye(3)
    >>> sparse_encode_mp(np.array([[3.0, 0.5, -2.0]]), dictionary, 2)
    array([[ 3.,  0., -2.]])
    """
    if refit and positive:
        raise ValueError(
            "refit=True cannot keep codes nonnegative; use positive=False or "
            "refit=False."
        )
    X, dictionary, gram, cov = check_coder_inputs(
        "sparse_encode_mp", X, dictionary, gram, cov, tol, unit_norm=True
    )
    n_components = dictionary.shape[0]
    indices, values = _mp_encode(
        X,
        dictionary,
        n_nonzero_coefs,
        gram=gram,
        cov=cov,
        positive=positive,
        tol=tol,
        refit=refit,
        n_jobs=n_jobs,
        gram_memory=gram_memory,
    )
    return selections_to_csr(indices, values, n_components).toarray()
