"""The dashboard of a dictionary: streaming statistics, the site, a browser."""

import copy
import html
import re
import shutil
import subprocess
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

from sklearn_dbksvd import DBKSVDDictionaryLearning
from sklearn_dbksvd.lm._latents import Latents
from sklearn_dbksvd.lm.dashboard import _effects, _render, build_site
from sklearn_dbksvd.lm.dashboard._stats import (
    AtomStatistics,
    rebin_histogram,
    top_per_group,
)

TOKEN_DTYPE = np.dtype([("token_id", "<i4"), ("document", "<i8"), ("position", "<i4")])
WINDOW = 3


# ----------------------------------------------------------------------
# Streaming statistics against plain computations on the dense codes
# ----------------------------------------------------------------------
def _token_table(n_rows, doc_length, seed=0, skip=()):
    """Rows of documents of ``doc_length`` positions, some positions skipped."""
    rng = np.random.RandomState(seed)
    records = []
    document = 0
    while len(records) < n_rows:
        for position in range(doc_length):
            if position not in skip:
                records.append((rng.randint(50), document, position))
        document += 1
    return np.array(records[:n_rows], dtype=TOKEN_DTYPE)


def _random_codes(n_rows, n_components, k, seed=0):
    rng = np.random.RandomState(seed)
    dense = np.zeros((n_rows, n_components), np.float32)
    for i in range(n_rows):
        dense[i, rng.choice(n_components, k, replace=False)] = rng.randn(k) * 3
    return dense


def _stream(dense, tokens, chunk, **params):
    stats = AtomStatistics(dense.shape[1], window=WINDOW, **params)
    n = len(dense)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        lo, hi = max(start - WINDOW, 0), min(stop + WINDOW, n)
        # Shuffle the column order inside rows: CSR indices need not be sorted.
        codes = sp.csr_matrix(dense[lo:hi])
        codes.has_sorted_indices = False
        stats.update(codes, tokens[lo:hi], slice(start - lo, stop - lo), lo)
    return stats


def _expected_context(dense, tokens, row, atom):
    """Tokens and codes at positions -WINDOW..WINDOW of ``row``'s document."""
    document, position = tokens["document"][row], tokens["position"][row]
    ids = np.full(2 * WINDOW + 1, -1)
    codes = np.full(2 * WINDOW + 1, np.nan, np.float32)
    for other in np.flatnonzero(tokens["document"] == document):
        slot = tokens["position"][other] - position + WINDOW
        if 0 <= slot <= 2 * WINDOW:
            ids[slot] = tokens["token_id"][other]
            codes[slot] = dense[other, atom]
    return ids, codes


def test_top_per_group_matches_sorting():
    rng = np.random.RandomState(0)
    groups, scores = rng.randint(0, 7, 200), rng.randn(200)
    keep, rank = top_per_group(groups, scores, 3)
    for g in range(7):
        expected = np.flatnonzero(groups == g)
        expected = expected[np.argsort(-scores[expected], kind="stable")][:3]
        np.testing.assert_array_equal(keep[groups[keep] == g], expected)
        np.testing.assert_array_equal(rank[groups[keep] == g], np.arange(len(expected)))


@pytest.mark.parametrize("chunk", [7, 50, 1000])
def test_statistics_match_dense_codes(chunk):
    tokens = _token_table(300, doc_length=11, skip=(0, 5))
    dense = _random_codes(300, 12, 3)
    stats = _stream(dense, tokens, chunk, n_top=4, n_samples=6, n_bins=16)
    assert stats.n_rows_ == 300
    np.testing.assert_array_equal(stats.count_, (dense != 0).sum(0))
    np.testing.assert_allclose(stats.abs_sum_, np.abs(dense).sum(0), rtol=1e-6)
    for atom in range(12):
        strongest = np.argsort(-np.abs(dense[:, atom]), kind="stable")[:4]
        np.testing.assert_array_equal(stats.top_.fields["row"][atom], strongest)
        np.testing.assert_array_equal(
            stats.top_.fields["value"][atom], dense[strongest, atom]
        )
        for slot, row in enumerate(strongest):
            ids, codes = _expected_context(dense, tokens, row, atom)
            np.testing.assert_array_equal(stats.top_.fields["tokens"][atom, slot], ids)
            np.testing.assert_array_equal(stats.top_.fields["codes"][atom, slot], codes)
        # The sample: distinct uses of this atom, with their codes.
        sampled = stats.sample_.fields["row"][atom]
        assert len(set(sampled)) == 6
        np.testing.assert_array_equal(
            stats.sample_.fields["value"][atom], dense[sampled, atom]
        )
        assert (dense[sampled, atom] != 0).all()
        # The histogram is exact: bins only ever merge whole.
        counts, edges = stats.histogram(atom)
        values = dense[dense[:, atom] != 0, atom]
        assert edges[0] <= values.min() and values.max() <= edges[-1]
        expected, _ = np.histogram(values, edges)
        np.testing.assert_array_equal(counts, expected)


