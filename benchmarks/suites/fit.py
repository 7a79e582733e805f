"""Fit quality and speed: DB-KSVD vs MiniBatchDictionaryLearning vs dictlearn's K-SVD.

Every method learns a dictionary on the same float32 training data; each
learned dictionary is then scored on the same held-out samples by the same
coder: scikit-learn's OMP with k nonzeros (``sparse_encode(algorithm="omp")``),
and also matching pursuit (``sparse_encode_mp``), after giving its atoms unit
norm. Fits record snapshots of the dictionary as they go (DB-KSVD: after
every step, MBDL: after every minibatch, dictlearn: after every iteration), so
one fit per method gives its whole error-vs-time curve and the time at which
it first reaches another method's final error.
"""

import sys

import numpy as np

from .common import Snapshots, fmt, heldout_error, log, recovery, table

NAME = "fit"

# Budgets are fixed numbers of steps / epochs / iterations, chosen so that the
# full run stays within a few minutes per problem on 2 cores.
PROBLEMS = {
    "full": [
        {
            "name": "toy",
            "title": "paper toy problem (planted dictionary, A.2)",
            "n_features": 256,
            "n_components": 1024,
            "k": 20,
            "n_train": 2**14,
            "n_test": 1024,
            "noise": 0.05,
            "dbksvd_steps": 100,
            "mbdl_epochs": 2,
            "dictlearn_iter": 3,
        },
        {
            "name": "patches",
            "title": "8x8 patches of china.jpg",
            "n_components": 256,
            "k": 5,
            "n_train": 20000,
            "n_test": 2000,
            "dbksvd_steps": 100,
            "mbdl_epochs": 2,
            "dictlearn_iter": 20,
        },
    ],
    "quick": [
        {
            "name": "toy",
            "title": "small planted problem",
            "n_features": 64,
            "n_components": 128,
            "k": 5,
            "n_train": 2048,
            "n_test": 256,
            "noise": 0.05,
            "dbksvd_steps": 10,
            "mbdl_epochs": 1,
            "dictlearn_iter": 3,
        },
        {
            "name": "patches",
            "title": "8x8 patches of china.jpg",
            "n_components": 64,
            "k": 5,
            "n_train": 2048,
            "n_test": 256,
            "dbksvd_steps": 10,
            "mbdl_epochs": 1,
            "dictlearn_iter": 3,
        },
    ],
}


def make_problem(problem, seed):
    """Train / test split (float32) and the planted dictionary, if any."""
    from sklearn_dbksvd.datasets import (
        load_sample_patches,
        make_sparse_dictionary_problem,
    )

    n_train, n_test = problem["n_train"], problem["n_test"]
    if problem["name"] == "toy":
        X, D_true, _ = make_sparse_dictionary_problem(
            n_train + n_test,
            problem["n_features"],
            problem["n_components"],
            problem["k"],
            noise=problem["noise"],
            dtype=np.float32,
            random_state=seed,
        )
    else:
        # All patch positions of the image, then disjoint random positions
        # for training and testing (neighbouring patches overlap in pixels).
        X = load_sample_patches((8, 8), max_patches=None).astype(np.float32)
        X = X[np.random.RandomState(seed).permutation(len(X))[: n_train + n_test]]
        D_true = None
    return X[:n_train], X[n_train:], D_true


# ----------------------------------------------------------------------
# The three learners, each recording snapshots
# ----------------------------------------------------------------------
def _current_components(model):
    """The atoms right after the step that just ended, for the callback.

    The public callback only gets the step's metrics; the atoms are read
    from the fit loop's frame (``state.components``, or a local
    ``components``).
    """
    frame = sys._getframe(2)
    components = frame.f_locals.get("components")
    if components is None and "state" in frame.f_locals:
        components = getattr(frame.f_locals["state"], "components", None)
    return components if isinstance(components, np.ndarray) else None


