"""Harvesting the residual stream of tiny random language models."""

import hashlib
import json

import numpy as np
import pytest

from sklearn_dbksvd import DBKSVDDictionaryLearning
from sklearn_dbksvd._data import is_lazy_array

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from sklearn_dbksvd.lm import (  # noqa: E402
    harvest_activations,
    load_activations,
    load_documents,
    load_tokens,
    read_manifest,
)

from ._lm_models import (  # noqa: E402
    SPECIAL,
    random_texts,
    tiny_gpt2,
    tiny_llama,
    tiny_tokenizer,
)


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def _layer_output(model, ids, layer):
    """Hidden state after decoder layer ``layer``, by the model's own output."""
    with torch.no_grad():
        out = model(torch.tensor([ids]), output_hidden_states=True)
    return out.hidden_states[layer + 1][0].numpy()


@pytest.mark.parametrize("make_model", [tiny_llama, tiny_gpt2])
def test_row_is_hidden_state_of_rerun(tmp_path, tokenizer, make_model):
    model = make_model()
    texts = random_texts(10, (3, 45))
    directory = harvest_activations(
        model, tokenizer, texts, layer=0, output=tmp_path / "acts",
        context_size=16, batch_size=3, shard_rows=40,
    )
    X, tokens, documents = (
        load_activations(directory),
        load_tokens(directory),
        load_documents(directory),
    )
    manifest = read_manifest(directory)
    assert len(manifest["shards"]) > 1
    assert X.shape == (manifest["n_rows"], 32) == (len(tokens), 32)
    assert documents.shape == (manifest["n_documents"], 16)
    rng = np.random.RandomState(0)
    for i in rng.choice(len(tokens), 12, replace=False):
        document, position = tokens["document"][i], tokens["position"][i]
        context = documents[[document]][0]
        assert context[position] == tokens["token_id"][i]
        expected = _layer_output(model, context[context >= 0].tolist(), 0)[position]
        np.testing.assert_allclose(X[[i]][0], expected, rtol=1e-5, atol=1e-5)


def test_documents_and_special_positions(tmp_path, tokenizer):
    texts = random_texts(6, (20, 40))
    directory = harvest_activations(
        tiny_llama(), tokenizer, texts, layer=1, output=tmp_path / "acts",
        context_size=16,
    )
    tokens, documents = load_tokens(directory), load_documents(directory)[:]
    bos = tokenizer.bos_token_id
    # Every document starts with BOS; texts of 20-40 words make 2-3 pieces.
    assert (documents[:, 0] == bos).all()
    n_words = sum(len(text.split()) for text in texts)
    assert (documents >= 0).sum() - len(documents) == n_words
    # Exactly the non-special tokens are rows, each once, in order.
    special = [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL]
    expected = [
        (d, p)
        for d in range(len(documents))
        for p in range(16)
        if documents[d, p] >= 0 and documents[d, p] not in special
    ]
    assert list(zip(tokens["document"], tokens["position"], strict=True)) == expected
    assert not np.isin(tokens["token_id"], special).any()


def test_keep_special_and_no_bos(tmp_path, tokenizer):
    texts = ["w1 w2 </s> w3", "w4 w5"]
    kept = harvest_activations(
        tiny_llama(), tokenizer, texts, layer=0, output=tmp_path / "a",
        skip_special=False, prepend_bos=False,
    )
    tokens = load_tokens(kept)
    assert tokens["token_id"].tolist() == tokenizer(
        " ".join(texts), add_special_tokens=False
    )["input_ids"]
    skipped = harvest_activations(
        tiny_llama(), tokenizer, texts, layer=0, output=tmp_path / "b",
        prepend_bos=False,
    )
    assert len(load_tokens(skipped)) == 5


def test_max_tokens_and_bfloat16(tmp_path, tokenizer):
    model, texts = tiny_llama(), random_texts(20)
    full = harvest_activations(
        model, tokenizer, texts, layer=0, output=tmp_path / "f", max_tokens=77,
    )
    half = harvest_activations(
        model, tokenizer, texts, layer=0, output=tmp_path / "h", max_tokens=77,
        dtype="bfloat16",
    )
    X, Y = load_activations(full)[:], load_activations(half)[:]
    assert X.shape == Y.shape == (77, 32)
    assert Y.dtype == np.float32
    assert np.load(tmp_path / "h" / "acts-00000.npy").dtype == np.uint16
    # bfloat16 stores 7 mantissa bits: relative error at most 2**-8.
    np.testing.assert_allclose(Y, X, rtol=2**-8, atol=1e-30)
    assert not np.array_equal(X, Y)


