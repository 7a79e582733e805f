"""Matching pursuit on the Gram matrix (DB-KSVD paper, section 4.1).

With ``gram = D Dᵀ`` and the correlations ``c = D y`` precomputed, one
matching-pursuit selection for a sample is an arg-max over ``c``, a look-up
and a vector update ``c -= a * gram[j]``: no matrix-vector product with the
dictionary inside the loop. The loop is vectorised over a chunk of samples
sized to stay in cache, and chunks run in parallel threads.
"""

from numbers import Integral, Real

import numpy as np
import scipy.sparse as sp
from sklearn.utils._param_validation import Interval, validate_params
from sklearn.utils.validation import check_array

from ._parallel import parallel_map

# Samples per chunk of matching pursuit: three (chunk, n_components) buffers
# (correlations, scores, gathered Gram rows) should stay in a 2 MiB L2/L3
# slice, so each selection streams from cache rather than from memory.
_MP_CHUNK_BYTES = 2**19

# Samples per block of the correlation GEMM ``X_block @ Dᵀ``: large enough for
# an efficient GEMM, small enough that the block of correlations (block,
# n_components) never dominates memory (64 MiB at 4096 atoms in float32).
_GEMM_BLOCK_SAMPLES = 4096


def _mp_chunk_size(n_components, itemsize):
    return max(8, _MP_CHUNK_BYTES // (3 * n_components * itemsize))


def _matching_pursuit_gram(corr, gram, n_nonzero_coefs, positive, sq_norms=None, tol=None):
    """Run ``n_nonzero_coefs`` matching-pursuit selections on correlations.

    Parameters
    ----------
    corr : ndarray of shape (n_samples, n_components)
        Correlations ``X @ D.T`` of the samples with the atoms; overwritten
        with the correlations of the final residuals.
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
        # c <- c - a * G[:, j]: the Gram row replaces a product with D.
        np.take(gram, best, axis=0, out=gram_rows)
        gram_rows *= coef[:, None]
        corr -= gram_rows
    return indices, values


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
    system = gram[indices[:, :, None], indices[:, None, :]]
    system *= active[:, :, None] & active[:, None, :]
    eye = np.eye(n_selections, dtype=bool)
    system[:, eye] = np.where(active, system[:, eye], 1)
    rhs = np.where(active, corr0[rows, indices], 0)
    coefs = np.einsum("nij,nj->ni", np.linalg.pinv(system), rhs)
    return indices, np.where(active, coefs, 0).astype(values.dtype, copy=False)


def _encode_block(
    X_block, dictionary, gram, n_nonzero_coefs, positive, cov_block, tol, refit
):
    """Correlations of one block of samples, then chunked matching pursuit."""
    if cov_block is None:
        corr = X_block @ dictionary.T
    else:
        corr = np.array(cov_block.T, dtype=gram.dtype, order="C")
    corr0 = corr.copy() if refit else None
    sq_norms = None
    if tol is not None:
        sq_norms = np.einsum("ij,ij->i", X_block, X_block)
    chunk = _mp_chunk_size(gram.shape[0], gram.itemsize)
    indices = np.empty((corr.shape[0], n_nonzero_coefs), dtype=np.intp)
    values = np.empty((corr.shape[0], n_nonzero_coefs), dtype=gram.dtype)
    for start in range(0, corr.shape[0], chunk):
        part = slice(start, start + chunk)
        indices[part], values[part] = _matching_pursuit_gram(
            corr[part],
            gram,
            n_nonzero_coefs,
            positive,
            None if sq_norms is None else sq_norms[part],
            tol,
        )
        if refit:
            indices[part], values[part] = _refit_on_support(
                indices[part], values[part], corr0[part], gram
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
):
    """Matching-pursuit codes in selection form (no validation).

    Returns ``indices, values`` of shape (n_samples, n_nonzero_coefs); the
    code of sample ``i`` is the sum of ``values[i, t] * e_{indices[i, t]}``.
    Results do not depend on ``n_jobs``: every sample is encoded alone.
    """
    if gram is None:
        gram = dictionary @ dictionary.T
    n_samples = X.shape[0] if cov is None else cov.shape[1]
    blocks = [
        slice(start, min(start + _GEMM_BLOCK_SAMPLES, n_samples))
        for start in range(0, n_samples, _GEMM_BLOCK_SAMPLES)
    ]

    def encode(block):
        X_block = None if X is None else X[block]
        cov_block = None if cov is None else cov[:, block]
        return _encode_block(
            X_block, dictionary, gram, n_nonzero_coefs, positive, cov_block, tol, refit
        )

    parts = parallel_map(encode, blocks, n_jobs=n_jobs)
    if not parts:
        empty = np.empty((0, n_nonzero_coefs))
        return empty.astype(np.intp), empty.astype(gram.dtype)
    indices = np.concatenate([p[0] for p in parts])
    values = np.concatenate([p[1] for p in parts])
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
    code.eliminate_zeros()
    return code


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
        Atoms, as rows. Matching pursuit assumes unit-norm atoms.
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
    dictionary = check_array(dictionary, dtype=[np.float64, np.float32])
    dtype = dictionary.dtype
    if X is None and cov is None:
        raise ValueError("sparse_encode_mp needs X or cov; both are None.")
    if tol is not None and X is None:
        raise ValueError("tol needs X: the residual norm is relative to ‖x‖.")
    if refit and positive:
        raise ValueError(
            "refit=True cannot keep codes nonnegative; use positive=False or "
            "refit=False."
        )
    if X is not None:
        X = check_array(X, dtype=dtype)
        if X.shape[1] != dictionary.shape[1]:
            raise ValueError(
                f"X has {X.shape[1]} features but the dictionary has "
                f"{dictionary.shape[1]}."
            )
    n_components = dictionary.shape[0]
    if gram is not None:
        gram = check_array(gram, dtype=dtype)
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
    )
    return selections_to_csr(indices, values, n_components).toarray()
