"""SAELens directories, the PyTorch matching-pursuit encoder and split sign.

safetensors and torch (both in the ``tests`` extra) are needed by the
directory and encoder tests; each test skips cleanly without what it needs.
The tests marked ``saelens`` run only where ``sae-lens`` is installed (it is
in no extra: about 70 packages, 1.9 GB and 5 minutes to install); ``.ci/run``
runs them in a virtualenv of their own.
"""

import copy
import json
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import make_pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

import sklearn_dbksvd
from sklearn_dbksvd import DBKSVDDictionaryLearning
from sklearn_dbksvd.interop import (
    SplitSign,
    load_sae,
    save_sae,
    split_sign,
)
from sklearn_dbksvd.interop.saelens import CONFIG_KEY

# Developed alongside; its tests skip where this version lacks it.
MatryoshkaDBKSVD = getattr(sklearn_dbksvd, "MatryoshkaDBKSVD", None)
CLASSES = {"dbksvd": DBKSVDDictionaryLearning, "matryoshka": MatryoshkaDBKSVD}

HOOK = {"hook_name": "blocks.3.hook_resid_post", "model_name": "pythia-70m-deduped"}
N_FEATURES, N_COMPONENTS, K = 12, 24, 3


def _needs_safetensors():
    return pytest.importorskip("safetensors.numpy")


def _needs_torch():
    return pytest.importorskip("torch")


@pytest.fixture(scope="module")
def data():
    rng = np.random.RandomState(0)
    # Sparse combinations of a few directions plus noise: codes then have
    # clear winners, as on real embeddings.
    atoms = rng.randn(N_COMPONENTS, N_FEATURES)
    codes = rng.randn(300, N_COMPONENTS) * (rng.rand(300, N_COMPONENTS) < 0.1)
    return codes @ atoms + 0.05 * rng.randn(300, N_FEATURES)


@pytest.fixture(scope="module")
def fitted(data):
    """One fit per (class, dtype); transform settings vary on copies."""
    models = {}
    for name, cls in CLASSES.items():
        if cls is None:
            continue
        for dtype in (np.float64, np.float32):
            model = cls(
                n_components=N_COMPONENTS,
                n_nonzero_coefs=K,
                max_steps=2,
                random_state=0,
            )
            models[name, np.dtype(dtype).name] = model.fit(data.astype(dtype))
    return models


# Transform settings the encoder must reproduce: (class, parameters).
VARIANTS = {
    "default": ("dbksvd", {}),
    "positive": ("dbksvd", {"positive_code": True}),
    "tol": ("dbksvd", {"mp_tol": 0.4}),
    "refit": ("dbksvd", {"mp_refit": True}),
    "k5": ("dbksvd", {"transform_n_nonzero_coefs": 5}),
    "matryoshka-full": ("matryoshka", {}),
    "matryoshka-nested": ("matryoshka", {"transform_mode": "nested"}),
    "matryoshka-nested-tol": (
        "matryoshka",
        {"transform_mode": "nested", "mp_tol": 0.4},
    ),
    "matryoshka-nested-positive": (
        "matryoshka",
        {"transform_mode": "nested", "positive_code": True},
    ),
}


def _needs_matryoshka():
    if MatryoshkaDBKSVD is None:
        pytest.skip("this version has no MatryoshkaDBKSVD")


def _variant(fitted, variant, dtype):
    name, params = VARIANTS[variant]
    if CLASSES[name] is None:
        _needs_matryoshka()
    return copy.deepcopy(fitted[name, dtype]).set_params(**params)


