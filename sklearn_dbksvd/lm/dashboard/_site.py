"""Build the dashboard: stream the codes, pick the examples, write the site."""

import contextlib
import copy
import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np
from sklearn.utils.validation import check_is_fitted

from ..._data import check_batch, check_lazy_array, chunk_rows, read_rows
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
    """Encode ``X`` chunk by chunk and accumulate :class:`AtomStatistics`.

    Each chunk is read with ``window`` extra rows on each side, so that the
    contexts of examples near a chunk boundary are complete; only the CSR
    codes of one chunk exist at a time.
    """
    dtype = check_lazy_array(X)
    encoder = copy.copy(estimator)  # the caller's estimator keeps its params
    encoder.set_params(sparse_output=True)
    if encoder.get_params().get("split_sign"):
        # One column per atom: the sign of a code is shown, not split off.
        encoder.set_params(split_sign=False)
    if n_jobs is not None:
        encoder.set_params(n_jobs=n_jobs)
    gram = encoder._transform_gram(dtype)
    n_rows = X.shape[0]
    n_components = estimator.components_.shape[0]
    rows = chunk_size or chunk_rows(X.shape[1], n_components, dtype.itemsize)
    stats = AtomStatistics(
        n_components,
        n_top=n_top,
        n_samples=n_samples,
        window=window,
        random_state=random_state,
    )
    for start in range(0, n_rows, rows):
        stop = min(start + rows, n_rows)
        lo, hi = max(start - window, 0), min(stop + window, n_rows)
        block = [slice(lo, hi)]
        chunk = check_batch(read_rows(X, block), block)
        codes = encoder._encode(chunk, gram)
        stats.update(codes, np.asarray(tokens[lo:hi]), slice(start - lo, stop - lo), lo)
        if bar is not None:
            bar.update(stop - start)
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


@contextlib.contextmanager
def _site_directory(output, overwrite):
    """A temporary directory next to ``output``, renamed onto it at the end."""
    output = Path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} exists; pass overwrite=True to replace it.")
    if not output.parent.is_dir():
        raise FileNotFoundError(f"{output.parent}: no such directory for the output.")
    tmp = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}."))
    try:
        yield tmp
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes it private
        if output.exists():
            # Directories cannot be renamed over non-empty ones: move the old
            # site aside first, then drop it.
            old = Path(
                tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.old.")
            )
            os.replace(output, old / "site")
            os.replace(tmp, output)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} exists; pass overwrite=True to replace it.")
    if decode is None:
        decode = _decode_with(tokenizer)
    bar = None
    if progress:
        with contextlib.suppress(ImportError):
            from tqdm.auto import tqdm

            bar = tqdm(total=X.shape[0], unit="tok", desc="dashboard")
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
        if bar is not None:
            bar.close()
    if documents is not None:
        for kept in (stats.top_, stats.sample_):
            flat = {
                name: kept.fields[name].reshape(-1, *kept.fields[name].shape[2:])
                for name in ("row", "tokens")
            }
            _fill_from_documents(flat, tokens, documents, window)

    components = estimator.components_
    n_components = components.shape[0]
    max_abs_cos, nearest = _effects.nearest_atoms(components)
    effects = None
    if model is not None:
        effects = _effects.logit_effects(model, components, n_tokens=n_effects)

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
    title = title or f"Dictionary of {n_components} atoms"
    meta = {"title": title, "norm": effects["norm"] if effects else "none"}
    index_rows = []
    with _site_directory(output, overwrite) as site:
        (site / "atoms").mkdir()
        for name in _ASSETS:
            data = resources.files(__package__).joinpath("static", name).read_bytes()
            (site / name).write_bytes(data)
        for atom in range(n_components):
            count = int(stats.count_[atom])
            top = _examples(stats.top_, atom)
            sample = _examples(
                stats.sample_,
                atom,
                order=lambda v: np.argsort(np.abs(v), kind="stable"),
            )
            view = {
                "count": count,
                "frequency": count / n_rows,
                "mean_abs": float(stats.abs_sum_[atom] / count) if count else 0.0,
                "max_abs_cos": float(max_abs_cos[atom]),
                "nearest": int(nearest[atom]),
                "top": top,
                "quantiles": _quantile_bands(sample, n_quantiles, per_quantile),
                "hist": stats.histogram(atom),
            }
            if effects is not None:
                view["effects"] = {
                    key: effects[key][atom]
                    for key in (
                        "promoted",
                        "suppressed",
                        "promoted_logits",
                        "suppressed_logits",
                    )
                }
            page = _render.render_atom_page(atom, view, words, n_components, meta)
            (site / _render.atom_file(atom)).write_text(page, encoding="utf-8")
            centres = []
            for example in top[:8]:
                text = _render.token_text(
                    words(int(example["tokens"][window])), alone=True
                )
                if text not in centres:
                    centres.append(text)
            index_rows.append(
                {
                    "atom": atom,
                    "count": count,
                    "frequency": view["frequency"],
                    "mean_abs": view["mean_abs"],
                    "max_abs_cos": view["max_abs_cos"],
                    "nearest": view["nearest"],
                    "top_tokens": " | ".join(centres[:5]),
                    "promoted": " | ".join(
                        _render.token_text(words(int(t)), alone=True)
                        for t in effects["promoted"][atom][:5]
                    )
                    if effects
                    else "",
                }
            )
        lines = [
            f"{n_components} atoms of {components.shape[1]} features; "
            f"{stats.n_rows_} rows encoded with "
            f"{estimator._transform_n_nonzero_coefs()} nonzeros each.",
            *summary,
        ]
        if effects is not None:
            lines.append(f"Logit effects through the final norm: {effects['norm']}.")
        index = _render.render_index(
            index_rows,
            {"title": title, "summary": lines, "has_effects": effects is not None},
        )
        (site / "index.html").write_text(index, encoding="utf-8")
        (site / "atoms.json").write_text(json.dumps(index_rows), encoding="utf-8")
    return output
