"""Writing files and directories so that nothing is ever half-written.

The one atomic writer of the package, the one directory publisher, and the
lock of a directory that a run owns:

- :func:`atomic_file` / :func:`write_atomic`: a file is written to a
  temporary file beside its target, flushed, fsynced, renamed over the
  target, and the directory is fsynced. Readers see the old file or the
  complete new one, even if the process is killed or the disk fills up.
- :func:`atomic_directory`: a directory is built aside and renamed into
  place when complete. An existing directory is replaced only with
  ``overwrite=True`` and only when it is empty or holds the marker file of
  what this package writes there (``--force`` never removes anything the
  tool did not write).
- :func:`directory_lock`: an ``O_EXCL`` lock file holding the pid and host of
  the run. A lock left by a dead process of this host is taken over with a
  warning; a live one is refused with :class:`DirectoryLockedError`.
"""

import contextlib
import json
import os
import shutil
import socket
import tempfile
import time
import uuid
import warnings
from pathlib import Path

__all__ = [
    "DirectoryLockedError",
    "atomic_directory",
    "atomic_file",
    "directory_lock",
    "fsync_directory",
    "write_atomic",
]

LOCK_NAME = ".dbksvd.lock"


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_directory(path):
    """Flush the entries of directory ``path`` (a rename) to disk.

    Silently does nothing where the file system does not allow it.
    """
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _check_file_target(path, overwrite):
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path.parent}: no such directory for {path.name}.")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory.")
    if not overwrite and (path.exists() or path.is_symlink()):
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it.")


def _rename_if_absent(tmp, path):
    """Rename ``tmp`` to ``path`` unless ``path`` was created meanwhile."""
    try:
        # A hard link fails if path exists: no window between check and rename.
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(
            f"{path} exists; pass overwrite=True to replace it."
        ) from None
    except OSError:
        # File systems without hard links: check, then rename.
        if path.exists() or path.is_symlink():
            raise FileExistsError(
                f"{path} exists; pass overwrite=True to replace it."
            ) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


