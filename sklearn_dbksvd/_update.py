"""Dictionary update of DB-KSVD: inner-batched K-SVD atom updates.

Atom ``j`` is refitted to the error of the samples that use it,
``E = R[Ω_j] + x_j d_jᵀ`` (paper Eq. 4, with samples as rows), by the leading
singular pair of ``E``. Atoms are visited in a shuffled order, in inner batches
that all read the same residual snapshot; the residual is then corrected for
the whole batch (paper section 4.1, "Inner Batching"). With batches of one atom
this is exactly the sequential K-SVD of Aharon, Elad and Bruckstein.
"""

import numpy as np

from ._parallel import parallel_map

# Krylov dimension of one restart of the Lanczos bidiagonalisation. The old
# atom is an excellent start, so a few vectors usually converge in one restart.
_LANCZOS_STEPS = 6
_MAX_RESTARTS = 30


def _singular_tol(dtype):
    """Relative residual ``‖Eᵀu − σv‖ / σ`` at which a singular pair is final.

    A hundred machine epsilons: as tight as rounding in the products allows.
    """
    return 100 * np.finfo(dtype).eps


def _flip_sign(atom, code):
    """Make the largest-magnitude entry of the atom positive (as ``svd_flip``)."""
    if atom[np.argmax(np.abs(atom))] < 0:
        return -atom, -code
    return atom, code


def _lanczos_bidiag(E, v, n_steps):
    """Golub-Kahan-Lanczos bidiagonalisation of ``E`` started at unit ``v``.

    Returns the bases ``V`` (rows), ``U`` (rows) and the upper bidiagonal ``B``
    with ``E Vᵀ = Uᵀ B``. Fully re-orthogonalised: the bases are tiny.
    """
    # U can hold at most n_users vectors; V one more (B is then rectangular).
    n_steps = min(n_steps, E.shape[1])
    V = np.zeros((n_steps, E.shape[1]), dtype=E.dtype)
    U = np.zeros((n_steps, E.shape[0]), dtype=E.dtype)
    B = np.zeros((n_steps, n_steps), dtype=E.dtype)
    V[0] = v
    u = E @ v
    for i in range(n_steps):
        if i > 0:
            u = E @ V[i] - B[i - 1, i] * U[i - 1]
            u -= U[:i].T @ (U[:i] @ u)
        alpha = np.linalg.norm(u)
        if alpha <= np.finfo(E.dtype).eps * max(B[i - 1, i] if i else 0, 1e-30):
            # E V[i] lies in span(U[:i]): keep V[i] with a rectangular B.
            return V[: i + 1], U[:i], B[:i, : i + 1]
        U[i] = u / alpha
        B[i, i] = alpha
        if i + 1 == n_steps:
            break
        w = E.T @ U[i] - alpha * V[i]
        w -= V[: i + 1].T @ (V[: i + 1] @ w)
        beta = np.linalg.norm(w)
        if beta <= np.finfo(E.dtype).eps * alpha:
            # Invariant subspace found: the Ritz pair below is exact.
            return V[: i + 1], U[: i + 1], B[: i + 1, : i + 1]
        V[i + 1] = w / beta
        B[i, i + 1] = beta
    return V, U, B


