"""Replacement of dead and duplicated atoms ("clearing the dictionary").

K-SVD leaves atoms that no sample uses, that few samples use, or that
duplicate another atom; they stay stuck there. Aharon, Elad and Bruckstein
replace them by the worst-represented signals. Measured on a planted problem
(32 features, 64 atoms, k=3), this lifts atom recovery from about 84 % to 97 %.
"""

import numpy as np

from . import _backend, _numba
from ._update_positive import nonnegative_directions

# Bytes of one block of rows of the Gram matrix in the NumPy near-duplicate
# search: 16 MiB, so its temporaries never take the (n_components,
# n_components) size (1 GiB in float32 at 16384 atoms).
_OVERLAP_BLOCK_BYTES = 2**24


def rare_atoms(usage, min_usage):
    """Sorted indices of the atoms used by fewer than ``min_usage`` samples.

    Unused atoms always count, whatever ``min_usage``.
    """
    return np.flatnonzero((usage < min_usage) | (usage == 0))


def near_duplicates(gram, usage, max_coherence):
    """The less used atom of each pair with ``|G_ij| > max_coherence`` (sorted).

    Pairs ``j > i`` of the Gram matrix ``G`` only; on a tie of usage the later
    atom. The threshold is compared in ``G``'s dtype.

    Parameters
    ----------
    gram : ndarray of shape (n_components, n_components)
        ``D Dᵀ`` of unit-norm atoms, on the host.
    usage : ndarray of shape (n_components,)
        Number of samples using each atom.
    max_coherence : float
        Largest ``|cos|`` two atoms may have.

    Returns
    -------
    ndarray of int
        Sorted atom indices.
    """
    gram = np.asarray(gram)
    threshold = gram.dtype.type(max_coherence)
    losers = np.zeros(len(gram), dtype=bool)
    _mark_near_duplicates(gram, np.asarray(usage), threshold, losers)
    return np.flatnonzero(losers)


def _near_duplicates_numpy(gram, usage, threshold, losers, start=0):
    """:func:`_near_duplicates_jit` in NumPy, a block of rows at a time."""
    n_rows, n_cols = gram.shape
    step = max(1, _OVERLAP_BLOCK_BYTES // max(1, n_cols * gram.itemsize))
    for first in range(0, n_rows, step):
        block = np.abs(gram[first : first + step, first:])
        i, j = np.nonzero(block > threshold)
        upper = j > i
        i, j = i[upper] + first + start, j[upper] + first + start
        losers[np.where(usage[i] < usage[j], i, j)] = True


@_numba.jit()
def _near_duplicates_jit(gram, usage, threshold, losers, start=0):  # pragma: no cover
    """:func:`near_duplicates` in one pass over the upper triangle of ``gram``.

    ``gram`` may be the rows ``start:`` of the Gram matrix and its columns
    ``start:`` (row ``r`` is atom ``start + r``, column ``c`` atom
    ``start + c``): the pairs of a block of rows.
    """
    n_rows, n_cols = gram.shape
    for r in range(n_rows):
        row = gram[r]
        i = start + r
        for c in range(r + 1, n_cols):
            if abs(row[c]) > threshold:
                j = start + c
                if usage[i] < usage[j]:
                    losers[i] = True
                else:
                    losers[j] = True


# Marks in ``losers`` the less used atom of each pair above ``threshold``.
_mark_near_duplicates = _numba.twins(_near_duplicates_jit, _near_duplicates_numpy)


def near_duplicates_of_atoms(components, usage, max_coherence, *, backend=None):
    """:func:`near_duplicates` without the whole Gram matrix.

    The upper triangle is computed a block of rows at a time,
    ``D[i:j] D[i:]ᵀ`` in ``_OVERLAP_BLOCK_BYTES``, and each block's pairs are
    judged as they come: memory ``O(m)`` rows of one block, not ``m²``. The
    same pairs as :func:`near_duplicates` on ``D Dᵀ``, to the rounding of
    the products.

    Parameters
    ----------
    components : ndarray of shape (n_components, n_features)
        Unit-norm atoms, on the host.
    usage : ndarray of shape (n_components,)
        Number of samples using each atom.
    max_coherence : float
        Largest ``|cos|`` two atoms may have.
    backend : ArrayBackend, default=None
        Runs the products (NumPy by default).

    Returns
    -------
    ndarray of int
        Sorted atom indices.
    """
    if backend is None:
        backend = _backend.ArrayBackend(np)
    n_components = len(components)
    usage = np.asarray(usage)
    threshold = components.dtype.type(max_coherence)
    losers = np.zeros(n_components, dtype=bool)
    step = max(1, _OVERLAP_BLOCK_BYTES // max(1, n_components * components.itemsize))
    for start in range(0, n_components, step):
        stop = min(start + step, n_components)
        block = _backend.correlations(
            backend, components[start:stop], backend.asarray(components[start:])
        )
        _mark_near_duplicates(block, usage, threshold, losers, start)
    return np.flatnonzero(losers)


def residual_sq_norms(residual):
    """Squared row norms ``‖r_i‖²`` in float64, with no temporary of its size.

    What the NumPy metrics pass (``metrics._batch_metrics``) computes; the
    compiled one agrees to rounding.
    """
    return np.einsum("ij,ij->i", residual, residual, dtype=np.float64)


def replace_atoms(
    components, atoms, residual, *, positive_dict=False, positive_code=False,
    sq_norms=None,
):
    """Put the worst-fitted samples' normalised residuals in place of ``atoms``.

    One distinct sample per atom, by decreasing residual norm; atoms beyond the
    number of samples with a nonzero residual are left as they are.

    Parameters
    ----------
    components : ndarray of shape (n_components, n_features)
        Updated in place.
    atoms : ndarray of int
        Atoms to replace.
    residual : ndarray of shape (n_samples, n_features)
        Residual of the batch after the atom update.
    positive_dict : bool, default=False
        Nonnegative atoms: a residual becomes its nonnegative part (or, with
        signed codes, that of its negation when it keeps more energy);
        residuals with no such part are skipped.
    positive_code : bool, default=False
        With ``positive_dict``, codes are nonnegative too, so residuals are
        never negated.
    sq_norms : ndarray of shape (n_samples,), default=None
        Squared row norms of ``residual`` (float64) if known.

    Returns
    -------
    ndarray of int
        The atoms actually replaced.
    """
    if sq_norms is None:
        sq_norms = residual_sq_norms(residual)
    norms = np.sqrt(sq_norms)
    n_new = min(len(atoms), int(np.count_nonzero(norms > 0)))
    if n_new == 0:
        return atoms[:0]
    worst = np.argsort(norms, kind="stable")[::-1][:n_new]
    if positive_dict:
        new = nonnegative_directions(residual[worst], allow_flip=not positive_code)
        new = new[np.any(new > 0, axis=1)]
        atoms = atoms[: len(new)]
        components[atoms] = new
        return atoms
    atoms = atoms[:n_new]
    components[atoms] = residual[worst] / norms[worst, None]
    return atoms
