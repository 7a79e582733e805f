"""The nonnegative rank-1 update of NN-K-SVD against plain references."""

import numpy as np
import pytest

from sklearn_dbksvd._update import leading_singular_pair
from sklearn_dbksvd._update_positive import (
    nonnegative_directions,
    nonnegative_rank_one,
)


def _reference_rank_one(E, atom, positive_code, n_alternations=20):
    """The same alternation written entry by entry, in plain Python."""
    n_users, n_features = E.shape

    def codes_for(d):
        d_sq = sum(v * v for v in d)
        x = [
            sum(E[i, f] * d[f] for f in range(n_features)) / d_sq
            for i in range(n_users)
        ]
        return [max(v, 0.0) for v in x] if positive_code else x

    def error(d, x):
        return sum(
            (E[i, f] - x[i] * d[f]) ** 2
            for i in range(n_users)
            for f in range(n_features)
        )

    starts = []
    for sign in (1, -1):
        d = [max(sign * a, 0.0) for a in atom]
        if any(d):
            starts.append((error(d, codes_for(d)), d))
    d = min(starts, key=lambda s: s[0])[1]
    x = codes_for(d)
    for _ in range(n_alternations):
        x_sq = sum(v * v for v in x)
        if x_sq == 0:
            break
        new_d = [
            max(sum(E[i, f] * x[i] for i in range(n_users)), 0.0) / x_sq
            for f in range(n_features)
        ]
        if not any(new_d):
            break
        change = np.linalg.norm(np.subtract(new_d, d)) / np.linalg.norm(new_d)
        d, x = new_d, codes_for(new_d)
        if change <= np.sqrt(np.finfo(float).eps):
            break
    norm = np.linalg.norm(d)
    return np.array(d) / norm, np.array(x) * norm


def _fit_error(E, atom, code):
    return np.linalg.norm(E - np.outer(code, atom))


def _singular_pair(E):
    _, _, vt = np.linalg.svd(E, full_matrices=False)
    return vt[0], E @ vt[0]


@pytest.mark.parametrize("positive_code", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_matches_plain_reference(positive_code, seed):
    E = np.random.RandomState(seed).randn(9, 5)
    atom, code = _singular_pair(E)
    got_atom, got_code = nonnegative_rank_one(
        E, atom, code, positive_code=positive_code
    )
    ref_atom, ref_code = _reference_rank_one(E, atom, positive_code)
    np.testing.assert_allclose(got_atom, ref_atom, atol=1e-10)
    np.testing.assert_allclose(got_code, ref_code, atol=1e-10)
    assert np.all(got_atom >= 0) and np.linalg.norm(got_atom) == pytest.approx(1)
    if positive_code:
        assert np.all(got_code >= 0)


@pytest.mark.parametrize("positive_code", [False, True])
def test_not_worse_than_clipping_the_singular_pair(positive_code):
    rng = np.random.RandomState(0)
    for _ in range(20):
        E = rng.randn(12, 6) + 0.5
        atom, code = _singular_pair(E)
        fitted = nonnegative_rank_one(E, atom, code, positive_code=positive_code)
        got = _fit_error(E, *fitted)
        for sign in (1, -1):
            clipped = np.maximum(sign * atom, 0)
            if not clipped.any():
                continue
            clipped /= np.linalg.norm(clipped)
            x = E @ clipped
            x = np.maximum(x, 0) if positive_code else x
            assert got <= _fit_error(E, clipped, x) + 1e-12


def test_reaches_the_optimum_of_a_two_feature_problem():
    # With two features a unit atom >= 0 is an angle in [0, pi/2]: the best
    # one is found by brute force.
    rng = np.random.RandomState(1)
    E = np.outer(rng.uniform(0.5, 2, 30), [0.8, 0.6]) + 0.3 * rng.randn(30, 2)
    atom, code = _singular_pair(E)
    got = _fit_error(E, *nonnegative_rank_one(E, atom, code))
    angles = np.linspace(0, np.pi / 2, 20001)
    best = min(
        _fit_error(E, d, E @ d) for d in np.stack([np.cos(angles), np.sin(angles)], 1)
    )
    assert got <= best + 1e-6


def test_planted_nonnegative_rank_one_is_recovered():
    rng = np.random.RandomState(2)
    truth = np.abs(rng.randn(8))
    truth[[1, 4]] = 0
    truth /= np.linalg.norm(truth)
    E = np.outer(rng.uniform(1, 2, 40), truth) + 1e-3 * rng.randn(40, 8)
    # The K-SVD kernel's pair, possibly with the atom's sign flipped.
    atom, code = leading_singular_pair(E, -np.ones(8))
    got, _ = nonnegative_rank_one(E, -atom, -code, positive_code=True)
    assert got @ truth > 0.9999


def test_keeps_float32():
    E = np.random.RandomState(3).randn(6, 4).astype(np.float32)
    atom, code = _singular_pair(E)
    got_atom, got_code = nonnegative_rank_one(E, atom, code)
    assert got_atom.dtype == got_code.dtype == np.float32


def test_nonnegative_directions():
    rows = np.array([[1.0, -2.0, 0.0], [-1.0, -1.0, 3.0], [-1.0, -2.0, -3.0]])
    flipped = nonnegative_directions(rows, allow_flip=True)
    np.testing.assert_allclose(flipped[0], [0, 1, 0])  # -row keeps more energy
    np.testing.assert_allclose(flipped[1], [0, 0, 1])
    np.testing.assert_allclose(flipped[2], np.array([1, 2, 3]) / np.sqrt(14))
    clipped = nonnegative_directions(rows, allow_flip=False, random_state=None)
    np.testing.assert_allclose(clipped[0], [1, 0, 0])
    np.testing.assert_array_equal(clipped[2], 0)  # nothing positive, no generator
    drawn = nonnegative_directions(
        rows, allow_flip=False, random_state=np.random.RandomState(0)
    )
    assert np.all(drawn >= 0)
    np.testing.assert_allclose(np.linalg.norm(drawn, axis=1), 1)
