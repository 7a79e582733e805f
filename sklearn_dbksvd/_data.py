"""Reading training data batch by batch: in memory, memory-mapped or chunked.

Three kinds of input reach :meth:`fit`:

- in-memory arrays, validated once up front and indexed by rows;
- *row-addressable* lazy arrays (``np.memmap``, :class:`RowConcatenation` of
  memory-mapped shards): any set of rows can be read cheaply, so batches are
  drawn exactly as for in-memory arrays (a full shuffle), and each batch is
  validated when it is read;
- *chunked* lazy arrays (h5py datasets, zarr arrays, dask arrays): reading
  scattered rows would decompress or compute nearly every chunk for every
  batch, so a batch is made of a few random *contiguous blocks* of rows, and
  each batch is validated when it is read.

Nothing here reads more than one batch (or one chunk of rows) at a time.
"""

import math
import os
import threading
import weakref

import numpy as np
import scipy.sparse as sp
from sklearn.utils import gen_even_slices

from ._backend import is_device_array, take_rows

_FLOAT_DTYPES = (np.dtype(np.float64), np.dtype(np.float32))

# Contiguous blocks per batch for chunked stores: 16 distant parts of the data
# mix well enough within a batch, while each block stays a large sequential
# read (65536-sample batches of 2304 float32 features read 36 MiB per block).
_BLOCKS_PER_BATCH = 16

# Budget of one chunk of rows when streaming transform/encode: its samples
# plus its dense correlations with the atoms, so that memory stays bounded by
# this rather than by n_samples (about 3600 rows at d=2304, m=16384, float32).
_CHUNK_BYTES = 2**28

_CHUNKED_MODULES = {"h5py", "zarr", "dask"}


class RowConcatenation:
    """Several 2-D arrays stacked along rows, read lazily.

    Stands for the directory of ``.npy`` shards of the command line: each
    shard is typically memory-mapped, and only the rows asked for are read.

    Parameters
    ----------
    arrays : sequence of array-like of shape (n_rows_i, n_features)
        Shards with the same number of columns and the same dtype.
    provenance : dict, default=None
        Where the rows come from, for a harvest directory
        (:func:`sklearn_dbksvd.lm.load_activations` sets it); an estimator
        fitted on this array records it as ``provenance_``.

    Attributes
    ----------
    shape : tuple of int
        ``(sum of n_rows_i, n_features)``.
    dtype : numpy.dtype
        Dtype of the shards.
    provenance : dict or None
        The ``provenance`` given.
    """

    def __init__(self, arrays, *, provenance=None):
        arrays = list(arrays)
        if not arrays:
            raise ValueError("RowConcatenation needs at least one array.")
        for array in arrays:
            if len(array.shape) != 2:
                raise ValueError(
                    f"Expected 2D shards, got one of shape {tuple(array.shape)}."
                )
        n_features = {array.shape[1] for array in arrays}
        dtypes = {np.dtype(array.dtype) for array in arrays}
        if len(n_features) > 1:
            raise ValueError(f"The shards have different n_features: {n_features}.")
        if len(dtypes) > 1:
            raise ValueError(
                f"The shards have different dtypes: {sorted(map(str, dtypes))}."
            )
        self.arrays = arrays
        self.offsets = np.cumsum([0] + [array.shape[0] for array in arrays])
        self.shape = (int(self.offsets[-1]), n_features.pop())
        self.dtype = dtypes.pop()
        self.ndim = 2
        self.provenance = provenance

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, rows):
        """Rows given by a slice with step 1 or an array of row indices."""
        if isinstance(rows, slice):
            start, stop, step = rows.indices(self.shape[0])
            if step != 1:
                rows = np.arange(start, stop, step)
            else:
                parts = []
                for i, array in enumerate(self.arrays):
                    lo = max(start, self.offsets[i])
                    hi = min(stop, self.offsets[i + 1])
                    if lo < hi:
                        parts.append(
                            np.asarray(
                                array[lo - self.offsets[i] : hi - self.offsets[i]]
                            )
                        )
                if not parts:
                    return np.empty((0, self.shape[1]), dtype=self.dtype)
                return np.concatenate(parts)
        rows = np.asarray(rows)
        shard = np.searchsorted(self.offsets, rows, side="right") - 1
        out = np.empty((len(rows), self.shape[1]), dtype=self.dtype)
        for i in np.unique(shard):
            mine = shard == i
            out[mine] = gather_rows(self.arrays[i], rows[mine] - self.offsets[i])
        return out


# Positioned reads in flight at once when gathering rows from a file: enough
# to keep a disk or a network volume busy; the threads wait on the reads.
_READ_THREADS = 16