# ----------------------------------------------------------------------
# Import and split sign (no optional dependency)
# ----------------------------------------------------------------------
def test_imports_do_not_load_torch_or_safetensors():
    code = (
        "import sys, sklearn_dbksvd, sklearn_dbksvd.interop; "
        "print(sorted(m for m in ('torch', 'safetensors') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_split_sign_function(dtype):
    code = np.array([[1.5, 0.0, -2.0], [0.0, -0.5, 0.25]], dtype=dtype)
    split = split_sign(code)
    assert split.dtype == dtype
    assert split.shape == (2, 6)
    assert np.all(split >= 0)
    assert not np.any(np.signbit(split))  # no negative zeros
    np.testing.assert_array_equal(split[:, :3] - split[:, 3:], code)
    sparse = split_sign(sp.csr_matrix(code))
    assert sp.issparse(sparse) and sparse.format == "csr" and sparse.dtype == dtype
    np.testing.assert_array_equal(sparse.toarray(), split)


def test_split_sign_transformer_names_and_pandas_output(fitted, data):
    pd = pytest.importorskip("pandas")
    model = fitted["dbksvd", "float32"]
    X = data.astype(np.float32)
    pipe = make_pipeline(copy.deepcopy(model), SplitSign())
    pipe.fit(X)
    names = pipe.get_feature_names_out()
    # scikit-learn 1.9's SparseCoder(split_sign=True) names only n_components.
    assert len(names) == 2 * N_COMPONENTS
    assert names[0] == "dbksvddictionarylearning0_pos"
    assert names[N_COMPONENTS] == "dbksvddictionarylearning0_neg"
    codes = pipe.transform(X)
    assert codes.dtype == np.float32
    np.testing.assert_array_equal(codes, split_sign(model.transform(X)))

    pipe = make_pipeline(copy.deepcopy(model), SplitSign()).set_output(
        transform="pandas"
    )
    frame = pipe.fit(X).transform(X)
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == list(pipe.get_feature_names_out())
    assert frame.columns[N_COMPONENTS] == "dbksvddictionarylearning0_neg"
    np.testing.assert_array_equal(frame.to_numpy(), codes)


def test_split_sign_transformer_inverse_and_errors():
    splitter = SplitSign().fit(np.zeros((1, 3)))
    code = np.array([[1.0, -2.0, 0.0]])
    np.testing.assert_array_equal(
        splitter.inverse_transform(splitter.transform(code)), code
    )
    sparse = splitter.inverse_transform(sp.csr_matrix(splitter.transform(code)))
    assert sparse.format == "csr"
    np.testing.assert_array_equal(sparse.toarray(), code)
    with pytest.raises(ValueError, match="columns; split codes"):
        splitter.inverse_transform(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="features"):
        splitter.transform(np.zeros((1, 4)))


@parametrize_with_checks([SplitSign()])
def test_split_sign_is_a_sklearn_transformer(estimator, check):
    check(estimator)


def test_without_torch_the_encoder_says_what_to_install(fitted, monkeypatch):
    import sklearn_dbksvd.interop as interop

    # As if torch were not installed: `import torch` raises ImportError.
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.delitem(sys.modules, "sklearn_dbksvd.interop._torch_encoder", raising=False)
    monkeypatch.delattr(sklearn_dbksvd.interop, "_torch_encoder", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'sklearn-dbksvd\[torch\]'"):
        interop.to_torch(fitted["dbksvd", "float64"])
    assert not hasattr(interop, "MatchingPursuitEncoder")


# ----------------------------------------------------------------------
# SAELens directories
# ----------------------------------------------------------------------
# (architecture, split_sign) of save_sae.
LAYOUTS = {
    "mp": ("matching_pursuit", None),
    "topk": ("topk", False),
    "topk-split": ("topk", True),
}


def _save(model, path, layout, **kwargs):
    """save_sae in a layout; the nested Matryoshka warns for SAELens' MP."""
    architecture, split = LAYOUTS[layout]
    nested = getattr(model, "transform_mode", "full") == "nested"
    if architecture == "matching_pursuit" and nested:
        with pytest.warns(UserWarning, match="transform_mode='nested'"):
            return save_sae(model, path, architecture=architecture, **kwargs)
    return save_sae(
        model, path, architecture=architecture, split_sign=split, **kwargs
    )


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("variant", ["default", "positive", "matryoshka-nested"])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_round_trip_gives_identical_transform(
    fitted, data, tmp_path, dtype, variant, layout
):
    _needs_safetensors()
    model = _variant(fitted, variant, dtype)
    path = _save(model, tmp_path / "sae", layout, **HOOK)
    loaded = load_sae(path)
    assert type(loaded) is type(model)
    assert loaded.get_params() == model.get_params()
    assert loaded.components_.dtype == model.components_.dtype
    np.testing.assert_array_equal(loaded.components_, model.components_)
    assert loaded.n_features_in_ == model.n_features_in_
    assert loaded.n_steps_ == model.n_steps_
    assert loaded.history_ == model.history_
    X = data.astype(dtype)
    np.testing.assert_array_equal(loaded.transform(X), model.transform(X))
    np.testing.assert_array_equal(
        loaded.inverse_transform(loaded.transform(X)),
        model.inverse_transform(model.transform(X)),
    )


@pytest.mark.parametrize("split", [False, True])
def test_topk_files_have_the_documented_keys_shapes_and_dtypes(
    fitted, tmp_path, split
):
    safetensors_numpy = _needs_safetensors()
    from safetensors import safe_open

    model = fitted["dbksvd", "float32"]
    path = save_sae(
        model, tmp_path / "sae", architecture="topk", split_sign=split, **HOOK
    )
    assert sorted(p.name for p in path.iterdir()) == [
        "cfg.json",
        "sae_weights.safetensors",
    ]
    d_sae = 2 * N_COMPONENTS if split else N_COMPONENTS

    weights = safetensors_numpy.load_file(path / "sae_weights.safetensors")
    assert set(weights) == {"W_dec", "W_enc", "b_enc", "b_dec"}
    assert weights["W_dec"].shape == (d_sae, N_FEATURES)
    assert weights["W_enc"].shape == (N_FEATURES, d_sae)
    assert weights["b_enc"].shape == (d_sae,)
    assert weights["b_dec"].shape == (N_FEATURES,)
    assert {w.dtype for w in weights.values()} == {np.dtype(np.float32)}
    D = model.components_
    expected = np.concatenate([D, -D]) if split else D
    np.testing.assert_array_equal(weights["W_dec"], expected)
    np.testing.assert_array_equal(weights["W_enc"], expected.T)
    np.testing.assert_allclose(np.linalg.norm(weights["W_dec"], axis=1), 1, rtol=1e-5)
    assert not weights["b_enc"].any() and not weights["b_dec"].any()
    with safe_open(path / "sae_weights.safetensors", framework="numpy") as file:
        assert file.metadata() == {"format": "pt"}

    def no_nan(constant):
        raise AssertionError(f"cfg.json is not strict JSON: {constant}")

    cfg = json.loads((path / "cfg.json").read_text(), parse_constant=no_nan)
    expected_fields = {
        "architecture": "topk",
        "d_in": N_FEATURES,
        "d_sae": d_sae,
        "k": K,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "activation_fn": "topk",
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": K},
        "model_name": "pythia-70m-deduped",
        "hook_name": "blocks.3.hook_resid_post",
        "hook_layer": 3,
        "hook_head_index": None,
        "prepend_bos": True,
        "finetuning_scaling_factor": False,
    }
    assert {key: cfg[key] for key in expected_fields} == expected_fields
    assert "sae_lens_version" not in cfg and "sae_lens_version" not in cfg["metadata"]
    for key in (
        "model_name",
        "hook_name",
        "hook_layer",
        "hook_head_index",
        "prepend_bos",
    ):
        assert cfg["metadata"][key] == cfg[key]
    ours = cfg[CONFIG_KEY]
    assert ours["estimator"] == "DBKSVDDictionaryLearning"
    assert ours["params"]["n_nonzero_coefs"] == K
    assert ours["n_features_in"] == N_FEATURES
    assert ours["signed_codes"] is (not split)
    assert ours["encoder"] == {
        "algorithm": "mp",
        "n_nonzero_coefs": K,
        "positive": False,
        "tol": None,
        "refit": False,
        "levels": None,
        "split_sign": split,
    }
    assert ours["version"]


@pytest.mark.parametrize("variant", ["positive", "default"])
def test_matching_pursuit_files(fitted, tmp_path, variant):
    safetensors_numpy = _needs_safetensors()
    model = _variant(fitted, variant, "float32")
    positive = variant == "positive"
    path = save_sae(model, tmp_path / "sae", **HOOK)
    weights = safetensors_numpy.load_file(path / "sae_weights.safetensors")
    # A tied SAE: SAELens' loader refuses extra tensors.
    assert set(weights) == {"W_dec", "b_dec"}
    D = model.components_
    np.testing.assert_array_equal(
        weights["W_dec"], D if positive else np.concatenate([D, -D])
    )
    assert not weights["b_dec"].any()
    cfg = json.loads((path / "cfg.json").read_text())
    d_sae = N_COMPONENTS if positive else 2 * N_COMPONENTS
    expected_fields = {
        "architecture": "matching_pursuit",
        "d_in": N_FEATURES,
        "d_sae": d_sae,
        "residual_threshold": 0.0,
        "max_iterations": K,
        "stop_on_duplicate_support": False,
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "hook_name": HOOK["hook_name"],
        "hook_layer": 3,
    }
    assert {key: cfg[key] for key in expected_fields} == expected_fields
    assert "activation_fn" not in cfg and "k" not in cfg
    ours = cfg[CONFIG_KEY]
    assert ours["encoder"]["split_sign"] is (not positive)
    assert ours["signed_codes"] is False and ours["centred"] is False
    # The split-sign layout is the only one SAELens' loop can run here.
    with pytest.raises(ValueError, match="split_sign must be"):
        save_sae(model, tmp_path / "b", split_sign=positive, **HOOK)
    with pytest.raises(ValueError, match="architecture must be"):
        save_sae(model, tmp_path / "b", architecture="jumprelu", **HOOK)


@pytest.mark.parametrize("variant", ["tol", "refit"])
def test_matching_pursuit_warns_when_saelens_would_differ(fitted, tmp_path, variant):
    _needs_safetensors()
    model = _variant(fitted, variant, "float64")
    with pytest.warns(UserWarning, match="codes differ from transform"):
        save_sae(model, tmp_path / "sae", **HOOK)


def test_centring_is_b_dec_applied_to_the_input(fitted, data, tmp_path):
    safetensors_numpy = _needs_safetensors()
    model = copy.deepcopy(fitted["dbksvd", "float64"])
    # The mean_ of an estimator that centres its data.
    model.mean_ = data.mean(axis=0)
    for architecture in ("matching_pursuit", "topk"):
        path = save_sae(
            model, tmp_path / architecture, architecture=architecture, **HOOK
        )
        cfg = json.loads((path / "cfg.json").read_text())
        assert cfg["apply_b_dec_to_input"] is True and cfg[CONFIG_KEY]["centred"]
        weights = safetensors_numpy.load_file(path / "sae_weights.safetensors")
        np.testing.assert_array_equal(weights["b_dec"], model.mean_)
        np.testing.assert_array_equal(load_sae(path).mean_, model.mean_)


def test_matryoshka_config_records_groups_and_mode(fitted, tmp_path):
    _needs_safetensors()
    model = _variant(fitted, "matryoshka-nested", "float64")
    with pytest.warns(UserWarning, match="nested"):
        path = save_sae(model, tmp_path / "sae", **HOOK)
    ours = json.loads((path / "cfg.json").read_text())[CONFIG_KEY]
    assert ours["estimator"] == "MatryoshkaDBKSVD"
    assert ours["params"]["transform_mode"] == "nested"
    levels = ours["encoder"]["levels"]
    assert levels[0][0] == 0 and levels[-1][1] == N_COMPONENTS
    assert sum(share for _, _, share in levels) == K


def test_parameters_json_cannot_hold_are_dropped(data, tmp_path):
    _needs_safetensors()
    X = data[:100]
    model = DBKSVDDictionaryLearning(
        n_components=8,
        n_nonzero_coefs=2,
        max_steps=1,
        dict_init=np.eye(8, N_FEATURES) + 0.1,
        callback=lambda info: None,
        random_state=np.random.RandomState(0),
    )
    model.fit(X)
    path = save_sae(model, tmp_path / "sae", **HOOK)
    ours = json.loads((path / "cfg.json").read_text())[CONFIG_KEY]
    assert sorted(ours["dropped_params"]) == ["callback", "dict_init", "random_state"]
    loaded = load_sae(path)
    assert loaded.dict_init is None and loaded.callback is None
    assert loaded.random_state is None
    np.testing.assert_array_equal(loaded.transform(X), model.transform(X))
    # A loaded estimator can go on learning.
    loaded.partial_fit(X)
    assert loaded.n_steps_ == model.n_steps_ + 1


def test_feature_names_and_tuple_parameters_survive(data, tmp_path):
    _needs_safetensors()
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(data, columns=[f"f{i}" for i in range(N_FEATURES)])
    _needs_matryoshka()
    model = MatryoshkaDBKSVD(
        n_components=16,
        n_nonzero_coefs=2,
        group_sizes=(4, 12),
        max_steps=1,
        random_state=0,
    ).fit(frame)
    loaded = load_sae(save_sae(model, tmp_path / "sae", **HOOK))
    assert loaded.group_sizes == (4, 12)
    assert loaded.get_params() == model.get_params()
    assert list(loaded.feature_names_in_) == list(frame.columns)
    np.testing.assert_array_equal(loaded.transform(frame), model.transform(frame))


def test_hook_layer_is_read_from_the_hook_name_or_required(fitted, tmp_path):
    _needs_safetensors()
    model = fitted["dbksvd", "float64"]
    path = save_sae(
        model, tmp_path / "a", hook_name="blocks.11.attn.hook_z", model_name="gpt2"
    )
    cfg = json.loads((path / "cfg.json").read_text())
    assert cfg["hook_layer"] == 11
    assert cfg["reshape_activations"] == "hook_z"
    with pytest.raises(ValueError, match="pass hook_layer"):
        save_sae(model, tmp_path / "b", hook_name="hook_embed", model_name="gpt2")
    path = save_sae(
        model, tmp_path / "b", hook_name="hook_embed", model_name="gpt2", hook_layer=0
    )
    assert json.loads((path / "cfg.json").read_text())["hook_layer"] == 0


def test_dtype_option_casts_the_tensors(fitted, data, tmp_path):
    _needs_safetensors()
    model = fitted["dbksvd", "float64"]
    loaded = load_sae(save_sae(model, tmp_path / "sae", dtype="float32", **HOOK))
    assert loaded.components_.dtype == np.float32
    X = data.astype(np.float32)
    assert np.allclose(loaded.transform(X), model.transform(X), atol=1e-4)
    with pytest.raises(ValueError, match="dtype must be"):
        save_sae(model, tmp_path / "x", dtype="float16", **HOOK)


def test_existing_directories_are_never_clobbered_by_mistake(fitted, tmp_path):
    _needs_safetensors()
    model = fitted["dbksvd", "float64"]
    target = save_sae(model, tmp_path / "sae", **HOOK)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_sae(model, target, **HOOK)
    other = _variant(fitted, "k5", "float64")
    save_sae(other, target, overwrite=True, **HOOK)
    assert load_sae(target).transform_n_nonzero_coefs == 5
    unrelated = tmp_path / "notes"
    unrelated.mkdir()
    (unrelated / "thesis.tex").write_text("keep me")
    with pytest.raises(FileExistsError, match="refusing"):
        save_sae(model, unrelated, overwrite=True, **HOOK)
    assert (unrelated / "thesis.tex").read_text() == "keep me"
    with pytest.raises(FileNotFoundError):
        save_sae(model, tmp_path / "missing" / "sae", **HOOK)


def test_a_failed_write_leaves_nothing_behind(fitted, tmp_path, monkeypatch):
    safetensors_numpy = _needs_safetensors()
    model = fitted["dbksvd", "float64"]
    old = save_sae(model, tmp_path / "sae", **HOOK)
    before = (old / "cfg.json").read_text()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors_numpy, "save_file", fail)
    with pytest.raises(OSError, match="disk full"):
        save_sae(_variant(fitted, "k5", "float64"), old, overwrite=True, **HOOK)
    with pytest.raises(OSError, match="disk full"):
        save_sae(model, tmp_path / "new", **HOOK)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]
    assert (old / "cfg.json").read_text() == before


