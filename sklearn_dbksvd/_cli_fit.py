"""``dbksvd fit``: the estimator's fit loop, checkpointed and resumable.

The loop is :meth:`_BaseDBKSVD.fit` unrolled (same batches, same random
draws in the same order, same early stopping), so that an uninterrupted run
gives exactly ``model.fit(X)``. After every ``every`` steps it saves, with
one atomic rename, everything the rest of the run depends on: the atoms, the
step counter, the state of the random generator now and at the start of the
current epoch (the epoch's shuffle is drawn again from it), and the history
(early stopping is replayed from it). Killing the process loses at most the
steps since the last checkpoint, and running the same command again
continues from there to the same dictionary.
"""

import json
import math
import time
from pathlib import Path

import numpy as np
from sklearn.utils import check_random_state

from ._base import _SmoothedError
from ._cli_io import UserError, save_npz_atomic, to_json
from ._data import read_batch, schedule_for
from ._progress import ProgressReporter

CHECKPOINT_NAME = "dbksvd-checkpoint.npz"

# Parameters that may change between a run and its resumption: they do not
# change the result (n_jobs) or only what is shown (verbose).
_FREE_PARAMS = {"n_jobs", "verbose"}


def _rng_to_arrays(prefix, state):
    """``RandomState.get_state()`` as npz-friendly arrays."""
    name, keys, pos, has_gauss, cached = state
    return {
        f"{prefix}_keys": keys,
        f"{prefix}_rest": np.array([pos, has_gauss, cached], dtype=np.float64),
        f"{prefix}_name": np.array(name),
    }


def _rng_from_arrays(archive, prefix):
    pos, has_gauss, cached = archive[f"{prefix}_rest"]
    return (
        str(archive[f"{prefix}_name"]),
        archive[f"{prefix}_keys"],
        int(pos),
        int(has_gauss),
        float(cached),
    )


def run_config(model, input_description):
    """What a checkpoint must agree with to be resumed."""
    params = {
        key: value
        for key, value in model.get_params(deep=False).items()
        if key not in _FREE_PARAMS
    }
    return json.loads(
        to_json(
            {
                "estimator": type(model).__name__,
                "params": params,
                "input": input_description,
            }
        )
    )


def _flatten(config, prefix=""):
    """``{"a": {"b": 1}}`` as ``{"a.b": 1}``, to name what differs."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def save_checkpoint(path, state):
    arrays = {
        "components": state["components"],
        "step": np.array(state["step"]),
        "done": np.array(state["done"]),
        "history": np.array(to_json(state["history"])),
        "config": np.array(to_json(state["config"])),
        **_rng_to_arrays("rng", state["rng"]),
        **_rng_to_arrays("epoch_rng", state["epoch_rng"]),
    }
    save_npz_atomic(path, True, **arrays)


def load_checkpoint(path, config):
    """The saved state, or None when there is no checkpoint yet."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            saved_config = json.loads(str(archive["config"]))
            if saved_config != config:
                ours, theirs = _flatten(config), _flatten(saved_config)
                changed = sorted(
                    key
                    for key in ours.keys() | theirs.keys()
                    if ours.get(key) != theirs.get(key)
                )
                raise UserError(
                    f"checkpoint {path} belongs to another run (differs in: "
                    f"{', '.join(changed)}); use another --checkpoint directory or "
                    "delete it."
                )
            return {
                "components": archive["components"],
                "step": int(archive["step"]),
                "done": bool(archive["done"]),
                "history": json.loads(str(archive["history"])),
                "rng": _rng_from_arrays(archive, "rng"),
                "epoch_rng": _rng_from_arrays(archive, "epoch_rng"),
            }
    except (KeyError, ValueError, OSError) as error:
        raise UserError(f"checkpoint {path} is unreadable ({error}).") from error


def fit_resumable(
    model, X, *, checkpoint_dir=None, every=1, input_description=None, progress=True
):
    """Fit ``model`` on ``X`` like ``model.fit(X)``, checkpointing as it goes.

    Parameters
    ----------
    model : _BaseDBKSVD
        Unfitted estimator; fitted in place.
    X : array-like or lazy array of shape (n_samples, n_features)
        Training data, read batch by batch when lazy.
    checkpoint_dir : Path, default=None
        Where ``dbksvd-checkpoint.npz`` lives; resumed from when present.
    every : int, default=1
        Steps between checkpoints (the last step is always saved).
    input_description : dict, default=None
        Identifies ``X`` in the checkpoint.
    progress : bool, default=True
        Show a progress bar.

    Returns
    -------
    model : _BaseDBKSVD
        The fitted estimator.
    resumed_from : int
        Steps found done in the checkpoint (0 for a fresh run).
    """
    X = model._validate_fit_data(X, reset=True, keep_lazy=True)
    n_samples, n_features = X.shape
    n_components, _ = model._check_settings(n_features)
    batch_size = model._resolved_batch_size(n_samples, n_features)
    schedule = schedule_for(X, batch_size)
    n_steps = model.max_iter * schedule.n_batches
    if model.max_steps is not None:
        n_steps = min(n_steps, model.max_steps)

    path = None if checkpoint_dir is None else Path(checkpoint_dir) / CHECKPOINT_NAME
    config = run_config(model, input_description)
    state = None if path is None else load_checkpoint(path, config)
    random_state = check_random_state(model.random_state)
    if state is None:
        components, history, step, done = None, [], 0, False
        epoch_rng = None
    else:
        components, history = state["components"], state["history"]
        step, done, epoch_rng = state["step"], state["done"], state["epoch_rng"]
        random_state.set_state(state["rng"])
    resumed_from = step

    stopper = _SmoothedError(
        model.tol, model.max_no_improvement, batch_size / n_samples
    )
    for info in history:  # replay early stopping up to the checkpoint
        stopper.should_stop(info["relative_error"])
    last_replacing_step = model.replace_until * n_steps
    seen = history[-1]["n_samples_seen"] if history else 0
    order = None
    with ProgressReporter(n_steps, progress, initial=step, samples_seen=seen) as bar:
        while not done and step < n_steps:
            position = step % schedule.n_batches
            if position == 0:
                epoch_rng = random_state.get_state()
                order = schedule.draw_order(random_state, model.shuffle)
            elif order is None:
                # Resumed inside an epoch: draw its shuffle again.
                replay = np.random.RandomState()
                replay.set_state(epoch_rng)
                order = schedule.draw_order(replay, model.shuffle)
            batch = read_batch(X, schedule.rows(order, position))
            if components is None:
                components = model._initial_components(
                    batch, n_components, random_state
                )
            tic = time.perf_counter()
            components, info = model._step(
                batch, components, random_state, step < last_replacing_step
            )
            seen += len(batch)
            info = {
                "step": step,
                **info,
                "seconds": time.perf_counter() - tic,
                "n_samples_seen": seen,
            }
            history.append(info)
            bar.update(info)
            step += 1
            done = stopper.should_stop(info["relative_error"]) or step >= n_steps
            if path is not None and (step % every == 0 or done):
                save_checkpoint(
                    path,
                    {
                        "components": components,
                        "step": step,
                        "done": done,
                        "history": history,
                        "config": config,
                        "rng": random_state.get_state(),
                        "epoch_rng": epoch_rng,
                    },
                )
    if components is None:
        raise UserError("the run made no step.")
    model.components_ = components
    model.n_steps_ = len(history)
    model.n_iter_ = math.ceil(model.n_steps_ / schedule.n_batches)
    model.n_samples_seen_ = history[-1]["n_samples_seen"]
    model.history_ = history
    model._random_state = random_state
    return model, resumed_from