# (device, inode) of the file behind each memory map when first read by path.
_FILE_IDENTITY = weakref.WeakKeyDictionary()

_READ_POOL = {}
_READ_POOL_LOCK = threading.Lock()


def _forget_read_pool():
    global _READ_POOL_LOCK
    _READ_POOL_LOCK = threading.Lock()  # a forked child holds no lock
    _READ_POOL.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_read_pool)


def _read_pool():
    """The threads of the positioned reads, started once per process.

    Keyed by process id: a forked child has none of its parent's threads and
    starts its own.
    """
    with _READ_POOL_LOCK:
        pool = _READ_POOL.get(os.getpid())
        if pool is None:
            from concurrent.futures import ThreadPoolExecutor

            _READ_POOL.clear()
            pool = _READ_POOL[os.getpid()] = ThreadPoolExecutor(
                _READ_THREADS, thread_name_prefix="dbksvd-pread"
            )
        return pool


def _file_layout(X):
    """``(path, offset of row 0, bytes per row)`` of a memory-mapped file, or None.

    Only for a memory map of a whole C-ordered 2-D array of a file, such as
    ``np.load(path, mmap_mode="r")`` returns (not a view of one).
    """
    if not (
        isinstance(X, np.memmap)
        and X.ndim == 2
        and X.flags.c_contiguous
        and getattr(X, "filename", None)
        and getattr(X, "_mmap", None) is not None
        and X.base is X._mmap
    ):
        return None
    return X.filename, int(X.offset), X.shape[1] * X.dtype.itemsize


def _pread_into(fd, view, offset):
    while len(view):
        done = os.preadv(fd, [view], offset)
        if done <= 0:
            raise OSError(f"unexpected end of file at byte {offset}.")
        view, offset = view[done:], offset + done


def gather_rows(X, rows):
    """``X[rows]`` for sorted row indices, read without read amplification.

    From a memory-mapped file, the rows are read with positioned reads, one
    per run of consecutive rows, several in flight at once, on a file
    descriptor whose read-ahead is turned off (``POSIX_FADV_RANDOM``): the
    bytes read from disk are those of the rows (rounded to pages), where
    page faults on the memory map make the kernel read ahead around every
    row, eight times the batch for shuffled batches of a 2304-feature file.
    Rows already in the page cache are copied from it alike. Other arrays
    are indexed as usual. The values are those of ``X[rows]``.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
    rows : ndarray of int
        Row indices; sorted without repeats (as a batch schedule gives them)
        they are read as they are, else once each in sorted order.

    Returns
    -------
    batch : ndarray of shape (len(rows), n_features)
    """
    layout = _file_layout(X)
    rows = np.asarray(rows)
    if (
        layout is None
        or not hasattr(os, "preadv")
        or rows.ndim != 1
        or len(rows) == 0
        or rows.min() < 0
    ):
        return np.asarray(X[rows])
    if rows.max() >= X.shape[0]:
        raise IndexError(f"Row indices out of range for {X.shape[0]} rows.")
    if np.any(np.diff(rows) <= 0):
        unique, inverse = np.unique(rows, return_inverse=True)
        return gather_rows(X, unique)[inverse]
    path, start, row_bytes = layout
    out = np.empty((len(rows), X.shape[1]), dtype=X.dtype)
    flat = memoryview(out.reshape(-1).view(np.uint8))
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    firsts = np.concatenate([[0], breaks])
    lasts = np.concatenate([breaks, [len(rows)]])
    fd = os.open(path, os.O_RDONLY)
    try:
        status = os.fstat(fd)
        identity = _FILE_IDENTITY.setdefault(X._mmap, (status.st_dev, status.st_ino))
        if identity != (status.st_dev, status.st_ino) or (
            status.st_size < start + X.shape[0] * row_bytes
        ):
            # The path now names another file (replaced since it was
            # mapped): the memory map still reads the one it mapped.
            return np.asarray(X[rows])
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)

        def read(part):
            for a, b in zip(firsts[part], lasts[part], strict=True):
                _pread_into(
                    fd,
                    flat[a * row_bytes : b * row_bytes],
                    start + int(rows[a]) * row_bytes,
                )

        parts = list(gen_even_slices(len(firsts), min(_READ_THREADS, len(firsts))))
        if len(parts) == 1:
            read(parts[0])
        else:
            for future in [_read_pool().submit(read, part) for part in parts]:
                future.result()
    finally:
        os.close(fd)
    return out


def is_dask_array(X):
    """Whether ``X`` is a dask array (without importing dask)."""
    return type(X).__module__.split(".")[0] == "dask" and hasattr(X, "chunks")


