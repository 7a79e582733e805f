"""The Matryoshka DB-KSVD step (paper section 4.2): nested levels of atoms.

The atoms are split into groups of doubling size. Group 1 is encoded and
refitted on the batch, group 2 on the residual group 1 leaves after its
update, and so on, each group with its own share of the ``k`` nonzeros
(:class:`~sklearn_dbksvd.MatryoshkaDBKSVD`). The plain step is
:func:`~sklearn_dbksvd._step.dbksvd_step`, beside this one.
"""

from numbers import Integral

import numpy as np
import scipy.sparse as sp

from ._backend import to_numpy
from ._step import clear_dictionary, encode_batch, refit_atoms
from .metrics import _relative_error_of_residual, _variance_explained_of_residual


def default_group_sizes(n_components):
    """Doubling group sizes summing to ``n_components``.

    The first group has ``max(1, n_components // 16)`` atoms and every next
    group as many atoms as all groups before it (``g, g, 2g, 4g, ...``), for
    as long as the next group fits; the last group absorbs the remainder.
    From 16 atoms on there are always five groups, the paper's choice for
    4096 atoms (A.1): 4096 gives (256, 256, 512, 1024, 2048) and 1000 gives
    (62, 62, 124, 248, 504).
    """
    sizes = [max(1, n_components // 16)]
    total = sizes[0]
    while 2 * total <= n_components:
        sizes.append(total)
        total *= 2
    sizes[-1] += n_components - total
    return tuple(sizes)


def check_group_sizes(group_sizes, n_components):
    """Resolve ``group_sizes`` (None means the default) and validate it."""
    if group_sizes is None:
        return default_group_sizes(n_components)
    sizes = np.asarray(group_sizes)
    if sizes.ndim != 1 or sizes.size == 0:
        raise ValueError(
            f"group_sizes must be a non-empty sequence of ints; got {group_sizes!r}."
        )
    if not all(isinstance(s, Integral | np.integer) for s in sizes.tolist()):
        raise ValueError(f"group_sizes must contain ints; got {group_sizes!r}.")
    if np.any(sizes < 1):
        raise ValueError(f"group_sizes must be positive; got {group_sizes!r}.")
    if sizes.sum() != n_components:
        raise ValueError(
            f"group_sizes {tuple(sizes.tolist())} sum to {sizes.sum()}, but "
            f"n_components={n_components}."
        )
    return tuple(int(s) for s in sizes)


def nonzero_shares(n_nonzero_coefs, n_groups):
    """Equal shares of ``k`` per group; the first ``k % n_groups`` get one more.

    The extra nonzeros go to the coarse groups, which the nesting asks to
    explain the most. The shares always sum to exactly ``k``.
    """
    base, extra = divmod(n_nonzero_coefs, n_groups)
    return [base + (g < extra) for g in range(n_groups)]


def nested_levels(group_sizes, n_nonzero_coefs):
    """``(atom slice, share of k)`` of each level of the nested coding.

    A level is a group, except when ``k`` is smaller than the number of
    groups: then groups ``k+1, ...`` would have no nonzero of their own and
    are merged into group ``k`` (one level, one nonzero), so that every atom
    can still be used and learned.
    """
    shares = nonzero_shares(n_nonzero_coefs, len(group_sizes))
    bounds = [0, *np.cumsum(group_sizes).tolist()]
    n_levels = sum(share > 0 for share in shares)
    levels = [(slice(bounds[g], bounds[g + 1]), shares[g]) for g in range(n_levels)]
    last, share = levels[-1]
    levels[-1] = (slice(last.start, bounds[-1]), share)
    return levels


def nested_pass(
    X, components, settings, *, random_state=None, update=False, replace=False,
    codes=None,
):
    """Encode (and, with ``update``, refit) the levels one after another.

    Level ``g`` is encoded on the residual that levels ``1..g-1`` leave, after
    their update (paper section 4.2).

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
        The batch.
    components : ndarray of shape (n_components, n_features)
        Atoms; updated in place with ``update``.
    settings : StepSettings
        ``levels`` (from :func:`nested_levels`), the coder of each level
        (``fit_algorithm``; "lars", "cd": scikit-learn's lasso coders with
        penalty ``alpha`` and ``max_iter`` iterations), ``positive_code``,
        ``n_jobs``, ``backend``, and, with ``update``, the K-SVD refit and
        the replacement thresholds. ``mp_tol`` is relative to ``‖x‖``: a
        sample whose residual already meets it gets no further nonzeros;
        inside a level the coder stops at ``mp_tol`` times the norm of its
        own input (the coder takes one scalar tolerance), so it may stop
        later than strictly needed, never earlier.
    random_state : numpy.random.RandomState, default=None
        Draws the order of the atom updates (with ``update``).
    update : bool, default=False
        Refit each level (K-SVD) on its residual; otherwise only encode.
    replace : bool, default=False
        With ``update``, replace each level's dead, rare and duplicated atoms.
    codes : sparse matrix of shape (n_samples, n_components), default=None
        Codes to use instead of encoding (a known support).

    Returns
    -------
    residual : ndarray of shape (n_samples, n_features)
        What all levels leave of ``X`` (after the updates, before replacement).
    codes : scipy.sparse.csr_matrix of shape (n_samples, n_components)
    n_replaced : int
    """
    algorithm, positive = settings.fit_algorithm, settings.positive_code
    mp_tol = settings.mp_tol
    residual = X
    if mp_tol is not None:
        sq_target = mp_tol**2 * np.einsum("ij,ij->i", X, X)
    blocks, n_replaced = [], 0
    for atoms, share in settings.levels:
        group = np.array(components[atoms])
        if codes is not None:
            level_codes = sp.csr_matrix(codes[:, atoms])
        else:
            level_input = residual
            if mp_tol is not None:
                done = np.einsum("ij,ij->i", residual, residual) <= sq_target
                # A zero row gets no nonzero from matching pursuit.
                level_input = np.where(done[:, None], 0, residual)
            level_codes = encode_batch(
                level_input,
                group,
                # scikit-learn's OMP refuses more nonzeros than atoms.
                n_nonzero_coefs=min(share, len(group)),
                algorithm=algorithm,
                positive=positive,
                tol=mp_tol,
                refit=settings.mp_refit,
                n_jobs=settings.n_jobs,
                backend=settings.backend,
                alpha=settings.alpha,
                max_iter=settings.max_iter,
            )
        if not update:
            residual = residual - level_codes @ group
        else:
            residual, level_codes = refit_atoms(
                residual,
                group,
                level_codes,
                dict_update=settings.dict_update,
                update_batch_size=settings.update_batch_size,
                positive=positive,
                random_state=random_state,
                n_jobs=settings.n_jobs,
                backend=settings.backend,
                positive_dict=settings.positive_dict,
            )
            if replace:
                if algorithm in ("lars", "cd"):
                    # The lasso has no budget: usage against its mean support.
                    share = level_codes.nnz / max(1, level_codes.shape[0])
                # Per group: a group's atoms are judged on the residual it fits.
                n_replaced += clear_dictionary(
                    group,
                    level_codes,
                    residual,
                    n_nonzero_coefs=share,
                    min_usage=settings.replace_min_usage,
                    max_coherence=settings.replace_coherence,
                    positive_dict=settings.positive_dict,
                    positive_code=positive,
                )
            components[atoms] = group
        blocks.append(level_codes)
    return residual, sp.hstack(blocks, format="csr"), n_replaced


def matryoshka_step(X, components, settings, *, random_state, replace=True):
    """One Matryoshka DB-KSVD step (paper section 4.2) on the batch ``X``.

    As :func:`~sklearn_dbksvd._step.dbksvd_step`, level after level: each
    level of ``settings.levels`` is encoded with its share of ``k`` on the
    residual the levels before it leave after their update, then refitted
    (K-SVD) and cleared (dead, rare and duplicated atoms of the level).

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
        The batch (held on the host).
    components : ndarray of shape (n_components, n_features)
        Unit-norm atoms; not modified.
    settings : StepSettings
        With ``levels`` (see :func:`~sklearn_dbksvd._settings.fit_settings`).
    random_state : numpy.random.RandomState
        Draws the order of the atom updates.
    replace : bool, default=True
        Whether to replace dead, rare and duplicated atoms after the update.

    Returns
    -------
    components : ndarray of shape (n_components, n_features)
        The new atoms (the input is not modified).
    info : dict
        ``relative_error`` and ``variance_explained`` of the final residual
        against the batch, and ``n_replaced`` over all groups.
    codes : scipy.sparse.csr_matrix of shape (n_samples, n_components)
        The codes after the update.
    """
    # Each level's products are small next to a whole-batch step: the
    # nested pass runs on the host.
    X = to_numpy(X)
    components = components.copy()
    residual, codes, n_replaced = nested_pass(
        X, components, settings, random_state=random_state, update=True,
        replace=replace,
    )
    info = {
        "relative_error": _relative_error_of_residual(X, residual),
        "variance_explained": _variance_explained_of_residual(X, residual),
        "n_replaced": n_replaced,
    }
    return components, info, codes
