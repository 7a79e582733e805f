"""One DB-KSVD step on a batch: encode, refit atoms, clear the dictionary.

Memory: besides the batch, a step holds one dense array of the batch's shape
(the residual; a fit hands every step the same one), the codes in sparse
form and the Gram matrix; correlations exist one block of samples at a time
(see ``_encode._BLOCK_BYTES``).
"""

import numpy as np
import scipy.sparse as sp
from sklearn.decomposition import sparse_encode

from . import _backend
from ._encode import _mp_encode, selections_to_csr
from ._gram_rows import CacheHint, gram_fits, plan_gram
from ._omp import _omp_encode
from ._replace import (
    near_duplicates,
    near_duplicates_of_atoms,
    rare_atoms,
    replace_atoms,
    residual_sq_norms,
)
from ._update import update_dictionary
from .metrics import _batch_metrics as batch_metrics

# scikit-learn's lasso coders behind MiniBatchDictionaryLearning's fit_algorithm.
_LASSO_CODERS = {"lars": "lasso_lars", "cd": "lasso_cd"}

# Samples per block of the passes over the batch that do not go through the
# encoder (residual of given codes, metrics): 16 MiB of float32 at 2304
# features; enough to amortise the per-block NumPy calls, small next to
# the batch, so no temporary of the batch's size is ever made.
_PASS_BLOCK_BYTES = 2**24