def _is_chunked(X):
    return type(X).__module__.split(".")[0] in _CHUNKED_MODULES and hasattr(X, "shape")


def is_lazy_array(X):
    """Whether ``X`` is read batch by batch rather than validated whole.

    True for ``np.memmap``, :class:`RowConcatenation`, h5py datasets, zarr
    arrays and dask arrays.
    """
    return isinstance(X, np.memmap | RowConcatenation) or _is_chunked(X)


def check_lazy_array(X):
    """Validate the metadata of a lazy array without reading it.

    Parameters
    ----------
    X : lazy array
        See :func:`is_lazy_array`.

    Returns
    -------
    dtype : numpy.dtype
        The dtype batches will have: float32 and float64 are kept, other real
        dtypes become float64.

    Raises
    ------
    ValueError
        When ``X`` is not 2-D, is empty, has unknown dask chunk sizes or holds
        complex or non-numeric values.
    """
    shape = tuple(X.shape)
    if len(shape) != 2:
        raise ValueError(
            f"Expected 2D array, got {len(shape)}D array of shape {shape} instead."
        )
    if any(isinstance(size, float) and math.isnan(size) for size in shape):
        raise ValueError(
            "The dask array has unknown chunk sizes; call X.compute_chunk_sizes() "
            "first."
        )
    if shape[0] < 1 or shape[1] < 1:
        raise ValueError(
            f"Found array with shape {shape}, while at least 1 sample and 1 "
            "feature are required."
        )
    dtype = np.dtype(X.dtype)
    if dtype.kind == "c":
        raise ValueError(f"Complex data not supported (dtype {dtype}).")
    if dtype.kind not in "biuf":
        raise ValueError(f"Data of dtype {dtype} is not supported; expected numbers.")
    return dtype if dtype in _FLOAT_DTYPES else np.dtype(np.float64)


def _row_number(rows, i):
    """Row of ``X`` that is row ``i`` of a batch read with ``rows``."""
    if isinstance(rows, np.ndarray):
        return int(rows[i])
    for block in rows:
        if i < block.stop - block.start:
            return block.start + i
        i -= block.stop - block.start
    return None


def check_batch(batch, rows=None):
    """Validate one batch read from a lazy array.

    Parameters
    ----------
    batch : array-like of shape (n_rows, n_features)
        Rows just read.
    rows : ndarray of int or list of slice, default=None
        Where the rows come from in ``X``, to name the faulty row in errors.

    Returns
    -------
    batch : ndarray of shape (n_rows, n_features)
        float32 and float64 kept, other real dtypes converted to float64.

    Raises
    ------
    ValueError
        On complex values, NaN or infinity.
    """
    batch = np.asarray(batch)
    if batch.dtype.kind == "c":
        raise ValueError(f"Complex data not supported (dtype {batch.dtype}).")
    if batch.dtype not in _FLOAT_DTYPES:
        batch = batch.astype(np.float64)
    # A finite sum proves every entry finite without a boolean copy; only a
    # failing batch (or an overflowing sum) pays for locating the culprit.
    with np.errstate(over="ignore", invalid="ignore"):
        total = batch.sum()
    if not np.isfinite(total):
        bad_rows = np.flatnonzero(~np.isfinite(batch).all(axis=1))
        if len(bad_rows):
            i = bad_rows[0]
            what = "NaN" if np.isnan(batch[i]).any() else "infinity"
            where = "" if rows is None else f" (row {_row_number(rows, i)})"
            raise ValueError(f"Input X contains {what}{where}.")
    return batch