def test_bad_estimators_and_directories_are_refused(fitted, tmp_path):
    _needs_safetensors()
    with pytest.raises(NotFittedError):
        save_sae(DBKSVDDictionaryLearning(), tmp_path / "a", **HOOK)
    from sklearn.decomposition import MiniBatchDictionaryLearning

    with pytest.raises(TypeError, match="expected a fitted"):
        save_sae(MiniBatchDictionaryLearning(), tmp_path / "a", **HOOK)
    with pytest.raises(ValueError, match="hook_name"):
        save_sae(
            fitted["dbksvd", "float64"], tmp_path / "a", hook_name="", model_name="m"
        )

    with pytest.raises(FileNotFoundError, match="no such file"):
        load_sae(tmp_path / "nothing")
    path = save_sae(fitted["dbksvd", "float64"], tmp_path / "sae", **HOOK)
    cfg = json.loads((path / "cfg.json").read_text())
    cfg[CONFIG_KEY]["format"] = 99
    (path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="upgrade"):
        load_sae(path)
    del cfg[CONFIG_KEY]
    (path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="not written by"):
        load_sae(path)
    cfg[CONFIG_KEY] = {"format": 1, "estimator": "os.system"}
    (path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="does not have"):
        load_sae(path)


# ----------------------------------------------------------------------
# dbksvd export
# ----------------------------------------------------------------------
def _export(*args):
    from sklearn_dbksvd.cli import main

    return main(["export", *map(str, args)])


