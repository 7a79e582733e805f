"""The SAEBench adapter and ``dbksvd saebench``.

The adapter tests need only torch and run in the main run. The tests marked
``saebench`` run SAEBench's own evaluations and need ``sae-bench`` (in its own
virtualenv: its pins conflict with ours; ``.ci/run`` builds it with
``requirements/saebench-constraints.txt``); they skip without it.
"""

import copy

import numpy as np
import pytest

from sklearn_dbksvd import DBKSVDDictionaryLearning
from sklearn_dbksvd.interop import split_sign

torch = pytest.importorskip("torch")

from sklearn_dbksvd.interop import to_saebench  # noqa: E402

N_FEATURES, N_COMPONENTS, K = 16, 32, 3
HOOK = {"model_name": "tiny-model", "hook_name": "blocks.1.hook_resid_post"}


@pytest.fixture(scope="module")
def data():
    rng = np.random.RandomState(0)
    atoms = rng.randn(N_COMPONENTS, N_FEATURES)
    codes = rng.randn(400, N_COMPONENTS) * (rng.rand(400, N_COMPONENTS) < 0.1)
    # A large mean, as residual streams have: the decoder bias must carry it.
    X = codes @ atoms + 0.05 * rng.randn(400, N_FEATURES) + 2.0
    return X.astype(np.float32)


@pytest.fixture(scope="module", params=["signed", "positive", "nested"])
def fitted(request, data):
    params = dict(
        n_components=N_COMPONENTS,
        n_nonzero_coefs=K,
        max_steps=3,
        random_state=0,
        with_mean=True,
        positive_code=request.param == "positive",
    )
    if request.param == "nested":
        from sklearn_dbksvd import MatryoshkaDBKSVD

        return MatryoshkaDBKSVD(**params, transform_mode="nested").fit(data)
    return DBKSVDDictionaryLearning(**params).fit(data)


def _latents(model, X):
    """SAEBench's latents computed with NumPy: ``transform``, split in signs."""
    codes = model.transform(X)
    return codes if model.positive_code else split_sign(codes)


def _assert_bfloat16_rounding(actual, expected):
    # One rounding to bfloat16 (8 significant bits) of the float32 value.
    np.testing.assert_allclose(actual, expected, rtol=2**-8, atol=1e-6)


# ----------------------------------------------------------------------
# The adapter (torch only)
# ----------------------------------------------------------------------
def test_codes_after_a_bfloat16_cast_are_transform(fitted, data):
    sae = to_saebench(fitted, **HOOK).to("cpu", dtype=torch.bfloat16)
    assert sae.W_dec.dtype == torch.bfloat16 and sae.cfg.dtype == "bfloat16"
    # SAEBench feeds [batch, tokens, d_in] activations of the model's dtype.
    x = torch.from_numpy(data).to(torch.bfloat16).reshape(8, 50, N_FEATURES)
    # The bfloat16 input itself differs from X: compare on what it holds.
    x32 = x.float().reshape(-1, N_FEATURES).numpy()
    expected = _latents(fitted, x32)
    latents = sae.encode(x)
    assert latents.dtype == torch.bfloat16 and latents.shape == (8, 50, sae.cfg.d_sae)
    latents = latents.float().reshape(-1, sae.cfg.d_sae).numpy()
    assert (latents >= 0).all()
    np.testing.assert_array_equal(latents != 0, expected != 0)
    _assert_bfloat16_rounding(latents, expected)


def test_a_pursuit_on_rounded_weights_would_differ(fitted, data):
    # The oracle of the test above is not vacuous: the same module built
    # directly in bfloat16 (rounded weights) selects other atoms.
    from sklearn_dbksvd.interop import to_torch

    rounded = to_torch(
        fitted, dtype=torch.bfloat16, split_sign=not fitted.positive_code
    )
    latents = rounded.encode(torch.from_numpy(data)).float().numpy()
    assert ((latents != 0) != (_latents(fitted, data) != 0)).any()


