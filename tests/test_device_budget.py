"""Device products stay within the device budget and give the same results.

No GPU here: the device code path runs on the CPU with ``array_api_strict``
(on a non-default device) and torch, with ``_backend.device_memory`` made to
report a tiny device. Every product is recorded (the namespace's ``@``) to
check that none asked for more than the budget, and the results are checked
against float64 NumPy products and against runs with no device limit.
"""

import re
from pathlib import Path

import numpy as np
import pytest
import sklearn
from joblib import cpu_count

from sklearn_dbksvd import DBKSVDDictionaryLearning, _backend
from sklearn_dbksvd._encode import _mp_encode
from sklearn_dbksvd._fit_loop import fit_device_memory
from tests import _helpers

pytest.importorskip("array_api_compat")


def _strict():
    xp = pytest.importorskip("array_api_strict")
    from array_api_strict._array_object import Array

    return xp, xp.Device("device1"), Array


def _torch():
    torch = pytest.importorskip("torch")
    from array_api_compat import torch as xp

    return xp, torch.device("cpu"), torch.Tensor


@pytest.fixture(params=["strict-device1", "torch-cpu"])
def namespace(request):
    return {"strict-device1": _strict, "torch-cpu": _torch}[request.param]()


def _nbytes(array):
    if hasattr(array, "element_size"):  # torch
        return array.numel() * array.element_size()
    return _backend.to_numpy(array).nbytes


class Recorder:
    """Bytes of each product's result and of each array sent to the device."""

    def __init__(self, monkeypatch, array_type, atoms_shape=None):
        self.products, self.sent = [], []
        matmul = array_type.__matmul__
        asarray = _backend.ArrayBackend.asarray

        def recording_matmul(a, b):
            result = matmul(a, b)
            self.products.append(_nbytes(result))
            return result

        def recording_asarray(backend, array):
            result = asarray(backend, array)
            # The atoms go to the device whole: they are not a product's.
            if not backend.is_numpy and tuple(array.shape) != atoms_shape:
                self.sent.append(_nbytes(result))
            return result

        monkeypatch.setattr(array_type, "__matmul__", recording_matmul)
        monkeypatch.setattr(_backend.ArrayBackend, "asarray", recording_asarray)


def tiny_device(monkeypatch, product_bytes):
    """Make device backends report the memory giving ``product_bytes`` a product.

    Documented rule: a product gets a quarter of the device's free memory,
    split among the machine's cores.
    """
    free = 4 * product_bytes * cpu_count()
    monkeypatch.setattr(
        _backend, "device_memory", lambda backend: None if backend.is_numpy else free
    )
    return product_bytes


def device_backend(xp, device, *arrays):
    return _backend.resolve_backend(
        "numpy", *[xp.asarray(a, device=device) for a in arrays]
    )


def test_device_memory_is_none_for_host_namespaces(namespace):
    xp, device, _ = namespace
    backend = device_backend(xp, device, np.zeros((2, 2)))
    assert not backend.is_numpy
    assert _backend.device_memory(backend) is None
    assert backend.product_bytes is None
    assert _backend.device_memory(_backend.ArrayBackend(np)) is None


def test_budget_is_a_quarter_of_free_device_memory_per_core(monkeypatch, namespace):
    xp, device, _ = namespace
    monkeypatch.setattr(_backend, "device_memory", lambda backend: 8_000_000)
    backend = device_backend(xp, device, np.zeros((2, 2)))
    assert backend.product_bytes == 2_000_000 // cpu_count()
    # Resolved once: what the device reports later does not change it.
    monkeypatch.setattr(_backend, "device_memory", lambda backend: 8)
    assert backend.product_bytes == 2_000_000 // cpu_count()


def test_blocked_gram_equals_float64_product(monkeypatch, namespace):
    xp, device, array_type = namespace
    rng = np.random.RandomState(0)
    D = rng.randn(50, 7).astype(np.float32)
    limit = tiny_device(monkeypatch, 9 * (50 + 7) * 4)  # nine rows a block
    backend = device_backend(xp, device, D)
    record = Recorder(monkeypatch, array_type, atoms_shape=D.shape)
    G = _backend.gram(backend, D)
    D64 = D.astype(np.float64)
    assert G.dtype == np.float32 and G.shape == (50, 50)
    np.testing.assert_allclose(G, D64 @ D64.T, rtol=1e-5, atol=1e-5)
    assert len(record.products) == 6  # ceil(50 / 9) blocks of rows
    assert max(record.products) <= limit


