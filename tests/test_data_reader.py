"""Rows gathered from memory-mapped files with positioned reads."""

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from sklearn_dbksvd import DBKSVDDictionaryLearning
from sklearn_dbksvd._data import RowConcatenation, _file_layout, gather_rows
from sklearn_dbksvd.lm._store import BFloat16Rows, float32_to_bfloat16


@pytest.fixture(scope="module")
def values():
    return np.random.RandomState(0).randn(700, 13).astype(np.float32)


@pytest.fixture
def mapped(values, tmp_path):
    np.save(tmp_path / "X.npy", values)
    return np.load(tmp_path / "X.npy", mmap_mode="r")


def test_gathered_rows_are_those_of_the_array_in_memory(values, mapped):
    assert _file_layout(mapped) is not None  # the positioned-read path is taken
    rng = np.random.RandomState(1)
    cases = [
        np.sort(rng.choice(700, 90, replace=False)),  # a shuffled batch, sorted
        np.arange(100, 180),  # one run
        np.r_[0:5, 9, 10, 650:700],  # runs touching both ends
        np.array([699]),
        rng.randint(0, 700, 50),  # unsorted, with repeats
    ]
    for rows in cases:
        got = gather_rows(mapped, rows)
        assert got.dtype == np.float32 and got.flags.c_contiguous
        assert_array_equal(got, values[rows])
    assert gather_rows(mapped, np.array([], int)).shape == (0, 13)
    assert_array_equal(gather_rows(mapped, np.array([-1, -2])), values[[-1, -2]])
    with pytest.raises(IndexError, match="out of range"):
        gather_rows(mapped, np.array([3, 700]))


def test_views_and_other_arrays_are_indexed_as_usual(values, mapped):
    view = mapped[100:]
    assert _file_layout(view) is None
    assert_array_equal(gather_rows(view, np.array([0, 5])), values[[100, 105]])
    assert _file_layout(values) is None
    assert_array_equal(gather_rows(values, np.array([2, 1])), values[[2, 1]])


def test_shards_and_bfloat16_shards(values, tmp_path):
    bits = float32_to_bfloat16(values)
    for i, part in enumerate((slice(0, 300), slice(300, 700))):
        np.save(tmp_path / f"a{i}.npy", values[part])
        np.save(tmp_path / f"b{i}.npy", bits[part])
    rows = np.sort(np.random.RandomState(2).choice(700, 120, replace=False))
    shards = RowConcatenation(
        [np.load(tmp_path / f"a{i}.npy", mmap_mode="r") for i in range(2)]
    )
    assert_array_equal(shards[rows], values[rows])
    halves = RowConcatenation(
        [BFloat16Rows(np.load(tmp_path / f"b{i}.npy", mmap_mode="r")) for i in range(2)]
    )
    expected = (bits[rows].astype(np.uint32) << 16).view(np.float32)
    assert_array_equal(halves[rows], expected)


def test_fit_reads_the_same_batches_whatever_the_reader(values, mapped, monkeypatch):
    params = dict(
        n_components=16, n_nonzero_coefs=3, batch_size=128, max_iter=2, random_state=0
    )
    in_memory = DBKSVDDictionaryLearning(**params).fit(values)
    from_file = DBKSVDDictionaryLearning(**params).fit(mapped)
    # And through the memory map itself, the reader of before.
    monkeypatch.setattr("sklearn_dbksvd._data._file_layout", lambda X: None)
    from_map = DBKSVDDictionaryLearning(**params).fit(mapped)
    assert_array_equal(from_file.components_, in_memory.components_)
    assert_array_equal(from_map.components_, in_memory.components_)


def test_batch_reader_prefetches_the_rows_asked_for(values, mapped, tmp_path):
    from sklearn_dbksvd._data import BatchReader, read_batch

    a, b = np.arange(0, 700, 7), np.arange(4, 700, 11)  # row 14 in a only
    with BatchReader(mapped) as reader:
        assert reader.enabled
        reader.prefetch(a)
        assert_array_equal(reader.read(a), values[a])  # the prefetched batch
        reader.prefetch(a)
        assert_array_equal(reader.read(b), values[b])  # other rows: read now
        assert reader._pending is None
    # A faulty batch fails when it is read, as without prefetching, and a
    # prefetched one that is never used fails nothing.
    bad = values.copy()
    bad[14, 2] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    bad = np.load(tmp_path / "bad.npy", mmap_mode="r")
    with BatchReader(bad) as reader:
        reader.prefetch(a)
        with pytest.raises(ValueError, match=r"NaN \(row 14\)"):
            reader.read(a)
        reader.prefetch(a)
        assert_array_equal(reader.read(b), values[b])
    with pytest.raises(ValueError, match=r"NaN \(row 14\)"):
        read_batch(bad, a)
    # In-memory data is read as it is, nothing in the background.
    assert not BatchReader(values).enabled


def test_a_file_replaced_after_mapping_is_read_through_the_map(values, tmp_path):
    np.save(tmp_path / "X.npy", values)
    mapped = np.load(tmp_path / "X.npy", mmap_mode="r")
    rows = np.array([1, 2, 50])
    assert_array_equal(gather_rows(mapped, rows), values[rows])
    # Replaced by another file under the same name (a harvest written again):
    # the memory map still holds the old file, and so do the rows read.
    np.save(tmp_path / "new.npy", values + 1)
    (tmp_path / "new.npy").replace(tmp_path / "X.npy")
    assert_array_equal(gather_rows(mapped, rows), values[rows])


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_a_forked_child_reads_with_its_own_threads(values, mapped):
    import os

    rows = np.arange(0, 700, 3)
    assert_array_equal(gather_rows(mapped, rows), values[rows])  # threads started
    pid = os.fork()
    if pid == 0:  # the child: none of the parent's threads
        os._exit(0 if np.array_equal(gather_rows(mapped, rows), values[rows]) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