def fit_dbksvd(X, problem, seed, snaps, **params):
    from sklearn_dbksvd import DBKSVDDictionaryLearning

    def callback(info):
        components = _current_components(model)
        if components is None:
            raise RuntimeError(
                "cannot read the atoms of a DB-KSVD step; update "
                "benchmarks/suites/fit.py:_current_components"
            )
        snaps.take(components, info["step"] + 1)

    config = {
        "n_components": problem["n_components"],
        "n_nonzero_coefs": problem["k"],
        "max_steps": problem["dbksvd_steps"],
        "max_iter": 10_000,
        "max_no_improvement": None,
        "random_state": seed,
        **params,
    }
    model = DBKSVDDictionaryLearning(**config, callback=callback)
    snaps.start()
    model.fit(X)
    wall, cpu = snaps.stop()
    return (
        model.components_,
        wall,
        cpu,
        {
            "config": config,
            "n_steps": model.n_steps_,
            "batch_size": model.history_[0]["n_samples_seen"],
            "train_batch_relative_error": [h["relative_error"] for h in model.history_],
            "n_replaced": [h.get("n_replaced") for h in model.history_],
        },
    )


def fit_mbdl(X, problem, seed, snaps):
    from sklearn.decomposition import MiniBatchDictionaryLearning

    def callback(env):
        snaps.take(env["dictionary"], int(env["i"]) + 1)

    config = {
        "n_components": problem["n_components"],
        "transform_algorithm": "omp",
        "transform_n_nonzero_coefs": problem["k"],
        "max_iter": problem["mbdl_epochs"],
        "random_state": seed,
    }
    model = MiniBatchDictionaryLearning(**config, callback=callback)
    snaps.start()
    model.fit(X)
    wall, cpu = snaps.stop()
    steps_per_epoch = int(np.ceil(len(X) / model._batch_size))
    return (
        model.components_,
        wall,
        cpu,
        {
            "config": {
                **config,
                "alpha": model.alpha,
                "batch_size": model._batch_size,
                "fit_algorithm": model.fit_algorithm,
                "tol": model.tol,
                "max_no_improvement": model.max_no_improvement,
            },
            "n_steps": int(model.n_steps_),
            "n_iter": float(model.n_iter_),
            "stopped_early": int(model.n_steps_)
            < problem["mbdl_epochs"] * steps_per_epoch,
        },
    )


def fit_dictlearn(X, problem, seed, snaps):
    import dictlearn._dictionary_learning as dl_module
    from dictlearn import DictionaryLearning

    original_rmse = dl_module._rmse
    counter = {"iteration": 0}

    def rmse_and_snapshot(Y, D, C):
        value = original_rmse(Y, D, C)  # part of dictlearn's own loop
        counter["iteration"] += 1
        snaps.take(D.T, counter["iteration"])
        return value

    config = {
        "n_components": problem["n_components"],
        "fit_algorithm": "ksvd",
        "transform_algorithm": "omp",
        "n_nonzero_coefs": problem["k"],
        "max_iter": problem["dictlearn_iter"],
        "random_state": seed,
    }
    model = DictionaryLearning(**config)
    dl_module._rmse = rmse_and_snapshot
    try:
        snaps.start()
        model.fit(X)
        wall, cpu = snaps.stop()
    finally:
        dl_module._rmse = original_rmse
    return (
        model.components_,
        wall,
        cpu,
        {
            "config": config,
            "n_iter": int(model.n_iter_),
            "train_rmse": [float(e) for e in model.error_],
        },
    )


def warm_up():
    """Compile numba kernels and touch every code path once, outside timings."""
    from sklearn_dbksvd.datasets import make_sparse_dictionary_problem

    X, _, _ = make_sparse_dictionary_problem(
        300, 16, 24, 3, dtype=np.float32, random_state=0
    )
    tiny = {
        "n_components": 24,
        "k": 3,
        "dbksvd_steps": 2,
        "mbdl_epochs": 1,
        "dictlearn_iter": 1,
    }
    for fit in (fit_dbksvd, fit_mbdl):
        fit(X, tiny, 0, Snapshots())
    try:
        fit_dictlearn(X, tiny, 0, Snapshots())
    except ImportError:
        pass
    heldout_error(X[:24], X[:10], 3, "omp")
    heldout_error(X[:24], X[:10], 3, "mp")


# ----------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------
class Scorer:
    """Held-out errors of snapshots, cached (OMP is the expensive coder)."""

    def __init__(self, X_test, k):
        self.X_test, self.k = X_test, k
        self.cache = {}

    def __call__(self, peer, index, components, coder):
        key = (peer, index, coder)
        if key not in self.cache:
            self.cache[key] = heldout_error(components, self.X_test, self.k, coder)
        return self.cache[key]


