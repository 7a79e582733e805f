"""The array-API backend gives NumPy's results in other namespaces and devices.

The products that grow with the batch go through ``_backend``; on the CPU the
same code path runs with ``array_api_strict`` (on its default and on a
non-default device, which catches arrays left on the wrong device) and with
torch if installed. GPU cases skip without CuPy. Select with ``-k array_api``.
"""

import numpy as np
import pytest

from sklearn_dbksvd import DBKSVDDictionaryLearning, _backend, _update
from sklearn_dbksvd._encode import _mp_encode
from sklearn_dbksvd._step import dbksvd_step
from tests import _helpers


def _strict(device_name):
    xp = pytest.importorskip("array_api_strict")
    return xp, xp.Device(device_name)


def _torch():
    torch = pytest.importorskip("torch")
    from array_api_compat import torch as xp

    return xp, torch.device("cpu")


def _cupy():
    pytest.importorskip("cupy")
    from array_api_compat import cupy as xp

    try:
        return xp, xp.empty(0).device
    except Exception as error:  # pragma: no cover - a CuPy without a GPU
        pytest.skip(f"CuPy has no usable GPU: {error}")


NAMESPACES = {
    "strict-cpu": lambda: _strict("CPU_DEVICE"),
    "strict-device1": lambda: _strict("device1"),
    "torch-cpu": _torch,
    "cupy": _cupy,
}


@pytest.fixture(params=list(NAMESPACES))
def namespace(request):
    pytest.importorskip("array_api_compat")
    return NAMESPACES[request.param]()


def planted(**kwargs):
    return _helpers.planted(**{"n_samples": 400, "n_components": 24, **kwargs})


def step_settings(**overrides):
    return _helpers.step_settings(**{"n_jobs": 1, **overrides})


def test_encode_and_residual_array_api(namespace):
    xp, device = namespace
    X, D = planted()
    expected = _mp_encode(X, D, 3, return_residual=True)
    X_dev = xp.asarray(X, device=device)
    backend = _backend.resolve_backend("numpy", X_dev)
    assert not backend.is_numpy
    indices, values, residual = _mp_encode(
        X_dev, D, 3, return_residual=True, backend=backend
    )
    np.testing.assert_array_equal(indices, expected[0])
    np.testing.assert_allclose(values, expected[1], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(residual, expected[2], rtol=1e-10, atol=1e-12)
    assert isinstance(residual, np.ndarray)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_step_array_api(namespace, dtype):
    xp, device = namespace
    X, D = planted()
    X, D = X.astype(dtype), D.astype(dtype)
    expected, expected_info = dbksvd_step(X, D, **step_settings())
    atoms, info = dbksvd_step(xp.asarray(X, device=device), D, **step_settings())
    assert atoms.dtype == dtype and isinstance(atoms, np.ndarray)
    rtol = 1e-8 if dtype == np.float64 else 1e-4
    np.testing.assert_allclose(atoms, expected, rtol=rtol, atol=rtol)
    assert info["n_replaced"] == expected_info["n_replaced"]
    assert info["relative_error"] == pytest.approx(expected_info["relative_error"], rel=rtol)


def test_wide_error_matrices_array_api(namespace, monkeypatch):
    # Every atom counts as wide: EᵀE is formed in the backend, E v too.
    xp, device = namespace
    X, D = planted()
    expected, _ = dbksvd_step(X, D, **step_settings(replace=False))
    monkeypatch.setattr(_update, "_WIDE_FACTOR", 0.0)
    atoms, _ = dbksvd_step(
        xp.asarray(X, device=device), D, **step_settings(replace=False)
    )
    np.testing.assert_allclose(atoms, expected, rtol=1e-7, atol=1e-7)


def test_to_numpy_from_any_device_array_api(namespace):
    xp, device = namespace
    data = np.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(
        _backend.to_numpy(xp.asarray(data, device=device)), data
    )


def test_numpy_inputs_stay_on_the_numpy_backend():
    backend = _backend.resolve_backend("numpy", np.ones((2, 2)), None)
    assert backend.is_numpy and backend.xp is np


def test_estimator_backend_parameter_array_api():
    X, _ = planted()
    model = DBKSVDDictionaryLearning(
        24, n_nonzero_coefs=3, max_steps=2, backend="numpy", random_state=0
    ).fit(X)
    assert model.components_.shape == (24, 12)
    try:
        import cupy  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="CuPy"):
            DBKSVDDictionaryLearning(24, n_nonzero_coefs=3, backend="cupy").fit(X)


def test_cupy_backend_matches_numpy_array_api():
    _cupy()
    X, D = planted()
    expected, _ = dbksvd_step(X, D, **step_settings())
    atoms, _ = dbksvd_step(X, D, **step_settings(backend="cupy"))
    np.testing.assert_allclose(atoms, expected, rtol=1e-7, atol=1e-7)