def test_cli_export_writes_a_loadable_directory(fitted, data, tmp_path, capsys):
    _needs_safetensors()
    from sklearn_dbksvd.cli._io import save_dictionary

    model = _variant(fitted, "k5", "float32")
    dictionary = tmp_path / "dict.npz"
    save_dictionary(dictionary, model, force=False)
    out = tmp_path / "sae"
    hook = ["--hook-name", HOOK["hook_name"], "--model-name", HOOK["model_name"]]
    assert _export(dictionary, "--format", "saelens", "-o", out,
                   "--architecture", "topk", *hook) == 0
    assert f"(topk) with d_in={N_FEATURES}, d_sae={N_COMPONENTS}, k=5" in (
        capsys.readouterr().out
    )
    loaded = load_sae(out)
    assert type(loaded) is DBKSVDDictionaryLearning
    assert loaded.transform_n_nonzero_coefs == 5
    X = data.astype(np.float32)
    np.testing.assert_array_equal(loaded.transform(X), model.transform(X))

    # An existing output: one line, exit status 1, the directory untouched.
    assert _export(dictionary, "-o", out, "--split-sign", *hook) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "exists; pass --force" in error
    assert json.loads((out / "cfg.json").read_text())["d_sae"] == N_COMPONENTS
    assert _export(dictionary, "-o", out, "--split-sign", "--force", *hook) == 0
    assert json.loads((out / "cfg.json").read_text())["d_sae"] == 2 * N_COMPONENTS

    assert _export(tmp_path / "missing.npz", "-o", tmp_path / "x", *hook) == 1
    assert "no such dictionary file" in capsys.readouterr().err
    hook_embed = ["--hook-name", "hook_embed", "--model-name", "gpt2"]
    assert _export(dictionary, "-o", tmp_path / "y", *hook_embed) == 1
    assert "hook_layer" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


