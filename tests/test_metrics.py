"""Metrics against their formulas written out."""

import numpy as np
import pytest

from sklearn_dbksvd import _numba, metrics
from sklearn_dbksvd.metrics import _batch_metrics as batch_metrics
from sklearn_dbksvd.metrics import (
    atom_recovery,
    coherence,
    relative_error,
    variance_explained,
)
from tests import _oracles as oracles


def test_relative_error_is_mean_of_ratios():
    X = np.array([[3.0, 4.0], [1.0, 0.0], [0.0, 0.0]])
    X_hat = np.array([[3.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    # 4/5, 0, and 0 for the all-zero sample.
    assert relative_error(X, X_hat) == pytest.approx(0.8 / 3)


def test_variance_explained_per_feature():
    rng = np.random.RandomState(0)
    X = rng.randn(50, 3)
    X_hat = X.copy()
    X_hat[:, 0] = 0.0  # feature 0 unexplained, others perfect
    assert variance_explained(X, X_hat) == pytest.approx(1 - 1 / 3)
    assert variance_explained(X, X) == 1.0
    # A constant offset is not variance: it costs nothing.
    assert variance_explained(X, X + 5.0) == pytest.approx(1.0)


def test_coherence_per_atom_and_mutual():
    atoms = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, -2.0]])
    per_atom, mutual = coherence(atoms)
    s = 1 / np.sqrt(2)
    np.testing.assert_allclose(per_atom, [s, s, s])
    assert mutual == pytest.approx(s)
    with pytest.raises(ValueError, match="all-zero atom"):
        coherence([[0.0, 0.0], [1.0, 0.0]])
    with pytest.raises(ValueError, match="at least two"):
        coherence([[1.0, 0.0]])


def test_atom_recovery_ignores_sign_and_scale():
    true = np.eye(3)
    learned = np.array([[-2.0, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 1.0, 1.0]])
    assert atom_recovery(true, learned) == pytest.approx(2 / 3)
    assert atom_recovery(true, learned, threshold=0.7) == 1.0
    with pytest.raises(ValueError, match="features"):
        atom_recovery(true, np.eye(2))


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="shape"):
        relative_error(np.ones((3, 2)), np.ones((3, 3)))


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 1e-5)])
@pytest.mark.parametrize("n_jobs", [1, 2])
def test_batch_metrics_equal_the_metrics(monkeypatch, compiled, dtype, rtol, n_jobs):
    if compiled and _numba.numba is None:
        pytest.skip("numba not installed")
    monkeypatch.setattr(_numba, "USE_NUMBA", compiled)
    # Several blocks, an odd number of columns for the tiles, an all-zero
    # sample, features far from the origin (the shifted sums must cope).
    monkeypatch.setattr(metrics, "_BLOCK_BYTES", 7 * 37 * np.dtype(dtype).itemsize)
    monkeypatch.setattr(metrics, "_STATS_TILE", 16)
    rng = np.random.RandomState(0)
    X = rng.randn(50, 37) * rng.uniform(0.1, 3, 37) + 1e3 * rng.randn(37)
    X = X.astype(dtype)
    X[4] = 0
    X_hat = (X + rng.randn(*X.shape)).astype(dtype)
    error, explained = batch_metrics(X, X - X_hat, n_jobs=n_jobs)
    # Eq. 6 and 7 written out, sample by sample and feature by feature.
    X64, X_hat64 = X.astype(np.float64), X_hat.astype(np.float64)
    assert error == pytest.approx(oracles.relative_error(X64, X_hat64), rel=rtol)
    assert explained == pytest.approx(
        oracles.variance_explained(X64, X_hat64), rel=rtol
    )
    assert relative_error(X64, X_hat64) == pytest.approx(
        oracles.relative_error(X64, X_hat64), rel=1e-12
    )
    assert variance_explained(X64, X_hat64) == pytest.approx(
        oracles.variance_explained(X64, X_hat64), rel=1e-12
    )


def test_batch_metrics_of_constant_features():
    X = np.ones((6, 3))
    assert batch_metrics(X, np.zeros_like(X)) == (0.0, 1.0)
    assert batch_metrics(X, X)[1] == 0.0
    assert batch_metrics(np.zeros((0, 3)), np.zeros((0, 3))) == (0.0, 1.0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_batch_metrics_squared_norms_rank_samples_alike(monkeypatch, dtype):
    if _numba.numba is None:
        pytest.skip("numba not installed")
    monkeypatch.setattr(metrics, "_BLOCK_BYTES", 7 * 37 * np.dtype(dtype).itemsize)
    monkeypatch.setattr(metrics, "_STATS_TILE", 16)
    rng = np.random.RandomState(1)
    X = rng.randn(60, 37).astype(dtype)
    R = (rng.randn(60, 37) * rng.uniform(0.1, 2, (60, 1))).astype(dtype)
    R[[5, 20, 41]] = R[11]  # ties, across blocks: broken by sample order
    R[[3, 30]] = 0
    expected = (R.astype(np.float64) ** 2).sum(axis=1)
    results = {}
    for compiled in (True, False):
        monkeypatch.setattr(_numba, "USE_NUMBA", compiled)
        for n_jobs in (1, 2):
            error, explained, sq_norms = batch_metrics(
                X, R, n_jobs=n_jobs, return_sq_norms=True
            )
            assert sq_norms.dtype == np.float64
            np.testing.assert_allclose(sq_norms, expected, rtol=1e-13)
            # The metrics are those computed without the norms.
            assert (error, explained) == batch_metrics(X, R, n_jobs=n_jobs)
            results[compiled, n_jobs] = sq_norms
    for compiled in (True, False):
        np.testing.assert_array_equal(results[compiled, 1], results[compiled, 2])
    worst = {
        compiled: np.argsort(results[compiled, 1], kind="stable")[::-1]
        for compiled in (True, False)
    }
    np.testing.assert_array_equal(worst[True], worst[False])
    reference = np.argsort(expected, kind="stable")[::-1]
    np.testing.assert_array_equal(worst[True], reference)
    assert batch_metrics(X[:0], R[:0], return_sq_norms=True)[2].shape == (0,)
