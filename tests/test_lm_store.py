"""The harvest directory's NumPy side: bfloat16 shards and lazy imports."""

import subprocess
import sys

import numpy as np
import pytest

from sklearn_dbksvd._data import RowConcatenation, is_lazy_array
from sklearn_dbksvd.lm._store import (
    BFloat16Rows,
    bfloat16_to_float32,
    float32_to_bfloat16,
)


def test_bfloat16_round_trip_and_rounding():
    rng = np.random.RandomState(0)
    scales = 10.0 ** rng.randint(-8, 8, (50, 7))
    values = (rng.randn(50, 7) * scales).astype(np.float32)
    bits = float32_to_bfloat16(values)
    assert bits.dtype == np.uint16
    back = bfloat16_to_float32(bits)
    # 7 stored mantissa bits: rounding to nearest errs by at most half a unit
    # in the last place, 2**-8 of the value.
    error = np.abs(back - values)
    assert (error <= 2.0**-8 * np.abs(values)).all()
    assert (error > 2.0**-10 * np.abs(values)).any()  # it did round
    # Values that are bfloat16 already come back exactly.
    np.testing.assert_array_equal(bfloat16_to_float32(float32_to_bfloat16(back)), back)


def test_bfloat16_matches_torch():
    torch = pytest.importorskip("torch")
    values = np.random.RandomState(1).randn(1000).astype(np.float32)
    expected = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16)
    np.testing.assert_array_equal(
        float32_to_bfloat16(values), expected.numpy().view(np.uint16)
    )


def test_bfloat16_rows_are_a_lazy_float32_array():
    values = np.arange(24, dtype=np.float32).reshape(6, 4)
    X = RowConcatenation(
        [
            BFloat16Rows(float32_to_bfloat16(values[:4])),
            BFloat16Rows(float32_to_bfloat16(values[4:])),
        ]
    )
    assert is_lazy_array(X) and X.dtype == np.float32 and X.shape == (6, 4)
    np.testing.assert_array_equal(X[[1, 5]], values[[1, 5]])
    np.testing.assert_array_equal(X[2:6], values[2:6])
    with pytest.raises(ValueError, match="uint16"):
        BFloat16Rows(values)


def test_reading_a_harvest_never_imports_torch():
    code = (
        "import sys, sklearn_dbksvd, sklearn_dbksvd.lm as lm;"
        "lm.load_activations, lm.load_tokens, lm.harvest_activations,"
        "lm.evaluate_dictionary;"
        "import sklearn_dbksvd.cli.harvest, sklearn_dbksvd.cli.evaluate;"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
