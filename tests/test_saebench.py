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


@pytest.fixture(scope="module", params=["signed", "positive"])
def fitted(request, data):
    model = DBKSVDDictionaryLearning(
        n_components=N_COMPONENTS,
        n_nonzero_coefs=K,
        max_steps=3,
        random_state=0,
        with_mean=True,
        positive_code=request.param == "positive",
    )
    return model.fit(data)


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
    # What the caller types wins.
    cfg = to_saebench(
        model, model_name="other", hook_name="blocks.3.hook_resid_pre",
        context_size=32, prepend_bos=True,
    ).cfg
    assert (cfg.model_name, cfg.hook_name, cfg.hook_layer) == (
        "other", "blocks.3.hook_resid_pre", 3
    )
    assert (cfg.context_size, cfg.prepend_bos) == (32, True)
    with pytest.raises(ValueError, match="context_size must be a positive int"):
        to_saebench(model, context_size=0)
    with pytest.raises(TypeError, match="expected a fitted"):
        to_saebench(object(), **HOOK)
