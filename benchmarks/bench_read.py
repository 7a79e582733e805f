"""Fit from disk: bytes read and seconds per step, memory map against positioned reads.

A planted ``.npy`` of ``--rows`` x ``--features`` float32 is read in the
shuffled batches of a fit (``BatchSchedule``: a permutation of the rows per
epoch, each batch sorted), with the file evicted from the page cache before
every batch (``madvise``/``posix_fadvise(DONTNEED)``), as when the file is
larger than the page cache. Two readers:

- ``memmap``: fancy indexing of the memory map (the reader before
  ``gather_rows``): every page fault makes the kernel read around it
  (``/sys/block/*/queue/read_ahead_kb``);
- ``pread``: :func:`sklearn_dbksvd._data.gather_rows`, positioned reads of
  the rows with read-ahead off, 16 in flight.

Part 1 reads batches only: bytes read from disk per batch
(``/proc/self/io`` ``read_bytes``) and seconds. Part 2 runs ``--steps`` steps
of ``DBKSVDDictionaryLearning.fit`` on the file with each reader and on the
same array in memory: seconds per step, end to end.

Usage::

    python benchmarks/bench_read.py              # the RESULTS.md run (2.4 GB)
    python benchmarks/bench_read.py --rows 20000 --steps 2 -m 256   # smoke test

The planted file goes to ``--dir`` (default: a temporary directory) and is
removed at the end. Prints a markdown table and writes
``benchmarks/results/read.json``.
"""

import argparse
import json
import mmap
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from suites.common import environment, load_average  # noqa: E402


def read_bytes():
    with open("/proc/self/io") as file:
        for line in file:
            if line.startswith("read_bytes"):
                return int(line.split()[1])
    return 0


