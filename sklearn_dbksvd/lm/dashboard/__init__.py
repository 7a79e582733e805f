"""A browsable dashboard of what each latent of a dictionary means.

:func:`build_dashboard` encodes the rows of a harvest directory chunk by
chunk and writes a static site that opens from disk (``file://``, no server,
nothing fetched from a network). Its unit is the latent, as in the
``[D; -D]`` SAELens export and the ``split_sign`` codes: atom ``i`` of a
dictionary with signed codes is two latents, ``i+`` (its positive codes,
latent ``i``) and ``i-`` (its negative codes, latent ``m + i``, along
``-d_i``); a dictionary with ``positive_code=True`` has one latent per atom.

``index.html``
    Every latent with its usage frequency, mean activation over its uses,
    the largest cosine to another latent, the tokens of its strongest uses
    and, with a model, the tokens it promotes; sortable and filterable.
``latents/NNNNN+.html``, ``latents/NNNNN-.html`` (``latents/NNNNN.html``)
    One page per latent: its strongest uses in context (``window`` tokens
    each side, every token shaded by the latent's activation there),
    examples from quantiles of a uniform sample of its uses, a histogram of
    its activations and, with a model, the tokens it promotes and
    suppresses through the unembedding.
``latents.json``
    The index's table, for scripts.
``.dbksvd-dashboard``
    Marks the directory as a site of the dashboard: only such a directory
    is ever replaced (``overwrite=True``, ``--force``).

Memory is bounded by the dictionary, not by the harvest: only the CSR codes
of three chunks exist at a time, and per latent only ``n_top + n_samples``
examples and a histogram of fixed size are kept.
"""

from pathlib import Path

from ..._data import RowConcatenation
from .._provenance import check_same_layer, provenance_of, warn_if_different
from ._site import MARKER, build_site, check_output, is_site

__all__ = ["MARKER", "build_dashboard", "build_site", "is_site"]


class _TokenRows:
    """The token tables of a harvest's shards, memory-mapped and read lazily.

    Unlike :func:`~sklearn_dbksvd.lm.load_tokens`, which concatenates them,
    only the records asked for are read: memory stays independent of the
    size of the harvest.
    """

    def __init__(self, shards):
        self._rows = RowConcatenation([shard.reshape(-1, 1) for shard in shards])
        self.dtype = self._rows.dtype

    def __len__(self):
        return len(self._rows)

    def __getitem__(self, rows):
        return self._rows[rows][:, 0]


def _tokenizer_of(settings):
    """The tokenizer of the harvested model from the local cache, or None."""
    name = settings.get("model_name")
    if not name:
        return None
    try:
        from transformers import AutoTokenizer
    except ImportError:
        return None
    try:
        return AutoTokenizer.from_pretrained(
            name, local_files_only=not Path(name).exists()
        )
    except (OSError, ValueError, TypeError, KeyError):
        return None