def test_decode_of_encode_is_inverse_transform(fitted, data):
    sae = to_saebench(fitted, **HOOK)
    assert sae.W_dec.dtype == torch.float32
    reconstruction = sae(torch.from_numpy(data)).numpy()
    expected = fitted.inverse_transform(fitted.transform(data))
    np.testing.assert_allclose(reconstruction, expected, rtol=1e-5, atol=1e-5)
    half = sae.to("cpu", dtype=torch.bfloat16)
    reconstruction = half(torch.from_numpy(data)).float().numpy()
    # Codes rounded to bfloat16 (relative error 2**-9 each), decoded in
    # float32 and rounded once more: a few 2**-9 of each row's norm.
    error = np.linalg.norm(reconstruction - expected, axis=1)
    assert (error <= 2**-6 * np.linalg.norm(expected, axis=1)).all()


def test_weights_and_config(fitted):
    sae = to_saebench(fitted, **HOOK, context_size=128)
    m = N_COMPONENTS
    D = torch.from_numpy(fitted.components_)
    W_dec = D if fitted.positive_code else torch.cat([D, -D])
    d_sae = W_dec.shape[0]
    assert torch.equal(sae.W_dec, W_dec)
    assert torch.equal(sae.W_enc, W_dec.T)
    assert torch.equal(sae.b_enc, torch.zeros(d_sae))
    np.testing.assert_array_equal(sae.b_dec.numpy(), fitted.mean_)
    cfg = sae.cfg
    assert (cfg.d_in, cfg.d_sae) == (N_FEATURES, m if fitted.positive_code else 2 * m)
    assert (cfg.model_name, cfg.hook_name, cfg.hook_layer) == (
        "tiny-model", "blocks.1.hook_resid_post", 1
    )
    assert (cfg.context_size, cfg.prepend_bos) == (128, True)
    assert cfg.metadata.hook_name == cfg.hook_name
    assert cfg.metadata.context_size == 128
    assert cfg.architecture == "matching_pursuit"
    assert cfg.normalize_activations == "none"
    assert (cfg.dtype, cfg.device) == ("float32", "cpu")
    assert isinstance(cfg.to_dict()["metadata"], dict)
    # SAEBench's cast returns the module itself, as nn.Module.to does.
    assert sae.to(device="cpu", dtype=torch.bfloat16) is sae
    assert sae.dtype == torch.bfloat16


def test_fields_come_from_the_provenance(data):
    model = DBKSVDDictionaryLearning(
        n_components=N_COMPONENTS, n_nonzero_coefs=K, max_steps=1, random_state=0
    ).fit(data)
    with pytest.raises(ValueError, match="model_name is not known.*model_name="):
        to_saebench(model)
    with pytest.raises(ValueError, match="hook_name is not known"):
        to_saebench(model, model_name="m")
    model = copy.deepcopy(model)
    model.provenance_ = {
        "model_name": "smollm2",
        "model_fingerprint": None,
        "module": "model.layers.15",
        "hook_name": "blocks.15.hook_resid_post",
        "layer": 15,
        "context_size": 64,
        "prepend_bos": False,
        "dtype": "bfloat16",
        "harvest": {"path": "h", "fingerprint": "f", "n_rows": 400},
    }
    cfg = to_saebench(model).cfg
    assert (cfg.model_name, cfg.hook_name, cfg.hook_layer) == (
        "smollm2", "blocks.15.hook_resid_post", 15
    )
    assert (cfg.context_size, cfg.prepend_bos) == (64, False)
    # What the caller types wins, with a warning when it is another model
    # or layer than the dictionary's.
    with pytest.warns(UserWarning, match="hook_name='blocks.3.hook_resid_pre', but"):
        cfg = to_saebench(
            model, model_name="smollm2", hook_name="blocks.3.hook_resid_pre",
            context_size=32, prepend_bos=True,
        ).cfg
    with pytest.warns(UserWarning, match="model_name='other', but"):
        to_saebench(model, model_name="other")
    assert (cfg.model_name, cfg.hook_name, cfg.hook_layer) == (
        "smollm2", "blocks.3.hook_resid_pre", 3
    )
    assert (cfg.context_size, cfg.prepend_bos) == (32, True)
    with pytest.raises(ValueError, match="context_size must be a positive int"):
        to_saebench(model, context_size=0)
    with pytest.raises(TypeError, match="expected a fitted"):
        to_saebench(object(), **HOOK)


