"""Centring (``with_mean``): the mean is learned, subtracted and added back."""

import numpy as np
import pytest
from sklearn.base import clone

from sklearn_dbksvd import DBKSVDDictionaryLearning, MatryoshkaDBKSVD
from sklearn_dbksvd.datasets import make_sparse_dictionary_problem
from sklearn_dbksvd.metrics import relative_error


@pytest.fixture(scope="module")
def data():
    X, _, _ = make_sparse_dictionary_problem(800, 12, 24, 3, noise=0.02, random_state=0)
    return X


def model(**params):
    settings = dict(n_components=24, n_nonzero_coefs=3, max_iter=4, random_state=0)
    return DBKSVDDictionaryLearning(**{**settings, **params})


@pytest.mark.parametrize("Estimator", [DBKSVDDictionaryLearning, MatryoshkaDBKSVD])
def test_large_offset_fits_as_well_as_without(data, Estimator):
    offset = 50 * np.random.RandomState(1).randn(data.shape[1])
    params = dict(n_components=24, n_nonzero_coefs=3, max_iter=4, random_state=0)
    plain = Estimator(**params).fit(data)
    shifted = Estimator(**params, with_mean=True).fit(data + offset)
    np.testing.assert_allclose(shifted.mean_, offset + data.mean(axis=0), rtol=1e-12)
    error_plain = relative_error(data, plain.inverse_transform(plain.transform(data)))
    centred_fit = shifted.inverse_transform(shifted.transform(data + offset)) - offset
    # Measured on the unshifted data, so that the offset does not hide errors.
    error_shifted = relative_error(data, centred_fit)
    assert error_shifted < 1.1 * error_plain
    # Without centring an atom and a nonzero per code go to the offset.
    raw = Estimator(**params).fit(data + offset)
    raw_fit = raw.inverse_transform(raw.transform(data + offset)) - offset
    assert relative_error(data, raw_fit) > 1.05 * error_shifted


def test_equals_fit_on_centred_data(data):
    offset = 3.0 + np.arange(data.shape[1])
    centred = data + offset - (data + offset).mean(axis=0)
    ours = model(with_mean=True).fit(data + offset)
    reference = model().fit(centred)
    np.testing.assert_allclose(ours.components_, reference.components_, atol=1e-8)
    code = ours.transform(data + offset)
    np.testing.assert_allclose(code, reference.transform(centred))
    np.testing.assert_allclose(
        ours.inverse_transform(code), reference.inverse_transform(code) + ours.mean_
    )
    assert ours.score(data + offset) == pytest.approx(reference.score(centred))


def test_mean_is_zero_without_centring(data):
    fitted = model().fit(data + 5.0)
    np.testing.assert_array_equal(fitted.mean_, np.zeros(data.shape[1]))
    code = fitted.transform(data)
    expected = code @ fitted.components_
    np.testing.assert_allclose(fitted.inverse_transform(code), expected)


def test_float32_and_round_trip(data):
    X = (data + 7.0).astype(np.float32)
    fitted = model(with_mean=True).fit(X)
    assert fitted.mean_.dtype == np.float32
    reconstruction = fitted.inverse_transform(fitted.transform(X))
    assert reconstruction.dtype == np.float32
    assert relative_error(X, reconstruction) < 0.05
    # A zero code reconstructs the mean.
    np.testing.assert_allclose(
        fitted.inverse_transform(np.zeros((1, 24), np.float32))[0], fitted.mean_
    )


def test_partial_fit_keeps_the_first_mean(data):
    first, second = data[:400] + 2.0, data[400:] - 2.0
    fitted = model(with_mean=True).partial_fit(first)
    mean = fitted.mean_.copy()
    np.testing.assert_allclose(mean, first.mean(axis=0))
    fitted.partial_fit(second)
    np.testing.assert_array_equal(fitted.mean_, mean)


def test_memmap_and_array_agree(data, tmp_path):
    X = data + 4.0
    path = tmp_path / "x.npy"
    np.save(path, X)
    lazy = np.load(path, mmap_mode="r")
    a = model(with_mean=True).fit(X)
    b = model(with_mean=True).fit(lazy)
    np.testing.assert_allclose(a.mean_, b.mean_)
    np.testing.assert_allclose(a.components_, b.components_)
    np.testing.assert_allclose(a.transform(lazy), b.transform(X))


def test_clone_keeps_parameter(data):
    assert clone(model(with_mean=True)).with_mean is True


def test_saved_dictionary_keeps_the_mean(data, tmp_path):
    from sklearn_dbksvd.cli._io import load_dictionary, save_dictionary

    fitted = model(with_mean=True).fit(data + 3.0)
    path = tmp_path / "dictionary.npz"
    save_dictionary(path, fitted, force=False)
    loaded = load_dictionary(path)
    np.testing.assert_array_equal(loaded.mean_, fitted.mean_)
    X = data + 3.0
    np.testing.assert_allclose(loaded.transform(X), fitted.transform(X))


def test_torch_encoder_and_sae_export_carry_the_mean(data, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("safetensors")
    from sklearn_dbksvd.interop import load_sae, save_sae, to_torch

    X = data + 3.0
    fitted = model(with_mean=True).fit(X)
    encoder = to_torch(fitted)
    np.testing.assert_allclose(encoder.b_dec.numpy(), fitted.mean_)
    codes = encoder.encode(torch_tensor(X))
    np.testing.assert_allclose(codes.numpy(), fitted.transform(X), atol=1e-10)
    np.testing.assert_allclose(
        encoder(torch_tensor(X)).numpy(),
        fitted.inverse_transform(fitted.transform(X)),
        atol=1e-10,
    )
    save_sae(
        fitted, tmp_path / "sae", hook_name="blocks.0.hook_resid_post", model_name="toy"
    )
    loaded = load_sae(tmp_path / "sae")
    np.testing.assert_allclose(loaded.mean_, fitted.mean_)
    np.testing.assert_allclose(loaded.transform(X), fitted.transform(X), atol=1e-10)


def torch_tensor(X):
    import torch

    return torch.as_tensor(X)


def test_command_line_fit_with_mean(data, tmp_path):
    from sklearn_dbksvd.cli import main
    from sklearn_dbksvd.cli._io import load_dictionary

    X = data + 3.0
    np.save(tmp_path / "x.npy", X)
    out = tmp_path / "d.npz"
    args = ["fit", str(tmp_path / "x.npy"), "-m", "24", "-k", "3", "--steps", "4"]
    assert main([*args, "--with-mean", "-q", "-o", str(out)]) == 0
    loaded = load_dictionary(out)
    assert loaded.with_mean is True
    expected = model(with_mean=True, max_iter=4, max_steps=4).fit(X)
    np.testing.assert_allclose(loaded.mean_, expected.mean_)
    np.testing.assert_allclose(loaded.components_, expected.components_)