# ----------------------------------------------------------------------
# PyTorch encoder
# ----------------------------------------------------------------------
def _assert_same_codes(actual, expected):
    """Same support, and values equal to 1e-5 relative to each code's scale.

    The scale is the largest coefficient of the sample: a small coefficient
    left by cancellation in float32 differs in its last bits between the
    torch and NumPy summation orders.
    """
    np.testing.assert_array_equal(actual != 0, expected != 0)
    scale = np.abs(expected).max(axis=1, keepdims=True)
    error = np.abs(actual.astype(np.float64) - expected)
    assert np.all(error <= 1e-5 * scale), error.max()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_torch_codes_equal_transform_on_batched_input(fitted, data, dtype, variant):
    torch = _needs_torch()
    from sklearn_dbksvd.interop import to_torch

    model = _variant(fitted, variant, dtype)
    X = data.astype(dtype)
    expected = model.transform(X)
    encoder = to_torch(model)
    assert encoder.dtype == getattr(torch, dtype)
    x = torch.from_numpy(X).reshape(10, 30, N_FEATURES)  # [batch, tokens, d_in]
    codes = encoder.encode(x)
    assert codes.shape == (10, 30, N_COMPONENTS)
    assert codes.dtype == getattr(torch, dtype)
    _assert_same_codes(codes.reshape(-1, N_COMPONENTS).numpy(), expected)
    reconstruction = encoder(x).reshape(-1, N_FEATURES).numpy()
    np.testing.assert_allclose(
        reconstruction, model.inverse_transform(expected), rtol=1e-4, atol=1e-5
    )


