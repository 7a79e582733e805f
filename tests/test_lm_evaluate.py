"""SAEBench's core metrics of a dictionary spliced into a tiny trained model."""

import warnings

import numpy as np
import pytest
from sklearn.base import clone

from sklearn_dbksvd import DBKSVDDictionaryLearning

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from sklearn_dbksvd.lm import (  # noqa: E402
    evaluate_dictionary,
    format_metrics,
    harvest_activations,
    load_activations,
)

from ._lm_models import counting_texts, tiny_tokenizer, trained_llama  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return trained_llama(tokenizer)


def _identity_dictionary(d=32):
    """Orthonormal atoms and k = d: matching pursuit reproduces every row."""
    rng = np.random.RandomState(0)
    estimator = DBKSVDDictionaryLearning(n_components=d, n_nonzero_coefs=d)
    estimator.fit(rng.randn(50, d).astype(np.float32))
    estimator.components_ = np.eye(d, dtype=np.float32)
    return estimator


def _random_dictionary(d=32, m=64, k=3):
    rng = np.random.RandomState(1)
    estimator = DBKSVDDictionaryLearning(n_components=m, n_nonzero_coefs=k)
    estimator.fit(rng.randn(2 * m, d).astype(np.float32))
    atoms = rng.randn(m, d).astype(np.float32)
    estimator.components_ = atoms / np.linalg.norm(atoms, axis=1, keepdims=True)
    return estimator


TEXTS = counting_texts(10, (10, 40), seed=5)


def test_exact_dictionary_scores_one(model, tokenizer):
    results = evaluate_dictionary(
        _identity_dictionary(), model, tokenizer, TEXTS, layer=0, context_size=24,
        batch_size=4,
    )
    perf = results["model_performance_preservation"]
    # The trained model predicts far better than with its layer zeroed.
    assert perf["ce_loss_with_ablation"] > perf["ce_loss_without_sae"] + 1
    assert perf["ce_loss_score"] == pytest.approx(1, abs=1e-4)
    assert results["model_behavior_preservation"]["kl_div_score"] == pytest.approx(
        1, abs=1e-4
    )
    quality = results["reconstruction_quality"]
    assert quality["explained_variance"] == pytest.approx(1, abs=1e-5)
    assert quality["cossim"] == pytest.approx(1, abs=1e-5)


def test_random_dictionary_scores_between(model, tokenizer):
    results = evaluate_dictionary(
        _random_dictionary(), model, tokenizer, TEXTS, layer=1, context_size=24,
    )
    ce_score = results["model_performance_preservation"]["ce_loss_score"]
    kl_score = results["model_behavior_preservation"]["kl_div_score"]
    assert 0 < ce_score < 1 and 0 < kl_score < 1
    assert 0 < results["reconstruction_quality"]["explained_variance"] < 1
    assert results["sparsity"]["l0"] <= 3


def test_special_positions_never_changed(model, tokenizer):
    seen = []
    handle = model.model.layers[1].register_forward_pre_hook(
        lambda module, args: seen.append(args[0].detach().clone())
    )
    try:
        texts = ["w1 w2 w3 </s> w4 w5", "w9 w10"]
        evaluate_dictionary(
            _random_dictionary(), model, tokenizer, texts, layer=0, batch_size=2
        )
    finally:
        handle.remove()
    clean, spliced, ablated = seen  # one batch: three forward passes
    ids = torch.tensor(
        [[0] + tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts[:1]]
    )
    special = torch.isin(ids[0], torch.tensor([0, 1, 2, 3]))
    # Document 0: BOS and </s> unchanged; document 1: BOS and the padding.
    torch.testing.assert_close(spliced[0, special], clean[0, special], rtol=0, atol=0)
    torch.testing.assert_close(spliced[1, [0, 3, 4, 5, 6]], clean[1, [0, 3, 4, 5, 6]],
                               rtol=0, atol=0)
    assert (spliced[0, ~special] != clean[0, ~special]).any(dim=-1).all()
    assert (spliced[1, 1:3] != clean[1, 1:3]).any(dim=-1).all()
    # SAELens' zero ablation: every position.
    assert (ablated == 0).all()


