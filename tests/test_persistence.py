"""The persistence layer: atomic writes, directory lock, dictionary files."""

import errno
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from sklearn_dbksvd.persistence import (
    DirectoryLockedError,
    atomic_directory,
    atomic_file,
    directory_lock,
    write_atomic,
)


# ----------------------------------------------------------------------
# Atomic writes
# ----------------------------------------------------------------------
def test_write_atomic_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a.bin"
    write_atomic(path, b"old")
    write_atomic(path, "new")
    assert path.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]
    with pytest.raises(FileExistsError, match="exists"):
        write_atomic(path, b"x", overwrite=False)
    assert path.read_bytes() == b"new"


def test_atomic_file_error_keeps_old_file(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"old")

    def full_disk(file):
        file.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        write_atomic(path, full_disk)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_atomic_file_mode_follows_umask(tmp_path):
    mask = os.umask(0o022)
    try:
        with atomic_file(tmp_path / "f") as file:
            file.write(b"x")
    finally:
        os.umask(mask)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o644


def test_atomic_directory_publishes_and_replaces_only_its_own(tmp_path):
    target = tmp_path / "out"
    with atomic_directory(target, marker="cfg.json") as tmp:
        (tmp / "cfg.json").write_text("1")
    assert (target / "cfg.json").read_text() == "1"
    with pytest.raises(FileExistsError, match="overwrite"):
        with atomic_directory(target, marker="cfg.json"):
            pass
    with atomic_directory(target, overwrite=True, marker="cfg.json") as tmp:
        (tmp / "cfg.json").write_text("2")
    assert (target / "cfg.json").read_text() == "2"
    # A directory the tool did not write is never replaced.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="refusing"):
        with atomic_directory(mine, overwrite=True, marker="cfg.json"):
            pass
    assert (mine / "notes.txt").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "out"]


