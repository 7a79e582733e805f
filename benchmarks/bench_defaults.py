"""Defaults of DBKSVDDictionaryLearning measured on real embeddings.

For each real set cached by the ``peers`` suite (MiniLM layer 3, SmolLM2
layer 15, see :mod:`suites.peers`), fits one dictionary per setting, each
setting the defaults with one parameter changed, and reports the fit's wall
time, its steps and the held-out relative error ‖x − x̂‖ / ‖x‖ of k-sparse
MP and OMP codes (the scoring of the ``peers`` suite). Parameters looked at:
``init``, ``replace_coherence``, ``replace_min_usage``, ``batch_size`` and
early stopping (``tol`` / ``max_no_improvement`` on against off at the same
step cap). One seed, one BLAS thread: a measurement, not a sweep.

Usage::

    python benchmarks/bench_defaults.py [--json out.json]

Needs the caches ``benchmarks/results/cache/minilm-layer3-ctx128-44000.npy``
and ``.../smollm2-layer15-ctx128-14000/`` (written by ``run.py --suite
peers``); a missing one is skipped.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))

from suites.peers import CACHE, _held_out_error  # noqa: E402

K = 16
SEED = 0
# Step cap of the early-stopping comparison (defaults otherwise stop at
# max_iter=10 epochs, too few steps for max_no_improvement=10 to act).
ES_STEPS = 60


def data_sets():
    """(name, X_train, X_test, m) for each cached real set."""
    path = CACHE / "minilm-layer3-ctx128-44000.npy"
    if path.exists():
        X = np.load(path, mmap_mode="r")
        # Training rows a subsample of the peers suite's; same held-out rows.
        yield ("minilm L3", np.array(X[:20000]), np.array(X[40000:44000]),
               4 * X.shape[1])
    directory = CACHE / "smollm2-layer15-ctx128-14000"
    if (directory / "harvest.json").exists():
        from sklearn_dbksvd.lm import load_activations

        X = np.asarray(load_activations(directory)[:14000], dtype=np.float32)
        yield "smollm2 L15", X[:12000], X[12000:], 2 * X.shape[1]


def settings(d):
    """(label, parameters) pairs; the first is the defaults."""
    return [
        ("defaults", {}),
        ("init='uniform'", {"init": "uniform"}),
        ("replace_coherence=0.9", {"replace_coherence": 0.9}),
        ("replace_coherence=0.99", {"replace_coherence": 0.99}),
        ("replace_min_usage=0.01", {"replace_min_usage": 0.01}),
        ("replace_min_usage=0.05", {"replace_min_usage": 0.05}),
        (f"batch_size={8 * d} (8 d)", {"batch_size": 8 * d}),
        (f"batch_size={16 * d} (16 d)", {"batch_size": 16 * d}),
        (f"early stopping on, max_steps={ES_STEPS}",
         {"max_iter": 1000, "max_steps": ES_STEPS}),
        (f"early stopping off, max_steps={ES_STEPS}",
         {"max_iter": 1000, "max_steps": ES_STEPS, "max_no_improvement": None}),
    ]


def measure(X_train, X_test, m, params):
    from sklearn_dbksvd import DBKSVDDictionaryLearning

    model = DBKSVDDictionaryLearning(
        m, n_nonzero_coefs=K, random_state=SEED, **params
    )
    tic = time.perf_counter()
    model.fit(X_train)
    seconds = time.perf_counter() - tic
    mean = model.mean_ if model.mean_ is not None else 0.0
    return {
        "fit_s": seconds,
        "n_steps": int(model.n_steps_),
        "mp": _held_out_error(X_test, model.components_, mean, K, "mp"),
        "omp": _held_out_error(X_test, model.components_, mean, K, "omp"),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the rows as JSON here")
    args = parser.parse_args()
    rows = []
    with threadpool_limits(1, "blas"):
        # Compile the numba kernels before anything is timed.
        warm = np.random.RandomState(SEED).standard_normal((512, 32))
        measure(warm.astype(np.float32), warm[:64].astype(np.float32), 64,
                {"max_steps": 2})
        for name, X_train, X_test, m in data_sets():
            d = X_train.shape[1]
            print(f"\n#### {name}: d={d}, m={m}, k={K}, {len(X_train)} training / "
                  f"{len(X_test)} held-out rows\n")
            print("| setting | steps | fit s (wall) | held-out error, MP codes "
                  "| held-out error, OMP codes | OMP vs defaults |")
            print("|---|---|---|---|---|---|")
            base = None
            for label, params in settings(d):
                r = measure(X_train, X_test, m, params)
                base = base if base is not None else r["omp"]
                change = 100 * (r["omp"] / base - 1)
                print(f"| {label} | {r['n_steps']} | {r['fit_s']:.2f} | "
                      f"{r['mp']:.4f} | {r['omp']:.4f} | {change:+.1f} % |",
                      flush=True)
                rows.append({"data": name, "setting": label, **r})
    if args.json:
        path = Path(args.json)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(rows, indent=1))
        tmp.rename(path)


if __name__ == "__main__":
    main()
