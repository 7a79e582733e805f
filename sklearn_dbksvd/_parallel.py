"""Thread parallelism shared by the kernels."""

from joblib import effective_n_jobs
from sklearn.utils.parallel import Parallel, delayed
from threadpoolctl import threadpool_limits


class WorkerPool:
    """Threads reused across many small parallel maps.

    The kernels release the GIL inside NumPy, BLAS and the compiled loops,
    so threads avoid copying the shared arrays to processes. One pool serves
    a whole atom update (hundreds of inner batches, two maps each), which
    costs far less than starting threads per map. While several workers
    run, BLAS is limited to one thread per worker so the cores are not
    oversubscribed. With one worker everything runs in the calling thread
    and BLAS keeps its threads.

    Parameters
    ----------
    n_jobs : int or None
        As in joblib; None means 1 unless in a ``joblib.parallel_backend``
        context.
    max_workers : int, default=None
        Never more workers than this (the number of work items, say).
    """

    def __init__(self, n_jobs, max_workers=None):
        n_workers = effective_n_jobs(n_jobs)
        if max_workers is not None:
            n_workers = min(n_workers, max_workers)
        self.n_workers = max(1, n_workers)
        self._parallel = self._limits = None

    def __enter__(self):
        if self.n_workers > 1:
            self._limits = threadpool_limits(limits=1, user_api="blas")
            self._parallel = Parallel(n_jobs=self.n_workers, prefer="threads")
            self._parallel.__enter__()
        return self

    def __exit__(self, *exc_info):
        if self._parallel is not None:
            self._parallel.__exit__(*exc_info)
            self._limits.restore_original_limits()
        self._parallel = self._limits = None

    def map(self, func, items):
        """``[func(item) for item in items]``, in the order of ``items``."""
        if self._parallel is None:
            return [func(item) for item in items]
        return self._parallel(delayed(func)(item) for item in items)


def parallel_map(func, items, *, n_jobs=None):
    """``[func(item) for item in items]``, in threads when ``n_jobs`` asks.

    Order of results is the order of ``items``, so the result never depends
    on ``n_jobs``.
    """
    items = list(items)
    with WorkerPool(n_jobs, max_workers=len(items)) as pool:
        return pool.map(func, items)
