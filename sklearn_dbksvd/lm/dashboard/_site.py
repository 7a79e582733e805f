"""Build the dashboard: stream the codes, pick the examples, write the site."""

import json
from importlib import resources
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sklearn.utils.validation import check_is_fitted

from ..._data import check_lazy_array, chunk_rows, read_rows
from ...persistence import atomic_directory
from .._latents import MINUS, Latents
from .._progress import Progress
from . import _effects, _render
from ._stats import TOKEN_FIELDS, AtomStatistics

_ASSETS = ("dashboard.css", "index.js")


def _check_inputs(estimator, X, tokens, documents):
    check_is_fitted(estimator, "components_")
    dtype = check_lazy_array(X) if hasattr(X, "shape") else None
    if dtype is None:
        raise TypeError(f"X must be a 2-D array-like; got {type(X).__name__}.")
    n_features = estimator.components_.shape[1]
    if X.shape[1] != n_features:
        raise ValueError(
            f"the activations have {X.shape[1]} features; the dictionary has "
            f"{n_features}."
        )
    names = getattr(getattr(tokens, "dtype", None), "names", None) or ()
    missing = [field for field in TOKEN_FIELDS if field not in names]
    if missing:
        raise TypeError(
            "tokens must be a structured array with the fields "
            f"{', '.join(TOKEN_FIELDS)}; missing {', '.join(missing)}."
        )
    if len(tokens) != X.shape[0]:
        raise ValueError(
            f"tokens has {len(tokens)} records for {X.shape[0]} activation rows."
        )
    if documents is not None and len(getattr(documents, "shape", ())) != 2:
        raise ValueError("documents must be 2-D: (n_documents, context_size).")
    return dtype


def stream_statistics(
    estimator,
    X,
    tokens,
    *,
    n_top,
    n_samples,
    window,
    chunk_size=None,
    n_jobs=None,
    random_state=None,
    bar=None,
):
    """Encode ``X`` chunk by chunk and accumulate per-latent statistics.

    The codes come from the estimator's streaming encode
    (``iter_transform``), one column per latent (see
    :class:`~sklearn_dbksvd.lm._latents.Latents`). Each chunk is counted
    once the next one is encoded, with ``window`` rows of codes of its
    neighbours on each side, so that the contexts of examples near a chunk
    boundary are complete; only the CSR codes of three chunks exist at a time.

    Returns
    -------
    stats : AtomStatistics
        One column per latent.
    """
    dtype = check_lazy_array(X)
    latents = Latents(estimator)
    encoder = latents.encoder(estimator, sparse_output=True, n_jobs=n_jobs)
    rows = chunk_size or chunk_rows(X.shape[1], latents.n_atoms, dtype.itemsize)
    # A context reaches one chunk back and one forward.
    rows = max(rows, window, 1)
    stats = AtomStatistics(
        latents.n_latents,
        n_top=n_top,
        n_samples=n_samples,
        window=window,
        random_state=random_state,
        nonnegative=True,  # activations of latents
    )

    def count(previous, current, following):
        core, codes = current
        parts, lo = [codes], core.start
        if previous is not None and window:
            parts.insert(0, previous[1][-window:])
            lo -= parts[0].shape[0]
        if following is not None and window:
            parts.append(following[1][:window])
        block = sp.vstack(parts, format="csr") if len(parts) > 1 else codes
        hi = lo + block.shape[0]
        stats.update(
            block,
            np.asarray(tokens[lo:hi]),
            slice(core.start - lo, core.stop - lo),
            lo,
        )
        if bar is not None:
            bar.update(core.stop - core.start)

    previous = current = None
    for chunk in encoder.iter_transform(X, chunk_size=rows):
        if current is not None:
            count(previous, current, chunk)
        previous, current = current, chunk
    if current is not None:
        count(previous, current, None)
    return stats


# Examples whose documents are read at once when filling contexts: bounds
# that read at _FILL_BLOCK x context_size token ids.
_FILL_BLOCK = 2**15


def _fill_from_documents(examples, tokens, documents, window):
    """Fill the tokens of a context that have no row (BOS...) from the documents.

    ``examples`` holds flat views ``row`` and ``tokens``, filled in place.
    """
    for start in range(0, len(examples["row"]), _FILL_BLOCK):
        block = slice(start, start + _FILL_BLOCK)
        _fill_block(
            examples["row"][block], examples["tokens"][block], tokens, documents, window
        )


def _fill_block(rows, context_tokens, tokens, documents, window):
    have = rows >= 0
    if not have.any():
        return
    unique_rows, where = np.unique(rows[have], return_inverse=True)
    records = np.asarray(tokens[unique_rows])
    document = records["document"].astype(np.int64)
    position = records["position"].astype(np.int64)
    unique_docs, doc_index = np.unique(document, return_inverse=True)
    texts = np.asarray(read_rows(documents, unique_docs))
    offsets = np.arange(-window, window + 1)
    columns = position[:, None] + offsets
    inside = (columns >= 0) & (columns < texts.shape[1])
    from_docs = np.full(columns.shape, -1, dtype=np.int64)
    from_docs[inside] = texts[
        np.broadcast_to(doc_index[:, None], columns.shape)[inside], columns[inside]
    ]
    context = context_tokens[have]
    missing = context < 0
    context[missing] = from_docs[where][missing]
    context_tokens[have] = context