def evict(path, mapped=None):
    """Drop ``path`` from the page cache (and from the memory map ``mapped``)."""
    if mapped is not None:
        mapped._mmap.madvise(mmap.MADV_DONTNEED)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def plant(path, n_rows, n_features, seed=0):
    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(
        path, mode="w+", dtype=np.float32, shape=(n_rows, n_features)
    )
    step = max(1, 2**26 // (4 * n_features))
    for start in range(0, n_rows, step):
        stop = min(start + step, n_rows)
        out[start:stop] = rng.standard_normal((stop - start, n_features), np.float32)
    out.flush()
    del out
    with open(path, "rb") as file:
        os.fsync(file.fileno())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=262144)
    parser.add_argument("--features", type=int, default=2304)
    parser.add_argument(
        "--batch", type=int, default=6554,
        help="rows per batch; default 2.5%% of 262144, the paper's 2^16 of 2.6M",
    )
    parser.add_argument("--batches", type=int, default=6, help="batches of part 1")
    parser.add_argument("--no-reads", action="store_true", help="skip part 1")
    parser.add_argument("--steps", type=int, default=4, help="fit steps of part 2")
    parser.add_argument("-m", type=int, default=4096)
    parser.add_argument("-k", type=int, default=20)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args(argv)

    from sklearn_dbksvd import DBKSVDDictionaryLearning, _data

    record = {"environment": environment(), "load_average_before": load_average()}
    record["config"] = vars(args).copy()
    record["read_ahead_kb"] = {
        p.parent.parent.name: int(p.read_text())
        for p in Path("/sys/block").glob("*/queue/read_ahead_kb")
        if not p.parent.parent.name.startswith(("loop", "zram", "ram"))
    }
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "X.npy"
        tic = time.perf_counter()
        plant(path, args.rows, args.features)
        record["plant_s"] = time.perf_counter() - tic
        batch_bytes = args.batch * args.features * 4
        schedule = _data.BatchSchedule(args.rows, args.batch, contiguous=False)
        order = schedule.draw_order(np.random.RandomState(0), True)
        real_layout = _data._file_layout

        readers = {"memmap": lambda X: None, "pread": real_layout}
        part1 = {}
        for name, layout in () if args.no_reads else readers.items():
            _data._file_layout = layout
            X = np.load(path, mmap_mode="r")
            runs = []
            for position in range(args.batches):
                rows = schedule.rows(order, position)
                evict(path, X)
                before, tic = read_bytes(), time.perf_counter()
                batch = _data.read_batch(X, rows)
                runs.append((time.perf_counter() - tic, read_bytes() - before))
                assert batch.shape == (len(rows), args.features)
            part1[name] = {
                "seconds_per_batch": float(np.median([r[0] for r in runs])),
                "bytes_read_per_batch": float(np.median([r[1] for r in runs])),
                "amplification": float(np.median([r[1] for r in runs])) / batch_bytes,
            }
            del X
        _data._file_layout = real_layout
        record["batch_bytes"] = batch_bytes
        record["reads"] = part1

        params = dict(
            n_components=args.m, n_nonzero_coefs=args.k, batch_size=args.batch,
            max_iter=1, random_state=0,
        )
        # Compile the kernels first: no fit below pays for it.
        rng = np.random.RandomState(0)
        DBKSVDDictionaryLearning(**{**params, "batch_size": 256}).fit(
            rng.randn(512, args.features).astype(np.float32)
        )
        part2 = {}
        prefetch = _data.BatchReader.prefetch
        # Seconds the fit waits for each batch (read, validated, centred):
        # what the reader costs a step, whatever the step's own time.
        from sklearn_dbksvd import _fit_loop

        step_batch, waits = _fit_loop.step_batch, []

        def timed_step_batch(*a, **kw):
            tic = time.perf_counter()
            result = step_batch(*a, **kw)
            waits.append(time.perf_counter() - tic)
            return result

        _fit_loop.step_batch = timed_step_batch
        fits = {
            "in memory": (None, True),
            "memmap (before)": ("memmap", False),
            "pread": ("pread", False),
            "pread + prefetch (after)": ("pread", True),
        }
        for name, (reader, prefetching) in fits.items():
            if reader is None:
                X = np.load(path)
            else:
                _data._file_layout = readers[reader]
                X = np.load(path, mmap_mode="r")
            if not prefetching:
                _data.BatchReader.prefetch = lambda self, rows: None
            count = {"steps": 0}

            def callback(info, X=X, reader=reader, count=count):
                count["steps"] += 1
                if reader is not None:
                    evict(path, X)  # the next batch comes from disk
                return count["steps"] >= args.steps

            if reader is not None:
                evict(path, X)
            waits.clear()
            before, tic = read_bytes(), time.perf_counter()
            model = DBKSVDDictionaryLearning(**params, callback=callback).fit(X)
            wall = time.perf_counter() - tic
            steps = model.n_steps_
            part2[name] = {
                "steps": steps,
                "seconds_per_step": wall / steps,
                "step_seconds": float(np.median([h["seconds"] for h in model.history_]))
                if hasattr(model, "history_")
                else None,
                "bytes_read_per_step": (read_bytes() - before) / steps,
                # The first read is initialise's; the loop's follow.
                "wait_seconds_per_step": float(np.median(waits[1:])),
                "components_sha": hash(model.components_.tobytes()),
            }
            _data._file_layout = real_layout
            _data.BatchReader.prefetch = prefetch
            del X, model
        _fit_loop.step_batch = step_batch
        record["fit"] = part2
    record["load_average_after"] = load_average()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "read.json").write_text(json.dumps(record, indent=2, default=float))
    print(markdown(record))


def markdown(record):
    gb = 1e9
    lines = [
        f"batch of {record['config']['batch']} rows x {record['config']['features']} "
        f"float32 = {record['batch_bytes'] / gb:.3f} GB, from a file of "
        f"{record['config']['rows']} rows evicted from the page cache before each "
        f"batch; read_ahead_kb {record['read_ahead_kb']}",
        "",
        "| reader | seconds per batch | GB read per batch | read / batch |",
        "|---|---:|---:|---:|",
    ]
    for name, r in record["reads"].items():  # empty with --no-reads
        lines.append(
            f"| {name} | {r['seconds_per_batch']:.2f} | "
            f"{r['bytes_read_per_batch'] / gb:.3f} | {r['amplification']:.1f}x |"
        )
    lines += [
        "",
        f"| fit, m={record['config']['m']}, k={record['config']['k']} | seconds "
        "per step (read + step) | seconds waiting for the batch | GB read per "
        "step | same atoms as in memory |",
        "|---|---:|---:|---:|---|",
    ]
    reference = record["fit"]["in memory"]["components_sha"]
    for name, r in record["fit"].items():
        lines.append(
            f"| {name} | {r['seconds_per_step']:.2f} | "
            f"{r['wait_seconds_per_step']:.2f} | "
            f"{r['bytes_read_per_step'] / gb:.3f} | "
            f"{'yes' if r['components_sha'] == reference else 'NO'} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
