"""Provenance from a harvest through ``dbksvd fit`` into the files on disk."""

import json

import numpy as np
import pytest

from sklearn_dbksvd import load_dictionary
from sklearn_dbksvd.cli import main

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")
pytest.importorskip("safetensors")

from ._lm_models import counting_texts, tiny_llama, tiny_tokenizer  # noqa: E402


def test_harvest_provenance_reaches_the_dictionary_and_the_export(tmp_path, capsys):
    from sklearn_dbksvd.lm import load_activations

    model_dir = tmp_path / "model"
    tiny_llama().save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    text = tmp_path / "text.txt"
    text.write_text("\n\n".join(counting_texts(20)) + "\n")
    acts = tmp_path / "acts"
    argv = ["harvest", model_dir, "--layer", 1, "--text", text, "-o", acts]
    assert main([str(a) for a in [*argv, "--context-size", 32, "-q"]]) == 0
    expected = load_activations(acts).provenance
    assert expected["hook_name"] == "blocks.1.hook_resid_post"

    dictionary = tmp_path / "dict.npz"
    argv = ["fit", acts, "-m", 16, "-k", 2, "--steps", 2, "--checkpoint"]
    argv += [tmp_path / "ckpt", "-o", dictionary, "-q"]
    assert main([str(a) for a in argv]) == 0
    loaded = load_dictionary(dictionary)
    assert loaded.provenance_ == expected

    capsys.readouterr()
    assert main(["export", str(dictionary), "-o", str(tmp_path / "sae")]) == 0
    assert capsys.readouterr().err == ""
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    for config in (cfg, cfg["metadata"]):
        assert config["hook_name"] == "blocks.1.hook_resid_post"
        assert config["hook_layer"] == 1
        assert config["context_size"] == 32
        assert config["prepend_bos"] == expected["prepend_bos"]
        assert config["model_name"] == expected["model_name"]
    assert cfg["sklearn_dbksvd"]["provenance"] == expected
    # Typing another layer than the one fitted: written, with a warning.
    argv = ["export", dictionary, "-o", tmp_path / "sae0", "--hook-name"]
    assert main([str(a) for a in [*argv, "blocks.0.hook_resid_post"]]) == 0
    assert "fitted on the activations of hook_name='blocks.1.hook_resid_post'" in capsys.readouterr().err
    assert np.isfinite(loaded.components_).all()
