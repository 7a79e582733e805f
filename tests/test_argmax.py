"""The compiled arg-max on the bits of floats, against NumPy's."""

import numpy as np
import pytest

from sklearn_dbksvd._argmax import _ARGMAX_GROUP, _argmax_key


def int_view(values):
    return values.view(np.int32 if values.itemsize == 4 else np.int64)


def group_buffer(values):
    n_groups = (len(values) + _ARGMAX_GROUP - 1) // _ARGMAX_GROUP
    return np.empty(n_groups, dtype=int_view(values).dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 7, _ARGMAX_GROUP, 3 * _ARGMAX_GROUP + 5])
@pytest.mark.parametrize("positive", [False, True])
def test_first_index_of_the_largest(dtype, n, positive):
    rng = np.random.default_rng(n)
    for _ in range(20):
        values = rng.standard_normal(n).astype(dtype)
        # Ties, of equal and of opposite signs, in different groups.
        values[rng.integers(0, n, size=3)] = values[0]
        values[rng.integers(0, n, size=2)] = -values[0]
        expected = np.argmax(values if positive else np.abs(values))
        found = _argmax_key(int_view(values), positive, group_buffer(values))
        assert found == expected


def test_signed_zeros_and_all_negative():
    values = np.array([-3.0, -0.0, 0.0, -1.0], dtype=np.float32)
    # By |c| the first entry wins; by c, -0 ranks below +0 (the order of the
    # bits), so +0 wins over the earlier -0.
    assert _argmax_key(int_view(values), False, group_buffer(values)) == 0
    assert _argmax_key(int_view(values), True, group_buffer(values)) == 2
    negative = -np.arange(1, 600, dtype=np.float32)
    assert _argmax_key(int_view(negative), True, group_buffer(negative)) == 0
