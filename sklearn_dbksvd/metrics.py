"""Quality measures of a dictionary and of its sparse codes.

``relative_error`` and ``variance_explained`` are the DB-KSVD paper's proxy
metrics (appendix A.1, Eqs. 6 and 7); ``coherence`` is the per-atom statistic
of its section 5.3; ``atom_recovery`` scores a dictionary against a planted one.
"""

from numbers import Real

import numpy as np
from sklearn.utils._param_validation import Interval, validate_params
from sklearn.utils.validation import check_array, check_consistent_length

from . import _backend, _numba
from ._parallel import parallel_map

__all__ = ["atom_recovery", "coherence", "relative_error", "variance_explained"]


def _relative_error_of_residual(X, residual):
    """Mean over samples of ``‖r_i‖ / ‖x_i‖``; all-zero samples count as 0."""
    norms = np.linalg.norm(X, axis=1)
    errors = np.linalg.norm(residual, axis=1)
    ratio = np.divide(errors, norms, out=np.zeros_like(errors), where=norms > 0)
    return float(ratio.mean()) if len(ratio) else 0.0


def _variance_explained_of_residual(X, residual):
    """``1 - mean_j var(r_j) / var(x_j)`` over features with nonzero variance."""
    var_x = X.var(axis=0)
    var_r = residual.var(axis=0)
    keep = var_x > 0
    if not keep.any():
        return 1.0 if not residual.any() else 0.0
    return float(1.0 - np.mean(var_r[keep] / var_x[keep]))


# Samples per block of the streamed batch metrics: 16 MiB of float32 at 2304
# features, so no temporary of the batch's size is made.
_BLOCK_BYTES = 2**24

# Columns per tile of the compiled block statistics: the four float64
# column sums of a tile (16 KiB) stay in the L1 cache while the rows stream.
_STATS_TILE = 512


