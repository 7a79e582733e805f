"""The ``dbksvd`` command line, run as a user runs it: in a subprocess."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import scipy.sparse as sp
from numpy.testing import assert_array_equal

from sklearn_dbksvd import DBKSVDDictionaryLearning
from sklearn_dbksvd.cli import main as _main
from sklearn_dbksvd.cli._io import atomic_write, load_dictionary
from sklearn_dbksvd.cli._resume import CHECKPOINT_NAME
from sklearn_dbksvd.datasets import make_sparse_dictionary_problem

# 2048 samples in batches of 256: 8 steps an epoch, each a few milliseconds.
N_SAMPLES, N_FEATURES, N_COMPONENTS, K = 2048, 16, 32, 3
FIT_ARGS = ["-m", str(N_COMPONENTS), "-k", str(K), "--batch-size", "256", "--seed", "3"]


def main(argv):
    """The command line in this process, for runs that need no subprocess."""
    return _main([str(arg) for arg in argv])


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "sklearn_dbksvd", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


def assert_user_error(result, fragment):
    """Non-zero exit, one line on stderr naming the problem, no traceback."""
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    X, _, _ = make_sparse_dictionary_problem(
        N_SAMPLES, N_FEATURES, N_COMPONENTS, K, dtype=np.float32, random_state=0
    )
    path = tmp_path_factory.mktemp("data") / "X.npy"
    np.save(path, X)
    return path


@pytest.fixture(scope="module")
def dictionary_path(data_path, tmp_path_factory):
    path = tmp_path_factory.mktemp("dictionary") / "dict.npz"
    assert main(["fit", data_path, *FIT_ARGS, "--steps", "6", "-q", "-o", path]) == 0
    return path


def test_fit_matches_estimator_and_writes_everything(data_path, dictionary_path):
    model = DBKSVDDictionaryLearning(
        N_COMPONENTS,
        n_nonzero_coefs=K,
        batch_size=256,
        max_steps=6,
        max_iter=1,
        random_state=3,
    ).fit(np.load(data_path))
    with np.load(dictionary_path) as saved:
        assert_array_equal(saved["components_"], model.components_)
        assert saved["components_"].dtype == np.float32
        state = json.loads(str(saved["state"]))
        params, history = state["params"], state["fitted"]["history_"]
        assert str(saved["version"]) == __import__("sklearn_dbksvd").__version__
    assert params["n_components"] == N_COMPONENTS and params["random_state"] == 3
    assert [h["relative_error"] for h in history] == [
        h["relative_error"] for h in model.history_
    ]
    loaded = load_dictionary(dictionary_path)
    assert loaded.n_steps_ == 6
    assert_array_equal(
        loaded.transform(np.load(data_path)), model.transform(np.load(data_path))
    )


# Runs the real command in a subprocess that pauses after each checkpoint,
# so that the test reliably kills it between two steps, whatever the load.
_SLOW_FIT = """
import sys, time
import sklearn_dbksvd.cli._resume as cli_fit
save = cli_fit.save_checkpoint
def slow_save(*args):
    save(*args)
    time.sleep(0.5)
cli_fit.save_checkpoint = slow_save
from sklearn_dbksvd.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _checkpoint_step(path):
    try:
        with np.load(path) as checkpoint:
            return int(checkpoint["step"])
    except (OSError, ValueError, KeyError, EOFError):
        return 0