def test_blocked_correlations_fill_out(monkeypatch, namespace):
    xp, device, array_type = namespace
    rng = np.random.RandomState(1)
    X = rng.randn(101, 7).astype(np.float32)
    D = rng.randn(30, 7).astype(np.float32)
    limit = tiny_device(monkeypatch, 10 * (30 + 7) * 4)
    backend = device_backend(xp, device, X)
    D_dev = backend.asarray(D)
    record = Recorder(monkeypatch, array_type, atoms_shape=D.shape)
    out = np.full((101, 30), np.nan, dtype=np.float32)
    corr = _backend.correlations(backend, X, D_dev, out=out)
    assert corr is out
    np.testing.assert_allclose(
        out, X.astype(np.float64) @ D.astype(np.float64).T, rtol=1e-5, atol=1e-5
    )
    assert len(record.products) == 11
    assert max(record.products) <= limit and max(record.sent) <= limit


def test_blocked_residual_norms_and_normal_matrix(monkeypatch, namespace):
    xp, device, array_type = namespace
    rng = np.random.RandomState(2)
    X = rng.randn(90, 6).astype(np.float32)
    D = rng.randn(20, 6).astype(np.float32)
    indices = rng.randint(0, 20, size=(90, 3))
    values = rng.randn(90, 3).astype(np.float32)
    limit = tiny_device(monkeypatch, 8 * 6 * 4 + 36 * 4)
    backend = device_backend(xp, device, X)
    D_dev = backend.asarray(D)
    record = Recorder(monkeypatch, array_type, atoms_shape=D.shape)
    X64, D64 = X.astype(np.float64), D.astype(np.float64)
    code = np.zeros((90, 20))
    np.add.at(code, (np.arange(90)[:, None], indices), values)

    out = np.empty_like(X)
    _backend.residual(backend, X, indices, values, D, D_dev, out)
    np.testing.assert_allclose(out, X64 - code @ D64, rtol=1e-5, atol=1e-5)
    norms = _backend.sq_norms(backend, X)
    np.testing.assert_allclose(norms, (X64**2).sum(axis=1), rtol=1e-5)

    E = X  # a "wide" error matrix: 90 users, 6 features
    E_dev, normal = _backend.normal_matrix(backend, E)
    np.testing.assert_allclose(normal, X64.T @ X64, rtol=1e-5, atol=1e-4)
    v = rng.randn(6).astype(np.float32)
    np.testing.assert_allclose(
        _backend.matvec(backend, E_dev, v), X64 @ v, rtol=1e-5, atol=1e-5
    )
    assert max(record.products) <= limit and max(record.sent) <= limit
    assert len(record.products) > 10  # really in blocks