def test_reconstruction_metrics_match_harvest(tmp_path, model, tokenizer):
    estimator = _random_dictionary()
    directory = harvest_activations(
        model, tokenizer, TEXTS, layer=1, context_size=24, output=tmp_path / "a"
    )
    X = load_activations(directory)[:].astype(np.float64)
    codes = estimator.transform(X.astype(np.float32))
    X_hat = codes @ estimator.components_.astype(np.float64)
    results = evaluate_dictionary(
        estimator, model, tokenizer, TEXTS, layer=1, context_size=24, batch_size=3,
    )
    quality = results["reconstruction_quality"]
    residual = ((X - X_hat) ** 2).sum(axis=1)
    variance = ((X - X.mean(axis=0)) ** 2).sum(axis=1).mean()
    assert results["token_stats"]["total_tokens_eval_sparsity_variance"] == len(X)
    assert quality["explained_variance"] == pytest.approx(
        1 - residual.mean() / variance, rel=1e-5
    )
    assert quality["mse"] == pytest.approx(residual.mean(), rel=1e-5)
    norms = np.linalg.norm(X, axis=1) * np.linalg.norm(X_hat, axis=1)
    cossim = (X * X_hat).sum(1) / norms
    assert quality["cossim"] == pytest.approx(cossim.mean(), rel=1e-5)
    assert results["sparsity"]["l0"] == pytest.approx((codes != 0).sum(1).mean())
    assert results["sparsity"]["l1"] == pytest.approx(np.abs(codes).sum(1).mean())
    # Density per latent: atom i's positive codes, then its negative codes,
    # as the split-sign codes of transform number them.
    split = _fitted_like(estimator, split_sign=True)
    split_codes = split.transform(X.astype(np.float32))
    assert split_codes.shape == (len(X), 128)
    density = (split_codes != 0).mean(axis=0)
    np.testing.assert_allclose(results["feature_density"], density)
    positive, negative = codes > 0, codes < 0
    np.testing.assert_allclose(
        results["feature_density"], np.r_[positive.mean(0), negative.mean(0)]
    )
    misc = results["misc_metrics"]
    assert misc["frac_dead"] == pytest.approx((density == 0).mean())
    assert misc["frac_alive"] == pytest.approx((density > 0).mean())
    assert misc["freq_over_1_percent"] == pytest.approx((density > 0.01).mean())
    assert misc["freq_over_10_percent"] == pytest.approx((density > 0.1).mean())
    assert results["config"]["n_latents"] == 128
    # The legacy explained variance is a per-token mean: it differs.
    assert quality["explained_variance_legacy"] != quality["explained_variance"]