def test_fit_killed_then_resumed_equals_uninterrupted(data_path, tmp_path):
    n_steps = 12
    args = ["fit", data_path, *FIT_ARGS, "--steps", n_steps, "-q"]
    reference = tmp_path / "reference.npz"
    assert main([*args, "-o", reference]) == 0

    checkpoints, output = tmp_path / "ckpt", tmp_path / "dict.npz"
    command = [*args, "--checkpoint", checkpoints, "-o", output]
    process = subprocess.Popen(
        [sys.executable, "-c", _SLOW_FIT, *map(str, command)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while _checkpoint_step(checkpoints / CHECKPOINT_NAME) < 3:
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    process.stderr.close()
    stopped_at = _checkpoint_step(checkpoints / CHECKPOINT_NAME)
    assert 3 <= stopped_at < n_steps
    assert not output.exists()

    resumed = run_cli(*command)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from step {stopped_at}" in resumed.stdout
    with np.load(reference) as a, np.load(output) as b:
        assert_array_equal(a["components_"], b["components_"])
        errors = [json.loads(str(f["state"]))["fitted"]["history_"] for f in (a, b)]
    assert len(errors[0]) == len(errors[1]) == n_steps
    assert [h["relative_error"] for h in errors[0]] == [
        h["relative_error"] for h in errors[1]
    ]


def test_encode_writes_csr_codes(data_path, dictionary_path, tmp_path):
    codes_path = tmp_path / "codes.npz"
    result = run_cli(
        "encode", dictionary_path, data_path, "-o", codes_path, "--chunk-size", 500
    )
    assert result.returncode == 0, result.stderr
    codes = sp.load_npz(codes_path)
    assert sp.issparse(codes) and codes.format == "csr"
    assert codes.shape == (N_SAMPLES, N_COMPONENTS)
    assert np.diff(codes.indptr).max() <= K
    assert codes.nnz > 0.9 * N_SAMPLES * K
    model = load_dictionary(dictionary_path).set_params(sparse_output=True)
    expected = model.transform(np.load(data_path))
    assert codes.nnz == expected.nnz
    # Chunks of 500 rows and one whole-array product round differently in BLAS.
    scale = abs(expected).max()
    np.testing.assert_allclose(codes.toarray(), expected.toarray(), atol=1e-5 * scale)


def test_report_writes_png(data_path, dictionary_path, tmp_path):
    report = tmp_path / "report.png"
    result = run_cli("report", dictionary_path, data_path, "-o", report)
    assert result.returncode == 0, result.stderr
    assert report.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_html_without_input(dictionary_path, tmp_path):
    report = tmp_path / "report.html"
    assert main(["report", str(dictionary_path), "-o", str(report)]) == 0
    page = report.read_text()
    assert "data:image/png;base64," in page and "mutual coherence" in page


def test_inputs_shards_npz_and_hdf5_give_the_same_dictionary(data_path, tmp_path):
    X = np.load(data_path)
    shards = tmp_path / "shards"
    shards.mkdir()
    for i, part in enumerate(np.array_split(X, 3)):
        np.save(shards / f"part{i}.npy", part)
    np.savez(tmp_path / "X.npz", embeddings=X)
    common = [*FIT_ARGS, "--steps", "3", "-q"]
    outputs = {}
    for name, source in [
        ("npy", data_path),
        ("shards", shards),
        ("npz", tmp_path / "X.npz"),
    ]:
        outputs[name] = tmp_path / f"{name}.npz"
        assert main(["fit", str(source), *common, "-o", str(outputs[name])]) == 0
    atoms = {name: np.load(path)["components_"] for name, path in outputs.items()}
    # .npy, its shards and .npz are all row-addressable: the same batches.
    assert_array_equal(atoms["npy"], atoms["shards"])
    assert_array_equal(atoms["npy"], atoms["npz"])


def test_hdf5_input(data_path, tmp_path):
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "X.h5", "w") as f:
        f["group/X"] = np.load(data_path)
    output = tmp_path / "h5.npz"
    argv = [
        "fit",
        str(tmp_path / "X.h5"),
        *FIT_ARGS,
        "--steps",
        "3",
        "-q",
        "-o",
        str(output),
    ]
    assert main(argv) == 0
    assert np.load(output)["components_"].shape == (N_COMPONENTS, N_FEATURES)


@pytest.fixture
def bad_inputs(tmp_path):
    np.save(tmp_path / "flat.npy", np.ones(10))
    with_nan = np.ones((300, N_FEATURES))
    with_nan[123, 4] = np.nan
    np.save(tmp_path / "nan.npy", with_nan)
    np.save(tmp_path / "narrow.npy", np.ones((50, N_FEATURES + 1)))
    (tmp_path / "exists.npz").write_bytes(b"keep me")
    return tmp_path


ERRORS = {
    "missing": ("fit {d}/nope.npy {fit} -o {d}/out.npz", "no such file"),
    "flat": ("fit {d}/flat.npy {fit} -o {d}/out.npz", "Expected 2D"),
    "nan": ("fit {d}/nan.npy {fit} -o {d}/out.npz", "contains NaN (row 123)"),
    "incompatible": (
        "encode {dictionary} {d}/narrow.npy -o {d}/out.npz",
        "has 17 features but the dictionary",
    ),
    "exists": ("fit {data} {fit} -o {d}/exists.npz", "exists; pass --force"),
    "too_many_nonzeros": (
        "fit {data} -m 4 -k 5 -o {d}/out.npz",
        "exceeds n_components",
    ),
    "not_a_dictionary": ("report {data} -o {d}/out.png", "not a readable .npz"),
    "report_format": ("report {dictionary} -o {d}/out.pdf", "written as .png or .html"),
}


def _error_argv(case, directory, data_path, dictionary_path):
    template, fragment = ERRORS[case]
    text = template.format(
        d=directory, fit=" ".join(FIT_ARGS), data=data_path, dictionary=dictionary_path
    )
    return text.split(), fragment


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_user_errors_are_one_line(case, bad_inputs, data_path, dictionary_path, capsys):
    argv, fragment = _error_argv(case, bad_inputs, data_path, dictionary_path)
    assert main(argv) == 1
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], captured.err
    assert not (bad_inputs / "out.npz").exists()
    assert (bad_inputs / "exists.npz").read_bytes() == b"keep me"