def test_atomic_directory_failure_leaves_nothing(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(OSError, match="No space"):
        with atomic_directory(target) as tmp:
            (tmp / "half").write_bytes(b"x")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------
# Lock
# ----------------------------------------------------------------------
def test_lock_is_exclusive_and_released(tmp_path):
    with directory_lock(tmp_path) as lock:
        holder = json.loads(lock.read_text())
        assert holder["pid"] == os.getpid()
        # This process again (or any live one) is refused.
        lock.write_text(json.dumps({**holder, "pid": os.getppid()}))
        with pytest.raises(DirectoryLockedError, match="in use by process"):
            with directory_lock(tmp_path):
                pass
        lock.write_text(json.dumps(holder))
    assert not lock.exists()


def test_lock_of_dead_process_is_taken_over(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # a pid that no longer runs
    import socket

    (tmp_path / ".dbksvd.lock").write_text(
        json.dumps({"pid": child.pid, "host": socket.gethostname()})
    )
    with pytest.warns(UserWarning, match="no longer running"):
        with directory_lock(tmp_path) as lock:
            assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not (tmp_path / ".dbksvd.lock").exists()


def test_lock_of_other_host_is_refused(tmp_path):
    (tmp_path / ".dbksvd.lock").write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    with pytest.raises(DirectoryLockedError, match="elsewhere"):
        with directory_lock(tmp_path):
            pass
    assert (tmp_path / ".dbksvd.lock").exists()


# ----------------------------------------------------------------------
# Dictionary files
# ----------------------------------------------------------------------
from numpy.testing import assert_array_equal  # noqa: E402

from sklearn_dbksvd import (  # noqa: E402
    DBKSVDDictionaryLearning,
    MatryoshkaDBKSVD,
    load_dictionary,
    save_dictionary,
)
from sklearn_dbksvd.datasets import make_sparse_dictionary_problem  # noqa: E402

PROVENANCE = {
    "model_name": "tiny",
    "model_fingerprint": "ab" * 32,
    "module": "model.layers.1",
    "hook_name": "blocks.1.hook_resid_post",
    "layer": 1,
    "context_size": 64,
    "prepend_bos": True,
    "dtype": "float16",
    "harvest": {"path": "/data/h", "fingerprint": "cd" * 32, "n_rows": 1000},
}


@pytest.fixture(scope="module")
def data():
    X, _, _ = make_sparse_dictionary_problem(
        600, 12, 24, 3, dtype=np.float32, random_state=0
    )
    return X + 0.5  # a nonzero mean, for with_mean


def _fitted(cls, X, **params):
    settings = dict(
        n_components=24,
        n_nonzero_coefs=3,
        batch_size=200,
        max_iter=2,
        with_mean=True,
        random_state=np.random.RandomState(5),  # not JSON: dropped
        callback=lambda info: None,  # not data: dropped
    )
    settings.update(params)
    return cls(**settings).fit(X)


ESTIMATORS = [
    (DBKSVDDictionaryLearning, {}),
    (MatryoshkaDBKSVD, {"group_sizes": (8, 16)}),
]


@pytest.mark.parametrize("cls, params", ESTIMATORS)
def test_round_trip_restores_the_fitted_state(cls, params, data, tmp_path):
    model = _fitted(cls, data, **params)
    model.provenance_ = PROVENANCE
    path = save_dictionary(model, tmp_path / "d.npz")
    loaded = load_dictionary(path)
    assert type(loaded) is cls
    for name in ("components_", "mean_"):
        assert_array_equal(getattr(loaded, name), getattr(model, name))
        assert getattr(loaded, name).dtype == np.float32
    for name in ("n_features_in_", "n_iter_", "n_steps_", "n_samples_seen_"):
        assert getattr(loaded, name) == getattr(model, name)
    assert loaded.history_ == json.loads(json.dumps(model.history_))
    assert loaded.provenance_ == PROVENANCE
    expected = model.get_params()
    expected.update(random_state=None, callback=None)
    assert loaded.get_params() == expected
    assert_array_equal(loaded.transform(data), model.transform(data))
    # The file is plain npz: no pickle needed to read it.
    with np.load(path, allow_pickle=False) as archive:
        assert int(archive["format"]) == 2
        state = json.loads(str(archive["state"]))
    assert state["dropped_params"] == ["callback", "random_state"]


@pytest.mark.parametrize("cls, params", ESTIMATORS)
def test_partial_fit_after_load_continues_bit_for_bit(cls, params, data, tmp_path):
    model = _fitted(cls, data, **params)
    loaded = load_dictionary(save_dictionary(model, tmp_path / "d.npz"))
    for batch in np.array_split(data, 3):
        model.partial_fit(batch)
        loaded.partial_fit(batch)
    assert_array_equal(loaded.components_, model.components_)
    assert loaded.n_steps_ == model.n_steps_


def test_fit_after_load_equals_a_fresh_fit(data, tmp_path):
    model = _fitted(DBKSVDDictionaryLearning, data, random_state=7, callback=None)
    loaded = load_dictionary(save_dictionary(model, tmp_path / "d.npz"))
    refit = loaded.fit(data[:300])
    fresh = DBKSVDDictionaryLearning(**model.get_params()).fit(data[:300])
    assert_array_equal(refit.components_, fresh.components_)


def test_feature_names_round_trip(data, tmp_path):
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(data, columns=[f"f{i}" for i in range(data.shape[1])])
    model = DBKSVDDictionaryLearning(24, n_nonzero_coefs=3, max_iter=1).fit(frame)
    loaded = load_dictionary(save_dictionary(model, tmp_path / "d.npz"))
    assert_array_equal(loaded.feature_names_in_, model.feature_names_in_)
    assert_array_equal(loaded.transform(frame), model.transform(frame))


def test_save_refuses_to_overwrite_and_unfitted(data, tmp_path):
    path = tmp_path / "d.npz"
    path.write_bytes(b"keep")
    model = _fitted(DBKSVDDictionaryLearning, data)
    with pytest.raises(FileExistsError):
        save_dictionary(model, path)
    assert path.read_bytes() == b"keep"
    save_dictionary(model, path, overwrite=True)
    with pytest.raises(Exception, match="not fitted"):
        save_dictionary(DBKSVDDictionaryLearning(), tmp_path / "e.npz")
    with pytest.raises(TypeError, match="expected a fitted"):
        save_dictionary(object(), tmp_path / "e.npz")


def _format_1_file(model, path):
    """A dictionary as ``dbksvd fit`` wrote it before format 2."""

    def default(value):
        return value.tolist() if isinstance(value, np.ndarray) else repr(value)

    np.savez(
        path,
        components_=model.components_,
        mean_=model.mean_,
        estimator=np.array(type(model).__name__),
        params=np.array(json.dumps(model.get_params(deep=False), default=default)),
        history_=np.array(json.dumps(model.history_)),
        n_steps_=np.array(model.n_steps_),
        n_iter_=np.array(model.n_iter_),
        n_samples_seen_=np.array(model.n_samples_seen_),
        version=np.array("0.1.0.dev0"),
        format=np.array(1),
    )


def test_format_1_files_still_load(data, tmp_path):
    model = _fitted(DBKSVDDictionaryLearning, data, callback=None)
    _format_1_file(model, tmp_path / "old.npz")
    loaded = load_dictionary(tmp_path / "old.npz")
    # The repr of the RandomState instance is dropped, not passed on.
    assert loaded.random_state is None and loaded.n_components == 24
    assert loaded.n_steps_ == model.n_steps_
    assert_array_equal(loaded.transform(data), model.transform(data))
    loaded.partial_fit(data[:100])  # continues, with a fresh generator
    loaded.fit(data[:200])  # and fits: parameters are values


def _damaged(kind, good, tmp_path):
    """A damaged copy of the dictionary file ``good``."""
    raw = good.read_bytes()
    path = tmp_path / f"{kind}.npz"
    if kind == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif kind == "bit_flipped":
        # A bit of the atoms: the zip's CRC catches it.
        flipped = bytearray(raw)
        offset = raw.index(b"components_.npy") + 200
        flipped[offset] ^= 0x10
        path.write_bytes(bytes(flipped))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "one_array":
        np.save(path.with_suffix(".npy"), np.ones((3, 3)))
        path.with_suffix(".npy").rename(path)
    elif kind == "bad_header":
        with np.load(good) as archive:
            members = {name: archive[name] for name in archive.files}
        np.savez(path, **members)
        raw = bytearray(path.read_bytes())
        start = raw.index(b"{'descr'")
        raw[start : start + 8] = b"{'descr("
        path.write_bytes(bytes(raw))
    elif kind == "nan_atom":
        with np.load(good) as archive:
            members = {name: archive[name] for name in archive.files}
        members["components_"] = members["components_"].copy()
        members["components_"][5, 2] = np.nan
        np.savez(path, **members)
    elif kind == "newer":
        with np.load(good) as archive:
            members = {name: archive[name] for name in archive.files}
        members["format"] = np.array(99)
        np.savez(path, **members)
    elif kind == "bad_state":
        with np.load(good) as archive:
            members = {name: archive[name] for name in archive.files}
        members["state"] = np.array("{not json")
        np.savez(path, **members)
    return path


DAMAGE = {
    "truncated": "not a readable .npz",
    "bit_flipped": "not a readable .npz",
    "empty": "not a readable .npz",
    "one_array": "not a readable .npz",
    "bad_header": "not a readable .npz",
    "nan_atom": "NaN or infinity in 1 atom(s) (first: atom 5)",
    "newer": "format 99",
    "bad_state": "'state' is not valid JSON",
}


@pytest.fixture(scope="module")
def good_file(data, tmp_path_factory):
    path = tmp_path_factory.mktemp("good") / "d.npz"
    return save_dictionary(_fitted(DBKSVDDictionaryLearning, data), path)


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damaged_dictionary_is_a_value_error_naming_the_file(kind, good_file, tmp_path):
    path = _damaged(kind, good_file, tmp_path)
    with pytest.raises(ValueError, match=re.escape(DAMAGE[kind])) as info:
        load_dictionary(path)
    assert str(path) in str(info.value)
    assert len(str(info.value).splitlines()) == 1


# ----------------------------------------------------------------------
# Files of the command line
# ----------------------------------------------------------------------
def test_dbksvd_fit_file_continues_in_python(data, tmp_path):
    from sklearn_dbksvd.cli import main

    np.save(tmp_path / "X.npy", data)
    argv = ["fit", tmp_path / "X.npy", "-m", 24, "-k", 3, "--batch-size", 200]
    argv += ["--steps", 4, "--seed", 2, "--with-mean", "-q", "-o", tmp_path / "d.npz"]
    assert main([str(arg) for arg in argv]) == 0
    loaded = load_dictionary(tmp_path / "d.npz")
    reference = DBKSVDDictionaryLearning(
        24,
        n_nonzero_coefs=3,
        batch_size=200,
        max_steps=4,
        max_iter=2,
        random_state=2,
        with_mean=True,
    ).fit(data)
    assert_array_equal(loaded.components_, reference.components_)
    for batch in np.array_split(data[:300], 2):
        loaded.partial_fit(batch)
        reference.partial_fit(batch)
    assert_array_equal(loaded.components_, reference.components_)


@pytest.mark.parametrize("kind", ["truncated"])
def test_damaged_dictionary_is_one_line_in_the_cli(kind, good_file, data, tmp_path):
    path = _damaged(kind, good_file, tmp_path)
    np.save(tmp_path / "X.npy", data)
    result = subprocess.run(
        [sys.executable, "-m", "sklearn_dbksvd", "encode", str(path)]
        + [str(tmp_path / "X.npy"), "-o", str(tmp_path / "codes.npz")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0], result.stderr
    assert not (tmp_path / "codes.npz").exists()


@pytest.mark.parametrize("kind", ["bit_flipped", "bad_header", "nan_atom", "empty"])
def test_damaged_dictionary_is_one_line_in_process(
    kind, good_file, data, tmp_path, capsys
):
    path = _damaged(kind, good_file, tmp_path)
    np.save(tmp_path / "X.npy", data)
    argv = ["encode", path, tmp_path / "X.npy", "-o", tmp_path / "codes.npz"]
    _one_line_error(_run(argv, capsys), str(path))
    assert not (tmp_path / "codes.npz").exists()


# ----------------------------------------------------------------------
# Checkpoints and inputs of dbksvd fit
# ----------------------------------------------------------------------
def _fit_argv(data_path, checkpoint, output, steps=3):
    argv = ["fit", data_path, "-m", 24, "-k", 3, "--batch-size", 200, "--seed", 1]
    argv += ["--steps", steps, "-q", "--checkpoint", checkpoint, "-o", output]
    return [str(arg) for arg in argv]


class _Result:
    def __init__(self, returncode, captured):
        self.returncode = returncode
        self.stdout, self.stderr = captured.out, captured.err


def _run(argv, capsys):
    """The command line in this process (a subprocess test is below)."""
    from sklearn_dbksvd.cli import main

    capsys.readouterr()
    code = main([str(arg) for arg in argv])
    return _Result(code, capsys.readouterr())


def _one_line_error(result, fragment):
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert fragment in lines[0], lines[0]


def test_resume_on_changed_contents_is_refused(data, tmp_path, capsys):
    from sklearn_dbksvd.cli import main

    path, checkpoint = tmp_path / "X.npy", tmp_path / "ckpt"
    np.save(path, data)
    assert main(_fit_argv(path, checkpoint, tmp_path / "a.npz")) == 0
    # Same path, shape and dtype; other rows.
    np.save(path, data[::-1].copy())
    result = _run(_fit_argv(path, checkpoint, tmp_path / "b.npz"), capsys)
    _one_line_error(result, "made on other contents of")
    assert not (tmp_path / "b.npz").exists()


def test_fingerprint_sees_a_change_inside_a_large_file(tmp_path):
    from sklearn_dbksvd.persistence import fingerprint_path

    path = tmp_path / "big.bin"
    path.write_bytes(bytes(5 << 20))
    before = fingerprint_path(path)
    stat = path.stat()
    with open(path, "r+b") as file:  # one byte, in a sampled block
        file.seek(path.stat().st_size - 10)
        file.write(b"\x01")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same mtime
    assert fingerprint_path(path) != before
    # A directory: any shard rewritten, added or removed.
    shards = tmp_path / "shards"
    shards.mkdir()
    np.save(shards / "0.npy", np.ones((4, 3)))
    first = fingerprint_path(shards)
    np.save(shards / "1.npy", np.ones((4, 3)))
    assert fingerprint_path(shards) != first
    (shards / ".dbksvd.lock").write_text("{}")  # hidden files do not count
    second = fingerprint_path(shards)
    assert fingerprint_path(shards) == second


@pytest.mark.parametrize("kind", ["truncated", "bit_flipped", "empty"])
def test_damaged_checkpoint_is_one_line(kind, data, tmp_path, capsys):
    from sklearn_dbksvd.cli import main
    from sklearn_dbksvd.cli._resume import CHECKPOINT_NAME

    path, checkpoint = tmp_path / "X.npy", tmp_path / "ckpt"
    np.save(path, data)
    assert main(_fit_argv(path, checkpoint, tmp_path / "a.npz")) == 0
    file = checkpoint / CHECKPOINT_NAME
    raw = bytearray(file.read_bytes())
    if kind == "truncated":
        raw = raw[: len(raw) // 3]
    elif kind == "bit_flipped":
        raw[raw.index(b"components.npy") + 300] ^= 0x01
    else:
        raw = b""
    file.write_bytes(bytes(raw))
    result = _run(_fit_argv(path, checkpoint, tmp_path / "b.npz"), capsys)
    _one_line_error(result, str(file))


def test_checkpoint_in_use_is_refused_and_stale_lock_taken_over(data, tmp_path, capsys):
    import socket

    path, checkpoint = tmp_path / "X.npy", tmp_path / "ckpt"
    np.save(path, data)
    checkpoint.mkdir()
    lock = checkpoint / ".dbksvd.lock"
    # A live process of this host (this test) holds it.
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    result = _run(_fit_argv(path, checkpoint, tmp_path / "a.npz"), capsys)
    _one_line_error(result, "is in use by process")
    assert not (tmp_path / "a.npz").exists()
    # A killed run's lock.
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    lock.write_text(json.dumps({"pid": child.pid, "host": socket.gethostname()}))
    with pytest.warns(UserWarning, match="no longer running"):
        result = _run(_fit_argv(path, checkpoint, tmp_path / "a.npz"), capsys)
    assert result.returncode == 0, result.stderr
    assert not lock.exists()


def test_format_1_checkpoint_resumes(data, tmp_path, monkeypatch):
    import sklearn_dbksvd.cli._resume as resume
    from sklearn_dbksvd.cli import main

    path = tmp_path / "X.npy"
    np.save(path, data)
    assert main(_fit_argv(path, tmp_path / "ref", tmp_path / "ref.npz", 5)) == 0
    # A run stopped after its third step, as by kill -9.
    save = resume.save_checkpoint

    def save_then_stop(file, state, config):
        save(file, state, config)
        if state.step == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(resume, "save_checkpoint", save_then_stop)
    checkpoint = tmp_path / "ckpt"
    argv = _fit_argv(path, checkpoint, tmp_path / "b.npz", 5)
    assert main(argv) == 130
    monkeypatch.setattr(resume, "save_checkpoint", save)
    # Rewrite the checkpoint as the earlier version wrote it.
    file = checkpoint / resume.CHECKPOINT_NAME
    with np.load(file) as archive:
        members = {name: archive[name] for name in archive.files}
    assert int(members["step"]) == 3
    config = json.loads(str(members["config"]))
    del config["input"]["fingerprint"]
    old = {name: members[name] for name in ("components", "step", "done", "history")}
    old["config"] = np.array(json.dumps(config))
    for prefix, name in (("rng", "random_state"), ("epoch_rng", "epoch_random_state")):
        state = json.loads(str(members[name]))
        keys = np.frombuffer(bytes.fromhex(state["keys"]), dtype="<u4")
        old[f"{prefix}_keys"] = keys.astype(np.uint32)
        old[f"{prefix}_rest"] = np.array(
            [state["pos"], state["has_gauss"], state["cached_gaussian"]]
        )
        old[f"{prefix}_name"] = np.array(state["bit_generator"])
    np.savez(file, **old)
    assert main(argv) == 0
    with np.load(tmp_path / "ref.npz") as a, np.load(tmp_path / "b.npz") as b:
        assert_array_equal(a["components_"], b["components_"])


@pytest.mark.parametrize(
    "contents, fragment",
    [
        (b"", "not a readable .npy"),
        (b"\x93NUMPY\x01\x00v\x00{'descr(", "not a readable"),
    ],
)
def test_damaged_npy_input_is_one_line(contents, fragment, tmp_path, capsys):
    (tmp_path / "X.npy").write_bytes(contents)
    argv = ["fit", str(tmp_path / "X.npy"), "-m", "4", "-k", "1", "-q"]
    result = _run([*argv, "-o", str(tmp_path / "d.npz")], capsys)
    _one_line_error(result, fragment)


# ----------------------------------------------------------------------
# SAELens directories
# ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def sae_model(data):
    model = DBKSVDDictionaryLearning(
        24,
        n_nonzero_coefs=3,
        batch_size=200,
        max_iter=1,
        with_mean=True,
        random_state=0,
    ).fit(data)
    model.provenance_ = PROVENANCE
    return model


def _sae(model, directory, **kwargs):
    pytest.importorskip("safetensors")
    from sklearn_dbksvd.interop import save_sae

    return save_sae(model, directory, **kwargs)


def test_sae_directory_carries_the_provenance(sae_model, data, tmp_path):
    from sklearn_dbksvd.interop import load_sae

    path = _sae(sae_model, tmp_path / "sae")  # no hook or model typed
    cfg = json.loads((path / "cfg.json").read_text())
    for config in (cfg, cfg["metadata"]):
        assert config["model_name"] == "tiny"
        assert config["hook_name"] == "blocks.1.hook_resid_post"
        assert config["hook_layer"] == 1
        assert config["context_size"] == 64
        assert config["prepend_bos"] is True
    assert cfg["sklearn_dbksvd"]["provenance"] == PROVENANCE
    loaded = load_sae(path)
    assert loaded.provenance_ == PROVENANCE
    assert_array_equal(loaded.mean_, sae_model.mean_)
    assert_array_equal(loaded.transform(data), sae_model.transform(data))
    # The generator travels too: partial_fit continues as the original's.
    copy = load_dictionary(save_dictionary(sae_model, tmp_path / "d.npz"))
    loaded.partial_fit(data[:200])
    copy.partial_fit(data[:200])
    assert_array_equal(loaded.components_, copy.components_)


def test_sae_other_hook_than_the_provenance_warns(sae_model, tmp_path):
    with pytest.warns(UserWarning, match="but the dictionary was fitted on the activations of hook_name='blocks.1.hook_resid"):
        path = _sae(sae_model, tmp_path / "sae", hook_name="blocks.2.hook_resid_post")
    assert json.loads((path / "cfg.json").read_text())["hook_layer"] == 2
    plain = DBKSVDDictionaryLearning(8, n_nonzero_coefs=2, max_iter=1).fit(
        np.eye(8, 12, dtype=np.float32).repeat(4, axis=0)
    )
    with pytest.raises(ValueError, match="records no provenance"):
        _sae(plain, tmp_path / "plain")


def _edit(path, cfg=None, tensors=None):
    import safetensors.numpy

    config = json.loads((path / "cfg.json").read_text())
    if cfg is not None:
        cfg(config)
        (path / "cfg.json").write_text(json.dumps(config))
    if tensors is not None:
        weights = safetensors.numpy.load_file(path / "sae_weights.safetensors")
        tensors(weights)
        safetensors.numpy.save_file(weights, path / "sae_weights.safetensors")


def _set(key, value):
    def edit(mapping):
        mapping[key] = value

    return edit


def _nan_b_dec(weights):
    weights["b_dec"] = weights["b_dec"].copy()
    weights["b_dec"][3] = np.nan


EDITS = {
    "b_dec_shape": (
        None,
        lambda w: w.update(b_dec=w["b_dec"][:-1].copy()),
        "b_dec has shape",
    ),
    "b_dec_nan": (None, _nan_b_dec, "b_dec holds NaN"),
    "b_dec_missing": (None, lambda w: w.pop("b_dec"), "no tensor 'b_dec'"),
    "d_in": (_set("d_in", 13), None, "says d_sae=48, d_in=13"),
    "d_sae": (_set("d_sae", 24), None, "says d_sae=24"),
    "max_iterations_bad": (_set("max_iterations", 0), None, "max_iterations=0"),
    "missing_d_in": (lambda c: c.pop("d_in"), None, "lacks d_in"),
    "missing_block_key": (
        lambda c: c["sklearn_dbksvd"].pop("n_components"),
        None,
        "lacks n_components",
    ),
    "not_json": (None, None, "is not valid JSON"),
}


@pytest.mark.parametrize("case", sorted(EDITS))
def test_edited_sae_directory_is_a_clear_error(case, sae_model, tmp_path):
    from sklearn_dbksvd.interop import load_sae

    path = _sae(sae_model, tmp_path / "sae")
    cfg, tensors, fragment = EDITS[case]
    if case == "not_json":
        (path / "cfg.json").write_text("{")
    else:
        _edit(path, cfg, tensors)
    with pytest.raises(ValueError, match=re.escape(fragment)):
        load_sae(path)


def test_edited_max_iterations_is_honoured(sae_model, data, tmp_path):
    from sklearn_dbksvd.interop import load_sae

    path = _sae(sae_model, tmp_path / "sae")
    _edit(path, _set("max_iterations", 5))
    with pytest.warns(UserWarning, match="encoding with 5 selections"):
        loaded = load_sae(path)
    codes = loaded.transform(data)
    assert (np.count_nonzero(codes, axis=1) <= 5).all()
    assert np.count_nonzero(codes, axis=1).max() == 5
    reference = DBKSVDDictionaryLearning(**sae_model.get_params())
    reference.set_params(transform_n_nonzero_coefs=5)
    for name in ("components_", "mean_", "n_features_in_"):
        setattr(reference, name, getattr(sae_model, name))
    assert_array_equal(codes, reference.transform(data))


def test_load_torch_applies_the_saved_mean(sae_model, data, tmp_path):
    torch = pytest.importorskip("torch")
    from sklearn_dbksvd.interop import load_torch

    encoder = load_torch(_sae(sae_model, tmp_path / "sae"))
    codes = encoder.encode(torch.from_numpy(data)).numpy()
    expected = sae_model.transform(data)
    signed = codes[:, :24] - codes[:, 24:]
    np.testing.assert_allclose(signed, expected, atol=1e-4)


# ----------------------------------------------------------------------
# dbksvd export
# ----------------------------------------------------------------------
def _export(argv, capsys):
    return _run(["export", *argv], capsys)


def test_export_fills_in_the_provenance_and_warns_on_another_hook(
    sae_model, tmp_path, capsys
):
    pytest.importorskip("safetensors")
    dictionary = save_dictionary(sae_model, tmp_path / "d.npz")
    result = _export([dictionary, "-o", tmp_path / "sae"], capsys)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert (cfg["hook_name"], cfg["model_name"], cfg["context_size"]) == (
        "blocks.1.hook_resid_post",
        "tiny",
        64,
    )
    result = _export(
        [
            dictionary,
            "-o",
            tmp_path / "sae2",
            "--hook-name",
            "blocks.4.hook_resid_post",
        ],
        capsys,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dbksvd export: warning:")
    assert "blocks.1.hook_resid_post" in lines[0]
    assert json.loads((tmp_path / "sae2" / "cfg.json").read_text())["hook_layer"] == 4


def test_export_without_provenance_needs_the_hook(data, tmp_path, capsys):
    pytest.importorskip("safetensors")
    model = DBKSVDDictionaryLearning(24, n_nonzero_coefs=3, max_iter=1).fit(data)
    dictionary = save_dictionary(model, tmp_path / "d.npz")
    result = _export([dictionary, "-o", tmp_path / "sae"], capsys)
    _one_line_error(result, "pass --hook-name and --model-name")
    assert not (tmp_path / "sae").exists()


def test_export_onto_a_full_disk_leaves_nothing(
    sae_model, tmp_path, monkeypatch, capsys
):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    from sklearn_dbksvd.cli import main

    dictionary = save_dictionary(sae_model, tmp_path / "d.npz")
    real = safetensors_numpy.save_file

    def fill_the_disk(tensors, filename, metadata=None):
        real(tensors, filename, metadata=metadata)  # written, then no room
        raise OSError(errno.ENOSPC, "No space left on device", str(filename))

    monkeypatch.setattr(safetensors_numpy, "save_file", fill_the_disk)
    assert main(["export", str(dictionary), "-o", str(tmp_path / "sae")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz"]


def test_fit_onto_a_full_disk_is_one_line_and_leaves_nothing(
    data, tmp_path, monkeypatch, capsys
):
    from sklearn_dbksvd.persistence import _dictionary

    def no_space(file, **arrays):
        file.write(b"part of the archive")
        raise OSError(errno.ENOSPC, "No space left on device")

    np.save(tmp_path / "X.npy", data)
    monkeypatch.setattr(_dictionary.np, "savez", no_space)
    argv = ["fit", tmp_path / "X.npy", "-m", 24, "-k", 3, "--steps", 1, "-q"]
    result = _run([*argv, "-o", tmp_path / "d.npz"], capsys)
    _one_line_error(result, "No space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["X.npy"]


def test_write_atomic_without_hard_links(tmp_path, monkeypatch):
    def no_links(source, target):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    write_atomic(tmp_path / "a", b"1", overwrite=False)
    assert (tmp_path / "a").read_bytes() == b"1"
    with pytest.raises(FileExistsError):
        write_atomic(tmp_path / "a", b"2", overwrite=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_fit_force_replaces_only_a_dictionary(data, good_file, tmp_path, capsys):
    np.save(tmp_path / "X.npy", data)
    notes = tmp_path / "notes.npz"
    np.savez(notes, results=np.arange(3))  # the user's own archive
    argv = ["fit", tmp_path / "X.npy", "-m", 24, "-k", 3, "--steps", 1, "-q"]
    _one_line_error(
        _run([*argv, "-o", notes, "--force"], capsys), "not a dictionary file"
    )
    assert_array_equal(np.load(notes)["results"], np.arange(3))
    _one_line_error(
        _run([*argv, "-o", tmp_path / "X.npy", "--force"], capsys), "is the input"
    )
    assert_array_equal(np.load(tmp_path / "X.npy"), data)
    old = tmp_path / "old.npz"
    old.write_bytes(good_file.read_bytes())
    assert _run([*argv, "-o", old, "--force"], capsys).returncode == 0
    assert load_dictionary(old).n_steps_ == 1


def test_checkpoint_inside_the_input_directory_resumes(data, tmp_path, capsys):
    shards = tmp_path / "shards"
    shards.mkdir()
    np.save(shards / "0.npy", data[:300])
    np.save(shards / "1.npy", data[300:])
    argv = _fit_argv(shards, shards / "ckpt", tmp_path / "a.npz")
    assert _run(argv, capsys).returncode == 0
    again = _run(_fit_argv(shards, shards / "ckpt", tmp_path / "b.npz"), capsys)
    assert again.returncode == 0, again.stderr
    assert "resumed from step 3" in again.stdout


def test_sae_directory_of_format_1_loads(sae_model, data, tmp_path):
    from sklearn_dbksvd.interop import load_sae

    path = _sae(sae_model, tmp_path / "sae")

    def as_format_1(config):
        ours = config["sklearn_dbksvd"]
        ours["format"] = 1
        del ours["random_state"], ours["provenance"]

    _edit(path, as_format_1)
    loaded = load_sae(path)
    assert loaded.provenance_ is None
    assert_array_equal(loaded.transform(data), sae_model.transform(data))
    loaded.partial_fit(data[:100])  # a generator seeded from random_state
    assert loaded.n_steps_ == sae_model.n_steps_ + 1
