"""Initial dictionary: init="uniform" (the paper's) vs init="samples".

Same data, seed and step budget for both; early stopping off. The curve is
the held-out relative error of matching pursuit with k nonzeros after every
step (plus the training-batch error the estimator records in ``history_``);
the final dictionaries are also scored with OMP. ``init="auto"`` currently
means "samples"; this suite says whether that choice holds.
"""

from .common import Snapshots, fmt, heldout_error, log, recovery, table
from .fit import PROBLEMS, fit_dbksvd, make_problem

NAME = "init"

INITS = ("uniform", "samples")
REPORT_STEPS = (1, 5, 10, 20, 40, 60, 80, 100)


# Convergence speed: steps each init needs to come within these fractions of
# the better of the two final held-out MP errors.
MARGINS = (0.05, 0.01)


def _steps_to(curve, target):
    for step, error in enumerate(curve, start=1):
        if error <= target:
            return step
    return None


def run_problem(problem, seeds):
    runs = []
    for seed in seeds:
        X_train, X_test, D_true = make_problem(problem, seed)
        k = problem["k"]
        per_init = {}
        for init in INITS:
            log(f"init/{problem['name']}: init={init} seed={seed}")
            snaps = Snapshots()
            components, wall, cpu, extra = fit_dbksvd(
                X_train, problem, seed, snaps, init=init
            )
            curve = [heldout_error(c, X_test, k, "mp") for _, _, _, c in snaps.items]
            entry = {
                "seconds": wall,
                "cpu_seconds": cpu,
                "heldout_mp_curve": curve,
                "train_batch_curve": extra["train_batch_relative_error"],
                "final_omp_error": heldout_error(components, X_test, k, "omp"),
                "n_replaced": extra["n_replaced"],
            }
            if D_true is not None:
                entry["recovery_0.99"] = recovery(D_true, components, 0.99)
                entry["recovery_0.9"] = recovery(D_true, components, 0.9)
            per_init[init] = entry
        runs.append({"seed": seed, "inits": per_init})
    return {"problem": {**problem, "n_features": X_train.shape[1]}, "runs": runs}


def run(quick, seed):
    from .fit import warm_up

    warm_up()
    problems = PROBLEMS["quick" if quick else "full"]
    seeds = [seed] if quick else [seed, seed + 1]
    return {"problems": [run_problem(p, seeds) for p in problems]}


def markdown(result):
    out = []
    for res in result["problems"]:
        p = res["problem"]
        n_steps = p["dbksvd_steps"]
        steps = [s for s in REPORT_STEPS if s <= n_steps]
        out.append(
            f"#### {p['title']}: d={p['n_features']}, m={p['n_components']}, "
            f"k={p['k']}, {p['n_train']} training / {p['n_test']} held-out "
            f"samples, {n_steps} steps"
        )
        out.append("")
        planted = "recovery_0.99" in res["runs"][0]["inits"]["uniform"]
        header = ["seed", "init"] + [f"step {s}" for s in steps]
        header += [f"steps to within {round(100 * m)} % of best" for m in MARGINS]
        header += ["final OMP error", "fit s (wall)"]
        if planted:
            header.append("recovered, abs(cos) >= 0.99")
        rows = []
        for run in res["runs"]:
            best = min(e["heldout_mp_curve"][-1] for e in run["inits"].values())
            for init, e in run["inits"].items():
                curve = e["heldout_mp_curve"]
                row = [str(run["seed"]), init]
                row += [fmt(curve[s - 1], 4) for s in steps]
                for margin in MARGINS:
                    reached = _steps_to(curve, best * (1 + margin))
                    row.append("not reached" if reached is None else str(reached))
                row += [fmt(e["final_omp_error"], 4), fmt(e["seconds"])]
                if planted:
                    row.append(fmt(e["recovery_0.99"]))
                rows.append(row)
        out.append(
            "Held-out relative error of MP with k nonzeros after each step; "
            '"best" is the lower of the two final MP errors of the same seed:'
        )
        out.append("")
        out.append(table(header, rows))
        out.append("")
    return "\n".join(out)