def test_sample_is_uniform_over_uses():
    # One atom used by every row: each row must be sampled about equally often.
    tokens = _token_table(40, doc_length=40)
    dense = np.ones((40, 1), np.float32)
    hits = np.zeros(40)
    for seed in range(300):
        stats = _stream(dense, tokens, 9, n_top=1, n_samples=4, random_state=seed)
        hits[stats.sample_.fields["row"][0]] += 1
    # 300 * 4 / 40 = 30 expected per row; a biased sampler (first or last
    # chunks favoured) lands far outside.
    assert hits.min() > 12 and hits.max() < 50


@pytest.mark.parametrize("chunk", [7, 1000])
def test_nonnegative_histograms_match_dense_codes(chunk):
    # Activations of latents: every bin over [0, 2**e], counts exact.
    tokens = _token_table(300, doc_length=11)
    dense = np.abs(_random_codes(300, 6, 2))
    dense[:100] /= 50  # the range doubles many times along the stream
    stats = _stream(dense, tokens, chunk, n_bins=16, nonnegative=True)
    for atom in range(6):
        counts, edges = stats.histogram(atom)
        values = dense[dense[:, atom] != 0, atom]
        assert edges[0] >= 0 and edges[-1] >= values.max()
        assert len(counts) > 8  # from near 0 to the largest: bins of [0, 2**e]
        np.testing.assert_array_equal(counts, np.histogram(values, edges)[0])


def test_rebin_histogram_moves_counts_exactly():
    rng = np.random.RandomState(0)
    values = rng.uniform(-1, 1, 500)
    edges = np.linspace(-1, 1, 17)
    counts = np.histogram(values, edges)[0][None]
    for doublings in (1, 2, 3):
        wide = np.linspace(-(2.0**doublings), 2.0**doublings, 17)
        np.testing.assert_array_equal(
            rebin_histogram(counts, doublings)[0], np.histogram(values, wide)[0]
        )
    positive = np.abs(values)
    counts = np.histogram(positive, np.linspace(0, 1, 17))[0][None]
    for doublings in (1, 2, 3):
        wide = np.linspace(0, 2.0**doublings, 17)
        np.testing.assert_array_equal(
            rebin_histogram(counts, doublings, nonnegative=True)[0],
            np.histogram(positive, wide)[0],
        )


def test_bad_bins():
    with pytest.raises(ValueError, match="multiple of 4"):
        AtomStatistics(3, n_bins=10)


# ----------------------------------------------------------------------
# Neighbours and logit effects
# ----------------------------------------------------------------------
def test_nearest_atoms_matches_gram(monkeypatch):
    monkeypatch.setattr(_effects, "_BLOCK", 3)  # several blocks
    rng = np.random.RandomState(0)
    atoms = rng.randn(8, 5)
    unit = atoms / np.linalg.norm(atoms, axis=1, keepdims=True)
    cos = np.abs(unit @ unit.T)
    np.fill_diagonal(cos, -1)
    max_abs_cos, nearest = _effects.nearest_atoms(atoms)
    np.testing.assert_array_equal(nearest, cos.argmax(1))
    np.testing.assert_allclose(max_abs_cos, cos.max(1))
    assert _effects.nearest_atoms(atoms[:1])[1][0] == -1


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_logit_effects_are_what_the_model_does(family):
    # The logits of the model for a residual stream holding only the atom
    # (final norm, then unembedding), less those of an empty residual stream
    # (the norm's bias), rank the tokens as the logit effects do.
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from ._lm_models import tiny_gpt2, tiny_llama

    model = tiny_llama() if family == "llama" else tiny_gpt2()
    norm = _effects.final_norm(model)
    assert norm is not None
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)  # not the identity
    atoms = np.random.RandomState(0).randn(5, 32).astype(np.float32)
    effects = _effects.logit_effects(model, atoms, n_tokens=4, block=2)
    with torch.no_grad():
        hidden = norm(torch.from_numpy(atoms)) - norm(torch.zeros(1, 32))
        logits = model.get_output_embeddings()(hidden).numpy()
    np.testing.assert_array_equal(effects["promoted"], np.argsort(-logits, 1)[:, :4])
    np.testing.assert_array_equal(effects["suppressed"], np.argsort(logits, 1)[:, :4])
    assert effects["norm"] == type(norm).__name__


# ----------------------------------------------------------------------
# The site on synthetic activations with a planted token
# ----------------------------------------------------------------------
PLANTED = 7


def _planted_data(n_rows=2400, d=24, seed=0):
    """Rows of token embeddings, plus a strong direction on token ``PLANTED``."""
    rng = np.random.RandomState(seed)
    tokens = _token_table(n_rows, doc_length=30, seed=seed, skip=(0,))
    embeddings = rng.randn(50, d).astype(np.float32)
    X = embeddings[tokens["token_id"]] + 0.1 * rng.randn(n_rows, d).astype(np.float32)
    direction = rng.randn(d).astype(np.float32)
    direction /= np.linalg.norm(direction)
    X[tokens["token_id"] == PLANTED] += 15 * direction
    documents = np.full((tokens["document"].max() + 1, 30), -1, np.int32)
    documents[:, 0] = 99  # a BOS, never harvested
    documents[tokens["document"], tokens["position"]] = tokens["token_id"]
    return X, tokens, documents, direction


def _decode(ids):
    return [f"tok<{i}>" for i in ids]  # "<" checks that text is escaped


