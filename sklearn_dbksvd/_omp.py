"""Orthogonal matching pursuit on the Gram matrix (Batch-OMP).

Batch-OMP (Rubinstein, Zibulevsky and Elad 2008) codes a sample from its
correlations ``α⁰ = D x`` and the Gram matrix ``G = D Dᵀ`` alone: each
selection adds one row to the Cholesky factor of the selected block
``G[S, S]`` (a triangular solve of the size of the support), the
least-squares coefficients ``γ`` on the support come from two triangular
solves, and the correlations of the new residual are ``α⁰ − G[:, S] γ``:
Gram columns again, never a product with the dictionary. Samples go in
blocks as in matching pursuit (:mod:`sklearn_dbksvd._encode`): one GEMM for
the block's correlations, then the selections, blocks in parallel threads.

The per-sample loop is compiled with numba; the small systems are solved in
float64 (they are at most ``k × k``), everything of the size of the
dictionary stays in the input's dtype. Without numba (or with
``SKLEARN_DBKSVD_NUMBA=0``) a NumPy version makes the same selections.

With ``positive=True`` the coefficients are kept nonnegative the way
Lawson and Hanson's active-set NNLS does (Bruckstein, Elad and Zibulevsky
2008): only positive correlations are selected, and when the least-squares
solution on the support has a negative coefficient the step towards it is cut
where the first coefficient reaches zero and that atom leaves the support
(its Cholesky factor is then rebuilt).
"""

from numbers import Integral, Real

import numpy as np
from sklearn.utils._param_validation import Interval, validate_params

from . import _backend, _numba
from ._argmax import _ARGMAX_GROUP, _argmax_key
from ._encode import (
    _block_correlations,
    _block_size,
    _row_table,
    check_coder_inputs,
    selections_to_csr,
)
from ._gram_rows import _ROWS_BLOCK_BYTES, GRAM_MEMORY_CONSTRAINT, GramRows, plan_gram
from ._parallel import ScratchBuffers, map_blocks

# An atom whose squared distance to the span of the support is at most this
# fraction of its squared norm (in units of the dtype's epsilon) is taken as
# linearly dependent on the support: the coding of that sample stops there.
_DEPENDENCE_EPS = 100


def _dependence_threshold(dtype):
    return _DEPENDENCE_EPS * float(np.finfo(dtype).eps)


@_numba.jit()
def _has_row(rows, j):  # pragma: no cover
    """Whether atom ``j``'s Gram row is in ``rows`` (see :func:`_row`)."""
    return rows[1][j] >= 0 or rows[3][j] >= 0


@_numba.jit()
def _row(rows, j):  # pragma: no cover
    """Atom ``j``'s Gram row from ``rows = (cache, cache_slot, table, table_slot)``.

    The whole Gram matrix is ``(G, arange(m), empty, ...)``; a budget of rows
    is a cache of some rows and a table of rows computed on demand
    (:mod:`sklearn_dbksvd._gram_rows`).
    """
    slot = rows[1][j]
    if slot >= 0:
        return rows[0][slot]
    return rows[2][rows[3][j]]


@_numba.jit()
def _cholesky_append(L, n, gram, support, j, tiny):  # pragma: no cover
    """Add atom ``j`` as row ``n`` of the Cholesky factor ``L`` of ``G[S, S]``.

    Solves ``L[:n, :n] w = G[S, j]`` and sets ``L[n] = (w, √(G[j, j] − ‖w‖²))``.
    Returns False, leaving ``L`` unusable beyond row ``n``, when the atom is
    (numerically) in the span of the support. ``gram`` is a row source (see
    :func:`_row`).
    """
    g = _row(gram, j)
    sq = 0.0
    for r in range(n):
        s = float(g[support[r]])
        for c in range(r):
            s -= L[r, c] * L[n, c]
        s /= L[r, r]
        L[n, r] = s
        sq += s * s
    diag = float(g[j]) - sq
    if not diag > tiny * float(g[j]):
        return False
    L[n, n] = np.sqrt(diag)
    return True


