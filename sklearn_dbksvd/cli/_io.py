"""Files of the ``dbksvd`` command line: inputs, dictionaries, atomic writes."""

import contextlib
import json
from pathlib import Path

import numpy as np

from .. import persistence
from .._data import RowConcatenation, check_lazy_array
from ..persistence import atomic_file

_HDF5_SUFFIXES = {".h5", ".hdf5", ".hdf", ".he5"}


class UserError(Exception):
    """A mistake of the user: reported as one line, never as a traceback."""


def to_json(obj):
    """JSON text of ``obj`` under the package's one JSON policy.

    See :func:`sklearn_dbksvd.persistence.to_json_value`: NumPy scalars and
    arrays become plain numbers and lists, non-finite floats null.
    """
    return json.dumps(persistence.to_json_value(obj), sort_keys=True)


# ----------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------
def _pick(names, key, path, what):
    """The member ``key`` of a container, or its only member."""
    if key is not None:
        if key not in names:
            raise UserError(f"{path} has no {what} {key!r}; it has {sorted(names)}.")
        return key
    if len(names) == 1:
        return next(iter(names))
    raise UserError(
        f"{path} holds several {what}s {sorted(names)}; choose one with --key."
    )


def _open_hdf5(path, key):
    try:
        import h5py
    except ImportError as error:
        raise UserError(f"reading {path} needs h5py (pip install h5py).") from error
    handle = h5py.File(path, "r")
    names = []
    handle.visititems(
        lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None
    )
    # The file stays open for the life of the process: datasets read lazily.
    return handle[_pick(names, key, path, "dataset")]


def _open_zarr(path, key):
    try:
        import zarr
    except ImportError as error:
        raise UserError(f"reading {path} needs zarr (pip install zarr).") from error
    store = zarr.open(str(path), mode="r")
    if hasattr(store, "shape"):
        return store
    names = [name for name, _ in store.arrays()]
    return store[_pick(names, key, path, "array")]


def _load_npy(path):
    """The array of a ``.npy`` file, memory-mapped; damage is a :class:`UserError`."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as error:  # noqa: BLE001 - EOFError, tokenize, ValueError...
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(
            f"{path} is not a readable .npy file ({reason}); it is empty, "
            "truncated or damaged."
        ) from error


def _open_shards(path):
    shards = sorted(path.glob("*.npy"))
    if not shards:
        raise UserError(f"{path} is a directory without .npy shards.")
    arrays = [_load_npy(shard) for shard in shards]
    try:
        return RowConcatenation(arrays)
    except ValueError as error:
        raise UserError(f"{path}: {error}") from error


def _open_harvest(path):
    # Only the activation shards: the token tables beside them are not data.
    from ..lm._store import load_activations

    try:
        return load_activations(path)
    except ValueError as error:
        raise UserError(f"{path}: {error}") from error


def open_input(path, key=None):
    """Open training or encoding data without reading it when possible.

    Parameters
    ----------
    path : str or Path
        A ``.npy`` file (memory-mapped), a ``.npz`` file (the array named
        ``key``, or its only array, loaded in memory: zip members cannot be
        mapped), a directory of ``.npy`` shards stacked in name order
        (memory-mapped), a harvest directory of ``dbksvd harvest`` (its
        activation shards, memory-mapped), an HDF5 file (h5py) or a zarr
        store.
    key : str, default=None
        Array of an ``.npz``, dataset of an HDF5 file or array of a zarr group.

    Returns
    -------
    X : array-like of shape (n_samples, n_features)
        An ndarray, a memory map or a lazy array of the estimators.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or directory.")
    suffix = path.suffix.lower()
    if (
        suffix == ".zarr"
        or (path / "zarr.json").exists()
        or (path / ".zarray").exists()
    ):
        X = _open_zarr(path, key)
    elif (path / "harvest.json").is_file():
        X = _open_harvest(path)
    elif path.is_dir():
        X = _open_shards(path)
    elif suffix == ".npy":
        X = _load_npy(path)
    elif suffix == ".npz":
        try:
            members = persistence.read_npz(
                path, "input", pick=lambda names: _pick(names, key, path, "array")
            )
        except ValueError as error:
            raise UserError(str(error)) from error
        (X,) = members.values()
    elif suffix in _HDF5_SUFFIXES:
        X = _open_hdf5(path, key)
    else:
        raise UserError(
            f"{path}: unsupported input; expected .npy, .npz, a directory of .npy "
            "shards, HDF5 (.h5, .hdf5) or zarr (.zarr)."
        )
    try:
        check_lazy_array(X)
    except ValueError as error:
        raise UserError(f"{path}: {error}") from error
    return X


def describe_input(path, X):
    """What identifies the training data of a checkpoint.

    Its resolved path, shape, dtype and the fingerprint of the file or
    directory (:func:`sklearn_dbksvd.persistence.fingerprint_path`: size,
    modification time and sampled blocks of every file), so that a checkpoint
    is not resumed on other contents at the same path.
    """
    description = {
        "path": str(Path(path).resolve()),
        "shape": [int(size) for size in X.shape],
        "dtype": str(np.dtype(X.dtype)),
        "fingerprint": persistence.fingerprint_path(path),
    }
    provenance = getattr(X, "provenance", None)
    if provenance is not None:
        description["provenance"] = provenance
    return description


# ----------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------
def check_output(path, force, replaceable=None, what="output"):
    """Fail early, before any work, when ``path`` cannot be written.

    Parameters
    ----------
    path : str or Path
        The output file.
    force : bool
        ``--force``: an existing file may be replaced.
    replaceable : callable, default=None
        ``replaceable(path)`` says whether an existing file is one this tool
        wrote (``--force`` replaces nothing else); None accepts any file.
    what : str, default="output"
        What the tool writes there, for the message.
    """
    path = Path(path)
    if path.exists() and not force:
        raise UserError(f"{path} exists; pass --force to overwrite it.")
    if path.exists() and replaceable is not None and not replaceable(path):
        raise UserError(
            f"{path} exists and is not a {what} written by dbksvd; refusing to "
            "replace it, even with --force."
        )
    if not path.parent.is_dir():
        raise UserError(f"{path.parent}: no such directory for the output.")


@contextlib.contextmanager
def atomic_write(path, force=True):
    """Write ``path`` through :func:`sklearn_dbksvd.persistence.atomic_file`.

    Checks the output first (:func:`check_output`), then yields a binary
    file object; readers see the old file or the complete new one.
    """
    check_output(path, force)
    with atomic_file(path, overwrite=True) as file:
        yield file


# ----------------------------------------------------------------------
# Dictionaries
# ----------------------------------------------------------------------
def check_dictionary_output(path, force):
    """:func:`check_output` for a dictionary: ``--force`` replaces only one."""
    check_output(path, force, persistence.is_dictionary_file, what="dictionary file")


def estimator_classes():
    """Estimator classes a dictionary file may name."""
    return persistence.estimator_classes()


def save_dictionary(path, model, force):
    """Write a fitted estimator as ``.npz`` (:func:`sklearn_dbksvd.save_dictionary`)."""
    check_dictionary_output(path, force)
    persistence.save_dictionary(model, path, overwrite=True)


def load_dictionary(path):
    """A fitted estimator from a dictionary file; damage is a :class:`UserError`."""
    try:
        return persistence.load_dictionary(path)
    except (ValueError, OSError) as error:
        raise UserError(str(error)) from error