def _batch_metrics(X, residual, *, n_jobs=None, return_sq_norms=False):
    """Relative error (Eq. 6) and variance explained (Eq. 7) of a batch, streamed.

    Equal to :func:`relative_error` and :func:`variance_explained` of ``X`` and
    ``X - residual``, but read block by block (``X`` may live on a device) in
    threads, with float64 sums, so no temporary of the batch's size is made.
    Each block's column sums are shifted by its first row (exact for data far
    from the origin); blocks merge their means and squared deviations (Chan,
    Golub and LeVeque) in block order, so the result does not depend on
    ``n_jobs``.

    Parameters
    ----------
    X : array of shape (n_samples, n_features)
        The batch, in any array namespace.
    residual : ndarray of shape (n_samples, n_features)
        ``X - X_reconstructed`` on the host.
    n_jobs : int, default=None
        Threads.
    return_sq_norms : bool, default=False
        Also return the squared residual norms ``‖r_i‖²`` (float64), which
        the same pass computes: the atom replacement ranks samples by them.

    Returns
    -------
    relative_error, variance_explained : float
    sq_norms : ndarray of shape (n_samples,)
        Only with ``return_sq_norms``.
    """
    n_samples, n_features = residual.shape
    sq_norms = np.empty(n_samples)
    if n_samples == 0:
        return (0.0, 1.0, sq_norms) if return_sq_norms else (0.0, 1.0)
    step = max(1, _BLOCK_BYTES // max(1, n_features * residual.itemsize))
    blocks = [slice(i, min(i + step, n_samples)) for i in range(0, n_samples, step)]

    def block_stats(block):
        X_block = np.ascontiguousarray(_backend.to_numpy(X[block, :]))
        R_block = np.ascontiguousarray(residual[block])
        return _block_stats(X_block, R_block, sq_norms[block])

    parts = parallel_map(block_stats, blocks, n_jobs=n_jobs)
    moments_x = moments_r = (0, np.zeros(n_features), np.zeros(n_features))
    for _, x_part, r_part, _ in parts:
        moments_x = _merge_moments(moments_x, x_part)
        moments_r = _merge_moments(moments_r, r_part)
    var_x = moments_x[2] / n_samples
    var_r = moments_r[2] / n_samples
    keep = var_x > 0
    if not keep.any():
        explained = 1.0 if not any(p[3] for p in parts) else 0.0
    else:
        explained = float(1.0 - np.mean(var_r[keep] / var_x[keep]))
    error = float(sum(p[0] for p in parts)) / n_samples
    return (error, explained, sq_norms) if return_sq_norms else (error, explained)


def _block_stats_numpy(X_block, R_block, sq_errors):
    """Sum of ratios, moments of ``X`` and ``R``, any nonzero residual.

    ``sq_errors`` (float64, one per row) receives ``‖r_i‖²``.
    """
    norms = np.sqrt(np.einsum("ij,ij->i", X_block, X_block, dtype=np.float64))
    np.einsum("ij,ij->i", R_block, R_block, dtype=np.float64, out=sq_errors)
    errors = np.sqrt(sq_errors)
    ratio = np.divide(errors, norms, out=np.zeros_like(errors), where=norms > 0)
    return (
        ratio.sum(), _moments(X_block), _moments(R_block), bool(np.any(R_block))
    )


def _block_stats_compiled(X_block, R_block, sq_errors):
    """:func:`_block_stats_numpy` in one compiled pass (blocks of one dtype)."""
    if X_block.dtype != R_block.dtype:
        return _block_stats_numpy(X_block, R_block, sq_errors)
    count = X_block.shape[0]
    sums = np.zeros((4, X_block.shape[1]))
    ratio = _block_stats_jit(X_block, R_block, sums, sq_errors, _STATS_TILE)
    moments = []
    for data, total, squares in (
        (X_block, sums[0], sums[1]), (R_block, sums[2], sums[3])
    ):
        shift = data[0].astype(np.float64)
        moments.append((count, shift + total / count, squares - total**2 / count))
    return ratio, moments[0], moments[1], bool(sums[3].any() or np.any(R_block[0]))


# Sum of ratios, moments of ``X`` and ``R``, any nonzero residual of a block.
_block_stats = _numba.twins(_block_stats_compiled, _block_stats_numpy)


@_numba.jit(fastmath={"reassoc", "nsz", "arcp", "contract"})
def _block_stats_jit(X, R, sums, sq_r, tile):  # pragma: no cover
    """One pass over a block: ``Σ_i ‖r_i‖/‖x_i‖`` and shifted column sums.

    ``sums`` (zeroed, float64) receives ``Σ (x − x₀)``, ``Σ (x − x₀)²``,
    ``Σ (r − r₀)``, ``Σ (r − r₀)²`` per column, ``x₀, r₀`` the block's first
    rows, and ``sq_r`` (float64, one per row) ``‖r_i‖²``. Columns go by
    tiles so that the sums of a tile stay in the L1 cache.
    """
    n, d = X.shape
    sq_x = np.zeros(n)
    sq_r[:] = 0.0
    for lo in range(0, d, tile):
        hi = min(lo + tile, d)
        for i in range(n):
            x = X[i]
            r = R[i]
            acc_x = 0.0
            acc_r = 0.0
            for f in range(lo, hi):
                xf = np.float64(x[f])
                rf = np.float64(r[f])
                acc_x += xf * xf
                acc_r += rf * rf
                dx = xf - X[0, f]
                dr = rf - R[0, f]
                sums[0, f] += dx
                sums[1, f] += dx * dx
                sums[2, f] += dr
                sums[3, f] += dr * dr
            sq_x[i] += acc_x
            sq_r[i] += acc_r
    ratio = 0.0
    for i in range(n):
        if sq_x[i] > 0:
            ratio += np.sqrt(sq_r[i]) / np.sqrt(sq_x[i])
    return ratio


def _moments(data):
    """``(count, mean, sum of squared deviations)`` of the columns, float64."""
    mean = data.mean(axis=0, dtype=np.float64)
    centred = data - mean.astype(data.dtype)
    m2 = np.einsum("ij,ij->j", centred, centred, dtype=np.float64)
    # Centred on the rounded mean: correct the sum for the rounding offset.
    offset = centred.sum(axis=0, dtype=np.float64)
    return data.shape[0], mean, m2 - offset**2 / max(data.shape[0], 1)


def _merge_moments(a, b):
    """Moments of the union of two blocks (Chan, Golub and LeVeque)."""
    count = a[0] + b[0]
    if count == 0:
        return a
    delta = b[1] - a[1]
    mean = a[1] + delta * (b[0] / count)
    return count, mean, a[2] + b[2] + delta**2 * (a[0] * b[0] / count)


def _check_pair(X, X_reconstructed):
    X = check_array(X, dtype=[np.float64, np.float32])
    X_reconstructed = check_array(X_reconstructed, dtype=[np.float64, np.float32])
    check_consistent_length(X, X_reconstructed)
    if X.shape != X_reconstructed.shape:
        raise ValueError(
            f"X has shape {X.shape} but X_reconstructed has shape "
            f"{X_reconstructed.shape}."
        )
    return X, X_reconstructed


@validate_params(
    {"X": ["array-like"], "X_reconstructed": ["array-like"]},
    prefer_skip_nested_validation=True,
)
def relative_error(X, X_reconstructed):
    """Mean relative reconstruction error (DB-KSVD paper, Eq. 6).

    ``(1/n) Σ_i ‖x_i − x̂_i‖₂ / ‖x_i‖₂``; samples that are exactly zero count as
    zero error. Lower is better.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        Data.
    X_reconstructed : array-like of shape (n_samples, n_features)
        Reconstruction, e.g. ``code @ components_``.

    Returns
    -------
    float

    Examples
    --------
    >>> from sklearn_dbksvd.metrics import relative_error
    >>> relative_error([[3.0, 4.0]], [[3.0, 0.0]])
    0.8
    """
    X, X_reconstructed = _check_pair(X, X_reconstructed)
    return _relative_error_of_residual(X, X - X_reconstructed)


@validate_params(
    {"X": ["array-like"], "X_reconstructed": ["array-like"]},
    prefer_skip_nested_validation=True,
)
def variance_explained(X, X_reconstructed):
    """Fraction of the per-feature variance explained (DB-KSVD paper, Eq. 7).

    ``1 − (1/d) Σ_j var(x_j − x̂_j) / var(x_j)`` over the features ``j`` (columns)
    with nonzero variance. Higher is better; 1 is a perfect reconstruction.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
        Data.
    X_reconstructed : array-like of shape (n_samples, n_features)
        Reconstruction.

    Returns
    -------
    float

    Examples
    --------
    >>> from sklearn_dbksvd.metrics import variance_explained
    >>> variance_explained([[0.0, 1.0], [2.0, 3.0]], [[0.0, 1.0], [2.0, 3.0]])
    1.0
    """
    X, X_reconstructed = _check_pair(X, X_reconstructed)
    return _variance_explained_of_residual(X, X - X_reconstructed)


def _unit_rows(dictionary):
    dictionary = check_array(dictionary, dtype=[np.float64, np.float32])
    norms = np.linalg.norm(dictionary, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError("The dictionary has an all-zero atom; it has no direction.")
    return dictionary / norms


@validate_params({"dictionary": ["array-like"]}, prefer_skip_nested_validation=True)
def coherence(dictionary):
    """Per-atom coherence and the mutual coherence of a dictionary.

    The coherence of atom ``i`` is ``max_{j≠i} |⟨d_i, d_j⟩|`` of the normalised
    atoms (DB-KSVD paper, section 5.3); the mutual coherence ``μ(D)`` is their
    maximum. Values near 1 flag duplicated atoms.

    Parameters
    ----------
    dictionary : array-like of shape (n_components, n_features)
        Atoms as rows; they are normalised first.

    Returns
    -------
    per_atom : ndarray of shape (n_components,)
        Largest absolute cosine of each atom with another atom.
    mutual : float
        ``per_atom.max()``.

    Examples
    --------
    >>> from sklearn_dbksvd.metrics import coherence
    >>> per_atom, mutual = coherence([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    >>> per_atom
    array([0.6, 0.8, 0.8])
    """
    atoms = _unit_rows(dictionary)
    if atoms.shape[0] < 2:
        raise ValueError("coherence needs at least two atoms.")
    overlap = np.abs(atoms @ atoms.T)
    np.fill_diagonal(overlap, 0.0)
    per_atom = np.minimum(overlap.max(axis=1), 1.0)
    return per_atom, float(per_atom.max())


@validate_params(
    {
        "true_dictionary": ["array-like"],
        "learned_dictionary": ["array-like"],
        "threshold": [Interval(Real, 0, 1, closed="both")],
    },
    prefer_skip_nested_validation=True,
)
def atom_recovery(true_dictionary, learned_dictionary, threshold=0.99):
    """Fraction of true atoms matched by a learned atom with ``|cos| ≥ threshold``.

    Parameters
    ----------
    true_dictionary : array-like of shape (n_true, n_features)
        Planted atoms.
    learned_dictionary : array-like of shape (n_components, n_features)
        Learned atoms.
    threshold : float, default=0.99
        Minimal absolute cosine similarity for a match.

    Returns
    -------
    float
        In ``[0, 1]``.

    Examples
    --------
    >>> from sklearn_dbksvd.metrics import atom_recovery
    >>> atom_recovery([[1.0, 0.0], [0.0, 1.0]], [[-1.0, 0.0], [0.7, 0.7]])
    0.5
    """
    true_atoms = _unit_rows(true_dictionary)
    learned_atoms = _unit_rows(learned_dictionary)
    if true_atoms.shape[1] != learned_atoms.shape[1]:
        raise ValueError(
            f"The true atoms have {true_atoms.shape[1]} features but the learned "
            f"atoms have {learned_atoms.shape[1]}."
        )
    best = np.abs(true_atoms @ learned_atoms.T).max(axis=1)
    return float(np.mean(best >= threshold))