def leading_singular_pair(E, v0, *, tol=None, max_restarts=_MAX_RESTARTS):
    """Leading singular pair of ``E`` by restarted Lanczos bidiagonalisation.

    Never forms a full SVD of ``E``: each restart costs ``2 * _LANCZOS_STEPS``
    products with ``E`` or ``Eᵀ`` and an SVD of a tiny bidiagonal matrix.

    Parameters
    ----------
    E : ndarray of shape (n_users, n_features)
        Error matrix of one atom, samples as rows.
    v0 : ndarray of shape (n_features,)
        Starting guess for the right singular vector (the old atom).
    tol : float, default=None
        Relative residual ``‖Eᵀu − σv‖ / σ`` to reach; None means a hundred
        machine epsilons of ``E.dtype``.
    max_restarts : int
        Cap on restarts.

    Returns
    -------
    atom : ndarray of shape (n_features,)
        Unit right singular vector, largest-magnitude entry positive.
    code : ndarray of shape (n_users,)
        ``σ u``: the coefficients of the users on the new atom.
    """
    tol = _singular_tol(E.dtype) if tol is None else tol
    v = v0 / np.linalg.norm(v0)
    for _ in range(max_restarts):
        V, U, B = _lanczos_bidiag(E, v, _LANCZOS_STEPS)
        if len(B) == 0:  # E v = 0
            row_norms = np.linalg.norm(E, axis=1)
            if not row_norms.any():
                return _flip_sign(v, np.zeros(E.shape[0], dtype=E.dtype))
            # v is orthogonal to every row: restart inside the row space.
            v = E[np.argmax(row_norms)] / row_norms.max()
            continue
        P, s, Qt = np.linalg.svd(B, full_matrices=False)
        v = Qt[0] @ V
        v /= np.linalg.norm(v)
        u = P[:, 0] @ U
        sigma = s[0]
        residual = np.linalg.norm(E.T @ u - sigma * v)
        if residual <= tol * sigma:
            break
    return _flip_sign(v, sigma * u)


def rank_one_power_step(E, atom, code):
    """One power step toward the leading pair (approximate K-SVD).

    Rubinstein, Zibulevsky and Elad (2008): ``d ← Eᵀx / ‖Eᵀx‖``, ``x ← E d``.
    """
    new_atom = E.T @ code
    norm = np.linalg.norm(new_atom)
    if norm <= np.finfo(E.dtype).tiny:
        return atom, code
    new_atom /= norm
    return _flip_sign(new_atom, E @ new_atom)


def _refit_atom(residual, atom, users, code, dict_update, positive):
    """New ``(atom, code)`` of one atom from the residual snapshot.

    With ``positive``, the pair is oriented so that the codes are mostly
    positive and negative codes are clipped to zero (the residual correction
    uses the clipped codes, so it stays exact).
    """
    E = residual[users]
    E += np.outer(code, atom)
    if dict_update == "approx":
        atom, code = rank_one_power_step(E, atom, code)
    else:
        atom, code = leading_singular_pair(E, atom)
    if positive:
        if code.sum() < 0:
            atom, code = -atom, -code
        code = np.maximum(code, 0)
    return atom, code


def update_dictionary(
    residual,
    components,
    codes,
    order,
    *,
    update_batch_size,
    dict_update="ksvd",
    positive=False,
    n_jobs=None,
):
    """Refit every used atom, in inner batches, keeping the residual exact.

    Parameters
    ----------
    residual : ndarray of shape (n_samples, n_features)
        ``X - codes @ components``; updated in place.
    components : ndarray of shape (n_components, n_features)
        Atoms; updated in place.
    codes : scipy.sparse.csc_matrix of shape (n_samples, n_components)
        Codes with sorted indices and no explicit zeros; ``codes.data`` is
        updated in place (the support never changes).
    order : ndarray of shape (n_components,)
        Order in which atoms are visited.
    update_batch_size : int
        Atoms refitted together from one residual snapshot (``w``).
    dict_update : {"ksvd", "approx"}
        Leading singular pair to tolerance, or one power step.
    positive : bool
        Keep the codes nonnegative.
    n_jobs : int or None
        Threads refitting the atoms of one inner batch.
    """
    used = np.diff(codes.indptr) > 0
    order = order[used[order]]
    for start in range(0, len(order), update_batch_size):
        batch = order[start : start + update_batch_size]
        spans = [slice(codes.indptr[j], codes.indptr[j + 1]) for j in batch]

        def refit(job):
            j, span = job
            return _refit_atom(
                residual,
                components[j],
                codes.indices[span],
                codes.data[span],
                dict_update,
                positive,
            )

        refitted = parallel_map(refit, zip(batch, spans), n_jobs=n_jobs)
        for j, span, (atom, code) in zip(batch, spans, refitted):
            users = codes.indices[span]
            # R ← R + x_old d_oldᵀ − x_new d_newᵀ on the users only.
            residual[users] += np.outer(codes.data[span], components[j]) - np.outer(
                code, atom
            )
            components[j] = atom
            codes.data[span] = code