def _examples(kept, atom, order=None):
    filled = np.flatnonzero(kept.score[atom] > -np.inf)
    if order is not None:
        filled = filled[order(kept.fields["value"][atom, filled])]
    return [
        {
            name: kept.fields[name][atom, slot]
            for name in ("value", "row", "tokens", "codes")
        }
        for slot in filled
    ]


def _quantile_bands(examples, n_bands, per_band):
    """Examples of a uniform sample, by band of ``|code|``, strongest band first."""
    if not examples:
        return []
    n = len(examples)
    n_bands = min(n_bands, n)
    bands = []
    for band in reversed(range(n_bands)):
        lo, hi = band * n // n_bands, (band + 1) * n // n_bands
        picks = np.unique(
            np.linspace(lo, hi - 1, min(per_band, hi - lo)).round().astype(int)
        )
        chosen = [examples[i] for i in picks]
        low, high = (
            abs(float(examples[lo]["value"])),
            abs(float(examples[hi - 1]["value"])),
        )
        label = (
            f"quantiles {band / n_bands:.2f} to {(band + 1) / n_bands:.2f} "
            f"(|code| {low:.3g} to {high:.3g})"
        )
        bands.append((label, chosen))
    return bands


class _Decoder:
    """Token id to text, each distinct id decoded once."""

    def __init__(self, decode):
        self._decode = decode
        self._cache = {}

    def prepare(self, ids):
        ids = [
            int(i)
            for i in np.unique(np.asarray(ids))
            if i >= 0 and int(i) not in self._cache
        ]
        if ids:
            texts = (
                self._decode(ids)
                if self._decode is not None
                else [f"#{i}" for i in ids]
            )
            self._cache.update(zip(ids, texts, strict=True))

    def __call__(self, token_id):
        if token_id not in self._cache:
            self.prepare([token_id])
        return self._cache[token_id]


def _decode_with(tokenizer):
    if tokenizer is None:
        return None
    # One id at a time: decoding a list would merge the pieces of a word.
    return lambda ids: [tokenizer.decode([i]) for i in ids]


#: A file of this name and content marks a directory as a site of the
#: dashboard: ``overwrite=True`` (``--force``) replaces only such a directory
#: (or an empty one), never one the dashboard did not write.
MARKER = ".dbksvd-dashboard"
MARKER_TEXT = (
    "A dashboard site written by sklearn_dbksvd.lm.build_dashboard.\n"
    "build_dashboard(..., overwrite=True) and 'dbksvd dashboard --force' may "
    "replace this directory.\n"
)


def is_site(path):
    """Whether ``path`` is a directory the dashboard wrote (it has the marker)."""
    marker = Path(path) / MARKER
    try:
        if marker.is_symlink() or not marker.is_file():
            return False
        with open(marker, encoding="utf-8") as file:
            return file.read(len(MARKER_TEXT) + 1) == MARKER_TEXT
    except (OSError, UnicodeDecodeError):
        return False


def check_output(output, overwrite):
    """Refuse an ``output`` that cannot be written or must not be replaced.

    An existing ``output`` is replaced only with ``overwrite`` and only when
    it is a site written by the dashboard, or an empty directory: anything
    else (the harvest, a directory of the user's files, a file, a symbolic
    link) is never removed.
    """
    output = Path(output)
    if output.is_symlink() or output.exists():
        if not overwrite:
            raise FileExistsError(
                f"{output} exists; pass overwrite=True (--force) to replace a "
                "dashboard written there."
            )
        if output.is_symlink() or not output.is_dir():
            raise FileExistsError(
                f"{output} is not a directory written by the dashboard; it is "
                "never replaced: choose another output directory."
            )
        if not is_site(output) and any(output.iterdir()):
            raise FileExistsError(
                f"{output} was not written by the dashboard (no {MARKER} file); "
                "it is never replaced: choose another output directory."
            )
    if not output.parent.is_dir():
        raise FileNotFoundError(f"{output.parent}: no such directory for the output.")