@_numba.jit()
def _cholesky_solve(L, n, rhs, out, tmp):  # pragma: no cover
    """``out[:n] = (L Lᵀ)⁻¹ rhs[:n]`` for the first ``n`` rows of ``L``."""
    for r in range(n):
        s = rhs[r]
        for c in range(r):
            s -= L[r, c] * tmp[c]
        tmp[r] = s / L[r, r]
    for r in range(n - 1, -1, -1):
        s = tmp[r]
        for c in range(r + 1, n):
            s -= L[c, r] * out[c]
        out[r] = s / L[r, r]


@_numba.jit()
def _nonnegative_ls(
    L, n, gram, support, gamma, old, rhs, a0, tmp, tiny
):  # pragma: no cover
    """Least squares on the support, kept nonnegative (Lawson-Hanson inner loop).

    On entry the factor ``L`` covers the ``n`` atoms of ``support``, the last
    one just added; ``old`` holds the previous nonnegative coefficients (zero
    for the new atom) and ``rhs`` the correlations ``α⁰[S]``. While the
    least-squares solution ``gamma`` has a negative entry, move from ``old``
    towards it until the first coefficient reaches zero, drop that atom,
    rebuild the factor and solve again. Returns the new support size, or -1
    when the new atom itself cannot enter (the support is then the old one).
    """
    n_entry = n
    _cholesky_solve(L, n, rhs, gamma, tmp)
    while True:
        step = 1.0
        blocking = -1
        for r in range(n):
            if gamma[r] < 0:
                t = old[r] / (old[r] - gamma[r])
                if t < step:
                    step = t
                    blocking = r
        if blocking < 0:
            break
        if n == n_entry and blocking == n - 1 and step == 0:
            n -= 1
            for r in range(n):
                gamma[r] = old[r]
            return -1
        kept = 0
        for r in range(n):
            value = old[r] + step * (gamma[r] - old[r])
            if r != blocking and value > 0:
                support[kept] = support[r]
                old[kept] = value
                kept += 1
        # Rebuild the factor of the smaller support (at most k x k).
        n = 0
        for r in range(kept):
            if not _cholesky_append(L, n, gram, support, support[r], tiny):
                break
            n += 1
        for r in range(n):
            rhs[r] = a0[support[r]]
        _cholesky_solve(L, n, rhs, gamma, tmp)
    for r in range(n):
        old[r] = gamma[r]
    return n


@_numba.jit()
def _solve_on_support(
    L, n, gram, support, gamma, old, rhs, a0, tmp, tiny, positive
):  # pragma: no cover
    """Coefficients ``gamma`` once atom ``support[n - 1]`` has joined.

    Returns the new support size, or -1 when (with ``positive``) the new atom
    cannot enter; ``gamma`` then holds the old coefficients.
    """
    for r in range(n):
        rhs[r] = a0[support[r]]
    if not positive:
        _cholesky_solve(L, n, rhs, gamma, tmp)
        return n
    old[n - 1] = 0.0
    return _nonnegative_ls(L, n, gram, support, gamma, old, rhs, a0, tmp, tiny)


@_numba.jit()
def _update_correlations(alpha, a0, gram, support, coefs, n):  # pragma: no cover
    """``α = α⁰ − G[:, S] γ`` from rows of the symmetric ``G``, four per pass.

    Four Gram rows per pass over ``α`` quarter its loads and stores, which
    bound this loop (it is the O(m k²) part of Batch-OMP).
    """
    n_components = alpha.shape[0]
    for j in range(n_components):
        alpha[j] = a0[j]
    r = 0
    while r + 4 <= n:
        g0, g1 = _row(gram, support[r]), _row(gram, support[r + 1])
        g2, g3 = _row(gram, support[r + 2]), _row(gram, support[r + 3])
        c0, c1, c2, c3 = coefs[r], coefs[r + 1], coefs[r + 2], coefs[r + 3]
        for j in range(n_components):
            alpha[j] -= (c0 * g0[j] + c1 * g1[j]) + (c2 * g2[j] + c3 * g3[j])
        r += 4
    while r < n:
        g0 = _row(gram, support[r])
        c0 = coefs[r]
        for j in range(n_components):
            alpha[j] -= c0 * g0[j]
        r += 1