def test_torch_encoder_follows_a_split_sign_estimator(fitted, data):
    _needs_torch()
    import torch

    from sklearn_dbksvd.interop import to_torch

    model = copy.deepcopy(fitted["dbksvd", "float32"]).set_params(split_sign=True)
    X = data.astype(np.float32)
    expected = model.transform(X)
    assert expected.shape == (len(X), 2 * N_COMPONENTS)
    codes = to_torch(model).encode(torch.from_numpy(X)).numpy()
    _assert_same_codes(codes, expected)
    # Asked for explicitly, signed codes stay available.
    signed = to_torch(model, split_sign=False).encode(torch.from_numpy(X)).numpy()
    assert signed.shape == (len(X), N_COMPONENTS)


def test_torch_split_sign_and_sae_attributes(fitted, data):
    torch = _needs_torch()
    from sklearn_dbksvd.interop import MatchingPursuitEncoder, to_torch

    model = fitted["dbksvd", "float32"]
    X = data.astype(np.float32)
    encoder = to_torch(model, split_sign=True, **HOOK)
    assert isinstance(encoder, MatchingPursuitEncoder)
    assert isinstance(encoder, torch.nn.Module)
    codes = encoder.encode(torch.from_numpy(X)).numpy()
    assert codes.shape == (len(X), 2 * N_COMPONENTS)
    assert codes.min() >= 0
    _assert_same_codes(codes, split_sign(model.transform(X)))
    np.testing.assert_allclose(
        encoder(torch.from_numpy(X)).numpy(),
        model.inverse_transform(model.transform(X)),
        rtol=1e-4,
        atol=1e-5,
    )
    # What SAEBench asks of a custom SAE.
    assert encoder.W_dec.shape == (2 * N_COMPONENTS, N_FEATURES)
    assert encoder.W_enc.shape == (N_FEATURES, 2 * N_COMPONENTS)
    assert encoder.b_enc.shape == (2 * N_COMPONENTS,)
    assert encoder.b_dec.shape == (N_FEATURES,)
    assert not any(p.requires_grad for p in encoder.parameters())
    assert set(encoder.state_dict()) == {"W_dec", "W_enc", "b_enc", "b_dec"}
    cfg = encoder.cfg
    assert (cfg.d_in, cfg.d_sae, cfg.k) == (N_FEATURES, 2 * N_COMPONENTS, K)
    assert (cfg.hook_name, cfg.hook_layer, cfg.model_name) == (
        "blocks.3.hook_resid_post",
        3,
        "pythia-70m-deduped",
    )
    assert cfg.metadata.hook_name == cfg.metadata["hook_name"] == cfg.hook_name
    assert (cfg.dtype, cfg.device) == ("float32", "cpu")
    assert cfg.context_size is None and cfg.hook_head_index is None
    encoder.double()
    assert encoder.dtype == torch.float64 and encoder.cfg.dtype == "float64"


