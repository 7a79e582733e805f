"""``dbksvd fit``: the estimator's fit loop, checkpointed and resumable.

The loop is the estimator's own (``fit_from_state``, which ``fit`` runs from
a fresh state), so an uninterrupted run gives exactly ``model.fit(X)``. After
every ``every`` steps it saves, with one atomic rename, everything the rest of
the run depends on: the atoms, the step counter, the state of the random
generator now and at the start of the current epoch (the epoch's shuffle is
drawn again from it), and the history (early stopping is replayed from it).
Killing the process loses at most the steps since the last checkpoint, and
running the same command again continues from there to the same dictionary.

The checkpoint file is :mod:`sklearn_dbksvd.persistence._checkpoint`'s. It
records the input's path, shape, dtype and fingerprint, so that a resumption
on other data (even the same file rewritten) is refused; the checkpoint
directory is locked while a run uses it.
"""

import contextlib
import json
from pathlib import Path

from .. import persistence
from .._fit_loop import FitState
from ..persistence import _checkpoint
from ._io import UserError, to_json

CHECKPOINT_NAME = _checkpoint.CHECKPOINT_NAME

# Parameters that may change between a run and its resumption: they do not
# change the result (n_jobs) or only what is shown (verbose).
_FREE_PARAMS = {"n_jobs", "verbose"}


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


def save_checkpoint(path, state, config):
    """Write ``state`` (a :class:`FitState`) with one atomic rename."""
    _checkpoint.save_checkpoint(path, state, config)


def load_checkpoint(path, config):
    """The saved :class:`FitState`, or None when there is no checkpoint yet."""
    try:
        return _checkpoint.load_checkpoint(Path(path), config, FitState)
    except (ValueError, OSError) as error:
        raise UserError(str(error)) from error


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
    with contextlib.ExitStack() as stack:
        path = None
        if checkpoint_dir is not None:
            # The directory belongs to this run while it lasts: a second run
            # on it at the same time is refused, the lock of a killed one
            # taken over.
            try:
                stack.enter_context(persistence.directory_lock(checkpoint_dir))
            except OSError as error:
                raise UserError(str(error)) from error
            path = Path(checkpoint_dir) / CHECKPOINT_NAME
        config = run_config(model, input_description)
        state = None if path is None else load_checkpoint(path, config)
        resumed_from = 0 if state is None else state.step

        def checkpoint(state):
            if path is not None and (state.step % every == 0 or state.done):
                save_checkpoint(path, state, config)

        model.fit_from_state(X, state, on_step=checkpoint, verbose=progress)
    if model.n_steps_ == 0:
        raise UserError("the run made no step.")
    return model, resumed_from
