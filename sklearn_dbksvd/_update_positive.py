"""Nonnegative atoms (``positive_dict=True``): the NN-K-SVD rank-1 update.

Aharon, Elad and Bruckstein's NN-K-SVD replaces the K-SVD update of one atom,
the leading singular pair of its error matrix ``E``, by a nonnegative rank-1
fit: starting from the singular pair, alternate exact projected updates of the
atom and of its coefficients. Each update minimises ``‖E − x dᵀ‖²_F`` over one
factor with the other fixed; the problem is separable per entry, so the
projected least-squares solution is a clipped product, and the error never
increases.
"""

import numpy as np

# Alternations after the singular pair. Starting from the SVD solution the
# atom settles in a handful of updates on planted problems; the cap bounds
# the cost of pairs that creep (each update is two products with ``E``).
_MAX_ALTERNATIONS = 20


def _best_start(E, atom, positive_code):
    """Of ``±atom`` clipped at zero, the start whose best codes fit ``E`` best.

    The singular pair has no sign of its own; each sign gives a different
    nonnegative atom. Returns ``(d, x)``, ``d`` not normalised. A nonzero
    atom has an entry of one sign or the other, so one start always exists.
    """
    best, best_error = None, np.inf
    for sign in (1, -1):
        d = np.maximum(sign * atom, 0)
        d_sq = np.dot(d, d)
        if d_sq == 0:
            continue
        x = _codes_for(E, d, d_sq, positive_code)
        # ‖E − x dᵀ‖² − ‖E‖² = ‖x‖² ‖d‖² − 2 xᵀ E d, and xᵢ (E d)ᵢ =
        # ‖d‖² xᵢ² for every code, clipped (xᵢ = 0) or not: the error is
        # ‖E‖² − ‖x‖² ‖d‖².
        error = -np.dot(x, x) * d_sq
        if error < best_error:
            best, best_error = (d, x), error
    return best  # never None: ``atom`` has a nonzero entry


def _codes_for(E, d, d_sq, positive_code):
    """Least-squares codes of the rows of ``E`` on ``d`` (clipped if positive)."""
    x = (E @ d) / d_sq
    return np.maximum(x, 0) if positive_code else x


def nonnegative_rank_one(E, atom, code, *, positive_code=False):
    """Nonnegative rank-1 fit ``E ≈ code atomᵀ`` with ``atom ≥ 0`` (NN-K-SVD).

    Minimises ``‖E − x dᵀ‖²_F`` subject to ``d ≥ 0`` (and ``x ≥ 0`` with
    ``positive_code``) by alternating the exact projected updates
    ``d ← max(Eᵀx, 0) / ‖x‖²`` and ``x ← E d / ‖d‖²`` (clipped at zero with
    ``positive_code``), starting from the leading singular pair of ``E``
    projected onto the constraints.

    Parameters
    ----------
    E : ndarray of shape (n_users, n_features)
        Error matrix of one atom, samples as rows.
    atom : ndarray of shape (n_features,)
        Unit leading right singular vector of ``E`` (any sign).
    code : ndarray of shape (n_users,)
        The matching coefficients ``E @ atom`` (unused: the start is the
        projection of ``atom``, with its best codes).
    positive_code : bool, default=False
        Keep the coefficients nonnegative too.

    Returns
    -------
    atom : ndarray of shape (n_features,)
        Unit-norm atom, every entry ``>= 0``.
    code : ndarray of shape (n_users,)
        Coefficients of the users on the atom (``>= 0`` with
        ``positive_code``).

    References
    ----------
    M. Aharon, M. Elad, A. M. Bruckstein, "K-SVD and its non-negative
    variant for dictionary design", Proc. SPIE 5914, Wavelets XI, 2005.
    """
    d, x = _best_start(E, atom, positive_code)
    tol = np.sqrt(np.finfo(E.dtype).eps)
    for _ in range(_MAX_ALTERNATIONS):
        x_sq = np.dot(x, x)
        if x_sq == 0:
            break  # every code clipped (or E = 0): nothing to fit the atom to
        new_d = np.maximum(E.T @ x, 0) / x_sq
        d_sq = np.dot(new_d, new_d)
        if d_sq == 0:
            break
        change = np.linalg.norm(new_d - d) / np.sqrt(d_sq)
        d = new_d
        x = _codes_for(E, d, d_sq, positive_code)
        if change <= tol:
            break
    norm = np.sqrt(np.dot(d, d))
    atom, code = d / norm, x * norm
    return atom.astype(E.dtype, copy=False), code.astype(E.dtype, copy=False)


def nonnegative_directions(rows, *, allow_flip, random_state=None):
    """Unit nonnegative directions closest to ``rows``, one per row.

    Each row is clipped at zero; with ``allow_flip`` (signed codes can carry a
    minus sign) the clipped row or the clipped negated row, whichever keeps
    more energy. Rows that clip to zero become ``|U(−1/2, 1/2)|`` directions
    drawn from ``random_state`` (or stay zero without one).

    Parameters
    ----------
    rows : ndarray of shape (n_rows, n_features)
        Candidate atoms (samples, residuals, initial atoms).
    allow_flip : bool
        Whether a row may be negated before clipping.
    random_state : numpy.random.RandomState, default=None
        Draws replacements for rows with no positive part.

    Returns
    -------
    ndarray of shape (n_rows, n_features)
        Nonnegative rows of unit norm (zero rows only without
        ``random_state``), in the dtype of ``rows``.
    """
    positive = np.maximum(rows, 0)
    if allow_flip:
        negative = np.maximum(-rows, 0)
        flip = np.einsum("ij,ij->i", negative, negative) > np.einsum(
            "ij,ij->i", positive, positive
        )
        positive[flip] = negative[flip]
    norms = np.linalg.norm(positive, axis=1)
    empty = norms == 0
    if random_state is not None and empty.any():
        shape = (int(empty.sum()), rows.shape[1])
        drawn = np.abs(random_state.uniform(-0.5, 0.5, shape))
        positive[empty] = drawn
        norms[empty] = np.linalg.norm(drawn, axis=1)
    norms[norms == 0] = 1
    return (positive / norms[:, None]).astype(rows.dtype, copy=False)
