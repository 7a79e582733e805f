"""The checkpoint of a resumable fit, and the fingerprint of its input.

A checkpoint is one ``.npz`` (no pickle) holding a
:class:`~sklearn_dbksvd._fit_loop.FitState` and the configuration of the run
it belongs to:

``format``
    ``2``.
``components``
    The atoms after the last step done.
``step``, ``done``
    Steps done; whether the fit has stopped.
``history``
    JSON of the per-step records (early stopping is replayed from them).
``random_state``, ``epoch_random_state``
    JSON of the generator now and when the current epoch drew its shuffle
    (:func:`~._state.random_state_to_json`).
``config``
    JSON of what the run must agree with to be resumed: estimator class,
    parameters, and the input's path, shape, dtype and fingerprint
    (:func:`fingerprint_path`).

Checkpoints of format 1 (the generators as arrays ``rng_keys``, ``rng_rest``,
``rng_name``, no input fingerprint) are still read.
"""

import hashlib
import json
from pathlib import Path

import numpy as np

from ._atomic import atomic_file
from ._dictionary import json_member, read_npz
from ._state import random_state_from_json, random_state_to_json, to_json_value

FORMAT = 2
# File name of the checkpoint in its directory (dbksvd fit --checkpoint DIR).
CHECKPOINT_NAME = "dbksvd-checkpoint.npz"
# Bytes read at each sampled place of a file by fingerprint_path.
BLOCK = 1 << 16
# Places sampled in a single file (evenly spaced, first and last included).
SAMPLES = 16


def _file_digest(digest, path, n_samples):
    stat = path.stat()
    digest.update(f"{stat.st_size}:{stat.st_mtime_ns}:".encode())
    size = stat.st_size
    if size <= n_samples * BLOCK:
        offsets = [0] if size else []
        length = size
    else:
        last = size - BLOCK
        offsets = [round(i * last / (n_samples - 1)) for i in range(n_samples)]
        length = BLOCK
    with open(path, "rb") as file:
        for offset in offsets:
            file.seek(offset)
            digest.update(file.read(length))


def fingerprint_path(path):
    """A cheap fingerprint of a file or directory of data, as sha256 hex.

    It covers, for the file (or every file under the directory, by relative
    path in sorted order; hidden files, locks, temporary files and a
    checkpoint kept inside the directory left out): its size, its
    modification time in nanoseconds and 64 KiB read at 16 evenly spaced
    places (the first and last included; the whole file when smaller than
    1 MiB; the first and last 64 KiB of each file of a directory). It reads
    about 1 MiB of a 24 GB input, and changes whenever a file is rewritten,
    appended to, truncated, replaced or touched.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    fingerprint : str
    """
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file()
            and p.name != CHECKPOINT_NAME
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        for file in files:
            digest.update(f"{file.relative_to(path).as_posix()}\0".encode())
            _file_digest(digest, file, 2)
    else:
        _file_digest(digest, path, SAMPLES)
    return digest.hexdigest()


def save_checkpoint(path, state, config):
    """Write ``state`` (a ``FitState``) and ``config`` with one atomic rename."""
    members = {
        "format": np.array(FORMAT),
        "components": state.components,
        "step": np.array(state.step),
        "done": np.array(state.done),
        "history": np.array(json.dumps(to_json_value(state.history))),
        "config": np.array(json.dumps(to_json_value(config), sort_keys=True)),
        "random_state": np.array(json.dumps(random_state_to_json(state.random_state))),
        "epoch_random_state": np.array(
            json.dumps(_epoch_state_to_json(state.epoch_state))
        ),
    }
    with atomic_file(path, overwrite=True) as file:
        np.savez(file, **members)
    return Path(path)


def _epoch_state_to_json(epoch_state):
    if epoch_state is None:
        return None
    random_state = np.random.RandomState()
    random_state.set_state(epoch_state)
    return random_state_to_json(random_state)


def _random_state_of_format_1(members, prefix):
    pos, has_gauss, cached = members[f"{prefix}_rest"]
    return {
        "bit_generator": str(members[f"{prefix}_name"]),
        "keys": members[f"{prefix}_keys"].astype(np.int64).tolist(),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def _flatten(config, prefix=""):
    """``{"a": {"b": 1}}`` as ``{"a.b": 1}``, to name what differs."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def config_differences(saved, config):
    """Keys (dotted) whose values differ between two run configurations.

    A key missing from ``saved`` only (a checkpoint written before it was
    recorded, e.g. ``input.fingerprint``) is not a difference.
    """
    ours, theirs = _flatten(config), _flatten(saved)
    return sorted(
        key
        for key in ours.keys() | theirs.keys()
        if key in theirs and ours.get(key) != theirs.get(key) or key not in ours
    )


def load_checkpoint(path, config, fit_state):
    """The saved fit state, or None when ``path`` does not exist.

    Parameters
    ----------
    path : path-like
        The checkpoint file.
    config : dict
        The configuration of this run (JSON data).
    fit_state : type
        ``FitState``, to build the result with.

    Returns
    -------
    state : FitState or None

    Raises
    ------
    ValueError
        The checkpoint is damaged, or belongs to another run (another
        estimator, parameters or input, or the input's contents changed); the
        message names the file and what differs.
    """
    path = Path(path)
    if not path.exists():
        return None
    where = f"checkpoint {path}"
    members = read_npz(path, "checkpoint")
    saved = json_member(members, "config", where)
    if not isinstance(saved, dict):
        raise ValueError(f"{where}: its configuration is not a JSON object.")
    config = json.loads(json.dumps(to_json_value(config)))
    changed = config_differences(saved, config)
    if changed == ["input.fingerprint"]:
        raise ValueError(
            f"{where} was made on other contents of {config['input']['path']} "
            "(same path, shape and dtype, but the file changed since); resuming "
            "would mix two datasets. Use another --checkpoint directory, or "
            "delete the checkpoint to start again."
        )
    if changed:
        raise ValueError(
            f"{where} belongs to another run (differs in: {', '.join(changed)}); "
            "use another --checkpoint directory or delete it."
        )
    try:
        if int(members.get("format", 1)) >= 2:
            random_state = json_member(members, "random_state", where)
            epoch = json_member(members, "epoch_random_state", where)
        else:
            random_state = _random_state_of_format_1(members, "rng")
            epoch = _random_state_of_format_1(members, "epoch_rng")
        step = int(members["step"])
        done = bool(members["done"])
        history = json_member(members, "history", where)
        components = members["components"]
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{where} is unreadable ({error}).") from error
    if components.ndim != 2 or components.dtype.kind != "f":
        raise ValueError(f"{where}: its atoms are not a 2D float array.")
    if not np.isfinite(components).all():
        raise ValueError(f"{where}: its atoms hold NaN or infinity.")
    if not isinstance(history, list) or len(history) != step:
        raise ValueError(f"{where}: its history does not match its {step} steps.")
    epoch_state = (
        None
        if epoch is None
        else random_state_from_json(epoch, where=where).get_state()
    )
    return fit_state(
        random_state_from_json(random_state, where=where),
        components=components,
        step=step,
        history=history,
        epoch_state=epoch_state,
        done=done,
    )