def test_command_without_saebench_names_the_install(tmp_path, capsys, monkeypatch):
    import sys

    from sklearn_dbksvd.cli import main
    from sklearn_dbksvd.persistence import save_dictionary

    model = DBKSVDDictionaryLearning(
        n_components=8, n_nonzero_coefs=2, max_steps=1, random_state=0
    ).fit(np.random.RandomState(0).randn(50, 4).astype(np.float32))
    path = tmp_path / "dict.npz"
    save_dictionary(model, path)
    # As where SAEBench is not installed, even when it is.
    monkeypatch.setitem(sys.modules, "sae_bench", None)
    argv = ["saebench", str(path), "--model", "gpt2", "-o", str(tmp_path / "out")]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "SAEBench is not importable" in err
    assert "requirements/saebench-constraints.txt sae-bench==0.6.0" in err
    assert not (tmp_path / "out").exists()
    # Options are checked before anything is loaded.
    assert main([*argv, "--set", "core"]) == 1
    assert "expected EVAL.FIELD=VALUE" in capsys.readouterr().err


# ----------------------------------------------------------------------
# SAEBench's own evaluations (the saebench virtualenv)
# ----------------------------------------------------------------------
# A tiny TransformerLens model built from a config, with a word-level
# tokenizer: 26 letters x 12 words, each word's embedding planted along a
# direction of its first letter (the feature absorption probes for), so
# that SAEBench's first-letter probes find it.
SYLLABLES = ["ba", "ko", "ri", "mu", "te", "lo", "ne", "si", "pa", "du", "ve", "go"]
D_MODEL, HOOK_NAME, TINY = 32, "blocks.1.hook_resid_post", "tiny-letters"


def _words():
    import string

    return [
        letter + SYLLABLES[i] + SYLLABLES[(5 * i + 3) % len(SYLLABLES)]
        for letter in string.ascii_lowercase
        for i in range(len(SYLLABLES))
    ]


def _tokenizer(words, directory):
    import string

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>", "<unk>"]
    pieces = ["\n", ":"] + ["▁" + w for w in ("has", "the", "first", "letter")]
    pieces += ["▁" + c for c in string.ascii_letters]
    # Words after a line break have no leading space.
    pieces += ["▁" + w for w in words] + list(words)
    vocab = {token: i for i, token in enumerate(specials + pieces)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split("\n", behavior="isolated"),
            pre_tokenizers.Punctuation(),
            pre_tokenizers.Metaspace(prepend_scheme="never"),
        ]
    )
    tokenizer.decoder = decoders.Metaspace(prepend_scheme="never")
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
    ).save_pretrained(directory)
    # TransformerLens reloads a tokenizer by its path (to add a BOS token).
    return AutoTokenizer.from_pretrained(directory)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("sae_bench")
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    words = _words()
    tokenizer = _tokenizer(words, tmp_path_factory.mktemp("tokenizer"))
    cfg = HookedTransformerConfig(
        model_name=TINY,
        n_layers=2,
        d_model=D_MODEL,
        d_head=8,
        n_heads=4,
        d_mlp=64,
        n_ctx=128,  # absorption's prompts: 10 examples of 7 tokens
        d_vocab=len(tokenizer.get_vocab()),
        act_fn="gelu",
        normalization_type="LN",
        seed=0,
        device="cpu",
    )
    model = HookedTransformer(cfg, tokenizer=tokenizer)
    rng = np.random.RandomState(0)
    letters = rng.randn(26, D_MODEL)
    letters /= np.linalg.norm(letters, axis=1, keepdims=True)
    vocab = tokenizer.get_vocab()
    with torch.no_grad():
        for word in words:
            for piece in ("▁" + word, word):
                row = 2 * letters[ord(word[0]) - ord("a")]
                row = row + 0.1 * rng.randn(D_MODEL)
                model.W_E[vocab[piece]] = torch.from_numpy(row).float()
        # Quieter blocks: the letter stays readable at layer 1.
        for block in model.blocks:
            block.attn.W_O.mul_(0.3)
            block.mlp.W_out.mul_(0.3)
    model.eval()
    texts = [" ".join(rng.choice(words, size=40)) for _ in range(200)]
    dataset = tmp_path_factory.mktemp("dataset")
    import json

    with open(dataset / "train.jsonl", "w", encoding="utf-8") as file:
        for text in texts:
            file.write(json.dumps({"text": text}) + "\n")
    _, cache = model.run_with_cache(texts[:40], names_filter=[HOOK_NAME])
    activations = cache[HOOK_NAME].reshape(-1, D_MODEL).numpy()
    return model, dataset, activations