@_numba.jit()
def _batch_omp_jit(
    corr, alpha, keys, gram, positive, sq_norms, sq_target, tiny, indices, values,
    todo, parked, pending,
):  # pragma: no cover
    """Compiled Batch-OMP, one sample at a time, for the samples ``todo``.

    ``corr`` holds the correlations ``α⁰`` (read only); ``alpha`` is a
    scratch row for the current correlations and ``keys`` the same memory
    viewed as integers for the arg-max. ``sq_norms`` is empty without a
    tolerance. ``gram`` is a row source (see :func:`_row`): a sample that
    selects an atom whose row is absent is left off, its index written to
    ``parked`` and the rows it needs (its support so far and that atom; their
    number in the last column) to ``pending[i]``, to be run again from its
    start once they are there. Returns the number of samples left off.
    """
    n_samples, n_components = corr.shape
    k = indices.shape[1]
    n_groups = (n_components + _ARGMAX_GROUP - 1) // _ARGMAX_GROUP
    group_max = np.empty(n_groups, keys.dtype)
    use_tol = sq_norms.shape[0] > 0
    L = np.zeros((k, k))
    support = np.empty(k, np.intp)
    gamma = np.zeros(k)
    old = np.zeros(k)
    rhs = np.zeros(k)
    tmp = np.zeros(k)
    coefs = np.zeros(k, corr.dtype)
    max_rounds = 3 * k if positive else k
    n_parked = 0
    for position in range(todo.shape[0]):
        i = todo[position]
        a0 = corr[i]
        for j in range(n_components):
            alpha[j] = a0[j]
        n = 0
        scale = 0.0
        missing = False
        for _ in range(max_rounds):
            if n == k:
                break
            if use_tol:
                sq_residual = float(sq_norms[i])
                for r in range(n):
                    sq_residual -= gamma[r] * rhs[r]
                if sq_residual <= sq_target[i]:
                    break
            best = _argmax_key(keys, positive, group_max)
            a = float(alpha[best])
            if n == 0:
                scale = abs(a)
            # Nothing left to explain (a zero sample, or a residual at the
            # rounding level of the first correlation).
            if not abs(a) > tiny * scale or (positive and a < 0):
                break
            in_support = False
            for r in range(n):
                if support[r] == best:
                    in_support = True
            if in_support:
                break
            if not _has_row(gram, best):
                missing = True
                break
            if not _cholesky_append(L, n, gram, support, best, tiny):
                break
            support[n] = best
            n += 1
            kept = _solve_on_support(
                L, n, gram, support, gamma, old, rhs, a0, tmp, tiny, positive
            )
            if kept < 0:  # the new atom would go negative at once: done
                n -= 1
                break
            n = kept
            for r in range(n):
                coefs[r] = gamma[r]
            _update_correlations(alpha, a0, gram, support, coefs, n)
        if missing:
            parked[n_parked] = i
            for r in range(n):
                pending[i, r] = support[r]
            pending[i, n] = best
            pending[i, k] = n + 1
            n_parked += 1
            continue
        for r in range(n):
            indices[i, r] = support[r]
            values[i, r] = gamma[r]
        for r in range(n, k):
            indices[i, r] = support[0] if n > 0 else 0
            values[i, r] = 0
    return n_parked


def _batch_omp_compiled(
    corr, gram, positive, sq_norms, sq_target, tiny, indices, values, todo,
    parked, pending,
):
    """:func:`_batch_omp_numpy` by the compiled kernel (same selections)."""
    int_dtype = np.int32 if corr.itemsize == 4 else np.int64
    alpha = np.empty(corr.shape[1], dtype=corr.dtype)
    if sq_norms is None:
        sq_norms = sq_target = np.empty(0, dtype=corr.dtype)
    return _batch_omp_jit(
        corr, alpha, alpha.view(int_dtype), gram, positive, sq_norms, sq_target,
        tiny, indices, values, todo, parked, pending,
    )


