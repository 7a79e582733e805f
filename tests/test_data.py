"""Out-of-core fit and chunked transform: memmap, h5py, zarr; sparse codes."""

import numpy as np
import pytest
import scipy.sparse as sp
from numpy.testing import assert_allclose, assert_array_equal

from sklearn_dbksvd import DBKSVDDictionaryLearning
from sklearn_dbksvd._data import (
    BatchSchedule,
    RowConcatenation,
    _take_rows_into,
    check_batch,
    is_lazy_array,
    read_batch,
    read_rows,
    reads_into_buffer,
)
from sklearn_dbksvd.datasets import make_sparse_dictionary_problem

PARAMS = dict(
    n_components=24, n_nonzero_coefs=3, batch_size=200, max_iter=2, random_state=0
)


@pytest.fixture(scope="module")
def X():
    X, _, _ = make_sparse_dictionary_problem(
        1000, 12, 24, 3, dtype=np.float32, random_state=0
    )
    return X


@pytest.fixture
def memmap(X, tmp_path):
    np.save(tmp_path / "X.npy", X)
    return np.load(tmp_path / "X.npy", mmap_mode="r")


@pytest.fixture
def h5_dataset(X, tmp_path):
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "X.h5", "w") as f:
        f.create_dataset("X", data=X, chunks=(64, X.shape[1]))
    handle = h5py.File(tmp_path / "X.h5", "r")
    yield handle["X"]
    handle.close()


def _run_epoch_rows(schedule, random_state, shuffle=True):
    order = schedule.draw_order(random_state, shuffle)
    return [schedule.rows(order, p) for p in range(schedule.n_batches)]


def _as_indices(rows):
    if isinstance(rows, np.ndarray):
        return rows
    return np.concatenate([np.arange(s.start, s.stop) for s in rows])


@pytest.mark.parametrize("contiguous", [False, True])
def test_schedule_covers_every_row_once_per_epoch(contiguous):
    schedule = BatchSchedule(1003, 100, contiguous=contiguous)
    rng = np.random.RandomState(0)
    epochs = [_run_epoch_rows(schedule, rng) for _ in range(2)]
    for epoch in epochs:
        assert len(epoch) == 11
        seen = np.concatenate([_as_indices(rows) for rows in epoch])
        assert_array_equal(np.sort(seen), np.arange(1003))
        sizes = [len(_as_indices(rows)) for rows in epoch]
        assert max(sizes) - min(sizes) <= (16 if contiguous else 1)
    # A new order every epoch.
    assert not np.array_equal(_as_indices(epochs[0][0]), _as_indices(epochs[1][0]))
    if contiguous:
        # At most 16 blocks a batch, each a run of consecutive rows.
        assert all(len(rows) <= 16 for rows in epochs[0])


def test_schedule_without_shuffle_reads_in_order():
    schedule = BatchSchedule(1000, 250, contiguous=True)
    epoch = _run_epoch_rows(schedule, np.random.RandomState(0), shuffle=False)
    assert epoch == [
        [slice(0, 250)],
        [slice(250, 500)],
        [slice(500, 750)],
        [slice(750, 1000)],
    ]
    # And the rows-mode batches of the same schedule are the same rows.
    rows = _run_epoch_rows(BatchSchedule(1000, 250, contiguous=False), None, False)
    assert [_as_indices(r).tolist() for r in rows] == [
        _as_indices(r).tolist() for r in epoch
    ]


def test_lazy_detection(X, memmap, h5_dataset):
    assert not is_lazy_array(X)
    assert not is_lazy_array(X.tolist())
    assert is_lazy_array(memmap)
    assert is_lazy_array(h5_dataset)
    assert is_lazy_array(RowConcatenation([X[:10], X[10:]]))


def test_row_concatenation_reads_rows_and_slices(X):
    shards = RowConcatenation([X[:300], X[300:301], X[301:]])
    assert shards.shape == X.shape
    rows = np.array([0, 299, 300, 301, 999])
    assert_array_equal(shards[rows], X[rows])
    assert_array_equal(shards[250:350], X[250:350])
    with pytest.raises(ValueError, match="different n_features"):
        RowConcatenation([X, X[:, :3]])


