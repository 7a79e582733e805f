"""The paper-scale fit from disk, end to end: ``dbksvd fit`` on a planted 24 GB ``.npy``.

A planted ``.npy`` of ``--rows`` x ``--features`` float32 (default 2.6M x
2304, 24 GB: larger than this machine's page cache) is written once: every
row is ``--true-k`` atoms of a random unit-norm dictionary of
``--true-atoms`` atoms with Gaussian coefficients, plus 5 % Gaussian noise.
Then, interleaved:

1. **in memory** (reference): ``DBKSVDDictionaryLearning.fit`` on the first
   ``--mem-batches`` batches of the file loaded into an array, planned for
   ``--steps`` steps (so atom replacement follows the same schedule) and
   stopped by its callback after ``--mem-steps``; the wall time between
   callbacks is the seconds per step;
2. **from disk**: ``dbksvd fit X.npy -m M -k K --batch-size B --steps S
   --checkpoint DIR`` in a child process, the file evicted from the page
   cache first. The wall time between checkpoint writes is the seconds per
   step (so the disk run also pays for its checkpoint); ``/proc/PID/io``
   ``read_bytes`` gives the bytes read from disk per step and
   ``/proc/PID/status`` the peak anonymous RSS (``RssAnon``, sampled every
   0.1 s) and ``VmHWM``;
3. **in memory** again.

Usage::

    python benchmarks/bench_paper_disk.py --dir /big/tmp          # the RESULTS.md run
    python benchmarks/bench_paper_disk.py --rows 60000 --features 256 -m 256 -k 8 \
        --batch-size 4096 --steps 4 --mem-steps 3 --mem-batches 2  # smoke test

The planted file is kept in ``--dir`` between runs (``--remove`` deletes it
at the end) and reused when its shape matches. Prints a markdown table and
writes ``benchmarks/results/paper_disk.json``.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_read import evict  # noqa: E402
from suites.common import environment, load_average  # noqa: E402

GiB = 2**30


def plant(path, n_rows, n_features, n_atoms, k, noise=0.05, seed=0):
    """Write the planted ``.npy`` block by block; return the planted atoms."""
    from scipy import sparse

    rng = np.random.default_rng(seed)
    truth = rng.standard_normal((n_atoms, n_features), dtype=np.float32)
    truth /= np.linalg.norm(truth, axis=1, keepdims=True)
    tmp = path.with_name(path.name + ".part")
    out = np.lib.format.open_memmap(
        tmp, mode="w+", dtype=np.float32, shape=(n_rows, n_features)
    )
    block = 2**15
    fd = os.open(tmp, os.O_RDONLY)
    for start in range(0, n_rows, block):
        rows = min(block, n_rows - start)
        # With replacement: a repeated atom (4.6 % of rows at 20 of 4096)
        # just adds its coefficients.
        atoms = rng.integers(0, n_atoms, size=(rows, k))
        codes = sparse.csr_matrix(
            (
                rng.standard_normal(rows * k, dtype=np.float32),
                atoms.ravel(),
                np.arange(0, rows * k + 1, k),
            ),
            shape=(rows, n_atoms),
        )
        signal = codes @ truth
        scale = noise * np.sqrt(k / n_features)
        signal += scale * rng.standard_normal(signal.shape, dtype=np.float32)
        out[start : start + rows] = signal
        # Written pages leave the page cache as they go, so that planting
        # does not evict everything else on the machine.
        out.flush()
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    del out
    os.close(fd)
    os.replace(tmp, path)
    return truth


def proc_fields(pid):
    """``read_bytes``, ``RssAnon`` and ``VmHWM`` (bytes) and CPU seconds of ``pid``."""
    fields = {}
    with open(f"/proc/{pid}/io") as file:
        for line in file:
            key, value = line.split(":")
            if key == "read_bytes":
                fields["read_bytes"] = int(value)
    with open(f"/proc/{pid}/status") as file:
        for line in file:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "VmHWM"):
                fields[key] = int(value.split()[0]) * 1024
    with open(f"/proc/{pid}/stat") as file:
        parts = file.read().rsplit(")", 1)[1].split()
    fields["cpu_s"] = (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")
    return fields


def in_memory(path, args):
    """Seconds per step of the same fit on rows loaded into memory (child)."""
    code = f"""