def build_site(
    estimator,
    X,
    tokens,
    output,
    *,
    documents=None,
    tokenizer=None,
    decode=None,
    model=None,
    title=None,
    summary=(),
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
    progress=False,
):
    """Write the dashboard of ``estimator`` on the rows ``X`` to ``output``.

    The workhorse of :func:`~sklearn_dbksvd.lm.build_dashboard`, on arrays
    rather than a harvest directory; see it for the parameters. ``tokens``
    is a structured array (fields ``token_id``, ``document``, ``position``)
    with one record per row of ``X``, rows of a document consecutive and in
    increasing position; ``decode`` maps a list of token ids to their texts
    (default: the tokenizer's, or ``#id``).

    Returns
    -------
    output : Path
    """
    _check_inputs(estimator, X, tokens, documents)
    output = Path(output)
    check_output(output, overwrite)
    if decode is None:
        decode = _decode_with(tokenizer)
    bar = Progress(progress, "dashboard", X.shape[0], noun="rows")
    try:
        stats = stream_statistics(
            estimator,
            X,
            tokens,
            n_top=n_top,
            n_samples=n_samples,
            window=window,
            chunk_size=chunk_size,
            n_jobs=n_jobs,
            random_state=random_state,
            bar=bar,
        )
    finally:
        bar.close(" encoded")
    if documents is not None:
        for kept in (stats.top_, stats.sample_):
            flat = {
                name: kept.fields[name].reshape(-1, *kept.fields[name].shape[2:])
                for name in ("row", "tokens")
            }
            _fill_from_documents(flat, tokens, documents, window)

    latents = Latents(estimator)
    components = np.asarray(estimator.components_)
    max_cos, nearest = _effects.nearest_latents(components, signed=latents.signed)
    effects = None
    if model is not None:
        effects = _effects.logit_effects(
            model, latents.directions(components), n_tokens=n_effects
        )

    words = _Decoder(decode)
    words.prepare(
        np.concatenate(
            [
                stats.top_.fields["tokens"].ravel(),
                stats.sample_.fields["tokens"].ravel(),
            ]
            + (
                [effects["promoted"].ravel(), effects["suppressed"].ravel()]
                if effects
                else []
            )
        )
    )
    n_rows = max(stats.n_rows_, 1)
    n_atoms = latents.n_atoms
    title = title or f"Dictionary of {n_atoms} atoms"
    meta = {"title": title, "norm": effects["norm"] if effects else "none"}
    index_rows = []
    # Built aside, fsynced and renamed into place; an existing directory is
    # replaced only when it holds the marker (checked again at the end).
    with atomic_directory(output, overwrite=overwrite, marker=MARKER) as site:
        (site / "latents").mkdir()
        for name in _ASSETS:
            data = resources.files(__package__).joinpath("static", name).read_bytes()
            (site / name).write_bytes(data)
        for latent in latents.order():
            count = int(stats.count_[latent])
            top = _examples(stats.top_, latent)
            sample = _examples(
                stats.sample_,
                latent,
                order=lambda v: np.argsort(np.abs(v), kind="stable"),
            )
            view = {
                "count": count,
                "frequency": count / n_rows,
                "mean": float(stats.abs_sum_[latent] / count) if count else 0.0,
                "max_cos": float(max_cos[latent]),
                "nearest": int(nearest[latent]),
                "top": top,
                "quantiles": _quantile_bands(sample, n_quantiles, per_quantile),
                "hist": stats.histogram(latent),
            }
            if effects is not None:
                view["effects"] = {
                    key: effects[key][latent]
                    for key in (
                        "promoted",
                        "suppressed",
                        "promoted_logits",
                        "suppressed_logits",
                    )
                }
            page = _render.render_latent_page(latent, view, words, latents, meta)
            (site / latents.file(latent)).write_text(page, encoding="utf-8")
            centres = []
            for example in top[:8]:
                text = _render.token_text(
                    words(int(example["tokens"][window])), alone=True
                )
                if text not in centres:
                    centres.append(text)
            index_rows.append(
                {
                    "latent": latent,
                    "order": latents.position(latent),
                    "label": latents.label(latent),
                    "atom": latents.atom(latent),
                    "sign": (
                        ("+" if latents.sign(latent) > 0 else "-")
                        if latents.signed
                        else ""
                    ),
                    "page": latents.file(latent),
                    "count": count,
                    "frequency": view["frequency"],
                    "mean": view["mean"],
                    "max_cos": view["max_cos"],
                    "nearest": view["nearest"],
                    "top_tokens": " | ".join(centres[:5]),
                    "promoted": " | ".join(
                        _render.token_text(words(int(t)), alone=True)
                        for t in effects["promoted"][latent][:5]
                    )
                    if effects
                    else "",
                }
            )
        if latents.signed:
            naming = (
                f"{latents.n_latents} latents: atom i's positive codes are latent "
                f"i (\"i+\"), its negative codes latent {n_atoms} + i "
                f"(\"i{MINUS}\", along -d_i), as in the [D; {MINUS}D] SAELens "
                "export."
            )
        else:
            naming = f"{n_atoms} latents, one per atom (positive codes)."
        lines = [
            f"{n_atoms} atoms of {components.shape[1]} features; "
            f"{stats.n_rows_} rows encoded, "
            f"{stats.count_.sum() / n_rows:.4g} nonzero codes per row on average.",
            naming,
            *summary,
        ]
        if effects is not None:
            lines.append(f"Logit effects through the final norm: {effects['norm']}.")
        index = _render.render_index(
            index_rows,
            {
                "title": title,
                "summary": lines,
                "has_effects": effects is not None,
                "first_page": latents.file(0),
            },
        )
        (site / "index.html").write_text(index, encoding="utf-8")
        (site / "latents.json").write_text(json.dumps(index_rows), encoding="utf-8")
        # Last: only a complete site is ever marked as the dashboard's.
        (site / MARKER).write_text(MARKER_TEXT, encoding="utf-8")
    return output