def test_memmap_fit_equals_in_memory_fit(X, memmap):
    in_memory = DBKSVDDictionaryLearning(**PARAMS).fit(X)
    mapped = DBKSVDDictionaryLearning(**PARAMS).fit(memmap)
    assert mapped.components_.dtype == np.float32
    assert_array_equal(mapped.components_, in_memory.components_)
    assert mapped.n_features_in_ == 12 and mapped.n_steps_ == in_memory.n_steps_


def test_chunked_fit_without_shuffle_is_partial_fit_on_consecutive_blocks(
    X, h5_dataset
):
    # Documented semantics: with shuffle=False a chunked store is read in
    # order, one contiguous batch per step.
    params = dict(
        PARAMS, max_iter=1, shuffle=False, max_no_improvement=None, replace_until=1.0
    )
    fitted = DBKSVDDictionaryLearning(**params).fit(h5_dataset)
    online = DBKSVDDictionaryLearning(**params)
    for start in range(0, 1000, 200):
        online.partial_fit(X[start : start + 200])
    assert_allclose(fitted.components_, online.components_, rtol=1e-5, atol=1e-6)


def test_chunked_stores_share_the_block_schedule(X, h5_dataset, tmp_path):
    zarr = pytest.importorskip("zarr")
    store = zarr.open_array(
        str(tmp_path / "X.zarr"), mode="w", shape=X.shape, chunks=(100, 12), dtype="f4"
    )
    store[:] = X
    from_h5 = DBKSVDDictionaryLearning(**PARAMS).fit(h5_dataset)
    from_zarr = DBKSVDDictionaryLearning(**PARAMS).fit(store)
    assert_array_equal(from_h5.components_, from_zarr.components_)
    # Block sampling learns as well as the full shuffle.
    in_memory = DBKSVDDictionaryLearning(**PARAMS).fit(X)
    assert from_h5.score(X) > in_memory.score(X) - 0.05


def test_partial_fit_and_transform_of_lazy_arrays(X, memmap, h5_dataset):
    model = DBKSVDDictionaryLearning(**PARAMS).partial_fit(h5_dataset)
    reference = DBKSVDDictionaryLearning(**PARAMS).partial_fit(X)
    assert_array_equal(model.components_, reference.components_)
    assert_array_equal(model.transform(h5_dataset), model.transform(X))
    model.set_params(sparse_output=True)
    codes = model.transform(memmap)
    assert sp.issparse(codes) and codes.format == "csr"
    assert_array_equal(
        codes.toarray(), model.set_params(sparse_output=False).transform(X)
    )


@pytest.mark.parametrize("algorithm", ["mp", "omp"])
def test_sparse_output(X, algorithm):
    model = DBKSVDDictionaryLearning(**PARAMS, transform_algorithm=algorithm).fit(X)
    dense = model.transform(X)
    codes = model.set_params(sparse_output=True).transform(X)
    assert sp.isspmatrix_csr(codes) and codes.dtype == np.float32
    assert codes.shape == dense.shape and codes.nnz == np.count_nonzero(dense)
    assert_array_equal(codes.toarray(), dense)
    assert_allclose(
        model.inverse_transform(codes), model.inverse_transform(dense), atol=1e-6
    )
    assert model.score(X) > 0.5


def test_integer_memmap_gives_float64(X, tmp_path):
    np.save(tmp_path / "int.npy", np.rint(X * 10).astype(np.int16))
    model = DBKSVDDictionaryLearning(**PARAMS).fit(
        np.load(tmp_path / "int.npy", mmap_mode="r")
    )
    assert model.components_.dtype == np.float64


