"""Helpers shared by the benchmark suites: clocks, snapshots, evaluation, tables."""

import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------
# Clocks
# ----------------------------------------------------------------------
class Clock:
    """Wall-clock and process CPU seconds since creation.

    CPU time is summed over all threads of this process; on a machine shared
    with other jobs it is less sensitive to contention than wall time.
    """

    def __init__(self):
        self.wall0 = time.perf_counter()
        self.cpu0 = time.process_time()

    def elapsed(self):
        return time.perf_counter() - self.wall0, time.process_time() - self.cpu0


def timed(func, *args, repeat=1, **kwargs):
    """Run ``func`` ``repeat`` times; return (last result, best wall, its CPU time)."""
    best = None
    result = None
    for _ in range(repeat):
        clock = Clock()
        result = func(*args, **kwargs)
        wall, cpu = clock.elapsed()
        if best is None or wall < best[0]:
            best = (wall, cpu)
    return result, best[0], best[1]


class Snapshots:
    """Copies of a dictionary taken during a fit, with the time they were taken.

    The time spent copying is measured and subtracted, so the recorded times
    are those of the fit alone.
    """

    def __init__(self):
        self.items = []  # (wall, cpu, label, components)
        self._clock = None
        self._overhead = (0.0, 0.0)

    def start(self):
        self.items.clear()
        self._overhead = (0.0, 0.0)
        self._clock = Clock()

    def take(self, components, label):
        wall, cpu = self._clock.elapsed()
        tic_wall, tic_cpu = time.perf_counter(), time.process_time()
        copy = np.array(components, dtype=np.float64, copy=True)
        self.items.append(
            (wall - self._overhead[0], cpu - self._overhead[1], label, copy)
        )
        self._overhead = (
            self._overhead[0] + time.perf_counter() - tic_wall,
            self._overhead[1] + time.process_time() - tic_cpu,
        )

    def stop(self):
        """Total (wall, cpu) of the fit, snapshot overhead removed."""
        wall, cpu = self._clock.elapsed()
        return wall - self._overhead[0], cpu - self._overhead[1]


# ----------------------------------------------------------------------
# Evaluation of a learned dictionary on held-out data
# ----------------------------------------------------------------------
def unit_rows(dictionary):
    """Rows scaled to unit norm; all-zero rows stay zero."""
    dictionary = np.asarray(dictionary, dtype=np.float64)
    norms = np.linalg.norm(dictionary, axis=1, keepdims=True)
    return np.divide(dictionary, norms, out=np.zeros_like(dictionary), where=norms > 0)


def heldout_error(dictionary, X_test, k, coder):
    """Relative error (paper Eq. 6) of the k-sparse codes of ``X_test``.

    ``coder`` is "omp" (scikit-learn's ``sparse_encode(algorithm="omp")``) or
    "mp" (``sklearn_dbksvd.sparse_encode_mp``). Every dictionary is first
    given unit-norm rows, in the dtype of ``X_test``, so that all methods
    are coded by exactly the same routine.
    """
    from sklearn.decomposition import sparse_encode

    from sklearn_dbksvd import sparse_encode_mp
    from sklearn_dbksvd.metrics import relative_error

    D = unit_rows(dictionary).astype(X_test.dtype)
    if coder == "omp":
        with warnings.catch_warnings():
            # Duplicated atoms make OMP stop early on some samples; that is
            # part of the dictionary's score, not news.
            warnings.filterwarnings("ignore", "Orthogonal matching pursuit ended")
            code = sparse_encode(X_test, D, algorithm="omp", n_nonzero_coefs=k)
    elif coder == "mp":
        code = sparse_encode_mp(X_test, D, k)
    else:  # pragma: no cover
        raise ValueError(coder)
    return relative_error(X_test, code.astype(X_test.dtype) @ D)


def recovery(true_dictionary, dictionary, threshold):
    """Share of planted atoms matched with |cos| >= threshold; zero atoms skipped."""
    from sklearn_dbksvd.metrics import atom_recovery

    D = unit_rows(dictionary)
    D = D[np.linalg.norm(D, axis=1) > 0]
    if len(D) == 0:
        return 0.0
    return atom_recovery(true_dictionary, D, threshold=threshold)


# ----------------------------------------------------------------------
# Machine and code description
# ----------------------------------------------------------------------
def _git(*args):
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def environment():
    """Everything needed to interpret the numbers."""
    import numpy
    import scipy
    import sklearn
    from threadpoolctl import threadpool_info

    import sklearn_dbksvd

    versions = {
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "scikit-learn": sklearn.__version__,
        "sklearn_dbksvd": sklearn_dbksvd.__version__,
    }
    for name in ("dictlearn", "numba"):
        try:
            module = __import__(name)
            versions[name] = module.__version__
        except ImportError:
            versions[name] = None
    try:
        from sklearn_dbksvd import _numba

        versions["sklearn_dbksvd uses numba"] = bool(_numba.use_numba())
    except ImportError:
        versions["sklearn_dbksvd uses numba"] = False
    dirty = _git("status", "--porcelain", "--", "sklearn_dbksvd")
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": " ".join(["python", *sys.argv]),
        "machine": platform.machine(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_gb": _memory_gb(),
        "platform": platform.platform(),
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "package_tree_modified": bool(dirty),
        "versions": versions,
        "blas": [
            {k: info.get(k) for k in ("internal_api", "num_threads", "version")}
            for info in threadpool_info()
        ],
    }


def _cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _memory_gb():
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def load_average():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# ----------------------------------------------------------------------
# Markdown
# ----------------------------------------------------------------------
def fmt(value, digits=3):
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if value == 0:
            return "0"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}" if abs(value) < 1 else f"{value:.{digits}g}"
    return str(value)


def table(header, rows):
    """Markdown table from a header list and rows of already formatted cells."""
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
