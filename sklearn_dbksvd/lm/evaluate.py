"""How much of a language model's behaviour a dictionary keeps: SAEBench's core metrics.

:func:`evaluate_dictionary` runs the model three times on each batch of
documents: clean; with the output of the chosen layer replaced by the
dictionary's reconstruction ``inverse_transform(transform(x))`` at every
real, non-special position (spliced); and with that output set to zero at
every position (zero-ablated). It reports the metrics of SAEBench's
``core`` evaluation (Karvonen et al., 2025) with the definitions of SAELens'
``evals.py`` (sae-lens 6.54), under the same names:

``model_performance_preservation``
    ``ce_loss_without_sae``, ``ce_loss_with_sae``, ``ce_loss_with_ablation``:
    next-token cross-entropy, averaged over the predictions made at
    non-special positions; ``ce_loss_score`` = (ablation - with_sae) /
    (ablation - without_sae): 1 when the reconstruction loses nothing, 0 when
    it is as bad as zeros.
``model_behavior_preservation``
    ``kl_div_with_sae``, ``kl_div_with_ablation``: KL(clean || other) of the
    next-token distributions, averaged over non-special positions;
    ``kl_div_score`` = (with_ablation - with_sae) / with_ablation.
``reconstruction_quality``
    ``explained_variance``: 1 - E‖x - x̂‖² / (E‖x‖² - ‖E x‖²) over all
    tokens, with float64 sums (SAELens >= 6.45);
    ``explained_variance_legacy``: the mean over tokens of
    1 - ‖x - x̂‖² / ‖x - mean_batch(x)‖² (earlier SAELens, and most
    published SAEBench numbers; it depends on the batch);
    ``mse``: mean over tokens of ‖x - x̂‖² (summed over features);
    ``cossim``: mean cosine similarity of x and x̂.
``shrinkage``
    ``l2_norm_in``, ``l2_norm_out``, ``l2_ratio`` (mean ‖x̂‖ / ‖x‖),
    ``relative_reconstruction_bias`` (E‖x̂‖² / E⟨x, x̂⟩ per batch, averaged).
``sparsity``
    ``l0`` (mean number of nonzero codes per token), ``l1`` (mean Σ|code|).
``misc_metrics``
    From the density of each latent (fraction of tokens on which it is
    nonzero): ``frac_alive`` (density > 0), ``frac_dead`` (density 0),
    ``freq_over_1_percent`` and ``freq_over_10_percent`` (density above 1 %
    and 10 %).

Latents are counted as everywhere else in the package and as SAEBench counts
them on the ``[D; -D]`` SAELens export: an atom of a dictionary with signed
codes is two latents, its positive codes (latent ``i``) and its negative
codes (latent ``m + i``), so the density fractions are over ``2 m`` latents
and an atom used with one sign only has one dead latent. A dictionary with
``positive_code=True`` has one latent per atom. ``l0`` is the number of
nonzero codes per token either way.

The dictionary's ``provenance_`` (when it was fitted on a harvest) fills in
the layer, the context size and the BOS setting that are not given; another
layer than the fitted one is refused unless ``allow_other_layer=True``.

References
----------
A. Karvonen, C. Rager, J. Lin, C. Tigges, J. Bloom, D. Chanin, Y.-T. Lau,
E. Farrell, C. McDougall, K. Ayonrinde, M. Wearden, A. Conmy, S. Marks and
N. Nanda, "SAEBench: A Comprehensive Benchmark for Sparse Autoencoders in
Language Model Interpretability", ICML 2025. https://arxiv.org/abs/2503.09532
"""

import math

import numpy as np
import scipy.sparse as sp

from . import _model
from ._latents import Latents
from ._progress import Progress
from ._provenance import check_same_layer, provenance_of, warn_if_different

