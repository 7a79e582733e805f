"""Benchmark runner of sklearn-dbksvd: peers side by side in one process.

Examples
--------
Everything, at the sizes of benchmarks/RESULTS.md::

    python benchmarks/run.py

Some suites, small sizes (a smoke test, about a minute)::

    python benchmarks/run.py --suite encode --suite fit --quick

Each suite writes ``benchmarks/results/<suite>[-quick].json`` (all numbers,
the curves, the machine and the versions) and ``<suite>[-quick].md`` (the
tables pasted into RESULTS.md); the markdown is also printed.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from suites import SUITES  # noqa: E402
from suites.common import environment, load_average, log  # noqa: E402


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def render(module, record):
    """Markdown of one suite's record: the command and machine, then the tables."""
    env = record["environment"]
    threads = env.get("blas_threads_limit") or "default"
    modified = " + uncommitted package changes" if env["package_tree_modified"] else ""
    numba = env["versions"].get("sklearn_dbksvd uses numba")
    return "\n".join(
        [
            f"### {record['suite']}{' (quick)' if record['quick'] else ''}",
            "",
            f"`{env['command']}` — {env['date']}, git {env['git_commit']}{modified}; "
            f"{env['cpu_count']} cores ({env['processor']}), {env['memory_gb']} GB; "
            f"BLAS threads: {threads}; sklearn_dbksvd numba kernels: "
            f"{'on' if numba else 'off'}; load average (1, 5, 15 min) before/after: "
            f"{record['load_average_before']} / {record['load_average_after']}; "
            f"suite wall time {record['suite_seconds']:.0f} s.",
            "",
            module.markdown(record["result"]),
            "",
        ]
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--suite",
        action="append",
        choices=sorted(SUITES),
        help="suite to run; repeat for several (default: all, in the order "
        + ", ".join(SUITES)
        + ")",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="BLAS threads for every peer (default 1: the machine is shared, and "
        "OpenBLAS with 2 threads on 2 busy cores slows small LAPACK calls down "
        "by an order of magnitude). 0 leaves the library default.",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=HERE / "results",
        help="directory for the JSON and markdown results (default benchmarks/results)",
    )
    parser.add_argument(
        "--render",
        action="store_true",
        help="only rewrite the markdown from the JSON already in --out",
    )
    args = parser.parse_args(argv)
    suites = args.suite or list(SUITES)
    suffix = "-quick" if args.quick else ""
    if args.render:
        for name in suites:
            path = args.out / f"{name}{suffix}.json"
            if not path.exists():
                log(f"no {path}; skipped")
                continue
            text = render(SUITES[name], json.loads(path.read_text()))
            (args.out / f"{name}{suffix}.md").write_text(text)
            print(text)
        return 0

    from threadpoolctl import threadpool_limits

    limits = threadpool_limits(args.threads, user_api="blas") if args.threads else None
    args.out.mkdir(parents=True, exist_ok=True)
    env = environment()
    env["blas_threads_limit"] = args.threads or None
    try:
        for name in suites:
            module = SUITES[name]
            load_before = load_average()
            tic = time.perf_counter()
            log(f"suite {name} (quick={args.quick}, seed={args.seed})")
            result = module.run(quick=args.quick, seed=args.seed)
            wall = time.perf_counter() - tic
            record = {
                "suite": name,
                "quick": args.quick,
                "seed": args.seed,
                "suite_seconds": wall,
                "load_average_before": load_before,
                "load_average_after": load_average(),
                "environment": env,
                "result": result,
            }
            (args.out / f"{name}{suffix}.json").write_text(
                json.dumps(_jsonable(record), indent=1) + "\n"
            )
            text = render(module, _jsonable(record))
            (args.out / f"{name}{suffix}.md").write_text(text)
            print(text, flush=True)
            log(f"suite {name} done in {wall:.0f} s")
    finally:
        if limits is not None:
            limits.restore_original_limits()
    return 0


if __name__ == "__main__":
    sys.exit(main())
