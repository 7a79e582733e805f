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


@pytest.mark.parametrize("kind", ["truncated", "bit_flipped", "bad_header", "nan_atom"])
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