@pytest.mark.parametrize(
    "value, message", [(np.nan, r"contains NaN \(row 777\)"), (np.inf, "infinity")]
)
def test_non_finite_memmap_is_rejected_and_state_kept(X, tmp_path, value, message):
    bad = X.copy()
    bad[777, 5] = value
    np.save(tmp_path / "bad.npy", bad)
    model = DBKSVDDictionaryLearning(**PARAMS).fit(X)
    before = model.components_.copy()
    with pytest.raises(ValueError, match=message):
        model.fit(np.load(tmp_path / "bad.npy", mmap_mode="r"))
    assert_array_equal(model.components_, before)
    with pytest.raises(ValueError, match="NaN|infinity"):
        model.transform(np.load(tmp_path / "bad.npy", mmap_mode="r"))


def test_bad_lazy_arrays_are_rejected(X, tmp_path):
    np.save(tmp_path / "complex.npy", X.astype(np.complex64))
    with pytest.raises(ValueError, match="Complex data not supported"):
        DBKSVDDictionaryLearning().fit(np.load(tmp_path / "complex.npy", mmap_mode="r"))
    np.save(tmp_path / "flat.npy", X[:, 0])
    with pytest.raises(ValueError, match="Expected 2D array"):
        DBKSVDDictionaryLearning().fit(np.load(tmp_path / "flat.npy", mmap_mode="r"))
    np.save(tmp_path / "narrow.npy", X[:, :5])
    model = DBKSVDDictionaryLearning(**PARAMS).fit(X)
    with pytest.raises(ValueError, match="5 features"):
        model.transform(np.load(tmp_path / "narrow.npy", mmap_mode="r"))


def test_check_batch_and_read_rows(X):
    assert check_batch(X[:3]).dtype == np.float32
    assert check_batch(np.ones((2, 2), dtype=int)).dtype == np.float64
    bad = X[:10].copy()
    bad[4, 0] = np.nan
    with pytest.raises(ValueError, match=r"row 52"):
        check_batch(bad, [slice(0, 2), slice(50, 58)])
    assert_array_equal(read_rows(X, [slice(0, 2), slice(5, 6)]), X[[0, 1, 5]])


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rows_gathered_into_a_buffer_are_those_of_fancy_indexing(
    X, tmp_path, order, dtype
):
    data = np.asarray(X, dtype=dtype, order=order)
    np.save(tmp_path / "data.npy", data)
    mapped = np.load(tmp_path / "data.npy", mmap_mode="r")
    rows = np.sort(np.random.RandomState(0).permutation(len(X))[:300])
    for source in (data, mapped):
        out = np.full((len(rows), X.shape[1]), np.nan, dtype=dtype)
        assert _take_rows_into(source, rows, out) is out
        assert out.tobytes() == np.ascontiguousarray(source[rows]).tobytes()
    # In-memory data only: a memmap is lazy and read its own way.
    assert reads_into_buffer(data) and not reads_into_buffer(mapped)
    out = np.empty((len(rows), X.shape[1]), dtype=dtype)
    assert read_batch(data, rows, out=out) is out
    assert_array_equal(out, data[rows])
    with pytest.raises(TypeError, match="in-memory"):
        read_batch(mapped, rows, out=out)
    with pytest.raises(TypeError, match="in-memory"):
        read_batch(data, [slice(0, 300)], out=out)


def test_gathering_into_a_bad_buffer_is_refused(X):
    rows = np.arange(5)
    with pytest.raises(ValueError, match="shape"):
        _take_rows_into(X, rows, np.empty((4, 12), dtype=np.float32))
    with pytest.raises(ValueError, match="dtype"):
        _take_rows_into(X, rows, np.empty((5, 12)))
    with pytest.raises(ValueError, match="C-ordered"):
        _take_rows_into(X, rows, np.empty((5, 12), dtype=np.float32, order="F"))
    with pytest.raises(ValueError, match="shares memory"):
        _take_rows_into(X, rows, X[-5:])
    with pytest.raises(IndexError, match="out of range"):
        _take_rows_into(X, np.array([0, len(X)]), np.empty((2, 12), np.float32))