def _centre_tokens(page):
    return [
        html.unescape(text)
        for text in re.findall(
            r'<span class="t [^"]*\bc" title="[^"]*">([^<]*)</span>', page
        )
    ]


@pytest.fixture(scope="module")
def planted_site(tmp_path_factory):
    X, tokens, documents, direction = _planted_data()
    estimator = DBKSVDDictionaryLearning(
        12, n_nonzero_coefs=3, max_iter=5, random_state=0
    ).fit(X)
    output = tmp_path_factory.mktemp("dash") / "site"
    build_site(
        estimator,
        X,
        tokens,
        output,
        documents=documents,
        decode=_decode,
        chunk_size=333,
        n_top=10,
        title="planted <test>",
    )
    return output, estimator, direction


def _planted_latent(estimator, direction):
    """The latent of the atom nearest ``direction``, of the sign along it."""
    cos = estimator.components_ @ direction
    atom = int(np.argmax(np.abs(cos)))
    return atom if cos[atom] > 0 else atom + len(cos), abs(cos[atom])


def _page(output, estimator, latent):
    return (output / Latents(estimator).file(latent)).read_text(encoding="utf-8")


def test_planted_latent_page_lists_the_token_first(planted_site):
    output, estimator, direction = planted_site
    latent, cos = _planted_latent(estimator, direction)
    assert cos > 0.8  # the atom also holds the embedding of the token
    page = _page(output, estimator, latent)
    centres = _centre_tokens(page)
    # Its strongest uses are all at the planted token; BOS filled from the
    # documents, shown as not harvested.
    assert centres[:10] == [f"tok<{PLANTED}>"] * 10
    assert 'class="t x" title="not harvested">tok&lt;99&gt;' in page
    # Other latents, the other sign of the same atom included, do not list
    # it first.
    others = [
        _centre_tokens(_page(output, estimator, other))
        for other in range(24)
        if other != latent
    ]
    assert all(c[:1] != [f"tok<{PLANTED}>"] for c in others)


def test_site_files_and_links(planted_site):
    output, estimator, _ = planted_site
    assert (output / "index.html").is_file()
    assert sorted(p.name for p in (output / "latents").iterdir()) == sorted(
        f"{a:05d}{sign}.html" for a in range(12) for sign in "+-"
    )
    for page in [output / "index.html", *sorted((output / "latents").iterdir())]:
        text = page.read_text(encoding="utf-8")
        assert "http://" not in text and "https://" not in text  # nothing remote
        for link in re.findall(r'(?:href|src)="([^"#]+)"', text):
            assert (page.parent / html.unescape(link)).is_file(), (page, link)
    # Index data, one row per latent: frequencies and mean activations of
    # the split-sign codes (atom i's positive codes, then its negative ones).
    import json

    rows = json.loads((output / "latents.json").read_text())
    assert [r["latent"] for r in rows] == [
        latent for atom in range(12) for latent in (atom, atom + 12)
    ]
    assert [r["label"] for r in rows[:4]] == ["0+", "0\u2212", "1+", "1\u2212"]
    rows = sorted(rows, key=lambda r: r["latent"])
    X, *_ = _planted_data()
    codes = estimator.set_params(sparse_output=False).transform(X)
    split = np.c_[np.maximum(codes, 0), np.maximum(-codes, 0)]
    np.testing.assert_allclose(
        [r["frequency"] for r in rows], (split != 0).mean(0), rtol=1e-6
    )
    used = np.maximum((split != 0).sum(0), 1)
    np.testing.assert_allclose(
        [r["mean"] for r in rows], split.sum(0) / used, rtol=1e-4
    )
    # The nearest latent points the same way; never the latent's own twin.
    unit = estimator.components_ / np.linalg.norm(
        estimator.components_, axis=1, keepdims=True
    )
    directions = np.r_[unit, -unit]
    for r in rows:
        cos = directions @ directions[r["latent"]]
        cos[[r["latent"], (r["latent"] + 12) % 24]] = -np.inf
        assert r["nearest"] == int(np.argmax(cos))
        assert r["max_cos"] == pytest.approx(cos.max(), rel=1e-6)


def test_build_is_atomic_and_leaves_estimator(tmp_path):
    X, tokens, documents, _ = _planted_data(300)
    estimator = DBKSVDDictionaryLearning(
        4, n_nonzero_coefs=2, max_iter=2, random_state=0
    )
    estimator.fit(X)
    params = estimator.get_params()
    output = tmp_path / "site"
    with pytest.raises(ValueError, match="records for"):
        build_site(estimator, X, tokens[:-1], output)
    with pytest.raises(TypeError, match="structured array"):
        build_site(estimator, X, np.zeros(len(X)), output)
    assert not output.exists()
    build_site(estimator, X, tokens, output)
    (output / "index.html").write_text("old")
    with pytest.raises(FileExistsError, match="overwrite"):
        build_site(estimator, X, tokens, output)
    assert (output / "index.html").read_text() == "old"
    build_site(estimator, X, tokens, output, overwrite=True)
    assert (output / "index.html").read_text() != "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]  # no leftovers
    assert estimator.get_params() == params


def _tree(path):
    return {
        str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()
    }


