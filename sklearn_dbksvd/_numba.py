"""numba compilation of the per-sample and per-atom loops.

Matching pursuit and the atom updates are loops over samples and atoms whose
bodies are short vector operations; run from NumPy they pay a Python and a
temporary array per operation. Compiled with numba (``nogil``, so threads run
them in parallel) they run several times faster (numbers in
``benchmarks/RESULTS.md``, section Performance). numba is a required
dependency; with the environment variable ``SKLEARN_DBKSVD_NUMBA=0`` (or
where numba cannot be imported) every kernel runs its pure NumPy version,
which gives the same results to rounding.

Every compiled kernel with a NumPy twin is reached through one dispatch point
made by :func:`twins`: the two functions take the same arguments, the choice is
made at each call, and both stay reachable (``.compiled``, ``.numpy``) so that
one shared set of edge cases (``tests/test_numba_twins.py``) runs against both.
"""

import functools
import os

try:
    import numba
except ImportError:  # pragma: no cover - exercised where numba is missing
    numba = None

# Read at call time by the kernels, so tests can switch the fallback on.
USE_NUMBA = numba is not None and os.environ.get("SKLEARN_DBKSVD_NUMBA", "1") != "0"


def use_numba():
    """Whether the compiled kernels are used."""
    return USE_NUMBA and numba is not None


def jit(*, fastmath=False):
    """``numba.njit(nogil=True, cache=True)``; the function itself without numba.

    ``fastmath`` takes numba's flag sets; the kernels only ask for the flags
    that let LLVM vectorise reductions (``reassoc`` for sums, ``nnan``/``ninf``
    for maxima) and never ``contract``, so products and sums round as in NumPy
    where the fallback must agree exactly.
    """

    def decorate(func):
        if numba is None:  # pragma: no cover
            return func
        return numba.njit(nogil=True, cache=True, fastmath=fastmath)(func)

    return decorate


def twins(compiled, numpy_version):
    """One function that runs ``compiled`` when :func:`use_numba`, else its NumPy twin.

    Parameters
    ----------
    compiled : callable
        The compiled kernel (or a thin Python wrapper that prepares its
        buffers and calls it).
    numpy_version : callable
        Same arguments, same results to rounding, in NumPy.

    Returns
    -------
    callable
        Dispatches at each call (tests switch the fallback on at run time);
        ``.compiled`` and ``.numpy`` are the two twins.
    """

    @functools.wraps(numpy_version)
    def dispatch(*args, **kwargs):
        kernel = dispatch.compiled if use_numba() else dispatch.numpy
        return kernel(*args, **kwargs)

    dispatch.compiled, dispatch.numpy = compiled, numpy_version
    return dispatch