def test_resume_after_interruption(tmp_path, tokenizer):
    model, texts = tiny_gpt2(), random_texts(16)
    reference = harvest_activations(
        model, tokenizer, texts, layer=1, output=tmp_path / "ref",
        batch_size=2, shard_rows=30,
    )

    def interrupted():
        for i, text in enumerate(texts):
            if i == 11:
                raise KeyboardInterrupt
            yield text

    with pytest.raises(KeyboardInterrupt):
        harvest_activations(
            model, tokenizer, interrupted(), layer=1, output=tmp_path / "run",
            batch_size=2, shard_rows=30,
        )
    stopped = read_manifest(tmp_path / "run")
    assert not stopped["complete"] and 0 < stopped["n_rows"]
    # Other texts in the same directory are refused, not mixed in.
    with pytest.raises(ValueError, match="other texts"):
        harvest_activations(
            model, tokenizer, random_texts(16, seed=1), layer=1,
            output=tmp_path / "run", batch_size=2, shard_rows=30,
        )
    assert read_manifest(tmp_path / "run") == stopped
    harvest_activations(
        model, tokenizer, texts, layer=1, output=tmp_path / "run",
        batch_size=2, shard_rows=30,
    )
    resumed = read_manifest(tmp_path / "run")
    assert resumed["complete"]
    assert resumed["n_rows"] == read_manifest(reference)["n_rows"]
    np.testing.assert_array_equal(
        load_activations(tmp_path / "run")[:], load_activations(reference)[:]
    )
    np.testing.assert_array_equal(load_tokens(tmp_path / "run"), load_tokens(reference))


def test_bad_settings(tmp_path, tokenizer):
    model = tiny_llama()
    harvest_activations(model, tokenizer, ["w1 w2"], layer=0, output=tmp_path / "a")
    with pytest.raises(ValueError, match="other settings .*context_size"):
        harvest_activations(
            model, tokenizer, ["w1 w2"], layer=0, output=tmp_path / "a",
            context_size=8,
        )
    harvest_activations(
        model, tokenizer, ["w1 w2"], layer=0, output=tmp_path / "a",
        context_size=8, overwrite=True,
    )
    assert read_manifest(tmp_path / "a")["settings"]["context_size"] == 8
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="without harvest.json"):
        harvest_activations(
            model, tokenizer, ["w1"], layer=0, output=tmp_path / "other",
            overwrite=True,
        )
    assert (tmp_path / "other" / "notes.txt").exists()
    with pytest.raises(ValueError, match="out of range"):
        harvest_activations(model, tokenizer, ["w1"], layer=2, output=tmp_path / "b")
    with pytest.raises(ValueError, match="exactly one"):
        harvest_activations(model, tokenizer, ["w1"], output=tmp_path / "b")
    with pytest.raises(ValueError, match="no submodule"):
        harvest_activations(
            model, tokenizer, ["w1"], module="model.nope", output=tmp_path / "b"
        )
    with pytest.raises(ValueError, match="dtype"):
        harvest_activations(
            model, tokenizer, ["w1"], layer=0, output=tmp_path / "b", dtype="float16"
        )
    with pytest.raises(TypeError, match="strings"):
        harvest_activations(model, tokenizer, [b"w1"], layer=0, output=tmp_path / "b")


def test_module_by_name_is_layer(tmp_path, tokenizer):
    model, texts = tiny_llama(), random_texts(4)
    by_layer = harvest_activations(
        model, tokenizer, texts, layer=-1, output=tmp_path / "a"
    )
    by_name = harvest_activations(
        model, tokenizer, texts, module="model.layers.1", output=tmp_path / "b"
    )
    np.testing.assert_array_equal(
        load_activations(by_layer)[:], load_activations(by_name)[:]
    )
    settings = read_manifest(by_layer)["settings"]
    assert settings["hook_name"] == "blocks.1.hook_resid_post"
    assert settings["layer"] == 1


def test_forward_stops_after_the_layer(tmp_path, tokenizer):
    model = tiny_llama()
    calls = []
    model.model.layers[1].register_forward_hook(lambda *a: calls.append(1))
    model.lm_head.register_forward_hook(lambda *a: calls.append(2))
    harvest_activations(model, tokenizer, ["w1 w2"], layer=0, output=tmp_path / "a")
    assert calls == []