def _batch_omp_numpy(
    corr, gram, positive, sq_norms, sq_target, tiny, indices, values, todo,
    parked, pending,
):
    """NumPy version of :func:`_batch_omp_jit` (same selections, to rounding).

    Sample by sample, the vectors of the dictionary's size in NumPy and the
    small systems in the same helpers as the compiled kernel.
    """
    k = indices.shape[1]
    L = np.zeros((k, k))
    support = np.empty(k, np.intp)
    gamma, old, rhs, tmp = (np.zeros(k) for _ in range(4))
    max_rounds = 3 * k if positive else k
    n_parked = 0
    for i in todo:
        a0 = corr[i]
        alpha = a0
        n = 0
        scale = 0.0
        missing = False
        for _ in range(max_rounds):
            if n == k:
                break
            if sq_norms is not None:
                if sq_norms[i] - gamma[:n] @ rhs[:n] <= sq_target[i]:
                    break
            best = int(np.argmax(alpha if positive else np.abs(alpha)))
            a = float(alpha[best])
            if n == 0:
                scale = abs(a)
            if not abs(a) > tiny * scale or (positive and a < 0):
                break
            if best in support[:n]:
                break
            if not _has_row(gram, best):
                missing = True
                break
            if not _cholesky_append(L, n, gram, support, best, tiny):
                break
            support[n] = best
            n += 1
            kept = _solve_on_support(
                L, n, gram, support, gamma, old, rhs, a0, tmp, tiny, positive
            )
            if kept < 0:
                n -= 1
                break
            n = kept
            rows = np.array([_row(gram, j) for j in support[:n]])
            alpha = a0 - gamma[:n].astype(corr.dtype) @ rows
        if missing:
            parked[n_parked] = i
            pending[i, :n] = support[:n]
            pending[i, n] = best
            pending[i, k] = n + 1
            n_parked += 1
            continue
        indices[i, :n] = support[:n]
        values[i, :n] = gamma[:n]
        values[i, n:] = 0
        indices[i, n:] = support[0] if n > 0 else 0
    return n_parked


# One pass of Batch-OMP over the samples ``todo`` (see :func:`_batch_omp_jit`).
_batch_omp_pass = _numba.twins(_batch_omp_compiled, _batch_omp_numpy)


def _row_source(gram, table=None):
    """The kernels' row source ``(cache, cache_slot, table, table_slot)``."""
    if isinstance(gram, GramRows):
        return (gram.cache_rows, gram.cache_slot, table.table, table.slot)
    n_components = gram.shape[0]
    slots = np.arange(n_components, dtype=np.intp)
    return (gram, slots, gram[:0], np.full(n_components, -1, dtype=np.intp))


def _batch_omp_gram(corr, gram, n_nonzero_coefs, positive, sq_norms=None, tol=None):
    """Batch-OMP codes from correlations, in selection form.

    Parameters
    ----------
    corr : ndarray of shape (n_samples, n_components)
        C-ordered correlations ``X @ D.T``; not modified.
    gram : ndarray of shape (n_components, n_components) or GramRows
        ``D @ D.T``, C-ordered, in the dtype of ``corr``; or rows of it
        within a memory budget (:mod:`sklearn_dbksvd._gram_rows`): a sample
        that selects an atom whose row is absent is run again from its start
        once the rows the block's samples wait for have been computed
        together, so every code is that of the full matrix (to the rounding
        of the rows).
    n_nonzero_coefs : int
        Largest support size ``k``.
    positive : bool
        Nonnegative coefficients (active-set least squares on the support).
    sq_norms : ndarray of shape (n_samples,), default=None
        Squared norms of the samples; needed with ``tol``.
    tol : float, default=None
        Stop a sample once ``‖r‖ ≤ tol ‖x‖``; with the least-squares
        coefficients ``γ`` on the support, ``‖r‖² = ‖x‖² − γ·α⁰[S]``.

    Returns
    -------
    indices, values : ndarray of shape (n_samples, n_nonzero_coefs)
        Support and coefficients of each code; slots past a sample's support
        size have value zero.
    """
    if isinstance(gram, GramRows):
        # A sample needs the rows of its whole support at once.
        with _row_table(gram, min_capacity=n_nonzero_coefs) as table:
            return _batch_omp_rows(
                corr, gram, n_nonzero_coefs, positive, sq_norms, tol, table
            )
    return _batch_omp_rows(corr, gram, n_nonzero_coefs, positive, sq_norms, tol)