def build_dashboard(
    estimator,
    acts_dir,
    output,
    *,
    model=None,
    tokenizer=None,
    n_top=20,
    n_samples=32,
    n_quantiles=5,
    per_quantile=4,
    window=8,
    n_effects=10,
    chunk_size=None,
    n_jobs=None,
    random_state=0,
    overwrite=False,
    title=None,
    progress=False,
    allow_other_layer=False,
):
    """Write a static site showing what each latent of ``estimator`` means.

    Parameters
    ----------
    estimator : fitted DBKSVDDictionaryLearning or MatryoshkaDBKSVD
        Its ``transform`` settings (``transform_n_nonzero_coefs``) encode the
        rows; the estimator itself is not modified. Its ``provenance_``, when
        it was fitted on a harvest, is checked against the harvest shown.
    acts_dir : str or path-like
        Harvest directory of :func:`~sklearn_dbksvd.lm.harvest_activations`
        (activations, tokens and documents).
    output : str or path-like
        Directory of the site. It is built in a temporary directory next to
        it and renamed into place at the end, so a failed or killed build
        leaves no half-written site. An existing ``output`` is replaced only
        with ``overwrite=True`` and only when the dashboard wrote it (it holds
        the marker file ``.dbksvd-dashboard``) or it is empty.
    model : str, path-like or transformers.PreTrainedModel, default=None
        The language model, for the logit effects of the latents (the tokens
        a latent promotes and suppresses, ``W_U @ (gamma * d)`` for its
        direction ``d``, ``-d_i`` for the negative codes of atom ``i``, with
        the final norm's scale ``gamma`` folded in); a name or path is loaded
        with
        :func:`~sklearn_dbksvd.lm.load_model`.
    tokenizer : transformers tokenizer, default=None
        Decodes the tokens. Default: the model's when ``model`` is a name or
        path, else the harvested model's tokenizer from the local Hugging
        Face cache if it is there, else tokens are shown as ``#id``.
    n_top : int, default=20
        Strongest uses (largest activation) shown per latent.
    n_samples : int, default=32
        Uses sampled uniformly per latent for the quantile examples.
    n_quantiles : int, default=5
        Bands of activation the sample is cut into.
    per_quantile : int, default=4
        Examples shown per band.
    window : int, default=8
        Tokens of context on each side of an example.
    n_effects : int, default=10
        Promoted and suppressed tokens listed per latent.
    chunk_size : int, default=None
        Rows encoded at once (at least ``window``); default: a few tens of
        megabytes of data and codes.
    n_jobs : int, default=None
        Threads of the encoder; default: the estimator's.
    random_state : int, RandomState instance or None, default=0
        Seeds the uniform samples.
    overwrite : bool, default=False
        Replace an existing ``output`` that the dashboard wrote.
    title : str, default=None
        Title of the site.
    progress : bool or "lines", default=False
        ``True``: a progress bar of the encoding (needs tqdm); ``"lines"``: a
        line on stderr every 10 seconds and at the end, for logs.
    allow_other_layer : bool, default=False
        Show a harvest of another layer than the one recorded in the
        estimator's ``provenance_`` (with a warning); refused otherwise.
        Another model name is only warned about
        (:class:`~sklearn_dbksvd.lm.ProvenanceWarning`).

    Returns
    -------
    output : Path
        The site's directory; open ``output / "index.html"`` in a browser.
    """
    from .. import _store

    check_output(output, overwrite)  # before any work
    manifest = _store.read_manifest(acts_dir)
    settings = manifest.get("settings", {})
    provenance = provenance_of(estimator)
    if settings.get("module") or settings.get("hook_name"):
        check_same_layer(
            provenance,
            settings.get("module"),
            settings.get("hook_name") or settings.get("module"),
            what=f"the harvest {acts_dir}",
            allow_other_layer=allow_other_layer,
        )
    for key in ("model_name", "model_fingerprint"):
        warn_if_different(provenance, key, settings.get(key), what="the harvest")
    X = _store.load_activations(acts_dir)
    tokens = _TokenRows(_store._shards(acts_dir, manifest, "tokens"))
    documents = _store.load_documents(acts_dir)
    if isinstance(model, str | Path):
        from .._model import load_model

        model, model_tokenizer = load_model(model)
        tokenizer = tokenizer if tokenizer is not None else model_tokenizer
    if model is not None:
        from .._model import model_name

        warn_if_different(
            provenance, "model_name", model_name(model), what="the logit effects"
        )
    if tokenizer is None:
        tokenizer = _tokenizer_of(settings) or _tokenizer_of(provenance)
    where = settings.get("hook_name") or settings.get("module") or "?"
    summary = [
        f"Harvest: {Path(acts_dir).resolve()} ({manifest.get('n_rows', X.shape[0])} "
        f"rows, model {settings.get('model_name', '?')}, {where})."
    ]
    if title is None and settings.get("model_name"):
        title = f"{type(estimator).__name__} on {settings['model_name']} ({where})"
    return build_site(
        estimator,
        X,
        tokens,
        output,
        documents=documents,
        tokenizer=tokenizer,
        model=model,
        title=title,
        summary=summary,
        n_top=n_top,
        n_samples=n_samples,
        n_quantiles=n_quantiles,
        per_quantile=per_quantile,
        window=window,
        n_effects=n_effects,
        chunk_size=chunk_size,
        n_jobs=n_jobs,
        random_state=random_state,
        overwrite=overwrite,
        progress=progress,
    )
