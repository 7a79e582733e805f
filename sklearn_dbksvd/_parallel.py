"""Thread parallelism shared by the kernels."""

from joblib import effective_n_jobs
from sklearn.utils.parallel import Parallel, delayed
from threadpoolctl import threadpool_limits


def parallel_map(func, items, *, n_jobs=None):
    """``[func(item) for item in items]``, in threads when ``n_jobs`` asks.

    The kernels release the GIL inside NumPy and BLAS, so threads avoid
    copying the shared arrays to processes. While several workers run, BLAS
    is limited to one thread per worker so the cores are not oversubscribed.
    Order of results is the order of ``items``, so the result never depends
    on ``n_jobs``.
    """
    items = list(items)
    n_workers = min(effective_n_jobs(n_jobs), len(items))
    if n_workers <= 1:
        return [func(item) for item in items]
    with threadpool_limits(limits=1, user_api="blas"):
        return Parallel(n_jobs=n_workers, prefer="threads")(
            delayed(func)(item) for item in items
        )