def _batch_omp_rows(corr, gram, n_nonzero_coefs, positive, sq_norms, tol, table=None):
    tiny = _dependence_threshold(corr.dtype)
    sq_target = None if tol is None else tol**2 * sq_norms
    n_samples, n_components = corr.shape
    indices = np.empty((n_samples, n_nonzero_coefs), dtype=np.intp)
    values = np.empty((n_samples, n_nonzero_coefs), dtype=corr.dtype)
    parked = np.empty(n_samples, dtype=np.intp)
    pending = np.zeros((n_samples, n_nonzero_coefs + 1), dtype=np.intp)
    todo = np.arange(n_samples, dtype=np.intp)
    if table is not None:
        table.clear()
        table.computed = 0
    source = _row_source(gram, table)
    if tol is None:
        sq_norms = None
    while len(todo):
        n_parked = _batch_omp_pass(
            corr, source, positive, sq_norms, sq_target, tiny, indices, values,
            todo, parked, pending,
        )
        todo = parked[:n_parked].copy()
        if n_parked:
            table.fetch_supports(pending[todo])
    if table is not None:
        gram.add_stats(0, 0, table.computed)
        table.clear()
    return indices, values


def _omp_encode(
    X,
    dictionary,
    n_nonzero_coefs,
    *,
    gram=None,
    cov=None,
    positive=False,
    tol=None,
    n_jobs=None,
    backend=None,
    gram_memory="auto",
    usage=None,
):
    """Batch-OMP codes in selection form (no validation).

    Blocks of samples as in :func:`~sklearn_dbksvd._encode._mp_encode`: the
    block's correlations (one GEMM in ``backend``, default from ``X``), then
    its codes; blocks run in threads and every sample is coded alone, so the
    result does not depend on ``n_jobs``. Without ``gram``, the Gram rows
    are planned within ``gram_memory`` bytes as for matching pursuit
    (:func:`~sklearn_dbksvd._gram_rows.plan_gram`).
    """
    if backend is None:
        backend = _backend.resolve_backend("numpy", X)
    dictionary = _backend.to_numpy(dictionary)
    dictionary_dev = backend.asarray(dictionary) if cov is None else None
    if gram is None:
        gram = plan_gram(
            dictionary, gram_memory, n_jobs=n_jobs, usage=usage, X=X,
            n_nonzero_coefs=n_nonzero_coefs, backend=backend,
            min_table_rows=n_nonzero_coefs,
        )
    n_samples = X.shape[0] if cov is None else cov.shape[1]
    if isinstance(gram, GramRows):
        step = _block_size(gram.shape[0], gram.itemsize, _ROWS_BLOCK_BYTES)
    else:
        gram = np.ascontiguousarray(gram)
        step = _block_size(gram.shape[0], gram.itemsize)
    blocks = [
        slice(start, min(start + step, n_samples))
        for start in range(0, n_samples, step)
    ]

    def correlate(block, out):
        X_block = None if X is None else X[block, :]
        return _block_correlations(backend, X_block, cov, block, dictionary_dev, out)

    def encode(block, corr):
        X_block = None if X is None else X[block, :]
        sq_norms = None
        if tol is not None:
            sq_norms = _backend.sq_norms(backend, X_block)
            sq_norms = sq_norms.astype(gram.dtype, copy=False)
        return _batch_omp_gram(corr, gram, n_nonzero_coefs, positive, sq_norms, tol)

    scratch = ScratchBuffers((step, gram.shape[0]), gram.dtype)
    parts = map_blocks(correlate, encode, blocks, scratch, n_jobs=n_jobs)
    if not parts:
        return (
            np.empty((0, n_nonzero_coefs), dtype=np.intp),
            np.empty((0, n_nonzero_coefs), dtype=gram.dtype),
        )
    return (
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
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
        "n_jobs": [Integral, None],
        "gram_memory": GRAM_MEMORY_CONSTRAINT,
    },
    prefer_skip_nested_validation=True,
)
def sparse_encode_omp(
    X,
    dictionary,
    n_nonzero_coefs,
    *,
    gram=None,
    cov=None,
    positive=False,
    tol=None,
    n_jobs=None,
    gram_memory="auto",
):
    """Sparse codes by orthogonal matching pursuit on the Gram matrix (Batch-OMP).

    Each code is built by at most ``n_nonzero_coefs`` greedy selections: pick
    the atom most correlated with the residual, then refit the coefficients
    of all selected atoms by least squares, so the residual stays orthogonal
    to the selected atoms and no atom is selected twice. Batch-OMP
    (Rubinstein, Zibulevsky and Elad 2008) does this from the correlations
    ``D x`` and the Gram matrix ``D Dᵀ`` only, growing a Cholesky factor of
    the selected block of the Gram matrix, so after one product ``X Dᵀ``
    per block of samples no product with the dictionary is needed. Codes
    are the same as :func:`sklearn.linear_model.orthogonal_mp_gram`'s (to
    rounding), much faster, in the dtype of the dictionary.

    A sample stops early when the selected atom is (numerically) a linear
    combination of the atoms already selected, or when nothing is left to
    explain (zero samples get zero codes).

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features) or None
        Data. May be None when ``cov`` is given.
    dictionary : array-like of shape (n_components, n_features)
        Atoms, as rows; need not be unit-norm.
    n_nonzero_coefs : int
        Largest number of nonzeros per code (``k``), at most
        ``n_components`` (a larger value raises ``ValueError``).
    gram : array-like of shape (n_components, n_components), default=None
        Precomputed ``dictionary @ dictionary.T``.
    cov : array-like of shape (n_components, n_samples), default=None
        Precomputed ``dictionary @ X.T``, as in
        :func:`sklearn.decomposition.sparse_encode`.
    positive : bool, default=False
        Nonnegative codes: only atoms with a positive correlation are
        selected, and the coefficients on the support are the nonnegative
        least-squares ones (Lawson and Hanson's active set, so an atom may
        leave the support again).
    tol : float, default=None
        Stop selecting for a sample once its relative residual
        ``‖x − code @ D‖ / ‖x‖`` is at most ``tol`` (needs ``X``), as in
        :func:`~sklearn_dbksvd.sparse_encode_mp`. None always makes up to
        ``n_nonzero_coefs`` selections.
    n_jobs : int, default=None
        Number of threads coding blocks of samples in parallel. ``None``
        means 1 unless in a :obj:`joblib.parallel_backend` context. The result
        does not depend on it.
    gram_memory : "auto", float or None, default="auto"
        Bytes of Gram rows the coder may hold when ``gram`` is not given, as
        in :func:`~sklearn_dbksvd.sparse_encode_mp`: the whole matrix when it
        fits, else a cache of the most used atoms' rows and rows computed
        per block of samples (at least ``n_nonzero_coefs`` rows per worker).
        The codes are the same to float32 rounding.

    Returns
    -------
    code : ndarray of shape (n_samples, n_components)
        Sparse codes, in the dtype of ``dictionary`` (float32 stays float32).

    See Also
    --------
    sparse_encode_mp : Matching pursuit on the Gram matrix; faster, codes a
        little less accurate.
    sklearn.linear_model.orthogonal_mp_gram : The same codes, one sample at a
        time in float64 or float32 LAPACK.

    References
    ----------
    R. Rubinstein, M. Zibulevsky, M. Elad, "Efficient Implementation of the
    K-SVD Algorithm using Batch Orthogonal Matching Pursuit", Technical
    Report CS-2008-08, Technion, 2008.

    A. M. Bruckstein, M. Elad, M. Zibulevsky, "On the Uniqueness of
    Nonnegative Sparse Solutions to Underdetermined Systems of Equations",
    IEEE Trans. Inf. Theory 54(11), 2008.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_dbksvd import sparse_encode_omp
    >>> dictionary = np.array([[1.0, 0.0], [0.6, 0.8]])
    >>> sparse_encode_omp(np.array([[1.2, 1.6]]), dictionary, 2).round(6)
    array([[0., 2.]])
    """
    X, dictionary, gram, cov = check_coder_inputs(
        "sparse_encode_omp", X, dictionary, gram, cov, tol,
        n_nonzero_coefs=n_nonzero_coefs,
    )
    n_components = dictionary.shape[0]
    indices, values = _omp_encode(
        X, dictionary, n_nonzero_coefs, gram=gram, cov=cov, positive=positive,
        tol=tol, n_jobs=n_jobs, gram_memory=gram_memory,
    )
    return selections_to_csr(indices, values, n_components).toarray()