@contextlib.contextmanager
def atomic_file(path, *, overwrite=True):
    """Write ``path`` through a temporary file renamed over it at the end.

    The temporary file lives in the same directory, so the rename is atomic:
    ``path`` is the old file or the complete new one, never a half-written
    one. On any error (a full disk included) the temporary file is removed
    and ``path`` is left as it was.

    Parameters
    ----------
    path : str or path-like
        File to write; its directory must exist.
    overwrite : bool, default=True
        Replace an existing file; False raises ``FileExistsError``.

    Yields
    ------
    file : binary file object
        Write the contents here.
    """
    path = Path(path)
    _check_file_target(path, overwrite)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        # mkstemp makes the file private (0600); give it the usual mode.
        os.chmod(tmp, 0o666 & ~_umask())
        if overwrite:
            os.replace(tmp, path)
        else:
            _rename_if_absent(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_directory(path.parent)


def write_atomic(path, contents, *, overwrite=True):
    """Write ``contents`` to ``path`` atomically (see :func:`atomic_file`).

    Parameters
    ----------
    path : str or path-like
        File to write.
    contents : bytes, str or callable
        The bytes, a text (written as UTF-8), or ``contents(file)`` called on
        the binary file object (e.g. ``lambda f: np.save(f, array)``).
    overwrite : bool, default=True
        Replace an existing file.

    Returns
    -------
    path : pathlib.Path
    """
    path = Path(path)
    with atomic_file(path, overwrite=overwrite) as file:
        if callable(contents):
            contents(file)
        elif isinstance(contents, str):
            file.write(contents.encode("utf-8"))
        else:
            file.write(contents)
    return path


def _check_directory_target(directory, overwrite, marker):
    if not directory.parent.is_dir():
        raise FileNotFoundError(f"{directory.parent}: no such directory.")
    if not directory.exists() and not directory.is_symlink():
        return
    if not overwrite:
        raise FileExistsError(f"{directory} exists; pass overwrite=True to replace it.")
    if directory.is_symlink() or not directory.is_dir():
        raise FileExistsError(f"{directory} exists and is not a directory.")
    contents = {entry.name for entry in directory.iterdir()}
    if contents and (marker is None or marker not in contents):
        # Only what this package wrote (or nothing) is ever replaced.
        what = "" if marker is None else f" without {marker}"
        raise FileExistsError(
            f"{directory} is a non-empty directory{what}; refusing to replace "
            "it (it was not written by this tool)."
        )


def _publish(tmp, directory, overwrite):
    """Rename the complete ``tmp`` to ``directory``, replacing an old one.

    A directory cannot be renamed over a non-empty one, so an old one is
    first renamed aside and removed only once the new one is in place:
    ``directory`` is always absent, the old one or the new one, never a mix.
    """
    if not directory.exists():
        os.rename(tmp, directory)
        return
    if not overwrite:  # created since the check
        raise FileExistsError(f"{directory} exists; pass overwrite=True to replace it.")
    aside = directory.parent / f".{directory.name}.old.{uuid.uuid4().hex}"
    os.rename(directory, aside)
    try:
        os.rename(tmp, directory)
    except BaseException:
        os.rename(aside, directory)
        raise
    shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(directory, *, overwrite=False, marker=None):
    """Build a directory aside and rename it into place when complete.

    Parameters
    ----------
    directory : str or path-like
        Directory to create; its parent must exist.
    overwrite : bool, default=False
        Replace an existing directory, but only one that is empty or holds
        the file ``marker`` (what this package writes there); any other
        raises ``FileExistsError`` before anything is written.
    marker : str, default=None
        Name of the file that identifies a directory this package wrote.

    Yields
    ------
    tmp : pathlib.Path
        The directory to fill. Every file in it is fsynced before the rename.
        On any error it is removed and ``directory`` is left as it was.
    """
    directory = Path(directory)
    _check_directory_target(directory, overwrite, marker)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.tmp."))
    try:
        yield tmp
        for root, _, files in os.walk(tmp):
            for name in files:
                with open(os.path.join(root, name), "rb") as file:
                    os.fsync(file.fileno())
            fsync_directory(root)
        # mkdtemp makes the directory private (0700); give it the usual mode.
        os.chmod(tmp, 0o777 & ~_umask())
        _check_directory_target(directory, overwrite, marker)
        _publish(tmp, directory, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_directory(directory.parent)


# ----------------------------------------------------------------------
# Lock of a directory a run owns
# ----------------------------------------------------------------------
class DirectoryLockedError(FileExistsError):
    """Another live run holds the lock of a directory."""


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    except OSError:
        return True
    return True


def _read_lock(path):
    try:
        with open(path, encoding="utf-8") as file:
            holder = json.load(file)
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}


def _try_create_lock(path):
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return None
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        json.dump(holder, file)
        file.flush()
        os.fsync(file.fileno())
    return holder


@contextlib.contextmanager
def directory_lock(directory, *, name=LOCK_NAME):
    """Hold the lock of ``directory`` for the duration of a run.

    The lock is the file ``directory / name``, created with ``O_EXCL`` and
    holding ``{"pid", "host", "started"}``; it is removed on exit. A lock
    left by a process of this host that is no longer alive (a killed run) is
    taken over with a ``UserWarning``. A lock of a live process, or of
    another host (whose processes cannot be checked), raises
    :class:`DirectoryLockedError` naming the holder.

    Parameters
    ----------
    directory : str or path-like
        An existing directory.
    name : str, default=".dbksvd.lock"
        File name of the lock.

    Yields
    ------
    path : pathlib.Path
        The lock file.
    """
    path = Path(directory) / name
    for _ in range(3):
        holder = _try_create_lock(path)
        if holder is not None:
            break
        other = _read_lock(path)
        pid, host = other.get("pid"), other.get("host")
        stale = (
            isinstance(pid, int)
            and host == socket.gethostname()
            and pid != os.getpid()
            and not _pid_alive(pid)
        )
        if not stale:
            who = f"process {pid} on {host}" if pid else "another run"
            raise DirectoryLockedError(
                f"{directory} is in use by {who} (lock {path}); wait for it to "
                "finish, or delete the lock file if that run is gone."
            )
        warnings.warn(
            f"taking over the lock {path} of process {pid}, which is no longer "
            "running.",
            UserWarning,
            stacklevel=3,
        )
        # Rename, not unlink: of two runs taking over at once, one wins.
        aside = path.with_name(f"{name}.stale.{uuid.uuid4().hex}")
        with contextlib.suppress(FileNotFoundError):
            os.rename(path, aside)
            os.unlink(aside)
    else:
        raise DirectoryLockedError(f"could not take the lock {path}.")
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            if _read_lock(path).get("pid") == os.getpid():
                os.unlink(path)