def test_torch_encoder_loads_straight_from_a_directory(fitted, data, tmp_path):
    torch = _needs_torch()
    _needs_safetensors()
    from sklearn_dbksvd.interop import load_torch, to_torch

    nested = MatryoshkaDBKSVD is not None
    model = _variant(fitted, "matryoshka-nested" if nested else "tol", "float64")
    with pytest.warns(UserWarning, match="codes differ"):
        path = save_sae(model, tmp_path / "sae", split_sign=True, **HOOK)
    encoder = load_torch(path, dtype=torch.float32)
    assert encoder.dtype == torch.float32
    assert encoder.split_sign
    assert (encoder.levels is not None) is nested
    assert encoder.cfg.hook_name == HOOK["hook_name"]
    assert encoder.cfg.architecture == "matching_pursuit"
    x = torch.from_numpy(data)
    expected = to_torch(model, dtype="float32", split_sign=True).encode(x)
    np.testing.assert_array_equal(encoder.encode(x).numpy(), expected.numpy())


def test_torch_gram_follows_changes_of_the_weights(fitted, data):
    torch = _needs_torch()
    from sklearn_dbksvd.interop import to_torch

    first = fitted["dbksvd", "float64"]
    second = copy.deepcopy(first)
    second.components_ = -first.components_[::-1].copy()
    encoder = to_torch(first)
    x = torch.from_numpy(data)
    encoder.encode(x)  # caches the Gram matrix of the first dictionary
    encoder.load_state_dict(to_torch(second).state_dict())
    _assert_same_codes(encoder.encode(x).numpy(), second.transform(data))


def test_torch_encoder_edge_cases(fitted):
    torch = _needs_torch()
    from sklearn_dbksvd.interop import MatchingPursuitEncoder, to_torch

    model = fitted["dbksvd", "float64"]
    encoder = to_torch(model)
    assert encoder.encode(torch.zeros((0, N_FEATURES))).shape == (0, N_COMPONENTS)
    assert encoder.encode(torch.zeros((2, 0, N_FEATURES))).shape == (2, 0, N_COMPONENTS)
    with pytest.raises(ValueError, match="expected 12"):
        encoder.encode(torch.zeros((3, N_FEATURES + 1)))
    with pytest.raises(NotImplementedError, match="only matching pursuit"):
        to_torch(copy.deepcopy(model).set_params(transform_algorithm="omp"))
    with pytest.raises(ValueError, match="refit=True"):
        MatchingPursuitEncoder(model.components_, 2, positive=True, refit=True)
    with pytest.raises(ValueError, match="do not cover"):
        MatchingPursuitEncoder(model.components_, 2, levels=[(0, 4, 1)])
    # Half precision: the pursuit runs in float32, the codes come back in half.
    half = to_torch(model, dtype=torch.bfloat16)
    x = torch.from_numpy(model.components_[:2] * 3)
    assert half.encode(x).dtype == torch.bfloat16


@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_torch_encoder_on_an_accelerator(fitted, data, device):
    torch = _needs_torch()
    available = {
        "cuda": torch.cuda.is_available(),
        "mps": getattr(torch.backends, "mps", None) is not None
        and torch.backends.mps.is_available(),
    }
    if not available[device]:
        pytest.skip(f"no {device} device")
    from sklearn_dbksvd.interop import to_torch

    model = fitted["dbksvd", "float32"]
    X = data.astype(np.float32)
    encoder = to_torch(model, device=device)
    codes = encoder.encode(torch.from_numpy(X).to(device).reshape(10, 30, -1))
    assert codes.device.type == device
    _assert_same_codes(
        codes.reshape(-1, N_COMPONENTS).cpu().numpy(), model.transform(X)
    )