@pytest.mark.parametrize("case", ["nan", "exists"])
def test_user_errors_in_a_subprocess(case, bad_inputs, data_path, dictionary_path):
    argv, fragment = _error_argv(case, bad_inputs, data_path, dictionary_path)
    assert_user_error(run_cli(*argv), fragment)


def test_checkpoint_of_another_run_is_refused(data_path, tmp_path):
    checkpoint = tmp_path / "ckpt"
    base = [
        "fit",
        str(data_path),
        "--steps",
        "2",
        "-q",
        "--checkpoint",
        str(checkpoint),
    ]
    assert main([*base, *FIT_ARGS, "-o", str(tmp_path / "a.npz")]) == 0
    other = ["-m", "16", "-k", str(K), "--batch-size", "256", "--seed", "3"]
    assert main([*base, *other, "-o", str(tmp_path / "b.npz")]) == 1


def test_help_of_every_subcommand(capsys):
    for command, option in [
        ("fit", "--checkpoint-every"),
        ("demo", "--report"),
        ("encode", "--chunk-size"),
        ("report", "--max-samples"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert option in capsys.readouterr().out


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_write(target) as file:
        file.write(b"half")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [target]


def test_demo_prints_metrics_and_writes_report(tmp_path, capsys):
    report = tmp_path / "demo.png"
    argv = ["demo", "--n-patches", 1500, "-m", 32, "--epochs", 2, "--report", report]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "held-out variance explained" in out and str(report) in out
    assert report.read_bytes()[:4] == b"\x89PNG"


def test_matryoshka_flag(data_path, tmp_path, monkeypatch, capsys):
    import sklearn_dbksvd

    argv = ["fit", data_path, "-m", 32, "-k", 5, "--matryoshka", "--steps", 2, "-q"]
    if hasattr(sklearn_dbksvd, "MatryoshkaDBKSVD"):
        assert main([*argv, "-o", tmp_path / "m.npz"]) == 0
        assert str(np.load(tmp_path / "m.npz")["estimator"]) == "MatryoshkaDBKSVD"
        monkeypatch.delattr(sklearn_dbksvd, "MatryoshkaDBKSVD")
    assert main([*argv, "-o", tmp_path / "n.npz"]) == 1
    assert "needs sklearn_dbksvd.MatryoshkaDBKSVD" in capsys.readouterr().err


def test_fit_backend_cupy_without_cupy_is_one_line(tmp_path, capsys):
    pytest.importorskip("array_api_compat")
    try:
        import cupy  # noqa: F401
    except ImportError:
        pass
    else:  # pragma: no cover - a machine with a GPU runs the real thing
        pytest.skip("CuPy is installed")
    data = tmp_path / "x.npy"
    np.save(data, np.random.RandomState(0).randn(50, 4))
    code = main(["fit", str(data), "-m", "4", "-k", "1", "--steps", "1",
                 "--backend", "cupy", "-o", str(tmp_path / "d.npz")])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "cupy" in err.lower() and len(err.splitlines()) == 1
    assert not (tmp_path / "d.npz").exists()
