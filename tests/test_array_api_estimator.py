"""The estimators on array-API inputs with scikit-learn's array_api_dispatch.

Device arrays are validated in their own namespace and stay on their device
for the sample-dependent products; the atoms and matching pursuit live on the
host. The same path serves CuPy on a GPU; here it runs with array_api_strict
(also on a non-default device, which catches arrays mixed across devices)
and torch on the CPU.
"""

import numpy as np
import pytest
import sklearn

from sklearn_dbksvd import DBKSVDDictionaryLearning, MatryoshkaDBKSVD
from sklearn_dbksvd.datasets import make_sparse_dictionary_problem


def _array_api_strict(device_name):
    xp = pytest.importorskip("array_api_strict")
    return xp, xp.Device(device_name)


def _torch_cpu(_):
    torch = pytest.importorskip("torch")
    from array_api_compat import torch as xp

    return xp, torch.device("cpu")


NAMESPACES = [
    pytest.param(_array_api_strict, "CPU_DEVICE", id="strict-default"),
    pytest.param(_array_api_strict, "device1", id="strict-device1"),
    pytest.param(_torch_cpu, None, id="torch-cpu"),
]


@pytest.fixture(scope="module")
def data():
    X, _, _ = make_sparse_dictionary_problem(600, 12, 24, 3, random_state=0)
    return X


@pytest.mark.parametrize("namespace, device_name", NAMESPACES)
@pytest.mark.parametrize("Estimator", [DBKSVDDictionaryLearning, MatryoshkaDBKSVD])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_fit_transform_on_device_array_api(data, namespace, device_name, Estimator, dtype):
    pytest.importorskip("array_api_compat")
    xp, device = namespace(device_name)
    X = data.astype(dtype)
    params = dict(n_components=24, n_nonzero_coefs=3, max_iter=3, random_state=0)
    expected = Estimator(**params).fit(X)
    X_device = xp.asarray(X, device=device)
    with sklearn.config_context(array_api_dispatch=True):
        model = Estimator(**params).fit(X_device)
        code = model.transform(X_device)
    rtol = 5e-3 if dtype == "float32" else 1e-10
    if dtype == "float32":
        # Another BLAS rounds float32 products differently, and that moves
        # atoms as much as float32 rounding itself does (one step in float32
        # and in float64 differ by up to 1.3e-3 here); over several steps
        # near-tied selections flip. So: one step within rtol, and fits of
        # three epochs equally good.
        assert abs(model.score(X) - expected.score(X)) < 1e-3
        one_step = dict(params, max_steps=1)
        expected = Estimator(**one_step).fit(X)
        with sklearn.config_context(array_api_dispatch=True):
            model = Estimator(**one_step).fit(X_device)
            code = model.transform(X_device)
    np.testing.assert_allclose(
        model.components_, expected.components_, rtol=rtol, atol=rtol
    )
    assert model.components_.dtype == np.dtype(dtype)
    # Codes come back in the input's namespace, on its device.
    assert type(code) is type(X_device)
    from array_api_compat import device as device_of

    assert device_of(code) == device_of(X_device)
    code = (
        np.asarray(xp.asarray(code, device=xp.Device("CPU_DEVICE")))
        if hasattr(xp, "Device")
        else code.numpy()
    )
    expected_code = expected.transform(X)
    # In float32 a near tie may pick other atoms for a sample or two.
    same_rows = np.all(np.isclose(code, expected_code, rtol=rtol, atol=rtol), axis=1)
    assert same_rows.mean() >= (0.99 if dtype == "float32" else 1.0)
