"""Peak memory of ``dbksvd encode`` against the size of dense codes.

Writes a memory-mapped ``.npy`` of Gaussian samples and a dictionary of
random unit atoms (the memory of encoding does not depend on how good the
dictionary is), runs ``python -m sklearn_dbksvd encode`` in a subprocess and
reads the child's peak resident set size from ``getrusage``. The input file
is memory-mapped, so the pages of it that the OS keeps mapped count in that
peak too.

Usage::

    python benchmarks/bench_cli_memory.py [--n-samples 200000] [--n-features 256]
        [--n-components 4096] [-k 20] [--n-jobs 1] [--json out.json]
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from sklearn_dbksvd import DBKSVDDictionaryLearning
from sklearn_dbksvd.cli._io import save_dictionary
from sklearn_dbksvd.datasets import uniform_atoms

MiB = 2**20


def write_inputs(directory, n_samples, n_features, n_components, k, seed=0):
    rng = np.random.RandomState(seed)
    data = np.lib.format.open_memmap(
        directory / "X.npy", mode="w+", dtype=np.float32, shape=(n_samples, n_features)
    )
    # Written in slices: the benchmark's own process stays small too.
    for start in range(0, n_samples, 50_000):
        stop = min(start + 50_000, n_samples)
        data[start:stop] = rng.standard_normal((stop - start, n_features))
    data.flush()
    del data
    model = DBKSVDDictionaryLearning(n_components, n_nonzero_coefs=k)
    model.components_ = uniform_atoms(n_components, n_features, rng, np.float32)
    model.n_features_in_ = n_features
    model.n_steps_ = model.n_iter_ = model.n_samples_seen_ = 0
    model.history_ = []
    save_dictionary(directory / "dict.npz", model, force=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-samples", type=int, default=200_000)
    parser.add_argument("--n-features", type=int, default=256)
    parser.add_argument("--n-components", type=int, default=4096)
    parser.add_argument("-k", type=int, default=20)
    parser.add_argument("--n-jobs", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        write_inputs(
            directory, args.n_samples, args.n_features, args.n_components, args.k
        )
        command = [
            sys.executable,
            "-m",
            "sklearn_dbksvd",
            "encode",
            str(directory / "dict.npz"),
            str(directory / "X.npy"),
            "-o",
            str(directory / "codes.npz"),
            "-q",
            "--n-jobs",
            str(args.n_jobs),
        ]
        tic = time.perf_counter()
        subprocess.run(command, check=True)
        seconds = time.perf_counter() - tic
        # ru_maxrss of children is in KiB on Linux: the largest child's peak.
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        codes = sp.load_npz(directory / "codes.npz")
        codes_file = (directory / "codes.npz").stat().st_size

    dense = args.n_samples * args.n_components * np.dtype(np.float32).itemsize
    result = {
        "n_samples": args.n_samples,
        "n_features": args.n_features,
        "n_components": args.n_components,
        "k": args.k,
        "n_jobs": args.n_jobs,
        "seconds": round(seconds, 1),
        "peak_rss_mib": round(peak / MiB),
        "dense_codes_mib": round(dense / MiB),
        "input_mib": round(args.n_samples * args.n_features * 4 / MiB),
        "csr_file_mib": round(codes_file / MiB, 1),
        "nnz": int(codes.nnz),
        "peak_over_dense": round(peak / dense, 3),
    }
    print(json.dumps(result, indent=2))
    print(
        "| n × d → m, k | peak RSS of `dbksvd encode` | dense float32 codes | "
        "input .npy | CSR file | time |\n|---|---|---|---|---|---|\n"
        f"| {args.n_samples} × {args.n_features} → {args.n_components}, {args.k} "
        f"| {result['peak_rss_mib']} MiB | {result['dense_codes_mib']} MiB "
        f"| {result['input_mib']} MiB | {result['csr_file_mib']} MiB "
        f"| {result['seconds']} s |"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