def test_clean_loss_is_the_models_loss(model, tokenizer):
    text = TEXTS[0]
    ids = [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)[
        "input_ids"
    ]
    with torch.no_grad():
        expected = model(torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
    results = evaluate_dictionary(
        _identity_dictionary(), model, tokenizer, [text], layer=0,
        skip_special=False,
    )
    assert results["model_performance_preservation"][
        "ce_loss_without_sae"
    ] == pytest.approx(expected, rel=1e-5)
    assert results["token_stats"]["total_tokens_eval_reconstruction"] == len(ids) - 1


def test_table_names_and_max_tokens(model, tokenizer):
    results = evaluate_dictionary(
        _random_dictionary(), model, tokenizer, TEXTS, layer=1, batch_size=1,
        max_tokens=20,
    )
    # Whole batches: stops after the document that reaches 20 tokens.
    assert 20 <= results["token_stats"]["total_tokens_eval_sparsity_variance"] < 60
    table = format_metrics(results)
    for label in ("CE loss score", "KL div score", "Explained variance (legacy)",
                  "L0", "Fraction dead"):
        assert label in table
    with pytest.raises(ValueError, match="no token"):
        evaluate_dictionary(_random_dictionary(), model, tokenizer, [""], layer=1)


def test_any_module_with_a_named_submodule(tokenizer):
    from .test_lm_harvest import _PlainLM

    estimator = DBKSVDDictionaryLearning(n_components=8, n_nonzero_coefs=8)
    estimator.fit(np.random.RandomState(0).randn(20, 8).astype(np.float32))
    estimator.components_ = np.eye(8, dtype=np.float32)
    results = evaluate_dictionary(
        estimator, _PlainLM(), tokenizer, TEXTS[:3], module="block"
    )
    assert results["model_performance_preservation"]["ce_loss_score"] == (
        pytest.approx(1, abs=1e-4)
    )


def _fitted_like(estimator, **params):
    """A copy of ``estimator`` with other parameters and the same atoms."""
    other = clone(estimator).set_params(**params)
    other.__dict__.update(
        {key: value for key, value in vars(estimator).items() if key.endswith("_")}
    )
    return other


def test_split_sign_model_counts_the_same_latents(model, tokenizer):
    # An estimator that splits its codes itself: the same latents, the same
    # metrics (this used to fail with a broadcast error).
    signed = _random_dictionary()
    split = _fitted_like(signed, split_sign=True, sparse_output=True)
    results = [
        evaluate_dictionary(
            estimator, model, tokenizer, TEXTS[:4], layer=1, context_size=24
        )
        for estimator in (signed, split)
    ]
    np.testing.assert_array_equal(
        results[0]["feature_density"], results[1]["feature_density"]
    )
    for group in ("reconstruction_quality", "sparsity", "misc_metrics"):
        assert results[0][group] == pytest.approx(results[1][group])
    assert split.get_params()["split_sign"] is True  # left as it was


def test_positive_code_model_is_one_latent_per_atom(model, tokenizer):
    estimator = _fitted_like(_random_dictionary(), positive_code=True)
    results = evaluate_dictionary(
        estimator, model, tokenizer, TEXTS[:4], layer=1, context_size=24
    )
    assert results["config"]["n_latents"] == 64
    assert results["feature_density"].shape == (64,)


PROVENANCE = {
    "model_name": "tiny-llama",
    "model_fingerprint": None,
    "module": "model.layers.1",
    "hook_name": "blocks.1.hook_resid_post",
    "layer": 1,
    "context_size": 24,
    "prepend_bos": True,
    "dtype": "float32",
    "harvest": {"path": "acts", "fingerprint": "0" * 64, "n_rows": 100},
}


def test_provenance_fills_in_and_refuses_another_layer(model, tokenizer):
    from sklearn_dbksvd.lm import ProvenanceWarning

    estimator = _random_dictionary()
    with pytest.raises(ValueError, match="pass layer or module"):
        evaluate_dictionary(estimator, model, tokenizer, TEXTS[:2])
    from sklearn_dbksvd.lm._model import model_name

    estimator.provenance_ = dict(PROVENANCE, model_name=model_name(model))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing differs: no warning
        results = evaluate_dictionary(estimator, model, tokenizer, TEXTS[:2])
    config = results["config"]
    assert config["module"] == "model.layers.1"
    assert config["hook_name"] == "blocks.1.hook_resid_post"
    assert config["context_size"] == 24 and config["prepend_bos"] is True
    # The same layer counted from the end is the same layer.
    evaluate_dictionary(estimator, model, tokenizer, TEXTS[:2], layer=-1)
    with pytest.raises(ValueError, match=r"fitted on blocks\.1\.hook_resid_post.*"
                       r"uses blocks\.0\.hook_resid_post.*allow_other_layer"):
        evaluate_dictionary(estimator, model, tokenizer, TEXTS[:2], layer=0)
    with pytest.raises(ValueError, match="fitted on"):
        evaluate_dictionary(
            estimator, model, tokenizer, TEXTS[:2], module="model.layers.0"
        )
    with pytest.warns(ProvenanceWarning, match="fitted on blocks.1"):
        results = evaluate_dictionary(
            estimator, model, tokenizer, TEXTS[:2], layer=0, allow_other_layer=True
        )
    assert results["config"]["module"] == "model.layers.0"
    # Settings a user may mean: warned about, used.
    with pytest.warns(ProvenanceWarning, match="context_size=24.*16"):
        results = evaluate_dictionary(
            estimator, model, tokenizer, TEXTS[:2], context_size=16
        )
    assert results["config"]["context_size"] == 16
    with pytest.warns(ProvenanceWarning, match="prepend_bos"):
        evaluate_dictionary(estimator, model, tokenizer, TEXTS[:2], prepend_bos=False)
    estimator.provenance_ = dict(PROVENANCE, model_name="another-model")
    with pytest.warns(ProvenanceWarning, match="another-model"):
        evaluate_dictionary(estimator, model, tokenizer, TEXTS[:2])


def test_progress_lines_off_a_terminal(model, tokenizer, capsys, monkeypatch):
    from sklearn_dbksvd.lm import _progress

    monkeypatch.setattr(_progress, "LINE_SECONDS", 0.0)
    results = evaluate_dictionary(
        _random_dictionary(), model, tokenizer, TEXTS[:4], layer=1,
        context_size=24, batch_size=2, progress="lines",
    )
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    # One line per batch of two documents, then the last.
    stats = results["token_stats"]
    n_tokens, n_documents = (
        stats["total_tokens_eval_sparsity_variance"], stats["n_documents"]
    )
    assert len(lines) == -(-n_documents // 2) + 1
    assert all(line.startswith("evaluate: ") for line in lines)
    assert lines[-1].startswith(
        f"evaluate: done: {n_tokens} tokens, {n_documents} documents"
    )
    evaluate_dictionary(
        _random_dictionary(), model, tokenizer, TEXTS[:4], layer=1, progress=False
    )
    assert capsys.readouterr().err == ""


def test_cli_evaluate_reads_the_provenance(tmp_path, model, tokenizer, capsys):
    # The dictionary file carries the provenance: no --layer needed, another
    # layer refused in one line, and progress lines in a log.
    import json

    from sklearn_dbksvd.cli import main
    from sklearn_dbksvd.persistence import save_dictionary

    model_dir = tmp_path / "tiny"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    text = tmp_path / "text.txt"
    text.write_text("\n\n".join(TEXTS[:4]) + "\n")
    estimator = _random_dictionary()
    estimator.provenance_ = dict(PROVENANCE, model_name="tiny")
    save_dictionary(estimator, tmp_path / "dict.npz")
    command = ["evaluate", str(tmp_path / "dict.npz"), "--model", str(model_dir),
               "--text", str(text)]
    assert main([*command, "--json", "-q"]) == 0
    captured = capsys.readouterr()
    config = json.loads(captured.out)["config"]
    assert config["hook_name"] == "blocks.1.hook_resid_post"
    assert config["context_size"] == 24 and config["n_latents"] == 128
    ours = [line for line in captured.err.splitlines() if "evaluate" in line]
    assert ours == []  # -q: no progress; the settings are the fitted ones
    assert main([*command, "--layer", "0", "-q"]) == 1
    err = [
        line for line in capsys.readouterr().err.splitlines() if "evaluate" in line
    ]
    assert len(err) == 1 and "Traceback" not in err[0]
    assert err[0].startswith("dbksvd evaluate: error: the dictionary was fitted on")
    assert "--allow-other-layer" in err[0]
    # Not a terminal (captured): progress as lines on stderr, not a bar.
    assert main([*command, "--layer", "0", "--allow-other-layer",
                 "--context-size", "16"]) == 0
    err = [
        line for line in capsys.readouterr().err.splitlines() if "evaluate" in line
    ]
    assert err[0].startswith("dbksvd evaluate: warning: the dictionary was fitted on")
    assert "context_size=24" in err[1] and "16" in err[1]
    assert err[-1].startswith("evaluate: done: ")
    # -o --force replaces a metrics file of evaluate, never another file.
    metrics = tmp_path / "metrics.json"
    assert main([*command, "-q", "-o", str(metrics)]) == 0
    assert main([*command, "-q", "-o", str(metrics), "--force"]) == 0
    assert "config" in json.loads(metrics.read_text())
    capsys.readouterr()
    for other in (text, tmp_path / "dict.npz", model_dir / "config.json"):
        before = other.read_bytes()
        assert main([*command, "-q", "-o", str(other), "--force"]) == 1
        err = capsys.readouterr().err
        assert "not a metrics file written by 'dbksvd evaluate'" in err
        assert other.read_bytes() == before


class _ReluCoder:
    """Not a DB-KSVD estimator: nonnegative codes on the unit vectors."""

    components_ = np.eye(32, dtype=np.float32)

    def transform(self, X):
        return np.maximum(np.asarray(X, dtype=np.float32), 0)

    def inverse_transform(self, codes):
        return np.asarray(codes) @ self.components_


def test_any_transformer_counts_its_code_columns(tmp_path, model, tokenizer):
    # Its codes are its latents, as they are (an SAE's ReLU latents).
    results = evaluate_dictionary(
        _ReluCoder(), model, tokenizer, TEXTS, layer=1, context_size=24
    )
    X = load_activations(
        harvest_activations(
            model, tokenizer, TEXTS, layer=1, context_size=24, output=tmp_path / "a"
        )
    )[:]
    np.testing.assert_allclose(results["feature_density"], (X > 0).mean(0))
    assert results["sparsity"]["l0"] == pytest.approx((X > 0).sum(1).mean())
    assert results["config"]["n_latents"] == 32