import json, sys, time
import numpy as np
from sklearn_dbksvd import DBKSVDDictionaryLearning
X = np.load({str(path)!r}, mmap_mode="r")
X = np.array(X[: {args.batch_size * args.mem_batches}])
marks = [time.perf_counter()]
def callback(info):
    marks.append(time.perf_counter())
    return len(marks) > {args.mem_steps}
DBKSVDDictionaryLearning(
    n_components={args.m}, n_nonzero_coefs={args.k}, batch_size={args.batch_size},
    max_steps={args.steps}, random_state={args.seed}, n_jobs=-1, callback=callback,
).fit(X)
print(json.dumps(np.diff(marks).tolist()))
"""
    done = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    )
    evict(path)
    return json.loads(done.stdout.strip().splitlines()[-1])


def from_disk(path, workdir, args):
    """``dbksvd fit`` from the evicted file, step by step from its checkpoint."""
    checkpoint = workdir / "checkpoint"
    output = workdir / "dict.npz"
    for stale in (output, checkpoint / "dbksvd-checkpoint.npz"):
        if stale.exists():
            stale.unlink()
    evict(path)
    command = [
        sys.executable, "-m", "sklearn_dbksvd", "fit", str(path),
        "-m", str(args.m), "-k", str(args.k), "--batch-size", str(args.batch_size),
        "--steps", str(args.steps), "--seed", str(args.seed), "--n-jobs", "-1",
        "--checkpoint", str(checkpoint), "-o", str(output), "-q",
    ]
    state = checkpoint / "dbksvd-checkpoint.npz"
    tic = time.perf_counter()
    child = subprocess.Popen(command)
    marks, samples, last_mtime = [], [], None
    peak_anon = 0
    while child.poll() is None:
        try:
            fields = proc_fields(child.pid)
        except (FileNotFoundError, ProcessLookupError):
            break
        peak_anon = max(peak_anon, fields["RssAnon"])
        try:
            mtime = state.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = None
        if mtime is not None and mtime != last_mtime:
            last_mtime = mtime
            marks.append(time.perf_counter())
            samples.append({**fields, "peak_anon": peak_anon})
            peak_anon = 0
        time.sleep(0.1)
    wall = time.perf_counter() - tic
    if child.returncode != 0:
        raise SystemExit(f"dbksvd fit failed with exit code {child.returncode}")
    steps = np.diff(marks).tolist()
    read = np.diff([s["read_bytes"] for s in samples]).tolist()
    return {
        "command": " ".join(command[2:]),
        "wall_s": wall,
        "first_step_done_s": marks[0] - tic,
        "step_s": steps,
        "read_bytes_per_step": read,
        "peak_anon_bytes": max(s["peak_anon"] for s in samples),
        "vm_hwm_bytes": samples[-1]["VmHWM"],
        "cpu_s": samples[-1]["cpu_s"],
        "output": str(output),
    }


def recovered(path_dict, truth, threshold=0.99):
    """Fraction of planted atoms with a learned atom at |cosine| above ``threshold``."""
    with np.load(path_dict) as data:
        D = data["components_"]
    best = np.abs(truth @ D.T).max(axis=1)
    return float(np.mean(best > threshold))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_600_000)
    parser.add_argument("--features", type=int, default=2304)
    parser.add_argument("--true-atoms", type=int, default=4096)
    parser.add_argument("--true-k", type=int, default=20)
    parser.add_argument("-m", type=int, default=4096)
    parser.add_argument("-k", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=2**16)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--mem-steps", type=int, default=8)
    parser.add_argument("--mem-batches", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", default=None, help="where the planted file is kept")
    parser.add_argument("--remove", action="store_true", help="delete it at the end")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args(argv)

    workdir = Path(args.dir or tempfile.mkdtemp(prefix="paper-disk-"))
    workdir.mkdir(parents=True, exist_ok=True)
    path, truth_path = workdir / "X.npy", workdir / "truth.npy"
    record = {"environment": environment(), "config": vars(args).copy()}
    record["load_average_before"] = load_average()
    shape = (args.rows, args.features)
    if path.exists() and np.load(path, mmap_mode="r").shape == shape and truth_path.exists():
        truth = np.load(truth_path)
        record["plant_s"] = None
    else:
        tic = time.perf_counter()
        truth = plant(path, *shape, args.true_atoms, args.true_k, seed=args.seed)
        np.save(truth_path, truth)
        record["plant_s"] = time.perf_counter() - tic
        print(f"planted {path} ({path.stat().st_size / GiB:.1f} GiB) in "
              f"{record['plant_s']:.0f} s", flush=True)
    record["file_bytes"] = path.stat().st_size
    record["batch_bytes"] = args.batch_size * args.features * 4
    record["mem_total_bytes"] = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")

    record["in_memory_before"] = in_memory(path, args)
    print("in memory:", np.round(record["in_memory_before"], 2), flush=True)
    record["disk"] = from_disk(path, workdir, args)
    print("from disk:", np.round(record["disk"]["step_s"], 2), flush=True)
    record["in_memory_after"] = in_memory(path, args)
    print("in memory:", np.round(record["in_memory_after"], 2), flush=True)
    record["recovered_0.99"] = recovered(record["disk"]["output"], truth)
    record["load_average_after"] = load_average()
    if args.remove:
        path.unlink()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "paper_disk.json").write_text(json.dumps(record, indent=2, default=float))
    print(markdown(record))


def markdown(record):
    disk = record["disk"]
    # The first step of each run pays for compiling and the first Gram
    # matrix; compare the steps after it.
    mem = record["in_memory_before"][1:] + record["in_memory_after"][1:]
    disk_steps = disk["step_s"]
    same = disk_steps[: len(record["in_memory_before"]) - 1]
    lines = [
        f"file: {record['file_bytes'] / GiB:.1f} GiB, batch {record['batch_bytes'] / GiB:.2f}"
        f" GiB, memory {record['mem_total_bytes'] / GiB:.1f} GiB",
        "",
        "| | seconds per step (median) | min | max |",
        "|---|---:|---:|---:|",
        f"| in memory (steps 2-{len(record['in_memory_before'])}, both runs) | "
        f"{np.median(mem):.2f} | {min(mem):.2f} | {max(mem):.2f} |",
        f"| from disk, the same steps | {np.median(same):.2f} | {min(same):.2f} | "
        f"{max(same):.2f} |",
        f"| from disk, steps 2-{len(disk_steps) + 1} | {np.median(disk_steps):.2f} | "
        f"{min(disk_steps):.2f} | {max(disk_steps):.2f} |",
        "",
        f"- ratio disk / memory (medians): {np.median(disk_steps) / np.median(mem):.3f}",
        f"- wall {disk['wall_s']:.0f} s, CPU {disk['cpu_s']:.0f} s "
        f"({100 * disk['cpu_s'] / disk['wall_s']:.0f} % of one core)",
        f"- read per step: median {np.median(disk['read_bytes_per_step']) / GiB:.3f} GiB"
        f" ({np.median(disk['read_bytes_per_step']) / record['batch_bytes']:.2f}x the batch)",
        f"- peak anonymous RSS {disk['peak_anon_bytes'] / GiB:.2f} GiB, VmHWM "
        f"{disk['vm_hwm_bytes'] / GiB:.2f} GiB",
        f"- planted atoms recovered (|cos| > 0.99): {record['recovered_0.99']:.3f}",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
