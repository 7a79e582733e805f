"""Rows of the Gram matrix within a memory budget.

Matching pursuit and Batch-OMP read rows ``G[j] = D d_j`` of the Gram matrix
``G = D Dᵀ``. The whole matrix takes ``m² · itemsize`` bytes (17.2 GB in
float32 at 65,536 atoms), so past some width it cannot be held. The coders
then work from :class:`GramRows`: a cache of the rows of the atoms used most
(usage of language-model activations is heavy-tailed), computed once per
encode, and, per block of samples, a table of rows computed on demand
(``D[sel] Dᵀ`` for the atoms the block selected and the cache lacks), all
within ``gram_memory`` bytes. The selections are those of the full-Gram
pursuit: a row differs from the full matrix's only by the rounding of the
product that computed it.
"""

import os
import threading
import zlib
from numbers import Real

import numpy as np
from joblib import cpu_count, effective_n_jobs
from sklearn.utils._param_validation import Interval, StrOptions

from . import _backend

# The ``gram_memory`` parameter, as scikit-learn's parameter validation reads it.
GRAM_MEMORY_CONSTRAINT = [
    StrOptions({"auto"}),
    Interval(Real, 0, None, closed="neither"),
    None,
]

# ``gram_memory="auto"``: this fraction of the memory available when the call
# starts. The rest is left to the batch, its residual, the codes and the
# correlation blocks (and to whatever else runs on the machine).
_AUTO_FRACTION = 0.25

# Of a budget too small for the whole Gram matrix, this fraction goes to the
# per-worker tables of rows computed on demand, the rest to the cache. The
# tables matter as much as the cache: a row computed once serves every
# sample of the block that selects its atom while it is held.
_TABLE_FRACTION = 0.5

# Samples per pilot of the usage estimate when no usage is known: the top-k
# correlations of these samples rank the atoms for the cache.
_PILOT_SAMPLES = 2048

# Bytes of one block of correlations when rows are computed on demand: larger
# blocks than the full-Gram path's (``_encode._BLOCK_BYTES``) so that more
# samples share each computed row.
_ROWS_BLOCK_BYTES = 2**27


def available_memory():
    """Bytes of memory available to this process now (``MemAvailable``).

    Falls back on the free physical pages where ``/proc/meminfo`` is absent.
    """
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    try:  # pragma: no cover - not Linux
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return 2**33


def resolve_gram_memory(gram_memory):
    """Bytes of Gram rows allowed: ``"auto"``, None (no limit) or a number.

    Parameters
    ----------
    gram_memory : "auto", int, float or None
        ``"auto"`` is a quarter of the memory available now; a number is
        bytes; None holds the whole Gram matrix whatever its size.

    Returns
    -------
    float
        The budget in bytes (``inf`` for None).
    """
    if gram_memory is None:
        return np.inf
    if isinstance(gram_memory, str):
        if gram_memory != "auto":
            raise ValueError(
                f"gram_memory must be 'auto', a number of bytes or None; got "
                f"{gram_memory!r}."
            )
        return _AUTO_FRACTION * available_memory()
    if not isinstance(gram_memory, Real) or isinstance(gram_memory, bool):
        raise ValueError(
            f"gram_memory must be 'auto', a number of bytes or None; got "
            f"{gram_memory!r}."
        )
    if not gram_memory > 0:
        raise ValueError(f"gram_memory must be positive; got {gram_memory!r}.")
    return float(gram_memory)


def gram_fits(n_components, itemsize, gram_memory):
    """Whether the whole ``(m, m)`` Gram matrix fits in ``gram_memory``."""
    return n_components * n_components * itemsize <= resolve_gram_memory(gram_memory)


class CacheHint:
    """What a step hands the next when the whole Gram matrix does not fit.

    The atoms change every step, so their Gram rows cannot be carried; the
    usage of the atoms can: the next step caches the rows of the atoms this
    one used most (instead of ranking them on a pilot).

    Parameters
    ----------
    usage : ndarray of shape (n_components,)
        Samples per atom in the step's codes.
    """

    def __init__(self, usage):
        self.usage = np.asarray(usage)