@pytest.mark.parametrize("gram_memory", [None, 2000], ids=["whole-gram", "gram-rows"])
def test_encode_with_tiny_device_budget_gives_host_codes(
    monkeypatch, namespace, gram_memory
):
    xp, device, array_type = namespace
    X, D = _helpers.planted(n_samples=300, n_features=12, n_components=40)
    X, D = X.astype(np.float32), D.astype(np.float32)
    # The host's codes from the whole Gram matrix: the oracle.
    expected = _mp_encode(X, D, 3, gram_memory=None, return_residual=True)
    limit = tiny_device(monkeypatch, 16 * (40 + 12) * 4)
    X_dev = xp.asarray(X, device=device)
    backend = _backend.resolve_backend("numpy", X_dev)
    record = Recorder(monkeypatch, array_type, atoms_shape=D.shape)
    indices, values, residual = _mp_encode(
        X_dev, D, 3, gram_memory=gram_memory, backend=backend, return_residual=True
    )
    np.testing.assert_array_equal(indices, expected[0])
    np.testing.assert_allclose(values, expected[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(residual, expected[2], rtol=1e-5, atol=1e-5)
    assert max(record.products) <= limit and max(record.sent) <= limit
    assert len(record.products) > 20


def test_fit_with_tiny_device_budget_gives_the_same_atoms(monkeypatch, namespace):
    xp, device, array_type = namespace
    X, _ = _helpers.planted(n_samples=400, n_features=12, n_components=24)
    X = X.astype(np.float32)
    X_dev = xp.asarray(X, device=device)
    params = dict(n_components=24, n_nonzero_coefs=3, max_steps=2, random_state=0)
    with sklearn.config_context(array_api_dispatch=True):
        unlimited = DBKSVDDictionaryLearning(**params).fit(X_dev)
        limit = tiny_device(monkeypatch, 16 * (24 + 12) * 4)
        record = Recorder(monkeypatch, array_type, atoms_shape=(24, 12))
        model = DBKSVDDictionaryLearning(**params).fit(X_dev)
    np.testing.assert_allclose(
        model.components_, unlimited.components_, rtol=1e-5, atol=1e-5
    )
    assert max(record.products) <= limit and max(record.sent) <= limit
    assert len(record.products) > 20


def test_fit_refuses_a_dictionary_too_large_for_the_device(monkeypatch, namespace):
    xp, device, _ = namespace
    X, _ = _helpers.planted(n_samples=200, n_features=12, n_components=24)
    X_dev = xp.asarray(X.astype(np.float32), device=device)
    # Twice the float32 atoms alone are 2304 bytes.
    monkeypatch.setattr(
        _backend, "device_memory", lambda backend: None if backend.is_numpy else 2000
    )
    model = DBKSVDDictionaryLearning(n_components=24, n_nonzero_coefs=3, max_steps=1)
    message = r"needs at least .* of device memory .* the device has 1.95 KiB free"
    with sklearn.config_context(array_api_dispatch=True):
        with pytest.raises(ValueError, match=message):
            model.fit(X_dev)
    assert not hasattr(model, "components_")


def test_numpy_backend_never_asks_the_device(monkeypatch):
    def no_device(backend):
        raise AssertionError("the NumPy backend asked for device memory")

    monkeypatch.setattr(_backend, "device_memory", no_device)
    X, D = _helpers.planted(n_samples=200, n_components=24)
    backend = _backend.ArrayBackend(np)
    assert backend.product_bytes is None
    G = _backend.gram(backend, D)
    np.testing.assert_allclose(G, D @ D.T, rtol=1e-12, atol=1e-12)
    DBKSVDDictionaryLearning(n_components=24, n_nonzero_coefs=3, max_steps=1).fit(X)


def test_device_estimate_of_a_paper_size_fit():
    # m=4096 float32 atoms of d=2304, the whole Gram matrix on the host:
    # blocks of 2**25 bytes of correlations are 2048 samples; with a large
    # device the budget does not shrink them.
    parts = fit_device_memory(
        4096, 2304, 2**16, 4, available=80 * 10**9, gram_memory=None, n_jobs=1,
        n_threads=16,
    )
    assert parts["atoms"] == 2 * 4096 * 2304 * 4
    assert parts["block_rows"] == 2048
    assert parts["blocks"] == 2048 * (4096 + 2304) * 4
    assert parts["minimum"] == 75_497_472 + 52_428_800
    # A device of 200 MB: the budget is a quarter of what one copy of the
    # atoms leaves, split among 16 threads: 2,535,176 bytes, 99 rows.
    parts = fit_device_memory(
        4096, 2304, 2**16, 4, available=200 * 10**6, gram_memory=None, n_jobs=1,
        n_threads=16,
    )
    assert parts["product_bytes"] == 2_535_176
    assert parts["block_rows"] == 99
    assert parts["minimum"] == 75_497_472 + 99 * 6400 * 4


GUIDE = Path(__file__).resolve().parents[1] / "doc" / "user_guide.rst"


@pytest.mark.skipif(not GUIDE.exists(), reason="the docs are not shipped in wheels")
def test_user_guide_width_table_is_the_estimates():
    text = GUIDE.read_text(encoding="utf-8")
    rows = re.findall(r"^(\d+) GB +([\d,]+) +([\d,]+) +([\d,]+)$", text, re.M)
    assert [int(r[0]) for r in rows] == [24, 40, 80, 141]

    def fits(m, d, device_bytes):
        parts = fit_device_memory(
            m, d, 2**16, 4, available=device_bytes, gram_memory=2**36, n_jobs=16,
            n_threads=16,
        )
        return parts["minimum"] <= device_bytes

    for gb, *widths in rows:
        for d, width in zip((576, 2304, 4096), widths, strict=True):
            m = int(width.replace(",", ""))
            # The largest multiple of 1,024 atoms that fits.
            assert m % 1024 == 0
            assert fits(m, d, int(gb) * 10**9)
            assert not fits(m + 1024, d, int(gb) * 10**9)