# (group, key, label): the order and wording of the printed table.
METRICS = [
    ("model_performance_preservation", "ce_loss_score", "CE loss score"),
    ("model_performance_preservation", "ce_loss_without_sae", "CE loss without SAE"),
    ("model_performance_preservation", "ce_loss_with_sae", "CE loss with SAE"),
    (
        "model_performance_preservation",
        "ce_loss_with_ablation",
        "CE loss with ablation",
    ),
    ("model_behavior_preservation", "kl_div_score", "KL div score"),
    ("model_behavior_preservation", "kl_div_with_sae", "KL div with SAE"),
    ("model_behavior_preservation", "kl_div_with_ablation", "KL div with ablation"),
    ("reconstruction_quality", "explained_variance", "Explained variance"),
    (
        "reconstruction_quality",
        "explained_variance_legacy",
        "Explained variance (legacy)",
    ),
    ("reconstruction_quality", "mse", "MSE"),
    ("reconstruction_quality", "cossim", "Cosine similarity"),
    ("shrinkage", "l2_norm_in", "L2 norm in"),
    ("shrinkage", "l2_norm_out", "L2 norm out"),
    ("shrinkage", "l2_ratio", "L2 ratio"),
    ("shrinkage", "relative_reconstruction_bias", "Relative reconstruction bias"),
    ("sparsity", "l0", "L0"),
    ("sparsity", "l1", "L1"),
    ("misc_metrics", "frac_alive", "Fraction alive"),
    ("misc_metrics", "frac_dead", "Fraction dead"),
    ("misc_metrics", "freq_over_1_percent", "Fraction active on > 1% of tokens"),
    ("misc_metrics", "freq_over_10_percent", "Fraction active on > 10% of tokens"),
]


# ----------------------------------------------------------------------
# Kernels: one batch in, per-token values out
# ----------------------------------------------------------------------
def next_token_losses(logits, input_ids, predict_mask):
    """Cross-entropy of each next-token prediction made at ``predict_mask``.

    Parameters
    ----------
    logits : torch.Tensor of shape (batch, length, vocab)
    input_ids : torch.Tensor of shape (batch, length)
    predict_mask : torch.Tensor of bool, shape (batch, length - 1)
        Which positions' predictions count (their next token must be real).

    Returns
    -------
    losses : torch.Tensor of shape (n_predictions,), float32
    """
    import torch

    log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    target = input_ids[:, 1:].unsqueeze(-1)
    losses = -log_probs.gather(-1, target).squeeze(-1)
    return losses[predict_mask]


def kl_divergences(clean_logits, other_logits, mask):
    """KL(clean || other) of the next-token distributions at ``mask``.

    Returns
    -------
    kl : torch.Tensor of shape (n_positions,), float32
    """
    import torch

    clean = torch.log_softmax(clean_logits[mask].float(), dim=-1)
    other = torch.log_softmax(other_logits[mask].float(), dim=-1)
    return (clean.exp() * (clean - other)).sum(dim=-1)