@pytest.fixture(scope="module")
def dictionaries(tiny):
    _, _, X = tiny
    fitted = DBKSVDDictionaryLearning(
        n_components=64, n_nonzero_coefs=4, max_steps=10, random_state=0
    ).fit(X)
    fitted.provenance_ = {
        "model_name": TINY,
        "hook_name": HOOK_NAME,
        "layer": 1,
        "context_size": 32,
        "prepend_bos": True,
    }
    random = copy.deepcopy(fitted)
    atoms = np.random.RandomState(1).randn(*fitted.components_.shape)
    random.components_ = (
        atoms / np.linalg.norm(atoms, axis=1, keepdims=True)
    ).astype(np.float32)
    return fitted, random


def SAEBENCH(test):
    """Marks of the tests of SAEBench's evaluations.

    SAEBench, TransformerLens and datasets warn of their own deprecations
    (HookedTransformer's, among others), which this project's settings turn
    into errors.
    """
    for mark in (
        pytest.mark.filterwarnings("ignore::DeprecationWarning"),
        pytest.mark.filterwarnings("ignore::FutureWarning"),
        pytest.mark.saebench,
    ):
        test = mark(test)
    return test


CORE = {
    "context_size": 32,
    "n_eval_reconstruction_batches": 2,
    "n_eval_sparsity_variance_batches": 4,
    "eval_batch_size_prompts": 4,
}


@pytest.fixture
def encode_calls(monkeypatch):
    """Inputs and outputs of every ``encode`` SAEBench makes."""
    from sklearn_dbksvd.interop import MatchingPursuitEncoder

    calls = []
    original = MatchingPursuitEncoder.encode

    def encode(self, x):
        codes = original(self, x)
        # Copies: SAEBench may edit the activations in place afterwards.
        x = x.detach().float().reshape(-1, x.shape[-1]).clone()
        calls.append((x, codes.clone()))
        return codes

    monkeypatch.setattr(MatchingPursuitEncoder, "encode", encode)
    return calls


def _assert_codes_are_transform(calls, model):
    assert calls
    for x, codes in calls:
        expected = _latents(model, x.numpy())
        codes = codes.float().reshape(expected.shape).numpy()
        np.testing.assert_array_equal(codes != 0, expected != 0)
        _assert_bfloat16_rounding(codes, expected)


