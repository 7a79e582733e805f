"""The one encode path: ``iter_transform`` and everything that reads codes.

The oracle is matching pursuit written out per sample on the centred data
(the textbook algorithm, no Gram matrix, no chunks), and the split into
signs built by hand from it.
"""

import numpy as np
import pytest
import scipy.sparse as sp

from sklearn_dbksvd import DBKSVDDictionaryLearning, MatryoshkaDBKSVD
from sklearn_dbksvd._data import RowConcatenation
from sklearn_dbksvd.cli import main as _main
from sklearn_dbksvd.datasets import make_sparse_dictionary_problem
from tests._oracles import matching_pursuit, split_signs

N, D, M, K = 300, 12, 20, 3


def main(argv):
    return _main([str(arg) for arg in argv])


@pytest.fixture(scope="module")
def X():
    X, _, _ = make_sparse_dictionary_problem(N, D, M, K, noise=0.05, random_state=0)
    return X + 3.0  # off the origin: centring matters


def fitted(X, **params):
    defaults = dict(n_nonzero_coefs=K, max_iter=2, batch_size=100, random_state=0)
    return DBKSVDDictionaryLearning(M, **{**defaults, **params}).fit(X)


def oracle(model, X, positive=False):
    codes = matching_pursuit(X - model.mean_, model.components_, K, positive=positive)
    return split_signs(codes) if model.split_sign else codes


def stacked(chunks, n_rows):
    """Codes of the chunks in row order, checking the slices tile the rows."""
    parts, start = [], 0
    for rows, code in chunks:
        assert rows.start == start and rows.stop > start
        assert code.shape[0] == rows.stop - rows.start
        parts.append(code.toarray() if sp.issparse(code) else code)
        start = rows.stop
    assert start == n_rows
    return np.vstack(parts)


@pytest.mark.parametrize("split_sign", [False, True])
@pytest.mark.parametrize("positive_code", [False, True])
@pytest.mark.parametrize("sparse_output", [False, True])
def test_chunks_equal_textbook_matching_pursuit(
    X, split_sign, positive_code, sparse_output
):
    model = fitted(
        X, with_mean=True, split_sign=split_sign, positive_code=positive_code,
        sparse_output=sparse_output,
    )
    expected = oracle(model, X, positive=positive_code)
    assert expected.shape[1] == (2 * M if split_sign else M)
    chunks = list(model.iter_transform(X, chunk_size=64))
    assert len(chunks) == 5
    assert all(sp.issparse(code) == sparse_output for _, code in chunks)
    np.testing.assert_allclose(stacked(chunks, N), expected, atol=1e-10)
    whole = model.transform(X)
    whole = whole.toarray() if sparse_output else whole
    np.testing.assert_allclose(whole, expected, atol=1e-10)


@pytest.mark.parametrize(
    "make_input",
    [
        pytest.param(lambda X, tmp: X, id="ndarray"),
        pytest.param(lambda X, tmp: _memmap(X, tmp), id="memmap"),
        pytest.param(
            lambda X, tmp: RowConcatenation([X[:70], X[70:200], X[200:]]),
            id="harvest-rows",
        ),
        pytest.param(lambda X, tmp: _hdf5(X, tmp), id="hdf5"),
        pytest.param(lambda X, tmp: _zarr(X, tmp), id="zarr"),
        pytest.param(lambda X, tmp: _torch(X), id="torch"),
    ],
)
def test_every_kind_of_input_gives_the_same_codes(X, tmp_path, make_input):
    model = fitted(X, with_mean=True, split_sign=True, sparse_output=True)
    expected = oracle(model, X)
    data = make_input(X, tmp_path)
    codes = stacked(model.iter_transform(data, chunk_size=128), N)
    np.testing.assert_allclose(codes, expected, atol=1e-10)


def _memmap(X, tmp):
    np.save(tmp / "X.npy", X)
    return np.load(tmp / "X.npy", mmap_mode="r")


def _hdf5(X, tmp):
    h5py = pytest.importorskip("h5py")
    file = h5py.File(tmp / "X.h5", "w")
    file["X"] = X
    return file["X"]


def _zarr(X, tmp):
    zarr = pytest.importorskip("zarr")
    store = zarr.open_array(
        str(tmp / "X.zarr"), mode="w", shape=X.shape, chunks=(50, D), dtype="f8"
    )
    store[:] = X
    return store


def _torch(X):
    torch = pytest.importorskip("torch")
    return torch.from_numpy(X)


def test_dask_transform_equals_the_oracle(X):
    da = pytest.importorskip("dask.array")
    model = fitted(X, with_mean=True, split_sign=True, sparse_output=True)
    codes = model.transform(da.from_array(X, chunks=(70, D)))
    assert codes.shape == (N, 2 * M)
    computed = codes.compute()
    computed = sp.vstack(computed) if isinstance(computed, list) else computed
    np.testing.assert_allclose(computed.toarray(), oracle(model, X), atol=1e-10)


def test_matryoshka_nested_chunks_equal_its_transform(X):
    # Nested codes have their own oracle in test_matryoshka; here the
    # streaming path must give them unchanged, chunk by chunk.
    model = MatryoshkaDBKSVD(
        M, n_nonzero_coefs=K, group_sizes=(4, 16), max_iter=1, batch_size=100,
        transform_mode="nested", split_sign=True, random_state=0,
    ).fit(X)
    np.testing.assert_array_equal(
        stacked(model.iter_transform(X, chunk_size=50), N), model.transform(X)
    )


