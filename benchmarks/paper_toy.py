"""The DB-KSVD paper's toy problem: known structure (Fig. 3) and coherence (Fig. 2).

Part 1 reproduces section 5.4 / appendix A.2: a planted dictionary (d=256,
m=1024), n=2^14 samples with k=20 nonzeros drawn from U(1, 2), Gaussian noise
of standard deviation 0.05, and DB-KSVD started from the true support of a
fraction gamma of the atoms (``code_init``), for gamma in {0, 1/4, 1/2, 1}.
Every step uses the whole data set as its batch, as in the paper, so the
curve is the mean relative error (Eq. 6) of all samples after each step.

Part 2 fits DB-KSVD and MatryoshkaDBKSVD on the same data from the same
start and compares the per-atom coherence ``max_{j≠i} |<d_i, d_j>|``
(section 5.3, Fig. 2 style histogram).

Writes under ``benchmarks/results/``: ``paper_toy[_quick]_curves.csv`` and
``.png``, ``paper_toy[_quick]_coherence.csv`` and ``.png``, and a JSON
summary; prints the numbers for ``benchmarks/RESULTS.md``.

Usage::

    python benchmarks/paper_toy.py            # paper size, 400 steps
    python benchmarks/paper_toy.py --quick    # d=64, m=256, n=4096, k=5
    python benchmarks/paper_toy.py --steps 60 --gammas 0 1
"""

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from sklearn_dbksvd import DBKSVDDictionaryLearning, MatryoshkaDBKSVD
from sklearn_dbksvd.datasets import make_sparse_dictionary_problem
from sklearn_dbksvd.metrics import atom_recovery, coherence

RESULTS = Path(__file__).parent / "results"

# (n_features, n_components, n_samples, n_nonzero_coefs). The quick size
# divides d, m and k by 4 (so k/m and m/d stay the paper's) and n by 4.
SIZES = {"paper": (256, 1024, 2**14, 20), "quick": (64, 256, 2**12, 5)}


def known_support(code, gamma, random_state):
    """Adjacencies (0 or 1) of a random fraction ``gamma`` of the atoms."""
    n_atoms = code.shape[1]
    known = random_state.permutation(n_atoms)[: round(gamma * n_atoms)]
    mask = np.zeros(n_atoms, dtype=bool)
    mask[known] = True
    return sp.csr_matrix((code != 0) & mask, dtype=code.dtype)


def fit(cls, X, args, k, code_init=None):
    n_components = args.size[1]
    model = cls(
        n_components,
        n_nonzero_coefs=k,
        batch_size=X.shape[0],  # one batch: all the data, as in the paper
        max_steps=args.steps,
        max_iter=args.steps,
        init="uniform",  # the paper's initialisation (A.1)
        max_no_improvement=None,  # a fixed number of steps, as in the paper
        code_init=code_init,
        random_state=args.seed,
        n_jobs=args.n_jobs,
    )
    tic = time.perf_counter()
    model.fit(X)
    return model, time.perf_counter() - tic


def first_step_below(errors, level):
    below = np.flatnonzero(np.asarray(errors) <= level)
    return int(below[0]) + 1 if len(below) else None


def known_structure(X, D, code, args, k, tag):
    curves, summary, plain = {}, {}, None
    for gamma in args.gammas:
        code_init = None
        if gamma > 0:
            code_init = known_support(code, gamma, np.random.RandomState(args.seed))
        model, seconds = fit(DBKSVDDictionaryLearning, X, args, k, code_init)
        if gamma == 0:
            plain = (model, seconds)  # also the DB-KSVD of the coherence part
        errors = [h["relative_error"] for h in model.history_]
        curves[gamma] = errors
        summary[gamma] = {
            "final_relative_error": errors[-1],
            "atom_recovery_0.99": atom_recovery(D, model.components_, threshold=0.99),
            "seconds": seconds,
        }
        print(
            f"gamma={gamma:<5} final relative error {errors[-1]:.4f}  "
            f"recovery(0.99) {summary[gamma]['atom_recovery_0.99']:.3f}  "
            f"{seconds:.0f} s",
            flush=True,
        )
    # Steps to get within 1 % of the best error reached without known structure.
    reference = min(curves[min(curves)])
    for gamma, errors in curves.items():
        summary[gamma]["steps_to_1pct_of_gamma0_min"] = first_step_below(
            errors, 1.01 * reference
        )
    with open(RESULTS / f"{tag}_curves.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", *[f"gamma={g}" for g in curves]])
        for step in range(args.steps):
            writer.writerow(
                [step + 1, *[e[step] if step < len(e) else "" for e in curves.values()]]
            )
    return curves, summary, plain