@SAEBENCH
def test_core_in_bfloat16_runs_our_codes_and_beats_a_random_dictionary(
    tiny, dictionaries, encode_calls, tmp_path
):
    from sklearn_dbksvd.interop.saebench import run_saebench

    model, dataset, _ = tiny
    fitted, random = dictionaries
    metrics = {}
    for label, estimator in (("fitted", fitted), ("random", random)):
        encode_calls.clear()
        results = run_saebench(
            estimator,
            model,
            tmp_path / label,
            evals=["core"],
            llm_dtype="bfloat16",
            options={"core": {**CORE, "dataset": str(dataset)}},
        )
        # SAEBench cast the SAE to bfloat16 and got our transform's codes.
        assert {codes.dtype for _, codes in encode_calls} == {torch.bfloat16}
        _assert_codes_are_transform(encode_calls, estimator)
        metrics[label] = results["core"]["eval_result_metrics"]
        written = tmp_path / label / "core" / "dbksvd_custom_sae_eval_results.json"
        assert written.is_file()
    # The model is given back as it came.
    assert model.cfg.dtype == torch.float32 and model.W_E.dtype == torch.float32
    for label in metrics:
        values = [
            value
            for category in metrics[label].values()
            for value in category.values()
        ]
        assert np.isfinite(values).all(), label
    ours, other = metrics["fitted"], metrics["random"]
    assert ours["sparsity"]["l0"] == pytest.approx(4, abs=0.1)
    assert ours["misc_metrics"]["frac_alive"] > 0
    for category, name in [
        ("reconstruction_quality", "explained_variance"),
        ("reconstruction_quality", "cossim"),
        ("model_behavior_preservation", "kl_div_score"),
    ]:
        assert ours[category][name] > other[category][name] + 0.1, name
    assert ours["reconstruction_quality"]["explained_variance"] > 0.6


@SAEBENCH
def test_absorption_runs_our_codes(tiny, dictionaries, encode_calls, tmp_path):
    from sklearn_dbksvd.interop.saebench import run_saebench

    model, _, _ = tiny
    fitted, _ = dictionaries
    options = {
        "absorption": {
            "min_feats_for_eval": 5,
            "k_sparse_probe_num_epochs": 10,
            "max_k_value": 3,
        }
    }
    results = run_saebench(
        fitted, model, tmp_path, evals=["absorption"], options=options
    )
    _assert_codes_are_transform(encode_calls, fitted)
    mean = results["absorption"]["eval_result_metrics"]["mean"]
    for name in ("mean_absorption_fraction_score", "mean_full_absorption_score"):
        assert 0 <= mean[name] <= 1
    assert mean["mean_num_split_features"] >= 1
    assert len(results["absorption"]["eval_result_details"]) >= 5
    # The probes were trained in the run's directory, which is gone.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["absorption"]


@SAEBENCH
def test_command(tiny, dictionaries, tmp_path, capsys, monkeypatch):
    from transformer_lens import HookedTransformer

    from sklearn_dbksvd.cli import main
    from sklearn_dbksvd.persistence import save_dictionary

    model, dataset, _ = tiny
    fitted, _ = dictionaries
    path = tmp_path / "dict.npz"
    save_dictionary(fitted, path)
    # TransformerLens' loader by name is the one thing that needs the network.
    loaded = []

    def from_pretrained_no_processing(name, **kwargs):
        loaded.append(name)
        if name != TINY:
            raise ValueError(f"{name} not found")
        return model

    monkeypatch.setattr(
        HookedTransformer,
        "from_pretrained_no_processing",
        staticmethod(from_pretrained_no_processing),
    )
    out = tmp_path / "results"
    argv = [
        "saebench", str(path), "--model", TINY, "--hook-name", HOOK_NAME,
        "--eval", "core", "-o", str(out), "--dataset", str(dataset),
        *(f"--set=core.{key}={value}" for key, value in CORE.items()),
    ]
    assert main(argv) == 0
    assert loaded == [TINY]
    printed = capsys.readouterr().out
    assert "core reconstruction_quality.explained_variance" in printed
    import json

    written = out / "core" / "dbksvd_custom_sae_eval_results.json"
    result = json.loads(written.read_text())
    assert result["sae_cfg_dict"]["hook_name"] == HOOK_NAME
    assert result["sae_cfg_dict"]["d_sae"] == 128
    # The results are not replaced without --force.
    assert main(argv) == 1
    assert "exists" in capsys.readouterr().err
    # SAEBench's core evaluation logs a failure and goes on: here it is an
    # error, in one line.
    bad = [*argv[:5], "blocks.7.hook_resid_post", *argv[6:], "--force"]
    assert main(bad) == 1
    # (SAEBench's progress bars and log lines come before it.)
    err = capsys.readouterr().err.strip().splitlines()
    assert [line for line in err if "dbksvd saebench" in line] == err[-1:]
    assert err[-1].startswith("dbksvd saebench: error: Failed to evaluate")
    assert "blocks.7.hook_resid_post" in err[-1]


