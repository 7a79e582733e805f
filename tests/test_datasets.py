"""Data helpers."""

import numpy as np
import pytest

from sklearn_dbksvd.datasets import load_sample_patches, make_sparse_dictionary_problem


def test_planted_problem_matches_the_paper_description():
    X, dictionary, code = make_sparse_dictionary_problem(500, 16, 40, 4, random_state=0)
    np.testing.assert_allclose(np.linalg.norm(dictionary, axis=1), 1.0)
    assert np.all((code != 0).sum(axis=1) == 4)
    nonzero = code[code != 0]
    assert nonzero.min() >= 1.0 and nonzero.max() <= 2.0
    np.testing.assert_allclose(X, code @ dictionary)


def test_noise_dtype_and_seed():
    X, D, C = make_sparse_dictionary_problem(
        100, 8, 16, 2, noise=0.1, dtype=np.float32, random_state=1
    )
    assert X.dtype == D.dtype == C.dtype == np.float32
    residual_std = np.std(X - C @ D)
    assert 0.07 < residual_std < 0.13
    again, _, _ = make_sparse_dictionary_problem(
        100, 8, 16, 2, noise=0.1, dtype=np.float32, random_state=1
    )
    np.testing.assert_array_equal(X, again)


def test_k_larger_than_m_is_rejected():
    with pytest.raises(ValueError, match="exceeds"):
        make_sparse_dictionary_problem(10, 4, 3, 5)


def test_sample_patches_are_centred():
    pytest.importorskip("PIL")
    patches = load_sample_patches(max_patches=100, random_state=0)
    assert patches.shape == (100, 64)
    np.testing.assert_allclose(patches.mean(axis=1), 0.0, atol=1e-12)
