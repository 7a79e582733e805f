"""The public coders refuse what they cannot code (issue 19)."""

import numpy as np
import pytest

from sklearn_dbksvd import sparse_encode_mp, sparse_encode_omp


def unit_problem(n_components=100, n_features=20, seed=0):
    rng = np.random.RandomState(seed)
    atoms = rng.randn(n_components, n_features)
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    return rng.randn(5, n_features), atoms


def test_omp_refuses_more_nonzeros_than_atoms():
    X, atoms = unit_problem()
    with pytest.raises(ValueError, match="n_nonzero_coefs=200 exceeds the 100 atoms"):
        sparse_encode_omp(X, atoms, 200)
    assert np.count_nonzero(sparse_encode_omp(X, atoms[:20], 20), axis=1).max() <= 20


@pytest.mark.parametrize("with_gram", [False, True])
def test_mp_refuses_atoms_that_are_not_unit_norm(with_gram):
    X, atoms = unit_problem()
    scaled = atoms.copy()
    scaled[7] *= 3  # matching pursuit would add 3x too much of it, every time
    gram = scaled @ scaled.T if with_gram else None
    with pytest.raises(ValueError, match="unit-norm atoms; atom 7 has norm 3"):
        sparse_encode_mp(X, scaled, 5, gram=gram)
    # Normalised as the message says, the codes reconstruct as well as MP can:
    # the residual never grows (a step removes a² from ‖r‖²).
    code = sparse_encode_mp(X, atoms, 5)
    assert np.all(
        np.linalg.norm(X - code @ atoms, axis=1) <= np.linalg.norm(X, axis=1)
    )


def test_mp_tolerates_float32_rounding_of_unit_atoms():
    X, atoms = unit_problem()
    atoms = atoms.astype(np.float32) * np.float32(1 + 1e-6)
    assert sparse_encode_mp(X.astype(np.float32), atoms, 3).dtype == np.float32
