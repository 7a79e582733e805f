"""The dashboard of a dictionary: streaming statistics, the site, a browser."""

import html
import re
import shutil
import subprocess

import numpy as np
import pytest
import scipy.sparse as sp

from sklearn_dbksvd import DBKSVDDictionaryLearning
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


def test_planted_atom_page_lists_the_token_first(planted_site):
    output, estimator, direction = planted_site
    cos = estimator.components_ @ direction
    atom = int(np.argmax(np.abs(cos)))
    assert abs(cos[atom]) > 0.8  # the atom also holds the embedding of the token
    page = (output / _render.atom_file(atom)).read_text(encoding="utf-8")
    centres = _centre_tokens(page)
    assert centres[0] == f"tok<{PLANTED}>"
    # Its strongest uses are all at the planted token; BOS filled from the
    # documents, shown as not harvested.
    assert centres[:10] == [f"tok<{PLANTED}>"] * 10
    assert 'class="t x" title="not harvested">tok&lt;99&gt;' in page
    # Other atoms do not list it first.
    others = [
        _centre_tokens((output / _render.atom_file(a)).read_text(encoding="utf-8"))
        for a in range(12)
        if a != atom
    ]
    assert all(c[:1] != [f"tok<{PLANTED}>"] for c in others)


def test_site_files_and_links(planted_site):
    output, estimator, _ = planted_site
    assert (output / "index.html").is_file()
    assert sorted(p.name for p in (output / "atoms").iterdir()) == [
        f"{a:05d}.html" for a in range(12)
    ]
    for page in [output / "index.html", *sorted((output / "atoms").iterdir())]:
        text = page.read_text(encoding="utf-8")
        assert "http://" not in text and "https://" not in text  # nothing remote
        for link in re.findall(r'(?:href|src)="([^"#]+)"', text):
            assert (page.parent / link).is_file(), (page, link)
    # Index data: frequencies and mean |code| of the dictionary's codes.
    import json

    rows = json.loads((output / "atoms.json").read_text())
    X, *_ = _planted_data()
    codes = estimator.set_params(sparse_output=False).transform(X)
    np.testing.assert_allclose(
        [r["frequency"] for r in rows], (codes != 0).mean(0), rtol=1e-6
    )
    used = np.maximum((codes != 0).sum(0), 1)
    np.testing.assert_allclose(
        [r["mean_abs"] for r in rows], np.abs(codes).sum(0) / used, rtol=1e-4
    )


def test_build_is_atomic_and_leaves_estimator(tmp_path):
    X, tokens, documents, _ = _planted_data(300)
    estimator = DBKSVDDictionaryLearning(
        4, n_nonzero_coefs=2, max_iter=2, random_state=0
    )
    estimator.fit(X)
    params = estimator.get_params()
    output = tmp_path / "site"
    output.mkdir()
    (output / "keep.txt").write_text("old")
    with pytest.raises(FileExistsError, match="overwrite"):
        build_site(estimator, X, tokens, output)
    assert (output / "keep.txt").read_text() == "old"
    with pytest.raises(ValueError, match="records for"):
        build_site(estimator, X, tokens[:-1], output, overwrite=True)
    with pytest.raises(TypeError, match="structured array"):
        build_site(estimator, X, np.zeros(len(X)), output, overwrite=True)
    assert (output / "keep.txt").read_text() == "old"
    build_site(estimator, X, tokens, output, overwrite=True)
    assert not (output / "keep.txt").exists() and (output / "index.html").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]  # no leftovers
    assert estimator.get_params() == params


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
def test_chromium_renders_index_and_atom_page(planted_site, tmp_path):
    output, estimator, direction = planted_site
    atom = int(np.argmax(np.abs(estimator.components_ @ direction)))
    for page in (output / "index.html", output / _render.atom_file(atom)):
        shot = tmp_path / f"{page.stem}.png"
        console = _screenshot(page, shot)
        assert console == [], console
        assert _not_blank(shot)
    # The index's script ran and filled the table with every atom.
    result, console = _chromium((output / "index.html").as_uri(), "--dump-dom")
    assert console == []
    assert 'data-rendered="12"' in result.stdout
    assert result.stdout.count('"num"><a href="atoms/') == 12
    # Filtered and sorted from the URL's fragment, as the table's controls do.
    import json

    rows = json.loads((output / "atoms.json").read_text())
    url = (output / "index.html").as_uri() + "#filter=%3C7%3E&sort=mean_abs"
    result, console = _chromium(url, "--dump-dom")
    assert console == []
    wanted = [r["atom"] for r in rows if "<7>" in r["top_tokens"]]
    assert 0 < len(wanted) < 12
    assert f'data-rendered="{len(wanted)}"' in result.stdout
    shown = [
        int(a)
        for a in re.findall(r'"num"><a href="atoms/\d+\.html">(\d+)<', result.stdout)
    ]
    by_mean = sorted(wanted, key=lambda a: (rows[a]["mean_abs"], a))
    assert shown == by_mean


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
    cos = estimator.components_ @ direction
    atom = int(np.argmax(np.abs(cos)))
    assert abs(cos[atom]) > 0.9
    site = build_dashboard(
        estimator, acts, tmp_path / "site", model=model, tokenizer=tokenizer, n_top=8
    )
    page = (site / _render.atom_file(atom)).read_text(encoding="utf-8")
    assert _centre_tokens(page)[:8] == ["w7"] * 8
    # The BOS of each document is in the contexts, not harvested.
    assert 'class="t x" title="not harvested">&lt;s&gt;</span>' in page
    # Through the unembedding: the atom (or its negative) reads w9.
    listed = "promoted" if cos[atom] > 0 else "suppressed"
    assert _logit_tokens(page, listed)[0] == "w9"
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
    atom = int(np.argmax(np.abs(estimator.components_ @ direction)))
    page = (site / _render.atom_file(atom)).read_text(encoding="utf-8")
    assert _centre_tokens(page)[:5] == ["w7"] * 5
    assert (
        "w9"
        in _logit_tokens(page, "promoted")[:1] + _logit_tokens(page, "suppressed")[:1]
    )
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
    assert "#" in (site / _render.atom_file(atom)).read_text(encoding="utf-8")