class BatchSchedule:
    """Which rows each step of an epoch reads.

    An epoch is cut into ``n_batches = ceil(n_samples / batch_size)`` batches
    of nearly equal size. With ``contiguous=False`` an epoch is a permutation
    of the rows (the full shuffle of in-memory data). With ``contiguous=True``
    the rows are cut into ``n_batches * 16`` contiguous blocks of nearly equal
    size, an epoch is a permutation of the blocks and a batch is 16 of them.

    Parameters
    ----------
    n_samples : int
        Rows of the data.
    batch_size : int
        Requested samples per batch, at most ``n_samples``.
    contiguous : bool
        Blocks of rows rather than single rows.
    """

    def __init__(self, n_samples, batch_size, contiguous):
        self.n_samples, self.contiguous = n_samples, contiguous
        self.n_batches = math.ceil(n_samples / batch_size)
        if contiguous:
            # Blocks nest in the batches of an unshuffled epoch, so that
            # shuffle=False reads the same consecutive batches as in memory.
            self._blocks = [
                slice(part.start + block.start, part.start + block.stop)
                for part in gen_even_slices(n_samples, self.n_batches)
                for block in gen_even_slices(
                    part.stop - part.start,
                    min(_BLOCKS_PER_BATCH, part.stop - part.start),
                )
            ]
            self.n_units = len(self._blocks)
        else:
            self.n_units = n_samples
        self._parts = list(gen_even_slices(self.n_units, self.n_batches))

    def draw_order(self, random_state, shuffle):
        """Order of the rows or blocks for one epoch; draws only if ``shuffle``."""
        if shuffle:
            return random_state.permutation(self.n_units)
        return np.arange(self.n_units)

    def rows(self, order, position):
        """Rows of batch ``position`` of the epoch ordered by ``order``.

        Returns
        -------
        rows : ndarray of int or list of slice
            Sorted row indices, or sorted, merged contiguous blocks.
        """
        # Sorted: same batch, sequential reads from disk.
        units = np.sort(order[self._parts[position]])
        if not self.contiguous:
            return units
        merged = []
        for unit in units:
            block = self._blocks[unit]
            if merged and merged[-1].stop == block.start:
                merged[-1] = slice(merged[-1].start, block.stop)
            else:
                merged.append(block)
        return merged


def schedule_for(X, batch_size):
    """The :class:`BatchSchedule` of ``X``: contiguous blocks for chunked stores."""
    return BatchSchedule(X.shape[0], batch_size, contiguous=_is_chunked(X))


def reads_into_buffer(X):
    """Whether :func:`read_batch` can gather the rows of ``X`` into ``out``.

    True for in-memory NumPy arrays of float32 or float64 (validated data);
    lazy arrays and device arrays are read their own way.
    """
    return (
        isinstance(X, np.ndarray)
        and not is_lazy_array(X)
        and X.ndim == 2
        and X.dtype in _FLOAT_DTYPES
    )


def _take_rows_into(X, rows, out):
    """``X[rows]`` written into ``out``: the same values, no new array."""
    rows = np.asarray(rows)
    if out.shape != (len(rows), X.shape[1]) or out.dtype != X.dtype:
        raise ValueError(
            f"out has shape {out.shape} and dtype {out.dtype}; expected "
            f"{(len(rows), X.shape[1])} and {X.dtype}."
        )
    if not (out.flags.c_contiguous and out.flags.writeable):
        raise ValueError("out must be a writeable C-ordered array.")
    if np.may_share_memory(out, X):
        raise ValueError("out shares memory with X.")
    if len(rows) and (rows.min() < 0 or rows.max() >= X.shape[0]):
        raise IndexError(f"Row indices out of range for {X.shape[0]} rows.")
    # mode="clip" (the indices are checked above): with the default "raise"
    # NumPy gathers into a temporary and copies it into ``out``.
    return np.take(X, rows, axis=0, out=out, mode="clip")


def read_batch(X, rows, out=None):
    """Rows of ``X`` as an ndarray, validated when ``X`` is lazy.

    In-memory data is validated whole before fitting; lazy data can only be
    validated as it is read.

    Parameters
    ----------
    X : array-like or lazy array of shape (n_samples, n_features)
        The data.
    rows : ndarray of int or list of slice
        Rows to read (from ``BatchSchedule.rows``).
    out : ndarray of shape (n_rows, n_features), default=None
        C-ordered array of ``X``'s dtype, sharing no memory with ``X``, that
        the rows are gathered into and that is returned; only when
        :func:`reads_into_buffer` holds for ``X`` and ``rows`` is an index
        array. A fit reading every batch into one such array allocates (and
        faults in) no array of the batch's size per step.
    """
    if out is not None:
        if not reads_into_buffer(X) or not isinstance(rows, np.ndarray):
            raise TypeError(
                "out is only for in-memory float NumPy data read by row indices."
            )
        return _take_rows_into(X, rows, out)
    if is_lazy_array(X):
        return check_batch(read_rows(X, rows), rows)
    if is_device_array(X):
        return take_rows(X, rows)
    return X[rows]


