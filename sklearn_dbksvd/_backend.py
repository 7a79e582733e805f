"""Where the products that grow with the number of samples run.

DB-KSVD spends its time in a few products whose cost grows with the batch
size ``n``: the correlations ``X Dᵀ``, the Gram matrix ``D Dᵀ``, the residual
``X − code @ D`` and, for atoms used by many samples ("wide" error matrices),
``EᵀE``. This module runs them in one array namespace ``xp`` (NumPy, CuPy,
torch, ...) written against the array API standard; everything else (matching
pursuit on the correlations, the small Lanczos solves, the bookkeeping) stays
on the host in NumPy. Data go to the device one block of samples at a time,
so a batch never has to fit on the device at once, and arrays that already
live on a device are used there without a trip through the host.

The NumPy backend takes shortcuts (compiled residual kernel, in-place
updates); the others use only standard functions, so that the CPU test suite
exercises the same code path with ``array_api_strict`` on a non-default device.

Device memory is bounded like host memory: no device product asks for more
than :attr:`ArrayBackend.product_bytes` at once (its block of operand rows
plus its result); larger products go a block of rows at a time into a host
array (see :func:`device_memory` and :func:`product_budget`).
"""

import threading

import numpy as np
from joblib import cpu_count

from . import _numba

try:
    import array_api_compat
except ImportError:  # pragma: no cover - only the NumPy backend then
    array_api_compat = None


# Of the device memory free when a backend runs its first product, the
# fraction its products may ask for at once, shared among the threads that
# may run them (see :func:`product_budget`): the quarter of
# ``gram_memory="auto"``, for the same reason. The rest is for what the
# device holds besides (the atoms, twice while the encoder's copy and the
# Gram rows' coexist), the GEMM library's workspace and other processes.
_DEVICE_FRACTION = 0.25

# One backend resolves its budget once, whichever thread runs a product first.
_BUDGET_LOCK = threading.Lock()


def _is_numpy_array(array):
    return isinstance(array, np.ndarray)


class ArrayBackend:
    """The namespace and device of the sample-dependent products.

    Parameters
    ----------
    xp : module
        Array namespace (``numpy`` itself for the NumPy backend).
    device : object
        Device of the arrays created in ``xp``; None for NumPy.
    """

    def __init__(self, xp, device=None):
        self.xp = xp
        self.device = device
        self.is_numpy = xp is np
        self._product_bytes = None
        self._resolved = self.is_numpy

    def __repr__(self):
        return f"ArrayBackend({getattr(self.xp, '__name__', self.xp)}, {self.device})"

    @property
    def product_bytes(self):
        """Bytes one device product may ask for at once; None: no device limit.

        :func:`product_budget` of :func:`device_memory`, resolved when the
        first product runs (the atoms are then on the device, the blocks not
        yet) and kept for the backend's life, so that how the products are
        split never depends on which thread ran first or what memory other
        callers held meanwhile. None for host namespaces (NumPy,
        ``array_api_strict``, torch on the CPU): their products are host
        memory, within the host budgets already.
        """
        if not self._resolved:
            with _BUDGET_LOCK:
                if not self._resolved:
                    self._product_bytes = product_budget(device_memory(self))
                    self._resolved = True
        return self._product_bytes

    def asarray(self, array):
        """``array`` in this namespace and on this device (no copy if it is)."""
        if self.is_numpy:
            return to_numpy(array)
        return self.xp.asarray(array, device=self.device)


def device_memory(backend):
    """Bytes the device of ``backend`` can still give; None for host memory.

    CuPy: the device's free memory plus the free bytes of CuPy's default
    memory pool (held by this process, given to the next allocation). Torch
    on a CUDA device: the device's free memory plus the bytes its caching
    allocator holds unused. Other namespaces (NumPy, ``array_api_strict``,
    torch on the CPU) use host memory, budgeted by ``gram_memory`` and the
    fit's estimate: None.
    """
    if backend.is_numpy or array_api_compat is None:
        return None
    xp = backend.xp
    if array_api_compat.is_cupy_namespace(xp):  # pragma: no cover - GPU only
        import cupy

        device = backend.device if backend.device is not None else cupy.cuda.Device()
        with cupy.cuda.Device(getattr(device, "id", device)):
            free, _ = cupy.cuda.runtime.memGetInfo()
            return int(free) + int(cupy.get_default_memory_pool().free_bytes())
    if array_api_compat.is_torch_namespace(xp):
        import torch

        device = torch.device(backend.device if backend.device is not None else "cpu")
        if device.type == "cuda":  # pragma: no cover - GPU only
            free, _ = torch.cuda.mem_get_info(device)
            unused = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(
                device
            )
            return int(free) + int(unused)
    return None