def test_overwrite_replaces_only_a_dashboard(tmp_path):
    # A directory the dashboard did not write is never replaced, whatever
    # overwrite says: the user's files and the input survive.
    from sklearn_dbksvd.lm.dashboard import MARKER

    X, tokens, _, _ = _planted_data(200)
    estimator = DBKSVDDictionaryLearning(
        3, n_nonzero_coefs=1, max_iter=1, random_state=0
    ).fit(X)
    mine = tmp_path / "mine"
    (mine / "notes").mkdir(parents=True)
    (mine / "notes" / "a.txt").write_text("keep")
    np.save(mine / "X.npy", X)
    before = _tree(mine)
    # Even a marker file of other content does not make it a site.
    (mine / MARKER).write_text("mine")
    with pytest.raises(FileExistsError, match="not written by the dashboard"):
        build_site(estimator, X, tokens, mine, overwrite=True)
    (mine / MARKER).unlink()
    assert _tree(mine) == before
    a_file = tmp_path / "file.txt"
    a_file.write_text("keep")
    with pytest.raises(FileExistsError, match="never replaced"):
        build_site(estimator, X, tokens, a_file, overwrite=True)
    assert a_file.read_text() == "keep"
    link = tmp_path / "link"
    link.symlink_to(mine)
    with pytest.raises(FileExistsError, match="never replaced"):
        build_site(estimator, X, tokens, link, overwrite=True)
    assert _tree(mine) == before
    # An empty directory holds nothing to lose; a site of the dashboard is
    # replaced whole.
    empty = tmp_path / "empty"
    empty.mkdir()
    build_site(estimator, X, tokens, empty, overwrite=True)
    assert (empty / MARKER).is_file() and (empty / "index.html").is_file()
    (empty / "latents" / "stale.html").write_text("from an earlier build")
    build_site(estimator, X, tokens, empty, overwrite=True)
    assert not (empty / "latents" / "stale.html").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "empty", "file.txt", "link", "mine"
    ]


def test_site_is_replaced_only_after_a_complete_build(tmp_path, monkeypatch):
    # A build that fails while writing pages leaves the old site as it was.
    from sklearn_dbksvd.lm.dashboard import _site

    X, tokens, _, _ = _planted_data(200)
    estimator = DBKSVDDictionaryLearning(
        3, n_nonzero_coefs=1, max_iter=1, random_state=0
    ).fit(X)
    output = tmp_path / "site"
    build_site(estimator, X, tokens, output)
    before = _tree(output)

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(_site._render, "render_index", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        build_site(estimator, X, tokens, output, overwrite=True, title="new")
    assert _tree(output) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]


# ----------------------------------------------------------------------
# A real browser
# ----------------------------------------------------------------------
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed")


def _chromium(url, *flags):
    result = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--enable-logging=stderr",
            "--v=0",
            *flags,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    return result, console


def _screenshot(page, path):
    result, console = _chromium(
        page.as_uri(),
        f"--screenshot={path}",
        "--window-size=1100,1300",
        "--hide-scrollbars",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return console


def _not_blank(path):
    from PIL import Image

    pixels = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3)
    colours = len(np.unique(pixels, axis=0))
    inked = (pixels.min(axis=1) < 200).mean()
    return colours > 20 and inked > 0.005


@needs_chromium
def test_chromium_catches_errors(tmp_path):
    # The harness itself: a page with a script error is reported, a blank
    # page is blank.
    page = tmp_path / "bad.html"
    page.write_text("<html><body><script>notDefined();</script></body></html>")
    console = _screenshot(page, tmp_path / "bad.png")
    assert any("notDefined" in line for line in console)
    assert not _not_blank(tmp_path / "bad.png")


@needs_chromium
def test_chromium_renders_index_and_latent_page(planted_site, tmp_path):
    output, estimator, direction = planted_site
    latent, _ = _planted_latent(estimator, direction)
    for page in (output / "index.html", output / Latents(estimator).file(latent)):
        shot = tmp_path / f"{page.stem}.png"
        console = _screenshot(page, shot)
        assert console == [], console
        assert _not_blank(shot)
    # The index's script ran and filled the table with every latent.
    result, console = _chromium((output / "index.html").as_uri(), "--dump-dom")
    assert console == []
    assert 'data-rendered="24"' in result.stdout
    assert result.stdout.count('"num"><a href="latents/') == 24
    # Filtered and sorted from the URL's fragment, as the table's controls do.
    import json

    rows = json.loads((output / "latents.json").read_text())
    url = (output / "index.html").as_uri() + "#filter=%3C7%3E&sort=mean"
    result, console = _chromium(url, "--dump-dom")
    assert console == []
    wanted = [r for r in rows if "<7>" in r["top_tokens"]]
    assert 0 < len(wanted) < 24
    assert f'data-rendered="{len(wanted)}"' in result.stdout
    shown = re.findall(
        r'"num"><a href="latents/[^"]+\.html">([^<]+)<', result.stdout
    )
    by_mean = sorted(wanted, key=lambda r: (r["mean"], r["order"]))
    assert shown == [r["label"] for r in by_mean]