def test_centred_split_sign_estimator(tmp_path):
    # Codes as transform gives them (centred), one column per atom even when
    # the estimator splits signs.
    import json

    X, tokens, _, _ = _planted_data(400)
    X = X + 5  # far from centred
    estimator = DBKSVDDictionaryLearning(
        6,
        n_nonzero_coefs=2,
        max_iter=2,
        random_state=0,
        with_mean=True,
        split_sign=True,
    ).fit(X)
    build_site(estimator, X, tokens, tmp_path / "site")
    rows = json.loads((tmp_path / "site" / "atoms.json").read_text())
    signed = estimator.set_params(split_sign=False).transform(X)
    np.testing.assert_allclose(
        [r["frequency"] for r in rows], (signed != 0).mean(0), rtol=1e-6
    )
    assert estimator.get_params()["sparse_output"] is False


def test_contexts_filled_block_by_block(tmp_path, monkeypatch):
    from sklearn_dbksvd.lm.dashboard import _site

    X, tokens, documents, _ = _planted_data(300)
    estimator = DBKSVDDictionaryLearning(
        4, n_nonzero_coefs=2, max_iter=2, random_state=0
    ).fit(X)
    build_site(estimator, X, tokens, tmp_path / "one", documents=documents)
    monkeypatch.setattr(_site, "_FILL_BLOCK", 7)
    build_site(estimator, X, tokens, tmp_path / "many", documents=documents)
    for atom in range(4):
        pages = [
            (tmp_path / name / _render.atom_file(atom)).read_text(encoding="utf-8")
            for name in ("one", "many")
        ]
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


def test_unused_atom_page(tmp_path):
    # A duplicated atom is never chosen by matching pursuit after its twin:
    # its page says so, and it is its twin's nearest atom at |cos| = 1.
    import json

    X, tokens, _, _ = _planted_data(300)
    estimator = DBKSVDDictionaryLearning(
        5, n_nonzero_coefs=2, max_iter=2, random_state=0
    ).fit(X)
    estimator.components_[4] = estimator.components_[0]
    build_site(estimator, X, tokens, tmp_path / "site")
    rows = json.loads((tmp_path / "site" / "atoms.json").read_text())
    assert rows[4]["count"] == 0 and rows[4]["frequency"] == 0
    assert rows[4]["nearest"] == 0 and rows[0]["nearest"] == 4
    np.testing.assert_allclose(rows[4]["max_abs_cos"], 1, rtol=1e-6)
    page = (tmp_path / "site" / _render.atom_file(4)).read_text(encoding="utf-8")
    assert "Never used." in page and "a dead atom" in page
    assert "Examples by activation quantile" not in page