def product_budget(available, n_threads=None):
    """Bytes one device product may ask for, of ``available`` device bytes.

    ``_DEVICE_FRACTION`` of ``available``, split among ``n_threads`` (default:
    the machine's cores, so that the split never depends on ``n_jobs``: the
    blocks decide how each product is rounded). None when ``available`` is
    None (host memory). Not a parameter of the estimators: the device holds
    no cache a user would size, only the atoms and blocks in flight, and
    ``gram_memory`` already sizes what the host keeps.
    """
    if available is None:
        return None
    n_threads = max(1, cpu_count() if n_threads is None else n_threads)
    return int(_DEVICE_FRACTION * available) // n_threads


def _row_blocks(backend, n_rows, row_bytes, fixed_bytes=0):
    """Slices of ``n_rows`` so a product of ``row_bytes`` a row fits the budget.

    One slice (the whole product) when the backend has no device limit or
    the product fits; else blocks of as many rows as fit beside
    ``fixed_bytes`` (at least one row).
    """
    limit = backend.product_bytes
    if limit is None or fixed_bytes + n_rows * row_bytes <= limit:
        return [slice(0, n_rows)]
    step = max(1, int((limit - fixed_bytes) // max(1, row_bytes)))
    return [slice(i, min(i + step, n_rows)) for i in range(0, n_rows, step)]


def _itemsize(array):
    if _is_numpy_array(array):
        return array.itemsize
    return array_api_compat.array_namespace(array).finfo(array.dtype).bits // 8


def is_device_array(array):
    """Whether ``array`` is an array-API array of another namespace than NumPy."""
    if array_api_compat is None or _is_numpy_array(array):
        return False
    return array_api_compat.is_array_api_obj(array) and not (
        array_api_compat.is_numpy_array(array)
    )


def to_namespace_of(reference, array):
    """NumPy ``array`` in the namespace and on the device of ``reference``."""
    xp = array_api_compat.array_namespace(reference)
    return xp.asarray(array, device=array_api_compat.device(reference))


def host_dtype(X):
    """The NumPy dtype matching the dtype of an array of any namespace."""
    if _is_numpy_array(X) or not is_device_array(X):
        return np.dtype(X.dtype)
    return to_numpy(X[:1, ...]).dtype


def take_rows(X, rows):
    """Rows ``rows`` (a NumPy index array) of a device array, on its device."""
    xp = array_api_compat.array_namespace(X)
    index = xp.asarray(rows, device=array_api_compat.device(X))
    return xp.take(X, index, axis=0)


def to_numpy(array):
    """Host NumPy copy of an array of any namespace (a no-op for NumPy)."""
    if _is_numpy_array(array):
        return array
    if array_api_compat is not None:
        if array_api_compat.is_cupy_array(array):  # pragma: no cover - GPU only
            return array.get()
        if array_api_compat.is_torch_array(array):
            return array.detach().cpu().numpy()
        xp = array_api_compat.array_namespace(array)
        if array_api_compat.is_array_api_strict_namespace(xp):
            # array_api_strict refuses to export from a non-default device.
            array = xp.asarray(array, device=xp.Device("CPU_DEVICE"))
    return np.asarray(array)


def resolve_backend(backend, *arrays):
    """The :class:`ArrayBackend` for ``backend`` and the input arrays.

    Parameters
    ----------
    backend : {"numpy", "cupy"}
        Requested backend. With "numpy", inputs that are already arrays of
        another namespace (torch, CuPy, array_api_strict, ... passed with
        scikit-learn's ``array_api_dispatch``) keep their namespace and
        device, so they are not copied to the host.
    *arrays : array-like
        Inputs; NumPy arrays and None are ignored.

    Returns
    -------
    ArrayBackend
    """
    foreign = [a for a in arrays if a is not None and not _is_numpy_array(a)]
    if backend == "cupy":
        try:
            import cupy  # noqa: F401
        except ImportError as error:
            raise ImportError(
                "backend='cupy' needs CuPy and a CUDA GPU: pip install "
                "'sklearn-dbksvd[gpu]'."
            ) from error
        xp = _namespace_of(cupy.empty(0))
        device = foreign and array_api_compat.device(foreign[0])
        return ArrayBackend(xp, device or None)
    if not foreign or array_api_compat is None:
        return ArrayBackend(np)
    xp = _namespace_of(*foreign)
    if array_api_compat.is_numpy_namespace(xp):
        return ArrayBackend(np)
    return ArrayBackend(xp, array_api_compat.device(foreign[0]))


def _namespace_of(*arrays):
    if array_api_compat is None:  # pragma: no cover
        raise ImportError(
            "array-api-compat is needed for non-NumPy arrays: pip install "
            "'sklearn-dbksvd[gpu]'."
        )
    return array_api_compat.array_namespace(*arrays)


def gram(backend, dictionary):
    """Host ``D Dᵀ`` of shape (n_components, n_components).

    NumPy computes ``D @ D.T`` with a symmetric rank-k update (half the
    flops) when both operands are the same buffer; keep it that way. On a
    device, when the whole matrix exceeds the backend's
    :attr:`~ArrayBackend.product_bytes`, blocks of rows ``D[i:j] Dᵀ`` go into
    a host array: the same entries up to the rounding of the GEMM.
    """
    if backend.is_numpy:
        return dictionary @ dictionary.T
    D = backend.asarray(dictionary)
    n_components = dictionary.shape[0]
    row_bytes = (n_components + dictionary.shape[1]) * dictionary.itemsize
    blocks = _row_blocks(backend, n_components, row_bytes)
    if len(blocks) == 1:
        return to_numpy(D @ D.T)
    out = np.empty((n_components, n_components), dtype=dictionary.dtype)
    for rows in blocks:
        out[rows] = to_numpy(D[rows, :] @ D.T)
    return out


def correlations(backend, X_block, dictionary_dev, out=None):
    """Host ``X_block @ Dᵀ`` of shape (n_block, n_components), C-ordered.

    ``out`` (C-ordered, of that shape and the dictionary's dtype) receives
    the product when given and of the product's dtype; otherwise a new array
    is made. On a device the product goes a block of rows at a time when the
    whole of it (the rows sent and the result) exceeds the backend's
    :attr:`~ArrayBackend.product_bytes`.
    """
    if backend.is_numpy:
        if out is not None and out.dtype == np.result_type(X_block, dictionary_dev):
            return np.matmul(X_block, dictionary_dev.T, out=out)
        return X_block @ dictionary_dev.T
    n_rows, n_components = X_block.shape[0], dictionary_dev.shape[0]
    row_bytes = (X_block.shape[1] + n_components) * _itemsize(dictionary_dev)
    blocks = _row_blocks(backend, n_rows, row_bytes)
    result = out
    for rows in blocks:
        part = X_block if len(blocks) == 1 else X_block[rows, :]
        corr = to_numpy(backend.asarray(part) @ dictionary_dev.T)
        if result is None or result.dtype != corr.dtype or not (
            result.shape == (n_rows, n_components) and result.flags.c_contiguous
        ):
            if len(blocks) == 1:
                return np.ascontiguousarray(corr)
            result = np.empty((n_rows, n_components), dtype=corr.dtype)
        result[rows] = corr
    return result


def sq_norms(backend, X_block):
    """Host squared norms of the rows of ``X_block``."""
    if backend.is_numpy:
        return np.einsum("ij,ij->i", X_block, X_block)
    # The rows sent and their squares.
    row_bytes = 2 * X_block.shape[1] * _itemsize(X_block)
    parts = []
    for rows in _row_blocks(backend, X_block.shape[0], row_bytes):
        block = backend.asarray(X_block[rows, :])
        parts.append(to_numpy(backend.xp.sum(block * block, axis=1)))
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def residual(backend, X_block, indices, values, dictionary, dictionary_dev, out):
    """Write ``X_block − code @ D`` into the host array ``out``.

    The code is in selection form: ``indices``/``values`` of shape
    (n_block, n_selections), repeated atoms adding up.
    """
    if backend.is_numpy:
        out[...] = X_block
        _subtract_selections(out, indices, values, dictionary)
        return out
    xp = backend.xp
    # A row of the residual, of the atoms gathered, of their scaled copy and
    # of the next residual, and the row's selections.
    row_bytes = 4 * X_block.shape[1] * _itemsize(dictionary_dev) + 16 * indices.shape[1]
    for rows in _row_blocks(backend, X_block.shape[0], row_bytes):
        R = backend.asarray(X_block[rows, :])
        idx = backend.asarray(indices[rows])
        val = backend.asarray(values[rows])
        # One selection at a time: a (n_block, n_features) temporary, never
        # (n_block, n_selections, n_features).
        for t in range(indices.shape[1]):
            atoms = xp.take(dictionary_dev, idx[:, t], axis=0)
            R = R - val[:, t : t + 1] * atoms
        out[rows] = to_numpy(R)
    return out


def _subtract_selections_numpy(out, indices, values, dictionary):
    """``out -= Σ_t values[:, t] * dictionary[indices[:, t]]`` in place."""
    for t in range(indices.shape[1]):
        out -= values[:, t : t + 1] * dictionary[indices[:, t]]


@_numba.jit(fastmath=True)
def _subtract_selections_jit(out, indices, values, dictionary):  # pragma: no cover
    """Compiled residual: four selections per pass over the output row.

    Summing four scaled atoms before touching ``out`` loads and stores each
    output row a quarter as often (1.75x faster than one selection at a time,
    measured on one core at 2304 features).
    """
    n_samples, n_selections = indices.shape
    n_features = out.shape[1]
    for i in range(n_samples):
        row = out[i]
        t = 0
        while t + 4 <= n_selections:
            a0, a1 = dictionary[indices[i, t]], dictionary[indices[i, t + 1]]
            a2, a3 = dictionary[indices[i, t + 2]], dictionary[indices[i, t + 3]]
            v0, v1, v2, v3 = values[i, t], values[i, t + 1], values[i, t + 2], values[i, t + 3]
            for f in range(n_features):
                row[f] -= (v0 * a0[f] + v1 * a1[f]) + (v2 * a2[f] + v3 * a3[f])
            t += 4
        for t in range(t, n_selections):
            atom = dictionary[indices[i, t]]
            value = values[i, t]
            for f in range(n_features):
                row[f] -= value * atom[f]


# ``out -= Σ_t values[:, t] * dictionary[indices[:, t]]`` in place.
_subtract_selections = _numba.twins(
    _subtract_selections_jit, _subtract_selections_numpy
)


def normal_matrix(backend, E):
    """``EᵀE`` of a wide error matrix, computed in the backend.

    Returns what :func:`matvec` takes for the final ``E v`` (the device copy
    of ``E``; the host ``E`` itself when it exceeds the backend's
    :attr:`~ArrayBackend.product_bytes`, then summed a block of rows at a
    time) and the host ``EᵀE`` of shape (n_features, n_features).
    """
    n_features = E.shape[1]
    blocks = _row_blocks(
        backend, E.shape[0], n_features * E.itemsize, n_features**2 * E.itemsize
    )
    if len(blocks) == 1:
        E_dev = backend.asarray(E)
        return E_dev, to_numpy(E_dev.T @ E_dev)
    normal = np.zeros((n_features, n_features), dtype=E.dtype)
    for rows in blocks:
        E_part = backend.asarray(E[rows])
        normal += to_numpy(E_part.T @ E_part)
    return E, normal


def matvec(backend, E_dev, vector):
    """Host ``E @ vector`` for an error matrix from :func:`normal_matrix`."""
    if backend.is_numpy or not _is_numpy_array(E_dev):
        return to_numpy(E_dev @ backend.asarray(vector))
    # The host ``E`` that did not fit the budget: a block of rows at a time.
    vector = backend.asarray(vector)
    blocks = _row_blocks(backend, E_dev.shape[0], (E_dev.shape[1] + 1) * E_dev.itemsize)
    return np.concatenate(
        [to_numpy(backend.asarray(E_dev[rows]) @ vector) for rows in blocks]
    )