# ----------------------------------------------------------------------
# SAELens itself, where installed
# ----------------------------------------------------------------------
@pytest.mark.saelens
@pytest.mark.parametrize("split", [False, True])
def test_saelens_loads_the_topk_directory(fitted, data, tmp_path, split):
    pytest.importorskip("sae_lens")
    torch = _needs_torch()
    from sae_lens import SAE

    model = fitted["dbksvd", "float32"]
    D = model.components_
    path = save_sae(
        model, tmp_path / "sae", architecture="topk", split_sign=split, **HOOK
    )
    sae = SAE.load_from_disk(str(path), device="cpu")
    d_sae = 2 * N_COMPONENTS if split else N_COMPONENTS
    assert sae.cfg.architecture() == "topk"
    assert (sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.k) == (N_FEATURES, d_sae, K)
    assert sae.cfg.metadata.hook_name == HOOK["hook_name"]
    assert sae.cfg.metadata.model_name == HOOK["model_name"]
    W_dec = np.concatenate([D, -D]) if split else D
    np.testing.assert_array_equal(sae.W_dec.detach().numpy(), W_dec)
    X = data.astype(np.float32)
    codes = model.transform(X)
    with torch.no_grad():
        # SAELens' decoder reconstructs our codes as we do ...
        latents = split_sign(codes) if split else codes
        reconstruction = sae.decode(torch.from_numpy(latents)).numpy()
        # ... and its encoder is the documented approximation: top-k of
        # x Dᵀ, then ReLU; with split sign, top-k of |x Dᵀ|, split.
        encoded = sae.encode(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(
        reconstruction, model.inverse_transform(codes), rtol=1e-4, atol=1e-5
    )
    corr = X @ D.T
    expected = np.zeros_like(corr)
    top = np.argsort(-np.abs(corr) if split else -corr, axis=1)[:, :K]
    np.put_along_axis(expected, top, np.take_along_axis(corr, top, axis=1), axis=1)
    expected = split_sign(expected) if split else np.maximum(expected, 0)
    np.testing.assert_allclose(encoded, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.saelens
@pytest.mark.parametrize("variant", ["default", "positive", "k5"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_saelens_matching_pursuit_encode_is_our_transform(
    fitted, data, tmp_path, variant, dtype
):
    pytest.importorskip("sae_lens")
    torch = _needs_torch()
    from sae_lens import SAE

    model = _variant(fitted, variant, dtype)
    m = N_COMPONENTS
    path = save_sae(model, tmp_path / "sae", **HOOK)
    sae = SAE.load_from_disk(str(path), device="cpu")
    assert sae.cfg.architecture() == "matching_pursuit"
    assert sae.cfg.max_iterations == model._transform_n_nonzero_coefs()
    X = data.astype(dtype)
    codes = model.transform(X)
    with torch.no_grad():
        acts = sae.encode(torch.from_numpy(X)).numpy()
        reconstruction = sae.decode(torch.from_numpy(acts)).numpy()
    assert acts.dtype == np.dtype(dtype) and (acts >= 0).all()
    folded = acts if variant == "positive" else acts[:, :m] - acts[:, m:]
    _assert_same_codes(folded, codes)
    np.testing.assert_allclose(
        reconstruction, model.inverse_transform(codes), rtol=1e-4, atol=1e-5
    )
    # Decoder norms are already 1: SAELens refuses to fold them anyway.
    with pytest.raises(NotImplementedError):
        sae.fold_W_dec_norm()


@pytest.mark.saelens
def test_saelens_matching_pursuit_applies_the_mean(data, tmp_path):
    pytest.importorskip("sae_lens")
    torch = _needs_torch()
    from sae_lens import SAE

    X = data + 3.0  # activations with a large mean, as residual streams
    model = DBKSVDDictionaryLearning(
        n_components=N_COMPONENTS, n_nonzero_coefs=K, max_steps=2,
        random_state=0, with_mean=True,
    ).fit(X)
    sae = SAE.load_from_disk(str(save_sae(model, tmp_path / "sae", **HOOK)))
    assert sae.cfg.apply_b_dec_to_input
    with torch.no_grad():
        acts = sae.encode(torch.from_numpy(X)).numpy()
        reconstruction = sae.decode(torch.from_numpy(acts)).numpy()
    codes = model.transform(X)
    _assert_same_codes(acts[:, :N_COMPONENTS] - acts[:, N_COMPONENTS:], codes)
    np.testing.assert_allclose(
        reconstruction, model.inverse_transform(codes), rtol=1e-6, atol=1e-8
    )