class BatchReader:
    """Reads the batches of a fit, the next one while the current step runs.

    For row-addressable lazy arrays (memory maps, shard directories,
    harvests), :meth:`prefetch` starts reading a batch in a background
    thread, so that the read of batch ``t + 1`` overlaps the step on batch
    ``t``; :meth:`read` returns it when asked for those rows, and otherwise
    reads as :func:`read_batch` does. Rows and values are those of
    :func:`read_batch` whatever was prefetched: a fit reads the same batches,
    with the same results, with or without it. Holds at most one batch
    beside the current one. For other inputs it only calls
    :func:`read_batch`.

    Parameters
    ----------
    X : array-like or lazy array of shape (n_samples, n_features)
    """

    def __init__(self, X):
        self.X = X
        self.enabled = is_lazy_array(X) and not _is_chunked(X)
        self._pool = None
        self._pending = None

    def prefetch(self, rows):
        """Start reading ``rows`` (an index array of the batch schedule)."""
        if not self.enabled or not isinstance(rows, np.ndarray):
            return
        self._discard()
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(1, thread_name_prefix="dbksvd-read")
        self._pending = (rows, self._pool.submit(read_batch, self.X, rows))

    def read(self, rows, out=None):
        """The batch of ``rows``: the prefetched one if it is that, else read now."""
        if self._pending is not None and out is None:
            pending, future = self._pending
            if isinstance(rows, np.ndarray) and np.array_equal(pending, rows):
                self._pending = None
                return future.result()
        self._discard()
        return read_batch(self.X, rows, out=out)

    def _discard(self):
        if self._pending is not None:
            _, future = self._pending
            self._pending = None
            if not future.cancel():
                # A batch never used: its errors are not this fit's.
                future.exception()

    def close(self):
        """Wait for a read in flight and stop the thread."""
        self._discard()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def _runs(rows):
    """Sorted row indices as slices of consecutive rows."""
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(rows)]])
    pairs = zip(starts, stops, strict=True)
    return [slice(int(rows[a]), int(rows[b - 1]) + 1) for a, b in pairs]


def read_rows(X, rows):
    """Read the rows of ``X`` given by an index array or a list of slices.

    Index arrays must be sorted and without repeats.
    """
    if isinstance(rows, np.ndarray):
        if not _is_chunked(X):
            return gather_rows(X, rows)
        # Chunked stores differ in fancy indexing (zarr wants .oindex, h5py
        # is slow at it); runs of consecutive rows read alike everywhere.
        rows = _runs(rows) if len(rows) else [slice(0, 0)]
    parts = [X[block] for block in rows]
    if is_dask_array(X):
        import dask

        # One compute: blocks sharing a dask chunk share its computation.
        parts = dask.compute(*parts)
    parts = [np.asarray(part) for part in parts]
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def chunk_rows(n_features, n_components, itemsize):
    """Rows per chunk when streaming codes, within the ``_CHUNK_BYTES`` budget."""
    return max(1, _CHUNK_BYTES // (itemsize * (n_features + n_components)))


def iter_row_chunks(X, rows_per_chunk):
    """Yield ``(slice, validated chunk)`` over consecutive rows of ``X``."""
    n_samples = X.shape[0]
    for start in range(0, n_samples, rows_per_chunk):
        block = slice(start, min(start + rows_per_chunk, n_samples))
        yield block, check_batch(read_rows(X, [block]), [block])


def stack_codes(parts, n_components, dtype, sparse):
    """Stack per-chunk codes into one CSR matrix or one dense array."""
    if sparse:
        if not parts:
            return sp.csr_matrix((0, n_components), dtype=dtype)
        return sp.vstack(parts, format="csr")
    if not parts:
        return np.empty((0, n_components), dtype=dtype)
    return np.concatenate(parts)


def _encode_dask_block(block, encode):
    return encode(check_batch(block))


def dask_map_encode(encode, X, n_columns, dtype, sparse):
    """Codes of the dask array ``X``, computed block-wise by ``map_blocks``.

    Parameters
    ----------
    encode : callable
        Codes of a validated block of rows; from the estimator (see
        ``_BaseDBKSVD._chunk_encoder``), holding the fitted estimator and
        its Gram matrix. It goes into the graph once, as a delayed object,
        so that every worker receives it once rather than once per block.
    X : dask.array.Array of shape (n_samples, n_features)
        Data.
    n_columns : int
        Columns of the codes (twice the atoms with ``split_sign``).
    dtype : numpy.dtype
        Dtype of the codes.
    sparse : bool
        Whether the blocks of codes are CSR.

    Returns
    -------
    codes : dask.array.Array of shape (n_samples, n_columns)
        Chunked along samples like ``X``; chunks are scipy.sparse CSR
        matrices when ``sparse`` is true.
    """
    import dask

    # Each block must hold whole samples to be encoded.
    X = X.rechunk({1: -1})
    meta = (
        sp.csr_matrix((0, n_columns), dtype=dtype)
        if sparse
        else np.empty((0, n_columns), dtype=dtype)
    )
    return X.map_blocks(
        _encode_dask_block,
        dask.delayed(encode, traverse=False),
        dtype=dtype,
        chunks=(X.chunks[0], (n_columns,)),
        meta=meta,
    )