@pytest.fixture
def local_ag_news(monkeypatch):
    """SAEBench's ``fancyzhx/ag_news`` replaced by local texts of 4 topics.

    Topic ``c`` is written with the words of 6 first letters of its own, so
    that the first-letter features of the tiny model tell the topics apart.
    """
    import datasets
    from sae_bench.sae_bench_utils import dataset_utils

    rng = np.random.RandomState(2)
    words = np.array(_words())
    initials = np.array([word[0] for word in words])

    def split(n):
        texts, labels = [], []
        for label in range(4):
            letters = list("abcdefghijklmnopqrstuvwx"[6 * label :][:6])
            group = words[np.isin(initials, letters)]
            for _ in range(n):
                texts.append(" ".join(rng.choice(group, size=20)))
                labels.append(label)
        return datasets.Dataset.from_dict({"text": texts, "label": labels})

    local = datasets.DatasetDict({"train": split(80), "test": split(40)})

    def load_dataset(name, *args, **kwargs):
        assert name == "fancyzhx/ag_news", name
        return local

    monkeypatch.setattr(dataset_utils, "load_dataset", load_dataset)


@SAEBENCH
def test_sparse_probing_runs_our_codes(
    tiny, dictionaries, encode_calls, local_ag_news, tmp_path
):
    from sklearn_dbksvd.interop.saebench import run_saebench

    model, _, _ = tiny
    fitted, random = dictionaries
    options = {
        "sparse_probing": {
            "dataset_names": ["fancyzhx/ag_news"],
            "probe_train_set_size": 120,
            "probe_test_set_size": 60,
            "context_length": 20,
            "k_values": [1, 2, 5],
            "llm_batch_size": 16,
            "sae_batch_size": 32,
        }
    }
    metrics = {}
    for label, estimator in (("fitted", fitted), ("random", random)):
        encode_calls.clear()
        results = run_saebench(
            estimator, model, tmp_path / label, evals=["sparse_probing"],
            options=options,
        )
        _assert_codes_are_transform(encode_calls, estimator)
        metrics[label] = results["sparse_probing"]["eval_result_metrics"]
    ours, other = metrics["fitted"]["sae"], metrics["random"]["sae"]
    # k above 5 is not asked for: SAEBench writes None.
    values = [value for value in ours.values() if value is not None]
    assert len(values) == 4 and np.isfinite(values).all()
    assert ours["sae_top_1_test_accuracy"] > other["sae_top_1_test_accuracy"]
    assert ours["sae_top_1_test_accuracy"] > 0.8


class _StubLLM:
    """SAEBench's OpenAI client, answering locally (no network, no key)."""

    requests = []

    def __init__(self, api_key=None, **kwargs):
        self.chat = self
        self.completions = self

    def create(self, *, messages, **kwargs):
        from types import SimpleNamespace

        prompt = messages[-1]["content"]
        _StubLLM.requests.append(prompt)
        # An explanation for the generation prompt, sequence numbers for the
        # scoring one ("which of these sequences activate the latent?").
        answer = (
            "1, 2"
            if prompt.startswith("Here is the explanation")
            else "This neuron activates on words."
        )
        message = SimpleNamespace(content=answer)
        return SimpleNamespace(choices=[SimpleNamespace(message=message)])