def first_reaching(snapshots, target, error_of):
    """Index of the first snapshot whose error is <= target, by bisection.

    Assumes the error decreases along the fit (checked on the evaluated
    points); returns None when even the last snapshot misses the target.
    """
    if not snapshots or error_of(len(snapshots) - 1) > target:
        return None
    lo, hi = 0, len(snapshots) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if error_of(mid) <= target:
            hi = mid
        else:
            lo = mid + 1
    return lo


def run_problem(problem, seed):
    X_train, X_test, D_true = make_problem(problem, seed)
    problem = {**problem, "n_features": X_train.shape[1]}
    k = problem["k"]
    log(
        f"fit/{problem['name']}: n_train={len(X_train)} d={X_train.shape[1]} "
        f"m={problem['n_components']} k={k}"
    )
    scorer = Scorer(X_test, k)
    peers = {}
    learners = [
        ("DB-KSVD", fit_dbksvd),
        ("MBDL", fit_mbdl),
        ("dictlearn K-SVD", fit_dictlearn),
    ]
    snapshots = {}
    for name, fit in learners:
        log(f"fit/{problem['name']}: {name}")
        snaps = Snapshots()
        try:
            components, wall, cpu, extra = fit(X_train, problem, seed, snaps)
        except ImportError as exc:
            log(f"  skipped: {exc}")
            continue
        items = list(snaps.items)
        # The final dictionary closes the curve.
        items.append((wall, cpu, "final", np.asarray(components, dtype=np.float64)))
        snapshots[name] = items
        n = len(items) - 1
        entry = {
            "seconds": wall,
            "cpu_seconds": cpu,
            "omp_error": scorer(name, n, components, "omp"),
            "mp_error": scorer(name, n, components, "mp"),
            **extra,
        }
        if D_true is not None:
            entry["recovery_0.99"] = recovery(D_true, components, 0.99)
            entry["recovery_0.9"] = recovery(D_true, components, 0.9)
        entry["curve"] = [
            {
                "seconds": w,
                "cpu_seconds": c,
                "label": label,
                "mp_error": scorer(name, i, comp, "mp"),
            }
            for i, (w, c, label, comp) in enumerate(items)
        ]
        peers[name] = entry
        log(f"  {wall:.1f} s wall, {cpu:.1f} s CPU, OMP error {entry['omp_error']:.4f}")

    # Reference dictionaries: random training samples (what init="samples"
    # starts from) and, for the planted problem, the planted atoms.
    rng = np.random.RandomState(seed)
    references = {
        "random training samples": X_train[
            rng.permutation(len(X_train))[: problem["n_components"]]
        ]
    }
    if D_true is not None:
        references["planted dictionary"] = D_true
    reference = {
        name: {
            "omp_error": heldout_error(D, X_test, k, "omp"),
            "mp_error": heldout_error(D, X_test, k, "mp"),
        }
        for name, D in references.items()
    }

    # Time for one method to reach another's final held-out OMP error.
    comparisons = []
    for fast in peers:
        for slow in peers:
            if fast == slow:
                continue
            target = peers[slow]["omp_error"]
            items = snapshots[fast]

            def error_of(i, fast=fast, items=items):
                return scorer(fast, i, items[i][3], "omp")

            index = first_reaching(items, target, error_of)
            row = {
                "method": fast,
                "target_from": slow,
                "target_omp_error": target,
                "target_seconds": peers[slow]["seconds"],
                "target_cpu_seconds": peers[slow]["cpu_seconds"],
            }
            if index is None:
                row.update(reached=False)
            else:
                wall, cpu, label = items[index][:3]
                row.update(
                    reached=True,
                    at=label,
                    seconds=wall,
                    cpu_seconds=cpu,
                    omp_error=error_of(index),
                    speedup=peers[slow]["seconds"] / wall if wall > 0 else None,
                    cpu_speedup=peers[slow]["cpu_seconds"] / cpu if cpu > 0 else None,
                )
            comparisons.append(row)
    return {
        "problem": problem,
        "peers": peers,
        "reference": reference,
        "comparisons": comparisons,
    }