class ReconstructionStats:
    """Streaming sums for the reconstruction, shrinkage and sparsity metrics.

    Per-token values are kept (a few floats per token) so that means are
    taken over all tokens at the end, as SAELens does; the global explained
    variance accumulates float64 sums.
    """

    def __init__(self, n_latents):
        self.per_token = {
            name: []
            for name in ("mse", "cossim", "explained_variance_legacy",
                         "l2_norm_in", "l2_norm_out", "l2_ratio", "l0", "l1")
        }
        self.bias = []
        self.active = np.zeros(n_latents, dtype=np.int64)
        self.n_tokens = 0
        self.sum_x = None
        self.sum_squared_norm = 0.0
        self.sum_squared_residual = 0.0

    def add(self, x, x_hat, codes):
        """One batch: activations, reconstructions and codes, one row per token.

        ``codes`` (dense or sparse) has one column per latent.
        """
        if len(x) == 0:
            return
        x = np.asarray(x, dtype=np.float64)
        x_hat = np.asarray(x_hat, dtype=np.float64)
        residual = ((x - x_hat) ** 2).sum(axis=1)
        spread = ((x - x.mean(axis=0)) ** 2).sum(axis=1)
        norm_in = np.linalg.norm(x, axis=1)
        norm_out = np.linalg.norm(x_hat, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            # As SAELens: nearly-zero inputs count with norm 1 in the ratio.
            ratio = norm_out / np.where(np.abs(norm_in) < 1e-4, 1.0, norm_in)
            cossim = (x * x_hat).sum(axis=1) / (norm_in * norm_out)
            legacy = 1.0 - residual / spread
        values = self.per_token
        values["mse"].append(residual)
        values["cossim"].append(cossim)
        values["explained_variance_legacy"].append(legacy)
        values["l2_norm_in"].append(norm_in)
        values["l2_norm_out"].append(norm_out)
        values["l2_ratio"].append(ratio)
        codes = sp.csr_matrix(codes)
        codes.eliminate_zeros()
        rows = np.repeat(np.arange(codes.shape[0]), np.diff(codes.indptr))
        values["l0"].append(np.diff(codes.indptr).astype(np.float64))
        values["l1"].append(
            np.bincount(
                rows,
                weights=np.abs(codes.data).astype(np.float64),
                minlength=codes.shape[0],
            )
        )
        self.bias.append((norm_out**2).mean() / (x * x_hat).sum(axis=1).mean())
        self.active += np.bincount(codes.indices, minlength=len(self.active))
        self.n_tokens += len(x)
        batch_sum = x.sum(axis=0)
        self.sum_x = batch_sum if self.sum_x is None else self.sum_x + batch_sum
        self.sum_squared_norm += float((x**2).sum())
        self.sum_squared_residual += float(residual.sum())

    def explained_variance(self):
        """1 - E‖x - x̂‖² / (E‖x‖² - ‖E x‖²), SAELens >= 6.45."""
        if self.n_tokens == 0:
            return math.nan
        mean_x = self.sum_x / self.n_tokens
        variance = self.sum_squared_norm / self.n_tokens - float(mean_x @ mean_x)
        mse = self.sum_squared_residual / self.n_tokens
        if variance < 1e-10:
            return 1.0 if mse < 1e-10 else 0.0
        return 1.0 - mse / variance

    def results(self):
        means = {
            name: float(np.concatenate(parts).mean()) if parts else math.nan
            for name, parts in self.per_token.items()
        }
        density = self.active / max(self.n_tokens, 1)
        return {
            "reconstruction_quality": {
                "explained_variance": self.explained_variance(),
                "explained_variance_legacy": means["explained_variance_legacy"],
                "mse": means["mse"],
                "cossim": means["cossim"],
            },
            "shrinkage": {
                "l2_norm_in": means["l2_norm_in"],
                "l2_norm_out": means["l2_norm_out"],
                "l2_ratio": means["l2_ratio"],
                "relative_reconstruction_bias": float(np.mean(self.bias))
                if self.bias
                else math.nan,
            },
            "sparsity": {"l0": means["l0"], "l1": means["l1"]},
            "misc_metrics": {
                "frac_alive": float((density > 0).mean()),
                "frac_dead": float((density == 0).mean()),
                "freq_over_1_percent": float((density > 0.01).mean()),
                "freq_over_10_percent": float((density > 0.1).mean()),
            },
        }, density


def _score(worst, mine, best):
    """(worst - mine) / (worst - best); NaN when worst equals best."""
    denominator = worst - best
    return (worst - mine) / denominator if denominator != 0 else math.nan


# ----------------------------------------------------------------------
# Hooks
# ----------------------------------------------------------------------
class _Capture:
    def __init__(self):
        self.value = None

    def __call__(self, module, inputs, output):
        self.value = _model.output_tensor(output).detach()


class _Replace:
    """Forward hook writing ``values`` at ``mask`` (None: zeros everywhere)."""

    def __init__(self, mask=None, values=None):
        self.mask, self.values = mask, values

    def __call__(self, module, inputs, output):
        hidden = _model.output_tensor(output)
        if self.mask is None:
            new = hidden.new_zeros(hidden.shape)
        else:
            new = hidden.clone()
            new[self.mask] = self.values.to(dtype=hidden.dtype, device=hidden.device)
        return _model.replace_output(output, new)


def _run(model, submodule, hook, input_ids, attention_mask):
    import torch

    handle = submodule.register_forward_hook(hook)
    try:
        with torch.inference_mode():
            output = model(input_ids=input_ids, attention_mask=attention_mask)
    finally:
        handle.remove()
    # A Hugging Face output, or the logits themselves from a plain module.
    logits = getattr(output, "logits", output)
    return logits[0] if isinstance(logits, tuple) else logits


def _reconstruct(encoder, x):
    """Codes (CSR, one column per latent) and reconstruction of float32 rows."""
    codes = encoder.transform(x)
    return codes, np.asarray(encoder.inverse_transform(codes))


# ----------------------------------------------------------------------
# Public
# ----------------------------------------------------------------------
def evaluate_dictionary(
    estimator,
    model,
    tokenizer,
    texts,
    *,
    layer=None,
    module=None,
    context_size=None,
    batch_size=8,
    max_tokens=None,
    skip_special=True,
    prepend_bos=None,
    allow_other_layer=False,
    progress=False,
):
    """SAEBench's core metrics of a dictionary spliced into a language model.

    See the module documentation for the definition of every metric.

    Parameters
    ----------
    estimator : fitted DBKSVDDictionaryLearning or MatryoshkaDBKSVD
        Fitted on the activations of the same layer (see
        :func:`~sklearn_dbksvd.lm.harvest_activations`); it is not modified.
        Any other transformer with ``components_``, ``transform`` and
        ``inverse_transform`` (an SAE) works too; its code columns are its
        latents.
        Its ``provenance_``, when it was fitted on a harvest, gives the
        defaults of ``layer``, ``context_size`` and ``prepend_bos``.
    model : torch.nn.Module
        The causal language model (see
        :func:`~sklearn_dbksvd.lm.harvest_activations`).
    tokenizer : transformers.PreTrainedTokenizerBase
        Its tokenizer.
    texts : iterable of str
        Evaluation texts, cut into documents as the harvest does.
    layer : int, default=None
        Decoder layer whose output is replaced. At most one of ``layer`` and
        ``module`` is given; with neither, the layer (or module) the
        dictionary was fitted on, from its ``provenance_``.
    module : str, default=None
        Name of a submodule whose output is replaced instead.
    context_size : int, default=None
        Tokens per document, BOS included; default: the fitted one, else 128.
    batch_size : int, default=8
        Documents per forward pass.
    max_tokens : int, default=None
        Stop after the batch in which this many non-special tokens were
        evaluated; None: all of ``texts``.
    skip_special : bool, default=True
        Leave special positions (BOS, EOS, padding, ...) unchanged and out of
        every metric, as SAEBench does.
    prepend_bos : bool, default=None
        Start every document with the tokenizer's BOS token, if it has one;
        default: as the harvest the dictionary was fitted on, else True.
    allow_other_layer : bool, default=False
        Evaluate at another layer than the one recorded in ``provenance_``
        (with a warning); refused otherwise. A different model name, context
        size or BOS setting is only warned about
        (:class:`~sklearn_dbksvd.lm.ProvenanceWarning`).
    progress : bool or "lines", default=False
        ``True``: a tqdm progress bar (lines when tqdm is not installed);
        ``"lines"``: a line on stderr every 10 seconds and at the end, for
        logs.

    Returns
    -------
    results : dict
        The metric groups of SAEBench's core evaluation
        (``model_performance_preservation``, ``model_behavior_preservation``,
        ``reconstruction_quality``, ``shrinkage``, ``sparsity``,
        ``misc_metrics``), ``token_stats`` (tokens evaluated), ``config``
        (what was evaluated) and ``feature_density`` (ndarray of shape
        (n_latents,): the fraction of tokens on which each latent is
        nonzero; latent ``i`` is atom ``i``'s positive codes and latent
        ``m + i`` its negative codes, unless ``positive_code=True``).
    """
    import torch

    provenance = provenance_of(estimator)
    if layer is None and module is None:
        if provenance.get("layer") is not None:
            layer = int(provenance["layer"])
        elif provenance.get("module"):
            module = provenance["module"]
        else:
            raise ValueError(
                "pass layer or module: the dictionary does not record the layer "
                "it was fitted on."
            )
    name, submodule, hook_name = _model.find_module(model, layer=layer, module=module)
    check_same_layer(
        provenance,
        name,
        hook_name,
        what="the evaluation",
        allow_other_layer=allow_other_layer,
    )
    warn_if_different(
        provenance, "model_name", _model.model_name(model), what="the evaluation"
    )
    if context_size is None:
        context_size = int(provenance.get("context_size") or 128)
    else:
        warn_if_different(
            provenance, "context_size", context_size, what="the evaluation"
        )
    if prepend_bos is None:
        fitted = provenance.get("prepend_bos")
        prepend_bos = True if fitted is None else bool(fitted)
    else:
        warn_if_different(provenance, "prepend_bos", prepend_bos, what="the evaluation")
    latents = Latents(estimator)
    encoder = latents.encoder(estimator, sparse_output=True)
    special = _model.special_ids(tokenizer)
    pad_id = getattr(tokenizer, "pad_token_id", None)
    if pad_id is None:
        pad_id = special[0] if special else 0
    device = _model.model_device(model)
    limit = math.inf if max_tokens is None else max_tokens
    documents = _model.iter_documents(tokenizer, texts, context_size, prepend_bos)
    stats = ReconstructionStats(latents.n_latents)
    losses = {"without_sae": [], "with_sae": [], "with_ablation": []}
    kls = {"with_sae": [], "with_ablation": []}
    n_documents = 0
    shown = Progress(progress, "evaluate", max_tokens)
    try:
        for batch in _model.batches(documents, batch_size):
            input_ids, mask = _model.pad_batch(batch, pad_id, device)
            keep = _model.kept_mask(input_ids, mask, special, skip_special)
            # A prediction counts when made at a kept position and its
            # target is a real token (SAELens drops the last position).
            predict = keep[:, :-1] & mask[:, 1:].bool()
            capture = _Capture()
            clean = _run(model, submodule, capture, input_ids, mask)
            x = capture.value[keep].float().cpu().numpy()
            codes, x_hat = _reconstruct(encoder, x)
            stats.add(x, x_hat, codes)
            spliced = _run(
                model, submodule, _Replace(keep, torch.from_numpy(x_hat)),
                input_ids, mask,
            )
            ablated = _run(model, submodule, _Replace(), input_ids, mask)
            for key, logits in (
                ("without_sae", clean),
                ("with_sae", spliced),
                ("with_ablation", ablated),
            ):
                losses[key].append(next_token_losses(logits, input_ids, predict))
            kls["with_sae"].append(kl_divergences(clean, spliced, keep))
            kls["with_ablation"].append(kl_divergences(clean, ablated, keep))
            del clean, spliced, ablated
            n_documents += len(batch)
            shown.update(len(x), f", {n_documents} documents")
            if stats.n_tokens >= limit:
                break
    finally:
        shown.close(f", {n_documents} documents")
    if stats.n_tokens == 0:
        raise ValueError("the texts gave no token to evaluate.")

    def mean(parts):
        values = torch.cat(parts)
        return float(values.double().mean()) if len(values) else math.nan

    ce = {key: mean(parts) for key, parts in losses.items()}
    kl = {key: mean(parts) for key, parts in kls.items()}
    results, density = stats.results()
    n_predictions = int(sum(len(part) for part in losses["with_sae"]))
    return {
        "model_performance_preservation": {
            "ce_loss_score": _score(
                ce["with_ablation"], ce["with_sae"], ce["without_sae"]
            ),
            "ce_loss_without_sae": ce["without_sae"],
            "ce_loss_with_sae": ce["with_sae"],
            "ce_loss_with_ablation": ce["with_ablation"],
        },
        "model_behavior_preservation": {
            "kl_div_score": _score(kl["with_ablation"], kl["with_sae"], 0.0),
            "kl_div_with_sae": kl["with_sae"],
            "kl_div_with_ablation": kl["with_ablation"],
        },
        **results,
        "token_stats": {
            "total_tokens_eval_reconstruction": n_predictions,
            "total_tokens_eval_sparsity_variance": int(stats.n_tokens),
            "n_documents": n_documents,
        },
        "config": {
            "model_name": _model.model_name(model),
            "module": name,
            "hook_name": hook_name,
            "context_size": int(context_size),
            "prepend_bos": bool(prepend_bos),
            "skip_special": bool(skip_special),
            "n_components": latents.n_atoms,
            "n_latents": latents.n_latents,
            "estimator": type(estimator).__name__,
        },
        "feature_density": density,
    }


def format_metrics(results):
    """The metrics of :func:`evaluate_dictionary` as a two-column text table."""
    rows = [
        (label, results[group][key])
        for group, key, label in METRICS
        if key in results.get(group, {})
    ]
    stats = results.get("token_stats", {})
    if "total_tokens_eval_sparsity_variance" in stats:
        rows.append(("Tokens evaluated", stats["total_tokens_eval_sparsity_variance"]))
    width = max(len(label) for label, _ in rows)
    lines = []
    for label, value in rows:
        text = f"{value:d}" if isinstance(value, int) else f"{value:.4f}"
        lines.append(f"{label:<{width}}  {text:>10}")
    return "\n".join(lines)
