"""``dbksvd fit``: the estimator's fit loop, checkpointed and resumable.

The loop is the estimator's own (``_fit_loop.run_fit``), so an uninterrupted
run gives exactly ``model.fit(X)``. After every ``every`` steps it saves, with
one atomic rename, everything the rest of the run depends on: the atoms, the
step counter, the state of the random generator now and at the start of the
current epoch (the epoch's shuffle is drawn again from it), and the history
(early stopping is replayed from it). Killing the process loses at most the
steps since the last checkpoint, and running the same command again
continues from there to the same dictionary.
"""

import json
from pathlib import Path

import numpy as np
from sklearn.utils import check_random_state

from .._fit_loop import FitState, plan_fit, run_fit, set_fitted
from ._io import UserError, save_npz_atomic, to_json

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


def save_checkpoint(path, state, config):
    """Write ``state`` (a :class:`FitState`) with one atomic rename."""
    arrays = {
        "components": state.components,
        "step": np.array(state.step),
        "done": np.array(state.done),
        "history": np.array(to_json(state.history)),
        "config": np.array(to_json(config)),
        **_rng_to_arrays("rng", state.random_state.get_state()),
        **_rng_to_arrays("epoch_rng", state.epoch_state),
    }
    save_npz_atomic(path, True, **arrays)


def load_checkpoint(path, config):
    """The saved :class:`FitState`, or None when there is no checkpoint yet."""
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
            random_state = np.random.RandomState()
            random_state.set_state(_rng_from_arrays(archive, "rng"))
            return FitState(
                random_state,
                components=archive["components"],
                step=int(archive["step"]),
                history=json.loads(str(archive["history"])),
                epoch_state=_rng_from_arrays(archive, "epoch_rng"),
                done=bool(archive["done"]),
            )
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
    X, fit_input = model._validate_fit_data(X, first=True, keep_lazy=True)
    plan = plan_fit(model, X)
    path = None if checkpoint_dir is None else Path(checkpoint_dir) / CHECKPOINT_NAME
    config = run_config(model, input_description)
    state = None if path is None else load_checkpoint(path, config)
    if state is None:
        state = FitState(check_random_state(model.random_state))
    resumed_from = state.step

    def checkpoint(state):
        if path is not None and (state.step % every == 0 or state.done):
            save_checkpoint(path, state, config)

    run_fit(model, X, plan, state, on_step=checkpoint, verbose=progress)
    if state.components is None:
        raise UserError("the run made no step.")
    set_fitted(model, plan, state)
    model._set_fit_input(fit_input)  # features and provenance, as fit records
    return model, resumed_from