def run(quick, seed):
    warm_up()
    problems = PROBLEMS["quick" if quick else "full"]
    return {"problems": [run_problem(p, seed) for p in problems]}


# ----------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------
def _budget(name, peer, n_train):
    if name == "DB-KSVD":
        return f"{peer['n_steps']} steps of {peer['batch_size']}"
    if name == "MBDL":
        early = ", stopped by its convergence test" if peer["stopped_early"] else ""
        size = peer["config"]["batch_size"]
        epochs = fmt(peer["n_steps"] * size / n_train, 2)
        unit = "epoch" if epochs == "1" else "epochs"
        return f"{peer['n_steps']} minibatches of {size} ({epochs} {unit}{early})"
    return f"{peer['n_iter']} iterations (full batch)"


def _at(method, label):
    if label == "final":
        return "end of fit"
    unit = {"DB-KSVD": "step", "MBDL": "minibatch"}.get(method, "iteration")
    return f"{unit} {label}"


def _curve_points(curve):
    """MP error at about 25 %, 50 % and 100 % of the fit time."""
    total = curve[-1]["seconds"]
    points = []
    for share in (0.25, 0.5):
        before = [c for c in curve if c["seconds"] <= share * total]
        points.append(fmt(before[-1]["mp_error"]) if before else "n/a")
    points.append(fmt(curve[-1]["mp_error"]))
    return " / ".join(points)


def markdown(result):
    out = []
    for res in result["problems"]:
        p = res["problem"]
        planted = "recovery_0.99" in next(iter(res["peers"].values()), {})
        out.append(
            f"#### {p['title']}: d={p['n_features']}, m={p['n_components']}, "
            f"k={p['k']}, "
            f"{p['n_train']} training / {p['n_test']} held-out samples"
            + (f", noise {p['noise']}" if p.get("noise") else "")
        )
        out.append("")
        header = [
            "method",
            "budget",
            "fit s (wall)",
            "fit CPU s",
            "held-out rel. error, OMP k",
            "held-out rel. error, MP k",
            "MP error at 25 % / 50 % / 100 % of fit time",
        ]
        if planted:
            header += ["atoms recovered, abs(cos) >= 0.99", "abs(cos) >= 0.9"]
        rows = []
        for name, peer in res["peers"].items():
            row = [
                name,
                _budget(name, peer, p["n_train"]),
                fmt(peer["seconds"]),
                fmt(peer["cpu_seconds"]),
                fmt(peer["omp_error"], 4),
                fmt(peer["mp_error"], 4),
                _curve_points(peer["curve"]),
            ]
            if planted:
                row += [fmt(peer["recovery_0.99"]), fmt(peer["recovery_0.9"])]
            rows.append(row)
        for name, ref in res.get("reference", {}).items():
            row = [
                f"*{name}* (reference, no fit)",
                "",
                "",
                "",
                fmt(ref["omp_error"], 4),
                fmt(ref["mp_error"], 4),
                "",
            ]
            if planted:
                row += ["", ""]
            rows.append(row)
        out.append(table(header, rows))
        out.append("")
        out.append(
            "n/a in the curve column: the method had not finished its first "
            "step, minibatch or iteration at that time."
        )
        out.append("")
        header = [
            "method",
            "reaches the final OMP error of",
            "target error",
            "at",
            "after s (wall)",
            "target method's fit s",
            "speed-up (wall)",
            "speed-up (CPU)",
        ]
        rows = []
        for c in res["comparisons"]:
            if c["reached"]:
                rows.append(
                    [
                        c["method"],
                        c["target_from"],
                        fmt(c["target_omp_error"], 4),
                        _at(c["method"], c["at"]),
                        fmt(c["seconds"]),
                        fmt(c["target_seconds"]),
                        fmt(c["speedup"]) + "x",
                        fmt(c["cpu_speedup"]) + "x",
                    ]
                )
            else:
                rows.append(
                    [
                        c["method"],
                        c["target_from"],
                        fmt(c["target_omp_error"], 4),
                        "not reached",
                        "",
                        fmt(c["target_seconds"]),
                        "",
                        "",
                    ]
                )
        out.append(table(header, rows))
        out.append("")
    return "\n".join(out)