def _planted_model(direction, token_id, scale):
    """Tiny Llama whose layer-1 output gets ``scale * direction`` on one token."""
    model = tiny_llama(seed=3)
    seen = {}

    def remember_ids(module, args, kwargs):
        seen["ids"] = kwargs["input_ids"]

    def plant(module, inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        on = (seen["ids"] == token_id).unsqueeze(-1).to(hidden.dtype)
        hidden = hidden + scale * on * torch.as_tensor(direction, dtype=hidden.dtype)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    model.register_forward_pre_hook(remember_ids, with_kwargs=True)
    model.model.layers[1].register_forward_hook(plant)
    return model


def test_planted_direction_is_recovered(tmp_path, tokenizer):
    rng = np.random.RandomState(0)
    direction = rng.randn(32)
    direction /= np.linalg.norm(direction)
    token_id = tokenizer.convert_tokens_to_ids("w7")
    # About 8x the norm of the other rows: a strong feature, not the whole signal.
    model = _planted_model(direction, token_id, scale=1.0)
    directory = harvest_activations(
        model, tokenizer, random_texts(60, (20, 60), seed=2), layer=1,
        output=tmp_path / "acts", context_size=32,
    )
    X = load_activations(directory)
    assert is_lazy_array(X)
    tokens = load_tokens(directory)
    estimator = DBKSVDDictionaryLearning(
        n_components=32, n_nonzero_coefs=3, max_iter=15, random_state=0
    ).fit(X)
    cosines = estimator.components_ @ direction
    atom = int(np.argmax(np.abs(cosines)))
    assert abs(cosines[atom]) > 0.95
    codes = np.abs(estimator.transform(X[:])[:, atom])
    mean_by_token = {
        t: codes[tokens["token_id"] == t].mean() for t in np.unique(tokens["token_id"])
    }
    assert max(mean_by_token, key=mean_by_token.get) == token_id


def test_manifest_is_plain_json(tmp_path, tokenizer):
    directory = harvest_activations(
        tiny_llama(), tokenizer, ["w1 w2 w3"], layer=0, output=tmp_path / "a"
    )
    manifest = json.loads((directory / "harvest.json").read_text())
    assert manifest["format"] == 1
    names = {
        "acts": "acts-00000.npy",
        "tokens": "tokens-00000.npy",
        "documents": "documents-00000.npy",
    }
    # Each file's digest is that of its bytes on disk (as sha256sum prints).
    digests = {
        kind: hashlib.sha256((directory / name).read_bytes()).hexdigest()
        for kind, name in names.items()
    }
    assert manifest["shards"][0] == {
        **names, "n_rows": 3, "n_documents": 1, "sha256": digests
    }


class _PlainLM(torch.nn.Module):
    """Not a Hugging Face model: embedding, one named block, unembedding."""

    def __init__(self, vocab_size=64, d=8):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(vocab_size, d)
        self.block = torch.nn.Linear(d, d)
        self.unembed = torch.nn.Linear(d, vocab_size)

    def forward(self, input_ids, attention_mask=None):
        return self.unembed(torch.tanh(self.block(self.embed(input_ids))))


def test_any_module_with_a_named_submodule(tmp_path, tokenizer):
    model = _PlainLM()
    texts = random_texts(3)
    directory = harvest_activations(
        model, tokenizer, texts, module="block", output=tmp_path / "a"
    )
    X, tokens = load_activations(directory), load_tokens(directory)
    with torch.no_grad():
        expected = model.block(model.embed(torch.from_numpy(tokens["token_id"]).long()))
    np.testing.assert_allclose(X[:], expected.numpy(), rtol=1e-6, atol=1e-6)
    assert read_manifest(directory)["settings"]["hook_name"] == "block"


def test_progress_lines_off_a_terminal(tmp_path, tokenizer, capsys, monkeypatch):
    from sklearn_dbksvd.lm import _progress

    monkeypatch.setattr(_progress, "LINE_SECONDS", 0.0)
    model, texts = tiny_llama(), random_texts(6)
    directory = harvest_activations(
        model, tokenizer, texts, layer=0, output=tmp_path / "h", max_tokens=40,
        progress="lines",
    )
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert captured.out == "" and len(lines) >= 2
    assert all(line.startswith("harvest: ") for line in lines)
    n_rows = load_activations(directory).shape[0]
    assert lines[-1].startswith(f"harvest: done: {n_rows} of 40 tokens")
    # A resumed harvest counts from the rows it already has.
    harvest_activations(
        model, tokenizer, texts, layer=0, output=tmp_path / "h", max_tokens=60,
        progress="lines",
    )
    last = capsys.readouterr().err.splitlines()[-1]
    n_rows = load_activations(directory).shape[0]
    assert last.startswith(f"harvest: done: {n_rows} of 60")