@SAEBENCH
def test_autointerp_runs_our_codes_with_a_local_llm(
    tiny, dictionaries, encode_calls, tmp_path, monkeypatch
):
    import json

    from sae_bench.evals.autointerp import main as autointerp

    from sklearn_dbksvd.interop.saebench import run_saebench

    model, _, _ = tiny
    fitted, _ = dictionaries
    # SAEBench reads 5 characters per token it needs: texts of words, each
    # followed by its initial twice (3.3 characters per token).
    rng = np.random.RandomState(3)
    dataset = tmp_path / "texts"
    dataset.mkdir()
    with open(dataset / "train.jsonl", "w", encoding="utf-8") as file:
        for _ in range(100):
            words = rng.choice(_words(), size=30)
            text = " ".join(f"{word} {word[0]} {word[0]}" for word in words)
            file.write(json.dumps({"text": text}) + "\n")
    monkeypatch.setattr(autointerp, "OpenAI", _StubLLM)
    _StubLLM.requests.clear()
    options = {
        "autointerp": {
            "dataset_name": str(dataset),
            "n_latents": 3,
            "total_tokens": 2000,
            "llm_context_size": 32,
            "llm_batch_size": 16,
            "dead_latent_threshold": 5,
        }
    }
    results = run_saebench(
        fitted, model, tmp_path / "out", evals=["autointerp"], options=options,
        api_key="local",
    )
    _assert_codes_are_transform(encode_calls, fitted)
    assert _StubLLM.requests
    metrics = results["autointerp"]["eval_result_metrics"]["autointerp"]
    assert 0 <= metrics["autointerp_score"] <= 1


@pytest.fixture
def local_bias_in_bios(monkeypatch):
    """SAEBench's ``LabHC/bias_in_bios`` replaced by local texts.

    A profession is written with the words of 3 first letters of its own, a
    gender with those of 3 others: two concepts the tiny model's first-letter
    features carry, one of which SCR makes spuriously correlated.
    """
    import datasets
    from sae_bench.evals.scr_and_tpp import dataset_creation
    from sae_bench.sae_bench_utils import dataset_utils

    rng = np.random.RandomState(4)
    words = np.array(_words())
    initials = np.array([word[0] for word in words])
    professions = [0, 1, 2, 6, 9, 13, 21]  # class set 1, nurse, professor
    letters = "abcdefghijklmnopqrstuvwxyz"

    def group(start):
        return words[np.isin(initials, list(letters[start : start + 3]))]

    def split(n):
        rows = {"hard_text": [], "profession": [], "gender": []}
        for p, profession in enumerate(professions):
            for gender in (0, 1):
                for _ in range(n):
                    # Professions: a-c, d-f, ..., s-u; genders: v-x, y-z.
                    text = np.concatenate(
                        [
                            rng.choice(group(3 * p), 10),
                            rng.choice(group(21 + 3 * gender), 6),
                        ]
                    )
                    rng.shuffle(text)
                    rows["hard_text"].append(" ".join(text))
                    rows["profession"].append(profession)
                    rows["gender"].append(gender)
        return datasets.Dataset.from_dict(rows)

    local = datasets.DatasetDict({"train": split(50), "test": split(25)})

    def load_dataset(name, *args, **kwargs):
        assert name == "LabHC/bias_in_bios", name
        return local

    monkeypatch.setattr(dataset_utils, "load_dataset", load_dataset)
    monkeypatch.setattr(dataset_creation, "load_dataset", load_dataset)


@SAEBENCH
def test_scr_and_tpp_run_our_codes(
    tiny, dictionaries, encode_calls, local_bias_in_bios, tmp_path
):
    from sklearn_dbksvd.interop.saebench import run_saebench

    model, _, _ = tiny
    fitted, _ = dictionaries
    settings = {
        "dataset_names": ["LabHC/bias_in_bios_class_set1"],
        "column1_vals_lookup": {
            "LabHC/bias_in_bios_class_set1": [("professor", "nurse")]
        },
        "train_set_size": 80,
        "test_set_size": 40,
        "context_length": 20,
        "probe_epochs": 3,
        "llm_batch_size": 16,
        "sae_batch_size": 32,
        "n_values": [2, 5],
    }
    results = run_saebench(
        fitted, model, tmp_path, evals=["scr", "tpp"],
        options={"scr": settings, "tpp": settings},
    )
    _assert_codes_are_transform(encode_calls, fitted)
    for item in ("scr", "tpp"):
        metrics = results[item]["eval_result_metrics"]
        values = [
            value
            for category in metrics.values()
            for value in category.values()
            if value is not None
        ]
        assert values and np.isfinite(values).all(), item