class GramRows:
    """Gram rows of a dictionary too wide for its whole Gram matrix.

    Attributes
    ----------
    dictionary : ndarray of shape (n_components, n_features)
        Host atoms.
    cache_rows : ndarray of shape (n_cached, n_components)
        ``D[cached] Dᵀ``, C-ordered.
    cache_slot : ndarray of shape (n_components,)
        Row of ``cache_rows`` holding atom ``j``'s Gram row, or -1.
    table_rows : int
        Rows each worker may compute on demand and hold at once (at least 1).
    stats : dict
        ``cache_hits``, ``table_hits`` and ``computed`` rows: read by the
        benchmarks. Updated by :meth:`add_stats` after each block.
    """

    def __init__(
        self, dictionary, cache_rows, cache_slot, table_rows, backend,
        dictionary_dev=None,
    ):
        self.dictionary = dictionary
        self.cache_rows = cache_rows
        self.cache_slot = cache_slot
        self.table_rows = int(table_rows)
        self.backend = backend
        # The caller's device copy when it has one: one copy of the atoms less
        # on the device.
        self.dictionary_dev = (
            backend.asarray(dictionary) if dictionary_dev is None else dictionary_dev
        )
        self.dtype = dictionary.dtype
        self.itemsize = dictionary.itemsize
        self.shape = (dictionary.shape[0], dictionary.shape[0])
        self.stats = {"cache_hits": 0, "table_hits": 0, "computed": 0}
        self._lock = threading.Lock()

    def __getstate__(self):
        # Picklable (dask ships it to workers): no lock, no worker tables.
        state = self.__dict__.copy()
        state.pop("_lock", None)
        state.pop("_tables", None)
        state.pop("dictionary_dev", None)
        state.pop("backend", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self.backend = _backend.ArrayBackend(np)
        self.dictionary_dev = self.dictionary

    def compute_rows(self, atoms, out):
        """``D[atoms] Dᵀ`` into ``out`` (C-ordered, ``(len(atoms), m)``)."""
        return _backend.correlations(
            self.backend, self.dictionary[atoms], self.dictionary_dev, out=out
        )

    def support_system(self, indices):
        """``G[S, S]`` for each row ``S`` of ``indices``, from the atoms."""
        atoms = self.dictionary[indices]
        return np.matmul(atoms, atoms.transpose(0, 2, 1))

    def add_stats(self, cache_hits, table_hits, computed):
        with self._lock:
            self.stats["cache_hits"] += int(cache_hits)
            self.stats["table_hits"] += int(table_hits)
            self.stats["computed"] += int(computed)

    @property
    def hit_rate(self):
        """Share of row reads that the cache served."""
        total = sum(self.stats.values())
        return self.stats["cache_hits"] / total if total else 0.0

    @property
    def nbytes(self):
        return self.cache_rows.nbytes


def pilot_usage(X, dictionary, n_nonzero_coefs, backend):
    """How often each atom is among a pilot's top-k correlations.

    The cache needs a ranking of the atoms before the pursuit runs; the top-k
    correlations ``|X Dᵀ|`` of the first ``_PILOT_SAMPLES`` samples give one
    for the cost of encoding that many samples' correlations.
    """
    n_components = dictionary.shape[0]
    dictionary_dev = backend.asarray(dictionary)
    k = min(n_nonzero_coefs, n_components)
    usage = np.zeros(n_components, dtype=np.int64)
    # Chunks of about 64 MiB of correlations: the pilot never costs the
    # memory of a batch's correlations.
    step = max(1, 2**26 // (n_components * dictionary.itemsize))
    for start in range(0, min(X.shape[0], _PILOT_SAMPLES), step):
        stop = min(start + step, X.shape[0], _PILOT_SAMPLES)
        corr = np.abs(
            _backend.correlations(backend, X[start:stop, :], dictionary_dev)
        )
        top = np.argpartition(corr, n_components - k, axis=1)[:, n_components - k :]
        usage += np.bincount(top.ravel(), minlength=n_components)
    return usage


def plan_gram(
    dictionary, gram_memory, *, n_jobs=None, usage=None, X=None,
    n_nonzero_coefs=1, backend=None, min_table_rows=1,
):
    """The whole Gram matrix when it fits in the budget, else :class:`GramRows`.

    Parameters
    ----------
    dictionary : ndarray of shape (n_components, n_features)
        Host atoms.
    gram_memory : "auto", int, float or None
        See :func:`resolve_gram_memory`.
    n_jobs : int, default=None
        Workers, each holding its own table of rows computed on demand.
    usage : ndarray of shape (n_components,), default=None
        Samples per atom (e.g. of the previous step): the cache holds the rows
        of the most used. Estimated from ``X`` (see :func:`pilot_usage`)
        when None and ``X`` is given; else the first atoms are cached.
    X : array of shape (n_samples, n_features), default=None
        Data to estimate usage from.
    n_nonzero_coefs : int, default=1
        Selections per sample, for the usage estimate.
    backend : ArrayBackend, default=None
        Runs the products; NumPy by default.
    min_table_rows : int, default=1
        Rows a worker's table must hold at least (Batch-OMP needs a whole
        support).

    Returns
    -------
    ndarray of shape (n_components, n_components) or GramRows
    """
    if backend is None:
        backend = _backend.ArrayBackend(np)
    n_components = dictionary.shape[0]
    itemsize = dictionary.itemsize
    budget = resolve_gram_memory(gram_memory)
    if n_components * n_components * itemsize <= budget:
        return _backend.gram(backend, dictionary)
    row_bytes = n_components * itemsize
    budget_rows = int(budget // row_bytes)
    # The split depends on the machine, never on ``n_jobs`` (which rows are
    # cached decides how each row was rounded): a table for every core.
    n_workers = max(1, effective_n_jobs(n_jobs), cpu_count())
    table_rows = max(
        min_table_rows, int(_TABLE_FRACTION * budget_rows) // n_workers
    )
    n_cached = max(0, min(n_components, budget_rows - n_workers * table_rows))
    if usage is None and X is not None and n_cached > 0:
        usage = pilot_usage(X, dictionary, n_nonzero_coefs, backend)
    if usage is None:
        cached = np.arange(n_cached)
    else:
        # Most used first; ties to the lower index (a stable order).
        cached = np.sort(np.argsort(-np.asarray(usage), kind="stable")[:n_cached])
    cache_rows = np.empty((n_cached, n_components), dtype=dictionary.dtype)
    step = max(1, 2**26 // row_bytes)
    dictionary_dev = backend.asarray(dictionary)
    for start in range(0, n_cached, step):
        part = slice(start, min(start + step, n_cached))
        cache_rows[part] = _backend.correlations(
            backend, dictionary[cached[part]], dictionary_dev, out=cache_rows[part]
        )
    cache_slot = np.full(n_components, -1, dtype=np.intp)
    cache_slot[cached] = np.arange(n_cached)
    return GramRows(
        dictionary, cache_rows, cache_slot, table_rows, backend, dictionary_dev
    )


class CarriedGram:
    """The Gram matrix (or :class:`CacheHint`) one ``partial_fit`` leaves the next.

    Valid only for the very atoms it was computed from: ``components_`` the
    same array, with the same bytes (a CRC of them, so that atoms edited in
    place are noticed). Never pickled: an unpickled estimator computes the
    matrix again, to the same bits.
    """

    def __init__(self, components=None, gram=None):
        self._components = components
        self._crc = None if components is None else _crc(components)
        self.gram = gram

    def for_atoms(self, components):
        """The carried matrix if it belongs to ``components``, else None."""
        if (
            self.gram is None
            or components is not self._components
            or _crc(components) != self._crc
        ):
            return None
        return self.gram

    def __reduce__(self):
        return (CarriedGram, ())


def _crc(array):
    return zlib.crc32(np.ascontiguousarray(array).view(np.uint8).ravel())