@pytest.mark.parametrize("chunk_size", [0, -3, 2.5, True])
def test_bad_chunk_size(X, chunk_size):
    model = fitted(X)
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        next(model.iter_transform(X, chunk_size=chunk_size))


def test_iter_transform_checks_the_features(X):
    model = fitted(X)
    with pytest.raises(ValueError, match="12 features"):
        next(model.iter_transform(X[:, :5]))


# ----------------------------------------------------------------------
# The command line reads its codes from the same path
# ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def split_sign_files(X, tmp_path_factory):
    from sklearn_dbksvd.persistence import save_dictionary

    directory = tmp_path_factory.mktemp("split")
    model = fitted(X, with_mean=True, split_sign=True)
    np.save(directory / "X.npy", X)
    save_dictionary(model, directory / "dict.npz")
    return directory, model


def test_cli_encode_of_a_split_sign_dictionary_has_2m_columns(X, split_sign_files):
    directory, model = split_sign_files
    out = directory / "codes.npz"
    argv = ["encode", directory / "dict.npz", directory / "X.npy", "-o", out, "-q"]
    assert main([*argv, "--chunk-size", 70]) == 0
    codes = sp.load_npz(out)
    assert codes.shape == (N, 2 * M)
    assert codes.indices.max() < 2 * M
    np.testing.assert_allclose(codes.toarray(), oracle(model, X), atol=1e-10)


@pytest.mark.parametrize("k", [M + 1, 10**12])
def test_cli_encode_refuses_more_nonzeros_than_atoms(split_sign_files, k, capsys):
    directory, _ = split_sign_files
    out = directory / "refused.npz"
    argv = ["encode", directory / "dict.npz", directory / "X.npy", "-o", out, "-q"]
    assert main([*argv, "-k", k]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"dbksvd encode: error: transform_n_nonzero_coefs={k} exceeds "
        f"n_components={M}: a code cannot use more atoms than the dictionary has."
    ]
    assert not out.exists()


def test_cli_fit_refuses_a_dictionary_larger_than_memory(split_sign_files, capsys):
    directory, _ = split_sign_files
    out = directory / "huge.npz"
    argv = ["fit", directory / "X.npy", "-m", 100000000000, "-k", 3, "-q", "-o", out]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "n_components=100000000000" in err[0]
    assert "needs at least" in err[0] and "of memory" in err[0]
    assert not out.exists()


def test_cli_report_counts_usage_per_atom_of_a_split_sign_dictionary(
    X, split_sign_files
):
    from sklearn_dbksvd.cli._figures import atom_usage
    from sklearn_dbksvd.cli._io import load_dictionary

    directory, model = split_sign_files
    loaded = load_dictionary(directory / "dict.npz").set_params(sparse_output=True)
    usage, n_used = atom_usage(loaded, np.load(directory / "X.npy"), N)
    codes = matching_pursuit(X - model.mean_, model.components_, K)
    expected = np.count_nonzero(codes, axis=0)
    assert n_used == N
    np.testing.assert_array_equal(usage, expected)


def test_demo_writes_nothing_unless_asked(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["demo", "--n-patches", 600, "-m", 16, "--epochs", 1]
    assert main(argv) == 0
    assert list(tmp_path.iterdir()) == []
    assert "report" not in capsys.readouterr().out
    (tmp_path / "mine.png").write_bytes(b"keep me")
    assert main([*argv, "--report", "mine.png"]) == 1
    assert "exists" in capsys.readouterr().err
    assert (tmp_path / "mine.png").read_bytes() == b"keep me"
    assert main([*argv, "--report", "demo.png"]) == 0
    assert f"report: {tmp_path / 'demo.png'}" in capsys.readouterr().out
    assert (tmp_path / "demo.png").read_bytes()[:4] == b"\x89PNG"


def test_feature_names_are_checked_once_and_quietly(X, recwarn):
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(X, columns=[f"x{i}" for i in range(D)])
    model = fitted(frame)
    codes = stacked(model.iter_transform(frame, chunk_size=100), N)
    np.testing.assert_allclose(codes, oracle(model, X), atol=1e-10)
    assert not [w for w in recwarn if "feature names" in str(w.message)]
    renamed = frame.rename(columns={"x0": "other"})
    with pytest.raises(ValueError, match="feature names"):
        next(model.iter_transform(renamed))


@pytest.mark.parametrize("namespace", ["array_api_strict", "torch"])
def test_device_arrays_under_array_api_dispatch(X, namespace):
    import sklearn

    pytest.importorskip("array_api_compat")
    if namespace == "torch":
        torch = pytest.importorskip("torch")
        data = torch.from_numpy(X)
    else:
        xp = pytest.importorskip("array_api_strict")
        data = xp.asarray(X, device=xp.Device("device1"))
    model = fitted(X, with_mean=True, split_sign=True, sparse_output=True)
    with sklearn.config_context(array_api_dispatch=True):
        codes = stacked(model.iter_transform(data, chunk_size=90), N)
    np.testing.assert_allclose(codes, oracle(model, X), atol=1e-10)
