"""One DB-KSVD step on a batch: encode, refit atoms, clear the dictionary."""

import numpy as np
import scipy.sparse as sp
from sklearn.decomposition import sparse_encode

from ._encode import _mp_encode, selections_to_csr
from ._replace import atoms_to_replace, replace_atoms
from ._update import update_dictionary
from .metrics import _relative_error_of_residual, _variance_explained_of_residual


def encode_batch(
    X, components, *, n_nonzero_coefs, algorithm, positive, n_jobs, tol=None, refit=False
):
    """Sparse codes of a batch as CSR, by matching pursuit or scikit-learn's OMP."""
    gram = components @ components.T
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
        )
        return selections_to_csr(indices, values, components.shape[0])
    code = sparse_encode(
        X,
        components,
        gram=gram,
        algorithm="omp",
        n_nonzero_coefs=n_nonzero_coefs,
        n_jobs=n_jobs,
    )
    code = sp.csr_matrix(code.astype(X.dtype, copy=False))
    code.eliminate_zeros()
    return code


def refit_atoms(
    X, components, codes, *, dict_update, update_batch_size, positive, random_state, n_jobs
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

    Returns
    -------
    residual : ndarray of shape (n_samples, n_features)
        ``X - codes @ components`` after the update.
    codes : scipy.sparse.csc_matrix
        Updated codes.
    """
    residual = X - codes @ components
    # Column-major codes: the users of atom j are one contiguous slice.
    codes = sp.csc_matrix(codes, dtype=X.dtype, copy=True)
    codes.eliminate_zeros()
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
    )
    return residual, codes


def clear_dictionary(
    components, codes, residual, *, n_nonzero_coefs, min_usage, max_coherence
):
    """Replace dead, rare and duplicated atoms; return how many were replaced.

    ``min_usage`` is a fraction of the mean usage ``n_samples * k / m``.
    """
    n_samples, n_components = codes.shape
    usage = np.diff(codes.indptr)
    mean_usage = n_samples * n_nonzero_coefs / n_components
    atoms = atoms_to_replace(
        components,
        usage,
        min_usage=min_usage * mean_usage,
        max_coherence=max_coherence,
    )
    return len(replace_atoms(components, atoms, residual))


def dbksvd_step(
    X,
    components,
    *,
    n_nonzero_coefs,
    fit_algorithm,
    dict_update,
    update_batch_size,
    positive,
    replace,
    replace_min_usage,
    replace_coherence,
    random_state,
    n_jobs,
    mp_tol=None,
    mp_refit=False,
    codes=None,
):
    """One DB-KSVD step (paper section 4.1) on the batch ``X``.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
        The batch.
    components : ndarray of shape (n_components, n_features)
        Unit-norm atoms; not modified.
    n_nonzero_coefs : int
        Nonzeros per code (``k``).
    fit_algorithm : {"mp", "omp"}
        Sparse coder.
    dict_update : {"ksvd", "approx"}
        Leading singular pair to tolerance, or one power step.
    update_batch_size : int
        Atoms refitted from one residual snapshot (``w``).
    positive : bool
        Nonnegative codes.
    replace : bool
        Whether to replace dead, rare and duplicated atoms after the update.
    replace_min_usage : float
        Atoms used by fewer than ``replace_min_usage * n_samples * k / m``
        samples (that fraction of the mean usage) are replaced.
    replace_coherence : float
        Of two atoms with ``|cos| > replace_coherence`` the less used is
        replaced.
    random_state : numpy.random.RandomState
        Draws the order of the atom updates.
    n_jobs : int or None
        Threads.
    mp_tol, mp_refit : float or None, bool
        Residual tolerance and least-squares refit of matching pursuit.
    codes : sparse matrix of shape (n_samples, n_components), default=None
        Codes to use instead of encoding (a known support).

    Returns
    -------
    components : ndarray of shape (n_components, n_features)
        The new atoms.
    info : dict
        ``relative_error`` and ``variance_explained`` of the batch after the
        atom update (before replacement) and ``n_replaced``.
    """
    components = components.copy()
    if codes is None:
        codes = encode_batch(
            X,
            components,
            n_nonzero_coefs=n_nonzero_coefs,
            algorithm=fit_algorithm,
            positive=positive,
            tol=mp_tol,
            refit=mp_refit,
            n_jobs=n_jobs,
        )
    residual, codes = refit_atoms(
        X,
        components,
        codes,
        dict_update=dict_update,
        update_batch_size=update_batch_size,
        positive=positive,
        random_state=random_state,
        n_jobs=n_jobs,
    )
    info = {
        "relative_error": _relative_error_of_residual(X, residual),
        "variance_explained": _variance_explained_of_residual(X, residual),
        "n_replaced": 0,
    }
    if replace:
        info["n_replaced"] = clear_dictionary(
            components,
            codes,
            residual,
            n_nonzero_coefs=n_nonzero_coefs,
            min_usage=replace_min_usage,
            max_coherence=replace_coherence,
        )
    return components, info
