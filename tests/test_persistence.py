"""The persistence layer: atomic writes, directory lock, dictionary files."""

import errno
import json
import os
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