def _row_blocks(n_samples, n_features, itemsize):
    step = max(1, _PASS_BLOCK_BYTES // max(1, n_features * itemsize))
    return [slice(i, min(i + step, n_samples)) for i in range(0, n_samples, step)]


def _as_backend(backend, X):
    if isinstance(backend, _backend.ArrayBackend):
        return backend
    return _backend.resolve_backend(backend or "numpy", X)


def encode_batch(
    X,
    components,
    *,
    n_nonzero_coefs,
    algorithm,
    positive,
    n_jobs,
    tol=None,
    refit=False,
    backend=None,
    alpha=None,
    max_iter=1000,
    gram=None,
    gram_memory="auto",
):
    """Sparse codes of a batch as CSR, by matching pursuit, Batch-OMP or a lasso.

    ``backend`` ("numpy", "cupy" or an ``ArrayBackend``; default from ``X``)
    runs the products ``X Dᵀ`` and ``D Dᵀ``. "lars" and "cd" are
    scikit-learn's lasso coders with penalty ``alpha`` and ``max_iter``
    iterations (``MiniBatchDictionaryLearning``'s). ``gram`` is ``D Dᵀ`` if
    known, or a :class:`~._gram_rows.CacheHint`; otherwise the Gram rows
    are planned within ``gram_memory`` bytes (see :mod:`._gram_rows`).
    """
    backend = _as_backend(backend, X)
    gram = step_gram(
        gram, components, gram_memory, X=X, n_jobs=n_jobs, backend=backend,
        n_nonzero_coefs=n_nonzero_coefs,
        min_table_rows=n_nonzero_coefs if algorithm == "omp" else 1,
        whole=algorithm in _LASSO_CODERS,
    )
    if algorithm == "mp":
        indices, values = _mp_encode(
            X,
            components,
            n_nonzero_coefs,
            gram=gram,
            positive=positive,
            tol=tol,
            refit=refit,
            n_jobs=n_jobs,
            backend=backend,
        )
        return selections_to_csr(indices, values, components.shape[0])
    if algorithm in _LASSO_CODERS:
        code = sparse_encode(
            _backend.to_numpy(X), components, gram=gram,
            algorithm=_LASSO_CODERS[algorithm], alpha=alpha, max_iter=max_iter,
            positive=positive, n_jobs=n_jobs,
        )
        code = sp.csr_matrix(code.astype(X.dtype, copy=False))
        code.eliminate_zeros()
        return code
    indices, values = _omp_encode(
        X,
        components,
        n_nonzero_coefs,
        gram=gram,
        positive=positive,
        n_jobs=n_jobs,
        backend=backend,
    )
    return selections_to_csr(indices, values, components.shape[0])


def step_gram(
    gram, components, gram_memory, *, X, n_jobs, backend, n_nonzero_coefs,
    min_table_rows=1, whole=False,
):
    """What the step's coder reads the Gram matrix from.

    ``gram`` as given when it is the matrix; otherwise
    :func:`~._gram_rows.plan_gram` within ``gram_memory``, its cache ranked
    by a :class:`~._gram_rows.CacheHint`'s usage (the previous step's) or by
    a pilot of ``X``. ``whole``: the coder needs the whole matrix
    (scikit-learn's lasso), budget or not.
    """
    if gram is not None and not isinstance(gram, CacheHint):
        return gram
    if whole:
        return _backend.gram(backend, components)
    return plan_gram(
        components, gram_memory, n_jobs=n_jobs,
        usage=None if gram is None else gram.usage, X=X,
        n_nonzero_coefs=n_nonzero_coefs, backend=backend,
        min_table_rows=min_table_rows,
    )


def batch_residual(X, components, codes, out=None):
    """``X - codes @ components`` on the host, block by block.

    Parameters
    ----------
    X : array of shape (n_samples, n_features)
        The batch, in any array namespace.
    components : ndarray of shape (n_components, n_features)
        Atoms.
    codes : sparse matrix of shape (n_samples, n_components)
        Codes.
    out : ndarray of shape (n_samples, n_features), default=None
        Where to write the residual (C-ordered, in the dtype of
        ``components``); a new array if None.

    Returns
    -------
    residual : ndarray of shape (n_samples, n_features)
        C-ordered, in the dtype of ``components``.
    """
    codes = sp.csr_matrix(codes)
    n_samples, n_features = X.shape
    residual = out
    if residual is None:
        residual = np.empty((n_samples, n_features), dtype=components.dtype)
    for block in _row_blocks(n_samples, n_features, components.itemsize):
        residual[block] = _backend.to_numpy(X[block, :])
        residual[block] -= codes[block] @ components
    return residual


def refit_atoms(
    X,
    components,
    codes,
    *,
    dict_update,
    update_batch_size,
    positive,
    random_state,
    n_jobs,
    residual=None,
    backend=None,
    positive_dict=False,
):
    """K-SVD update of every used atom for fixed supports.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
        The batch (or, for nested groups, the residual they must explain).
    components : ndarray of shape (n_components, n_features)
        Atoms; updated in place.
    codes : sparse matrix of shape (n_samples, n_components)
        Codes whose support is kept.
    dict_update, update_batch_size, positive, random_state, n_jobs
        As in :func:`dbksvd_step`.
    residual : ndarray of shape (n_samples, n_features), default=None
        ``X - codes @ components`` if already known (it is then updated in
        place and returned); computed from ``X`` otherwise.
    backend : str or ArrayBackend, default=None
        Where the products with wide error matrices run.
    positive_dict : bool, default=False
        Nonnegative atoms (NN-K-SVD update).

    Returns
    -------
    residual : ndarray of shape (n_samples, n_features)
        ``X - codes @ components`` after the update.
    codes : scipy.sparse.csc_matrix
        Updated codes.
    """
    if residual is None:
        residual = batch_residual(X, components, codes)
    # Column-major codes: the users of atom j are one contiguous slice.
    codes = sp.csc_matrix(codes, dtype=components.dtype, copy=True)
    codes.eliminate_zeros()
    codes.sort_indices()
    order = random_state.permutation(components.shape[0])
    update_dictionary(
        residual,
        components,
        codes,
        order,
        update_batch_size=update_batch_size,
        dict_update=dict_update,
        positive=positive,
        n_jobs=n_jobs,
        backend=_as_backend(backend, X),
        positive_dict=positive_dict,
    )
    return residual, codes


def clear_dictionary(
    components, codes, residual, *, n_nonzero_coefs, min_usage, max_coherence,
    positive_dict=False, positive_code=False, sq_norms=None, gram_memory="auto",
):
    """Replace dead, rare and duplicated atoms; return how many were replaced.

    ``min_usage`` is a fraction of the mean usage ``n_samples * k / m``. A
    batch whose mean usage is below one user per atom is too small to tell
    dead atoms from unlucky ones: nothing is replaced. With ``positive_dict``
    the new atoms are nonnegative (see ``_replace.replace_atoms``).
    ``sq_norms`` are the squared row norms of ``residual`` (float64) if
    known, e.g. from the metrics pass; computed otherwise. The coherence
    check holds the Gram matrix when it fits in ``gram_memory`` bytes and
    goes through it a block of rows at a time otherwise.
    """
    return _clear_dictionary(
        components, codes, residual, n_nonzero_coefs=n_nonzero_coefs,
        min_usage=min_usage, max_coherence=max_coherence,
        positive_dict=positive_dict, positive_code=positive_code,
        backend=_backend.ArrayBackend(np), sq_norms=sq_norms,
        gram_memory=gram_memory,
    )[0]


def _clear_dictionary(
    components, codes, residual, *, n_nonzero_coefs, min_usage, max_coherence,
    positive_dict, positive_code, backend, sq_norms=None, gram_memory="auto",
):
    """:func:`clear_dictionary`, and the Gram matrix of the final atoms or None.

    Rare and unused atoms are replaced first, by the worst-fitted samples'
    residuals; the coherence check then runs on the Gram matrix of the atoms
    so obtained (new ones included, so a new atom that duplicates another is
    caught too), and the less used atom of each near-duplicate pair takes the
    next worst sample. The Gram matrix is returned when no duplicate was
    replaced: it is then exactly that of the final atoms. With
    ``positive_dict`` rare atoms and the duplicates among the atoms before
    replacement are replaced together by ``_replace.replace_atoms`` (new
    atoms are nonnegative parts, not the residuals themselves); the Gram
    matrix of that check is returned when no atom was replaced. When the
    Gram matrix does not fit in ``gram_memory``, the check goes a block of
    rows at a time (:func:`~._replace.near_duplicates_of_atoms`) and None is
    returned.
    """
    whole = gram_fits(len(components), components.itemsize, gram_memory)

    def duplicates_of(components):
        if not whole:
            return None, near_duplicates_of_atoms(
                components, usage, max_coherence, backend=backend
            )
        gram = _backend.gram(backend, components)
        return gram, near_duplicates(gram, usage, max_coherence)

    n_samples, n_components = codes.shape
    usage = np.diff(codes.indptr)
    mean_usage = n_samples * n_nonzero_coefs / n_components
    if mean_usage < 1:
        return 0, None
    if sq_norms is None:
        sq_norms = residual_sq_norms(residual)
    if positive_dict:
        atoms = rare_atoms(usage, min_usage * mean_usage)
        gram = None
        if max_coherence < 1:
            # One Gram matrix for the check and, when no atom changes, for
            # the next step's encoder, as on the signed path.
            gram, duplicates = duplicates_of(components)
            atoms = np.union1d(atoms, duplicates)
        replaced = replace_atoms(
            components, atoms, residual,
            positive_dict=positive_dict, positive_code=positive_code,
            sq_norms=sq_norms,
        )
        return len(replaced), (gram if len(replaced) == 0 else None)
    rare = rare_atoms(usage, min_usage * mean_usage)
    # Worst-fitted samples first, as in ``replace_atoms``; one per new atom.
    norms = np.sqrt(sq_norms)
    worst = np.argsort(norms, kind="stable")[::-1][: np.count_nonzero(norms > 0)]
    rare = rare[: len(worst)]
    components[rare] = residual[worst[: len(rare)]] / norms[worst[: len(rare)], None]
    if max_coherence >= 1:
        return len(rare), None
    gram, duplicates = duplicates_of(components)
    duplicates = duplicates[: len(worst) - len(rare)]
    if len(duplicates) == 0:
        return len(rare), gram
    rows = worst[len(rare) : len(rare) + len(duplicates)]
    components[duplicates] = residual[rows] / norms[rows, None]
    return len(np.union1d(rare, duplicates)), None


def _residual_buffer(residual_out, X, dtype):
    """``residual_out`` if the step can write the residual of ``X`` into it."""
    if residual_out is None:
        return None
    if isinstance(X, np.ndarray) and np.may_share_memory(residual_out, X):
        raise ValueError("residual_out shares memory with the batch X.")
    fits = (
        residual_out.shape == X.shape
        and residual_out.dtype == dtype
        and residual_out.flags.c_contiguous
        and residual_out.flags.writeable
    )
    return residual_out if fits else None


def dbksvd_step(
    X,
    components,
    settings,
    *,
    random_state,
    replace=True,
    codes=None,
    gram=None,
    return_gram=False,
    residual_out=None,
):
    """One DB-KSVD step (paper section 4.1) on the batch ``X``.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
        The batch.
    components : ndarray of shape (n_components, n_features)
        Unit-norm atoms; not modified.
    settings : StepSettings
        Everything else the step depends on (``k``, the coder, the update,
        the replacement thresholds, threads, backend, Gram budget): see
        :class:`~sklearn_dbksvd._settings.StepSettings`. ``backend`` runs the
        products that grow with the batch (``X Dᵀ``, ``D Dᵀ``, the residual,
        ``EᵀE`` of wide error matrices); ``X`` may already live there.
        ``gram_memory`` bounds the Gram rows the coder and the coherence
        check hold: the whole matrix when it fits, else a cache of the most
        used atoms' rows and rows computed on demand
        (:mod:`sklearn_dbksvd._gram_rows`); the codes are the same to float32
        rounding.
    random_state : numpy.random.RandomState
        Draws the order of the atom updates.
    replace : bool, default=True
        Whether to replace dead, rare and duplicated atoms after the update.
    codes : sparse matrix of shape (n_samples, n_components), default=None
        Codes to use instead of encoding (a known support).
    gram : array of shape (n_components, n_components) or CacheHint, default=None
        ``components @ components.T`` in the backend's namespace, if known
        (what the previous step returned with ``return_gram``), or the
        previous step's :class:`~._gram_rows.CacheHint`.
    return_gram : bool, default=False
        Also return the Gram matrix of the new atoms when the step had it
        exactly (its coherence check computes it): passed to the next step as
        ``gram``, it spares that step computing ``D Dᵀ`` again. When the
        matrix does not fit in ``gram_memory``, a
        :class:`~._gram_rows.CacheHint` with the step's usage of the atoms
        instead; otherwise None.
    residual_out : ndarray, default=None
        Host array the step writes the batch's residual into (it holds the
        residual after the atom update when the step returns), so that a fit
        handing the same one to every step allocates no array of the batch's
        size per step. Used when it is C-ordered, of the batch's shape and of
        ``components``' dtype; otherwise the step allocates its own. It must
        not share memory with ``X``.

    Returns
    -------
    components : ndarray of shape (n_components, n_features)
        The new atoms.
    info : dict
        ``relative_error`` and ``variance_explained`` of the batch after the
        atom update (before replacement) and ``n_replaced``.
    gram : array of shape (n_components, n_components) or None
        Only with ``return_gram``.
    """
    n_nonzero_coefs = settings.n_nonzero_coefs
    fit_algorithm = settings.fit_algorithm
    positive = settings.positive_code
    n_jobs = settings.n_jobs
    gram_memory = settings.gram_memory
    backend = _as_backend(settings.backend, X)
    if codes is not None:
        gram = None
    components = _backend.to_numpy(components).copy()
    buffer = _residual_buffer(residual_out, X, components.dtype)
    residual = None
    if codes is None and fit_algorithm == "mp":
        gram = step_gram(
            gram, components, gram_memory, X=X, n_jobs=n_jobs, backend=backend,
            n_nonzero_coefs=n_nonzero_coefs,
        )
        indices, values, residual = _mp_encode(
            X,
            components,
            n_nonzero_coefs,
            gram=gram,
            positive=positive,
            tol=settings.mp_tol,
            refit=settings.mp_refit,
            n_jobs=n_jobs,
            backend=backend,
            return_residual=True,
            residual_out=buffer,
        )
        del gram
        codes = selections_to_csr(indices, values, components.shape[0])
        del indices, values
    elif codes is None:
        codes = encode_batch(
            X,
            components,
            n_nonzero_coefs=n_nonzero_coefs,
            algorithm=fit_algorithm,
            positive=positive,
            n_jobs=n_jobs,
            backend=backend,
            alpha=settings.alpha,
            max_iter=settings.max_iter,
            gram=gram,
            gram_memory=gram_memory,
        )
        del gram
    if residual is None:
        residual = batch_residual(X, components, codes, out=buffer)
    residual, codes = refit_atoms(
        X,
        components,
        codes,
        dict_update=settings.dict_update,
        update_batch_size=settings.update_batch_size,
        positive=positive,
        random_state=random_state,
        n_jobs=n_jobs,
        residual=residual,
        backend=backend,
        positive_dict=settings.positive_dict,
    )
    # One pass over the residual: the replacement ranks samples by the
    # squared norms that the metrics compute anyway.
    relative_error, variance_explained, sq_norms = batch_metrics(
        X, residual, n_jobs=n_jobs, return_sq_norms=True
    )
    info = {
        "relative_error": relative_error,
        "variance_explained": variance_explained,
        "n_replaced": 0,
    }
    final_gram = None
    if replace:
        if fit_algorithm in _LASSO_CODERS:
            # The lasso has no budget: judge usage against its mean support.
            n_nonzero_coefs = codes.nnz / max(1, codes.shape[0])
        info["n_replaced"], final_gram = _clear_dictionary(
            components,
            codes,
            residual,
            n_nonzero_coefs=n_nonzero_coefs,
            min_usage=settings.replace_min_usage,
            max_coherence=settings.replace_coherence,
            positive_dict=settings.positive_dict,
            positive_code=positive,
            backend=backend,
            sq_norms=sq_norms,
            gram_memory=gram_memory,
        )
    if return_gram:
        if final_gram is None and not gram_fits(
            len(components), components.itemsize, gram_memory
        ):
            final_gram = CacheHint(np.diff(sp.csc_matrix(codes).indptr))
        return components, info, final_gram
    return components, info
