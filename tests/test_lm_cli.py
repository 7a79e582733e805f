"""``dbksvd harvest``, ``fit`` on a harvest, and ``dbksvd evaluate``."""

import json

import numpy as np
import pytest

from sklearn_dbksvd.cli import main

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from sklearn_dbksvd.lm import load_activations, load_tokens  # noqa: E402

from ._lm_models import counting_texts, tiny_llama, tiny_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("model")
    tiny_llama().save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def text_files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("texts")
    paths = []
    for i in range(2):
        path = directory / f"part{i}.txt"
        path.write_text("\n\n".join(counting_texts(20, seed=i)) + "\n")
        paths.append(str(path))
    return paths


def test_harvest_fit_evaluate(tmp_path, model_dir, text_files, capsys):
    acts = tmp_path / "acts"
    command = ["harvest", str(model_dir), "--layer", "1", "--text", *text_files,
               "-o", str(acts), "--context-size", "32", "-q"]
    assert main(command) == 0
    out = capsys.readouterr().out
    X, tokens = load_activations(acts), load_tokens(acts)
    assert f"{len(X)} rows of 32 features" in out and "blocks.1.hook_resid_post" in out
    n_words = sum(len(open(p).read().split()) for p in text_files)
    assert len(tokens) == n_words
    # Same command again: the harvest is complete, nothing changes.
    before = X[:]
    assert main(command) == 0
    np.testing.assert_array_equal(load_activations(acts)[:], before)

    dictionary = tmp_path / "dict.npz"
    assert main(["fit", str(acts), "-m", "48", "-k", "3", "--epochs", "3",
                 "-o", str(dictionary), "-q"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(dictionary), "--model", str(model_dir),
                 "--layer", "1", "--text", text_files[0], "--context-size", "32",
                 "--json", "-q", "-o", str(tmp_path / "metrics.json")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "metrics.json").read_text())
    assert printed["config"]["hook_name"] == "blocks.1.hook_resid_post"
    assert 0 < printed["reconstruction_quality"]["explained_variance"] <= 1
    assert "feature_density" not in printed
    assert main(["evaluate", str(dictionary), "--model", str(model_dir),
                 "--layer", "1", "--text", text_files[0], "-q"]) == 0
    table = capsys.readouterr().out
    assert "CE loss score" in table and "KL div score" in table


def test_user_errors(tmp_path, model_dir, text_files, capsys):
    assert main(["harvest", str(tmp_path / "nope"), "--layer", "0", "--text",
                 *text_files, "-o", str(tmp_path / "a")]) == 1
    assert "cannot load the model" in capsys.readouterr().err
    assert main(["harvest", str(model_dir), "--layer", "5", "--text", *text_files,
                 "-o", str(tmp_path / "a")]) == 1
    assert "out of range" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["harvest", str(model_dir), "--text", *text_files, "-o", "x"])