# ----------------------------------------------------------------------
# A planted language model, harvested, fitted, shown
# ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def planted_model(tmp_path_factory):
    """A tiny Llama whose layer 0 output gets a direction added at token w7.

    Its unembedding row of w9 is made to read that direction, so the atom
    that recovers it promotes w9.
    """
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    from sklearn_dbksvd.lm import harvest_activations, load_activations
    from sklearn_dbksvd.lm._model import output_tensor, replace_output

    from ._lm_models import random_texts, tiny_llama, tiny_tokenizer

    tokenizer, model = tiny_tokenizer(), tiny_llama()
    planted, read = tokenizer.convert_tokens_to_ids(["w7", "w9"])
    rng = np.random.RandomState(0)
    direction = rng.randn(32).astype(np.float32)
    direction /= np.linalg.norm(direction)
    added = torch.from_numpy(direction)
    with torch.no_grad():
        model.get_output_embeddings().weight[read] = 3 * added
    seen = {}

    def keep_ids(module, args, kwargs):
        seen["ids"] = kwargs["input_ids"]

    def plant(module, inputs, output):
        hidden = output_tensor(output)
        at_token = (seen["ids"] == planted).unsqueeze(-1).to(hidden.dtype)
        return replace_output(output, hidden + 4 * at_token * added)

    hooks = [
        model.register_forward_pre_hook(keep_ids, with_kwargs=True),
        model.model.layers[0].register_forward_hook(plant),
    ]
    acts = tmp_path_factory.mktemp("planted") / "acts"
    try:
        harvest_activations(
            model,
            tokenizer,
            random_texts(40, (20, 40), seed=1),
            layer=0,
            output=acts,
            context_size=32,
        )
    finally:
        for hook in hooks:
            hook.remove()
    estimator = DBKSVDDictionaryLearning(
        16, n_nonzero_coefs=2, max_iter=5, random_state=0
    ).fit(load_activations(acts))
    return model, tokenizer, acts, estimator, direction


def _logit_tokens(page, which):
    block = page.split(f"<h3>{which}</h3>")[1].split("</table>")[0]
    return [
        html.unescape(t)
        for t in re.findall(r'<td class="tok [a-z]+">([^<]*)</td>', block)
    ]


def test_planted_model_dashboard(planted_model, tmp_path):
    from sklearn_dbksvd.lm import build_dashboard

    model, tokenizer, acts, estimator, direction = planted_model
    latent, cos = _planted_latent(estimator, direction)
    assert cos > 0.9
    site = build_dashboard(
        estimator, acts, tmp_path / "site", model=model, tokenizer=tokenizer, n_top=8
    )
    page = _page(site, estimator, latent)
    assert _centre_tokens(page)[:8] == ["w7"] * 8
    # The BOS of each document is in the contexts, not harvested.
    assert 'class="t x" title="not harvested">&lt;s&gt;</span>' in page
    # Through the unembedding: the latent along the planted direction
    # promotes w9; its twin, the atom's other sign (direction -d), suppresses
    # it.
    assert _logit_tokens(page, "promoted")[0] == "w9"
    twin = _page(site, estimator, Latents(estimator).twin(latent))
    assert _logit_tokens(twin, "suppressed")[0] == "w9"
    assert "w7" not in _centre_tokens(twin)[:1]
    assert "LlamaRMSNorm" in page
    index = (site / "index.html").read_text(encoding="utf-8")
    assert "promotes" in index


def test_cli_dashboard(planted_model, tmp_path, capsys):
    from sklearn_dbksvd.cli import main
    from sklearn_dbksvd.cli._io import save_dictionary

    model, tokenizer, acts, estimator, direction = planted_model
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    save_dictionary(tmp_path / "dict.npz", estimator, force=True)
    site = tmp_path / "site"
    command = [
        "dashboard",
        str(tmp_path / "dict.npz"),
        str(acts),
        "-o",
        str(site),
        "-q",
    ]
    assert main([*command, "--model", str(model_dir), "--top", "5"]) == 0
    assert "index.html" in capsys.readouterr().out
    latent, _ = _planted_latent(estimator, direction)
    page = _page(site, estimator, latent)
    assert _centre_tokens(page)[:5] == ["w7"] * 5
    assert _logit_tokens(page, "promoted")[:1] == ["w9"]
    # Errors are one line, and leave the site alone.
    assert main(command) == 1
    assert "exists; pass --force" in capsys.readouterr().err
    assert (
        main(
            [
                "dashboard",
                str(tmp_path / "dict.npz"),
                str(tmp_path),
                "-o",
                str(tmp_path / "other"),
            ]
        )
        == 1
    )
    assert "not a harvest directory" in capsys.readouterr().err
    assert main([*command, "--force"]) == 0  # tokenizer: none cached, ids shown
    assert "#" in _page(site, estimator, latent)


def test_cli_force_never_replaces_the_harvest(planted_model, tmp_path, capsys):
    # --force replaces a site of the dashboard, never the input harvest or a
    # directory of the user's files.
    from sklearn_dbksvd.cli import main
    from sklearn_dbksvd.cli._io import save_dictionary

    _, _, acts, estimator, _ = planted_model
    save_dictionary(tmp_path / "dict.npz", estimator, force=True)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "paper.tex").write_text("keep")
    for target in (acts, mine):
        before = _tree(target)
        command = ["dashboard", str(tmp_path / "dict.npz"), str(acts), "-o",
                   str(target), "--force", "-q"]
        assert main(command) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert "not written by the dashboard" in err and "never replaced" in err
        assert _tree(target) == before