def coherence_comparison(X, D, args, k, tag, plain=None):
    per_atom, summary = {}, {}
    for name, cls in [
        ("DB-KSVD", DBKSVDDictionaryLearning),
        ("Matryoshka", MatryoshkaDBKSVD),
    ]:
        if name == "DB-KSVD" and plain is not None:
            model, seconds = plain
        else:
            model, seconds = fit(cls, X, args, k)
        values, mutual = coherence(model.components_)
        per_atom[name] = values
        summary[name] = {
            "mean_per_atom_coherence": float(values.mean()),
            "median_per_atom_coherence": float(np.median(values)),
            "atoms_above_0.9": int((values > 0.9).sum()),
            "mutual_coherence": mutual,
            "final_relative_error": model.history_[-1]["relative_error"],
            "full_transform_relative_error": relative_error_of(model, X),
            "atom_recovery_0.99": atom_recovery(D, model.components_, threshold=0.99),
            "seconds": seconds,
        }
        print(f"{name}: {json.dumps(summary[name])}", flush=True)
    values, mutual = coherence(D)
    per_atom["planted"] = values
    summary["planted"] = {
        "mean_per_atom_coherence": float(values.mean()),
        "mutual_coherence": mutual,
    }
    print(f"planted: {json.dumps(summary['planted'])}", flush=True)
    with open(RESULTS / f"{tag}_coherence.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["atom", *per_atom])
        for i, row in enumerate(zip(*per_atom.values(), strict=True)):
            writer.writerow([i, *row])
    return per_atom, summary


def relative_error_of(model, X):
    """Relative error of the full-dictionary encoding (the paper's evaluation)."""
    residual = X - model.inverse_transform(model.transform(X))
    return float(np.mean(np.linalg.norm(residual, axis=1) / np.linalg.norm(X, axis=1)))


def plot(curves, per_atom, args, tag):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d, m, n, k = args.size
    fig, ax = plt.subplots(figsize=(6, 4))
    for gamma, errors in curves.items():
        ax.plot(np.arange(1, len(errors) + 1), errors, label=f"γ = {gamma:g}")
    ax.set(
        xlabel="step",
        ylabel="mean relative error (Eq. 6)",
        yscale="log",
        title=f"Known support, d={d}, m={m}, n={n}, k={k}",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / f"{tag}_curves.png", dpi=120)

    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(0, 1, 51)
    for name, values in per_atom.items():
        ax.hist(
            values,
            bins=bins,
            histtype="step",
            linewidth=1.5,
            label=f"{name} (mean {values.mean():.3f})",
        )
    ax.set(
        xlabel=r"per-atom coherence $\max_{j\neq i}|\langle d_i, d_j\rangle|$",
        ylabel="atoms",
        title=f"Coherence, d={d}, m={m}, k={k}",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / f"{tag}_coherence.png", dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="d=64, m=256, n=4096, k=5")
    parser.add_argument(
        "--steps", type=int, default=400, help="steps per fit (paper: 400)"
    )
    parser.add_argument("--gammas", type=float, nargs="+", default=[0, 0.25, 0.5, 1])
    parser.add_argument("--noise", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-jobs", type=int, default=None)
    args = parser.parse_args()
    args.size = SIZES["quick" if args.quick else "paper"]
    tag = "paper_toy_quick" if args.quick else "paper_toy"
    RESULTS.mkdir(parents=True, exist_ok=True)
    d, m, n, k = args.size
    X, D, code = make_sparse_dictionary_problem(
        n, d, m, k, coef_range=(1.0, 2.0), noise=args.noise, random_state=args.seed
    )
    print(f"{tag}: d={d} m={m} n={n} k={k} noise={args.noise} steps={args.steps}")
    curves, known, plain = known_structure(X, D, code, args, k, tag)
    per_atom, coh = coherence_comparison(X, D, args, k, tag, plain)
    plot(curves, per_atom, args, tag)
    summary = {
        "size": dict(zip("dmnk", args.size, strict=True)),
        "steps": args.steps,
        "known_structure": {str(g): v for g, v in known.items()},
        "coherence": coh,
    }
    (RESULTS / f"{tag}.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
