"""Quality measures of a dictionary and of its sparse codes.

``relative_error`` and ``variance_explained`` are the DB-KSVD paper's proxy
metrics (appendix A.1, Eqs. 6 and 7); ``coherence`` is the per-atom statistic
of its section 5.3; ``atom_recovery`` scores a dictionary against a planted one.
"""

from numbers import Real

import numpy as np
from sklearn.utils._param_validation import Interval, validate_params
from sklearn.utils.validation import check_array, check_consistent_length

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