def test_provenance_refuses_another_layer(planted_model, tmp_path, capsys, monkeypatch):
    from sklearn_dbksvd.cli import _io, main
    from sklearn_dbksvd.lm import ProvenanceWarning, build_dashboard, read_manifest

    model, tokenizer, acts, estimator, _ = planted_model
    settings = read_manifest(acts)["settings"]
    assert settings["hook_name"] == "blocks.0.hook_resid_post"
    # Fitted on the harvest: the dictionary knows its layer, and a harvest of
    # another layer of the same model is refused.
    assert estimator.provenance_["hook_name"] == "blocks.0.hook_resid_post"
    from sklearn_dbksvd.lm import harvest_activations

    from ._lm_models import random_texts

    other = harvest_activations(
        model, tokenizer, random_texts(4, (10, 20), seed=3), layer=1,
        output=tmp_path / "layer1", context_size=32,
    )
    with pytest.raises(ValueError, match=r"fitted on blocks\.0.*blocks\.1"):
        build_dashboard(estimator, other, tmp_path / "site1")
    fitted = copy.copy(estimator)
    fitted.provenance_ = {
        "model_name": settings["model_name"],
        "module": "model.layers.1",
        "hook_name": "blocks.1.hook_resid_post",
        "layer": 1,
        "context_size": 32,
        "prepend_bos": True,
    }
    with pytest.raises(ValueError, match=r"fitted on blocks\.1.*harvest.*blocks\.0"):
        build_dashboard(fitted, acts, tmp_path / "site")
    assert not (tmp_path / "site").exists()
    with pytest.warns(ProvenanceWarning, match="fitted on blocks.1"):
        build_dashboard(fitted, acts, tmp_path / "site", allow_other_layer=True)
    assert (tmp_path / "site" / "index.html").is_file()
    # The same layer: no warning; another model name: a warning.
    same = copy.copy(estimator)
    same.provenance_ = dict(
        fitted.provenance_, module="model.layers.0", layer=0,
        hook_name="blocks.0.hook_resid_post",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_dashboard(same, acts, tmp_path / "site", overwrite=True)
    same.provenance_["model_name"] = "other-model"
    with pytest.warns(ProvenanceWarning, match="other-model"):
        build_dashboard(same, acts, tmp_path / "site", overwrite=True)
    # On the command line: one line, and a flag for a user who means it.
    monkeypatch.setattr(_io, "load_dictionary", lambda path: fitted)
    command = ["dashboard", "dict.npz", str(acts), "-o", str(tmp_path / "cli"), "-q"]
    assert main(command) == 1
    err = capsys.readouterr().err
    assert err.startswith("dbksvd dashboard: error: the dictionary was fitted on")
    assert err.count("\n") == 1 and "--allow-other-layer" in err
    assert main([*command, "--allow-other-layer"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("dbksvd dashboard: warning: the dictionary was fitted on")


@pytest.mark.parametrize("split_sign", [False, True])
def test_centred_estimator_latents(tmp_path, split_sign):
    # Codes as transform gives them (centred), one column per latent whether
    # or not the estimator splits signs itself.
    import json

    X, tokens, _, _ = _planted_data(400)
    X = X + 5  # far from centred
    estimator = DBKSVDDictionaryLearning(
        6,
        n_nonzero_coefs=2,
        max_iter=2,
        random_state=0,
        with_mean=True,
        split_sign=split_sign,
    ).fit(X)
    build_site(estimator, X, tokens, tmp_path / "site")
    rows = sorted(
        json.loads((tmp_path / "site" / "latents.json").read_text()),
        key=lambda r: r["latent"],
    )
    assert estimator.get_params()["sparse_output"] is False
    assert estimator.get_params()["split_sign"] is split_sign
    signed = copy.deepcopy(estimator).set_params(split_sign=False).transform(X)
    density = np.r_[(signed > 0).mean(0), (signed < 0).mean(0)]
    np.testing.assert_allclose([r["frequency"] for r in rows], density, rtol=1e-6)


def _two_sign_data(n_docs=40, doc_length=20, seed=0):
    """Tokens whose rows are +-5 d_2 (tokens 3 and 4) or +-1 d_j otherwise.

    With orthonormal atoms and one nonzero per row, matching pursuit codes
    token 3 with +5 on atom 2 and token 4 with -5: the planted truth.
    """
    rng = np.random.RandomState(seed)
    d = m = 8
    atoms = np.linalg.qr(rng.randn(d, d))[0].T.astype(np.float32)
    tokens = _token_table(n_docs * doc_length, doc_length, seed=seed)
    tokens["token_id"] %= 10
    n = len(tokens)
    codes = np.zeros((n, m), np.float32)
    others = rng.choice([0, 1, 4, 5, 6, 7], n)
    codes[np.arange(n), others] = rng.choice([-1.0, 1.0], n) * rng.uniform(0.5, 1, n)
    at_3, at_4 = tokens["token_id"] == 3, tokens["token_id"] == 4
    codes[at_3 | at_4] = 0
    codes[at_3, 2] = rng.uniform(4, 6, at_3.sum())
    codes[at_4, 2] = -rng.uniform(4, 6, at_4.sum())
    X = codes @ atoms + 0.01 * rng.randn(n, d).astype(np.float32)
    estimator = DBKSVDDictionaryLearning(m, n_nonzero_coefs=1, max_iter=1)
    estimator.fit(X)
    estimator.components_ = atoms
    return X, tokens, estimator, codes


def test_two_signs_of_an_atom_are_two_latents(tmp_path):
    from sklearn_dbksvd.lm.dashboard._site import stream_statistics

    X, tokens, estimator, truth = _two_sign_data()
    at_3, at_4 = tokens["token_id"] == 3, tokens["token_id"] == 4
    assert at_3.sum() > 20 and at_4.sum() > 20
    codes = estimator.transform(X)
    np.testing.assert_array_equal(codes != 0, truth != 0)  # the truth holds
    stats = stream_statistics(
        estimator, X, tokens, n_top=5, n_samples=8, window=2, chunk_size=37
    )
    # Latent 2 (2+) is token 3's, latent 8 + 2 (2-) token 4's, with their
    # activations |code| in their histograms, and nothing else.
    for latent, rows in ((2, at_3), (10, at_4)):
        assert stats.count_[latent] == rows.sum()
        counts, edges = stats.histogram(latent)
        values = np.abs(codes[rows, 2])
        assert edges[0] >= 0 and edges[-1] >= values.max()
        np.testing.assert_array_equal(counts, np.histogram(values, edges)[0])
        assert set(tokens["token_id"][stats.top_.fields["row"][latent]]) == {
            3 if latent == 2 else 4
        }
    # Every latent's uses are those of one sign of one atom.
    np.testing.assert_array_equal(
        stats.count_, np.r_[(codes > 0).sum(0), (codes < 0).sum(0)]
    )
    # The pages: 2+ shows token 3, 2- shows token 4, in the colours of their
    # signs, each on its own page.
    build_site(estimator, X, tokens, tmp_path / "site", decode=_decode, n_top=5)
    plus = (tmp_path / "site/latents/00002+.html").read_text(encoding="utf-8")
    minus = (tmp_path / "site/latents/00002-.html").read_text(encoding="utf-8")
    # Top and quantile examples alike.
    assert len(_centre_tokens(plus)) > 5
    assert set(_centre_tokens(plus)) == {"tok<3>"}
    assert set(_centre_tokens(minus)) == {"tok<4>"}
    assert "<h1>Latent 2+</h1>" in plus and "<h1>Latent 2\u2212</h1>" in minus
    assert 'class="hp"' in plus and 'class="hn"' not in plus
    assert 'class="hn"' in minus and 'class="hp"' not in minus
    assert 'href="00002-.html">latent 2\u2212</a>' in plus  # the other sign
    assert all(
        re.fullmatch(r"-?[0-9.e+-]+", v) and not v.startswith("-")
        for v in re.findall(r'<span class="v (?:pos|neg)">([^<]*)<', minus)
    )


def test_positive_code_dictionary_is_one_latent_per_atom(tmp_path):
    import json

    X, tokens, estimator, _ = _two_sign_data(10)
    estimator.set_params(positive_code=True)
    build_site(estimator, X, tokens, tmp_path / "site", decode=_decode)
    pages = sorted(p.name for p in (tmp_path / "site" / "latents").iterdir())
    assert pages == [f"{a:05d}.html" for a in range(8)]
    rows = json.loads((tmp_path / "site" / "latents.json").read_text())
    assert [r["label"] for r in rows] == [str(a) for a in range(8)]
    codes = estimator.transform(X)
    assert (codes >= 0).all()
    np.testing.assert_allclose(
        [r["frequency"] for r in rows], (codes != 0).mean(0), rtol=1e-6
    )
    # Nonnegative codes cannot reach -d: the nearest latent is by signed cos.
    estimator.components_[5] = -estimator.components_[1]
    estimator.components_[6] = estimator.components_[1] + 0.1
    build_site(estimator, X, tokens, tmp_path / "other", decode=_decode)
    rows = json.loads((tmp_path / "other" / "latents.json").read_text())
    assert rows[1]["nearest"] == 6 and rows[6]["nearest"] == 1
    assert rows[5]["max_cos"] < 1 - 1e-3


@pytest.mark.parametrize("chunk_size", [1, 5, 64])
def test_streamed_contexts_cross_chunk_boundaries(chunk_size):
    # Chunks of the streaming encode give the statistics of the whole codes.
    from sklearn_dbksvd.lm.dashboard._site import stream_statistics

    X, tokens, estimator, _ = _two_sign_data(6, 15)
    codes = estimator.transform(X)
    split = np.c_[np.maximum(codes, 0), np.maximum(-codes, 0)]
    whole = AtomStatistics(16, n_top=4, n_samples=3, window=WINDOW, random_state=0)
    whole.update(sp.csr_matrix(split), tokens, slice(0, len(X)), 0)
    streamed = stream_statistics(
        estimator, X, tokens, n_top=4, n_samples=3, window=WINDOW,
        chunk_size=chunk_size, random_state=0,
    )
    np.testing.assert_array_equal(streamed.count_, whole.count_)
    for name in ("value", "row", "tokens", "codes"):
        np.testing.assert_array_equal(
            streamed.top_.fields[name], whole.top_.fields[name]
        )
    for latent in range(16):
        for slot, row in enumerate(streamed.top_.fields["row"][latent]):
            if row < 0:
                continue
            ids, context = _expected_context(split, tokens, row, latent)
            np.testing.assert_array_equal(
                streamed.top_.fields["tokens"][latent, slot], ids
            )
            np.testing.assert_array_equal(
                streamed.top_.fields["codes"][latent, slot], context
            )


def test_contexts_filled_block_by_block(tmp_path, monkeypatch):
    from sklearn_dbksvd.lm.dashboard import _site

    X, tokens, documents, _ = _planted_data(300)
    estimator = DBKSVDDictionaryLearning(
        4, n_nonzero_coefs=2, max_iter=2, random_state=0
    ).fit(X)
    build_site(estimator, X, tokens, tmp_path / "one", documents=documents)
    monkeypatch.setattr(_site, "_FILL_BLOCK", 7)
    build_site(estimator, X, tokens, tmp_path / "many", documents=documents)
    for latent in range(8):
        pages = [_page(tmp_path / name, estimator, latent) for name in ("one", "many")]
        assert pages[0] == pages[1]
        assert 'title="not harvested">#99<' in pages[0]


def test_token_text_and_shading():
    assert _render.token_text(" a\n\t") == " a\u21b5\u21e5"
    assert _render.token_text(" a b", alone=True) == "\u2423a\u2423b"
    assert _render.token_text("") == "\u2205"
    assert _render.shade_class(float("nan"), 1.0) == "x"
    assert _render.shade_class(0.0, 1.0) == "z"
    assert _render.shade_class(0.01, 1.0) == "p1"
    assert _render.shade_class(-0.55, 1.0) == "n6"
    assert _render.shade_class(-2.0, 1.0) == "n10"


def test_unused_atom_pages(tmp_path):
    # A duplicated atom is never chosen by matching pursuit after its twin:
    # both its latents say so, and each is the nearest latent of the same
    # sign of its twin atom, at cos = 1.
    import json

    X, tokens, _, _ = _planted_data(300)
    estimator = DBKSVDDictionaryLearning(
        5, n_nonzero_coefs=2, max_iter=2, random_state=0
    ).fit(X)
    estimator.components_[4] = estimator.components_[0]
    build_site(estimator, X, tokens, tmp_path / "site")
    rows = {
        r["label"]: r
        for r in json.loads((tmp_path / "site" / "latents.json").read_text())
    }
    for sign, offset in (("+", 0), ("\u2212", 5)):
        row = rows[f"4{sign}"]
        assert row["count"] == 0 and row["frequency"] == 0
        assert row["nearest"] == 0 + offset
        assert rows[f"0{sign}"]["nearest"] == 4 + offset
        np.testing.assert_allclose(row["max_cos"], 1, rtol=1e-6)
    for name in ("00004+.html", "00004-.html"):
        page = (tmp_path / "site" / "latents" / name).read_text(encoding="utf-8")
        assert "Never used." in page and "a dead latent" in page
        assert "Examples by activation quantile" not in page


def test_matryoshka_dictionary_latents(tmp_path):
    # The nested dictionary is shown like any other: two latents per atom,
    # counted from the codes of its transform.
    import json

    from sklearn_dbksvd import MatryoshkaDBKSVD

    X, tokens, _, _ = _planted_data(400)
    estimator = MatryoshkaDBKSVD(
        8, group_sizes=[4, 4], n_nonzero_coefs=2, max_iter=2, random_state=0
    ).fit(X)
    build_site(estimator, X, tokens, tmp_path / "site")
    rows = sorted(
        json.loads((tmp_path / "site" / "latents.json").read_text()),
        key=lambda r: r["latent"],
    )
    assert len(list((tmp_path / "site" / "latents").iterdir())) == 16
    codes = estimator.transform(X)
    np.testing.assert_allclose(
        [r["frequency"] for r in rows],
        np.r_[(codes > 0).mean(0), (codes < 0).mean(0)],
        rtol=1e-6,
    )


def test_progress_lines_off_a_terminal(tmp_path, capsys, monkeypatch):
    from sklearn_dbksvd.lm import _progress

    monkeypatch.setattr(_progress, "LINE_SECONDS", 0.0)
    X, tokens, _, _ = _planted_data(200)
    estimator = DBKSVDDictionaryLearning(
        3, n_nonzero_coefs=1, max_iter=1, random_state=0
    ).fit(X)
    build_site(estimator, X, tokens, tmp_path / "site", chunk_size=64,
               progress="lines")
    lines = capsys.readouterr().err.splitlines()
    # One line per chunk of 64 rows, then the last.
    assert [line.split(",")[0] for line in lines] == [
        "dashboard: 64 of 200 rows",
        "dashboard: 128 of 200 rows",
        "dashboard: 192 of 200 rows",
        "dashboard: 200 of 200 rows",
        "dashboard: done: 200 of 200 rows encoded",
    ]
