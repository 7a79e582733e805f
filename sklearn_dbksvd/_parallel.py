"""Thread parallelism shared by the kernels."""

import queue
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager

import numpy as np
from joblib import effective_n_jobs
from threadpoolctl import threadpool_info, threadpool_limits


class WorkerPool:
    """Threads reused across many small parallel maps.

    The kernels release the GIL inside NumPy, BLAS and the compiled loops,
    so threads avoid copying the shared arrays to processes. One pool serves
    a whole atom update: hundreds of inner batches, two maps each. A plain
    ``ThreadPoolExecutor`` is used rather than joblib's ``Parallel`` because a
    map of two small tasks costs 0.06 ms there against 11 ms with joblib
    (measured here), which over 512 maps per step would cost more than the
    work. ``n_jobs`` is still resolved by joblib (``effective_n_jobs``, so a
    ``joblib.parallel_config`` context applies). While several workers run,
    BLAS is limited to one thread per worker so the cores are not
    oversubscribed; with one worker everything runs in the calling thread and
    BLAS keeps its threads.

    Parameters
    ----------
    n_jobs : int or None
        As in joblib; None means 1 unless in a joblib parallel context.
    max_workers : int, default=None
        Never more workers than this (the number of work items, say).
    """

    def __init__(self, n_jobs, max_workers=None):
        n_workers = effective_n_jobs(n_jobs)
        if max_workers is not None:
            n_workers = min(n_workers, max_workers)
        self.n_workers = max(1, n_workers)
        self._executor = self._limits = None

    def __enter__(self):
        if self.n_workers > 1:
            self._limits = threadpool_limits(limits=1, user_api="blas")
            self._executor = ThreadPoolExecutor(self.n_workers)
        return self

    def __exit__(self, *exc_info):
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._limits.restore_original_limits()
        self._executor = self._limits = None

    def map(self, func, items):
        """``[func(item) for item in items]``, in the order of ``items``."""
        if self._executor is None:
            return [func(item) for item in items]
        return list(self._executor.map(func, items))


def parallel_map(func, items, *, n_jobs=None):
    """``[func(item) for item in items]``, in threads when ``n_jobs`` asks.

    Order of results is the order of ``items``, so the result never depends
    on ``n_jobs``.
    """
    items = list(items)
    with WorkerPool(n_jobs, max_workers=len(items)) as pool:
        return pool.map(func, items)


class ScratchBuffers:
    """Arrays of one shape, reused by the blocks of a parallel map.

    A block takes a buffer, works in its first rows and gives it back, so
    there are only as many buffers as blocks ever ran at once (one per
    worker). A fresh array per block would pay its page faults and the
    kernel's zeroing every time: 1 GiB per step at the paper's size.

    Parameters
    ----------
    shape : tuple of int
        Shape of a full buffer (the largest block).
    dtype : dtype
        Its dtype.
    """

    def __init__(self, shape, dtype):
        self._shape = shape
        self._dtype = dtype
        self._free = queue.SimpleQueue()

    @contextmanager
    def rows(self, n_rows):
        """A C-contiguous ``(n_rows, *shape[1:])`` view of a free buffer."""
        try:
            buffer = self._free.get_nowait()
        except queue.Empty:
            buffer = np.empty(self._shape, dtype=self._dtype)
        try:
            yield buffer[:n_rows]
        finally:
            self._free.put(buffer)


def blas_threads():
    """Threads the BLAS libraries that NumPy calls would use now (the most)."""
    counts = [
        info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"
    ]
    return max(counts, default=1)


def map_blocks(product, finish, blocks, scratch, *, n_jobs=None):
    """``[finish(b, product(b, out)) for b in blocks]``, in threads.

    ``product(block, out)`` computes the block's BLAS product into ``out``, a
    buffer of ``scratch`` (or returns another array); ``finish`` uses it.
    OpenBLAS rounds a product differently with a different number of
    threads (measured: 3.6 % of the entries of ``X Dᵀ`` at the paper's
    size, by up to 4e-7), so that results do not depend on ``n_jobs`` every
    block's product runs with BLAS at one thread, whatever ``n_jobs``: with
    several workers each runs its own blocks; with one, the products of as
    many blocks as BLAS has threads run side by side, then ``finish`` takes
    them in order in the calling thread. A single block keeps BLAS's threads
    (any ``n_jobs`` gives one worker then).
    """
    items = list(blocks)

    def run(block):
        with scratch.rows(block.stop - block.start) as out:
            return finish(block, product(block, out))

    with WorkerPool(n_jobs, max_workers=len(items)) as pool:
        if pool.n_workers > 1 or len(items) <= 1:
            return pool.map(run, items)
    width = min(blas_threads(), len(items))
    if width <= 1:
        with threadpool_limits(limits=1, user_api="blas"):
            return [run(block) for block in items]
    results = []
    with WorkerPool(width) as products:
        for start in range(0, len(items), width):
            group = items[start : start + width]
            with ExitStack() as buffers:
                outs = [
                    buffers.enter_context(scratch.rows(b.stop - b.start)) for b in group
                ]
                pairs = zip(group, outs, strict=True)
                parts = products.map(lambda pair: product(*pair), pairs)
                results.extend(
                    finish(b, part) for b, part in zip(group, parts, strict=True)
                )
    return results
