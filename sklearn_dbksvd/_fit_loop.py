"""The fit loop of the DB-KSVD estimators, resumable from a saved state.

``fit`` runs it from a fresh state; ``dbksvd fit --checkpoint`` saves the state
after steps and resumes from it, so both give the same dictionary.

The loop takes the estimator's :class:`~._settings.FitSettings` (resolved
once by :func:`~._settings.fit_settings`) and nothing else of it: the initial
atoms, the steps (:func:`fit_step`) and the fitted attributes
(:func:`fitted_attributes`) are functions of the settings and the state.
"""

import dataclasses
import math
import time
from dataclasses import dataclass, field

import numpy as np
from joblib import effective_n_jobs
from sklearn.utils import check_array
from sklearn.utils._array_api import get_namespace

from . import _backend
from ._backend import host_dtype, is_device_array, to_namespace_of, to_numpy
from ._data import (
    BatchReader,
    is_lazy_array,
    iter_row_chunks,
    read_batch,
    reads_into_buffer,
    schedule_for,
)
from ._gram_rows import CacheHint
from ._progress import ProgressReporter
from ._step import dbksvd_step, refit_atoms
from ._step_matryoshka import matryoshka_step, nested_pass
from ._update_positive import nonnegative_directions
from .datasets import uniform_atoms

# Batches whose largest magnitude lies in [2**-_SAFE_EXPONENT, 2**_SAFE_EXPONENT]
# are used as they are. Outside, squares and Gram entries of float32 data
# overflow (1e18 squared is past 3.4e38) or lose precision to underflow
# (1e-30 squared is below 1.2e-38), so the step sees the batch times a power
# of two: exact, and the same atoms, since atoms are unit vectors.
_SAFE_EXPONENT = 20

# In-memory NumPy batches are gathered, centred and scaled in one host buffer
# per fit (see ``step_batch``); off, every step makes new arrays as other
# inputs do. A switch for the tests, which compare both.
_REUSE_BATCH_BUFFER = True


def batch_scale(X):
    """Power of two that brings the batch's largest magnitude into ``[1, 2)``.

    1.0 when that magnitude is already within ``2**±20`` (or zero): most data
    is used unscaled, with no copy.
    """
    xp, _ = get_namespace(X)
    top = max(float(xp.max(X)), -float(xp.min(X))) if X.shape[0] else 0.0
    if top == 0 or 2.0**-_SAFE_EXPONENT <= top <= 2.0**_SAFE_EXPONENT:
        return 1.0
    # Subnormal data (below 2**-1022, or 2**-126 in float32) would need a
    # scale past the dtype's range: the largest power of two it holds.
    largest = np.finfo(host_dtype(X)).maxexp - 1
    return math.ldexp(1.0, min(-math.frexp(top)[1] + 1, largest))


def scaled(X, scale):
    """``X * scale`` as a new array, or ``X`` itself when ``scale`` is 1."""
    return X if scale == 1.0 else X * scale


def data_mean(X):
    """Mean of the rows of ``X`` in its dtype, summed in float64.

    Lazy arrays are read once, in chunks of about 32 MiB.
    """
    if is_lazy_array(X):
        rows = max(1, 2**25 // (X.shape[1] * X.dtype.itemsize))
        total = np.zeros(X.shape[1])
        for _, chunk in iter_row_chunks(X, rows):
            total += chunk.sum(axis=0, dtype=np.float64)
        return (total / max(X.shape[0], 1)).astype(X.dtype)
    if is_device_array(X):
        xp, _ = get_namespace(X)
        return to_numpy(xp.mean(X, axis=0))
    return X.mean(axis=0, dtype=np.float64).astype(X.dtype)


def centred(X, mean):
    """``X - mean`` as a new array (in ``X``'s namespace); ``X`` when no mean."""
    if mean is None:
        return X
    if is_device_array(X):
        return X - to_namespace_of(X, mean)
    return X - mean.astype(X.dtype, copy=False)


def _ensure_mean(settings, X, state):
    """The mean the fit subtracts (``with_mean``), computed once per fit."""
    if state.mean is None and settings.with_mean:
        state.mean = data_mean(X)


class SmoothedError:
    """Early stopping on the exponentially smoothed batch relative error.

    As in ``MiniBatchDictionaryLearning``, the weight of a new batch is its
    share of the data, and fitting stops after ``patience`` steps in a row
    without a relative improvement larger than ``tol``. The first step's
    error is left out: with ``init="samples"`` its atoms are samples of that
    very batch, which code those samples exactly, so its error is lower than
    the fit reaches for many steps after and would make every later step look
    stale (measured on MiniLM activations with a batch of twice the atoms:
    stopped at step 11 of 70, 0.354 error against 0.334 without stopping).
    """

    def __init__(self, tol, patience, batch_weight):
        self.tol, self.patience, self.batch_weight = tol, patience, batch_weight
        self.smoothed = self.best = None
        self.stale_steps = 0
        self.steps_seen = 0

    def should_stop(self, error):
        self.steps_seen += 1
        if self.steps_seen == 1:
            return False
        if self.smoothed is None:
            self.smoothed = error
        else:
            w = self.batch_weight
            self.smoothed = (1 - w) * self.smoothed + w * error
        if self.best is None or self.smoothed < self.best * (1 - self.tol):
            self.best = self.smoothed
            self.stale_steps = 0
        else:
            self.stale_steps += 1
        return self.patience is not None and self.stale_steps >= self.patience


@dataclass
class FitState:
    """Everything the rest of a fit depends on: what a checkpoint saves.

    Attributes
    ----------
    random_state : numpy.random.RandomState
        The generator, as it is now.
    components : ndarray of shape (n_components, n_features) or None
        The atoms; None before the first step.
    step : int
        Steps done.
    history : list of dict
        One record per step done (early stopping is replayed from it).
    epoch_state : tuple or None
        State of the generator when the current epoch drew its shuffle, so
        that a resumed fit draws the same shuffle again.
    done : bool
        The fit has stopped (early stopping, callback or the last step).
    mean : ndarray of shape (n_features,) or None
        The mean subtracted from every batch (``with_mean=True``); a
        resumed fit recomputes it from the data (it is deterministic).
    gram : array of shape (n_components, n_components) or None
        Gram matrix of ``components`` when the last step had it exactly.
    residual : ndarray of shape (n_rows, n_features) or None
        Host buffer the steps write their batch's residual into.
    batch : ndarray of shape (n_rows, n_features) or None
        Host buffer the batches of in-memory data are read into.
    """

    random_state: np.random.RandomState
    components: np.ndarray = None
    step: int = 0
    history: list = field(default_factory=list)
    epoch_state: tuple = None
    done: bool = False
    mean: np.ndarray = None
    # Gram matrix of ``components`` when the last step had it exactly, for
    # the next step's encoder (one ``D Dᵀ`` per step); never checkpointed: a
    # resumed fit computes it again, to the same bits.
    gram: object = None
    # The steps' residual buffer (see ``residual_buffer``); never checkpointed.
    residual: np.ndarray = None
    # The buffer in-memory batches are read into (see ``step_batch``); never
    # checkpointed either.
    batch: np.ndarray = None
    # Samples per atom of the last step whose Gram matrix did not fit
    # (``_gram_rows.CacheHint``): ranks the Gram rows transform caches.
    usage: np.ndarray = None


@dataclass
class FitPlan:
    """Sizes of a fit, resolved from the data and the parameters.

    ``memory`` is :func:`fit_memory`'s estimate of the fit's peak (bytes).
    """

    n_components: int
    batch_size: int
    schedule: object
    n_steps: int
    memory: dict = None


def plan_fit(settings, X):
    """Batch schedule and number of steps of a fit with ``settings`` on ``X``.

    Raises ValueError, before any step runs, when even the atoms and one
    batch with its working arrays cannot fit in the memory available (see
    :func:`fit_memory`).
    """
    n_samples, n_features = X.shape
    n_components, k = settings.n_components, settings.n_nonzero_coefs
    batch_size = settings.batch_size
    schedule = schedule_for(X, batch_size)
    n_steps = settings.max_iter * schedule.n_batches
    if settings.max_steps is not None:
        n_steps = min(n_steps, settings.max_steps)
    dtype = host_dtype(X) if hasattr(X, "dtype") else np.dtype(np.float64)
    memory = fit_memory(
        n_components, n_features, min(batch_size, n_samples), k,
        dtype.itemsize if dtype.kind == "f" else 8,
        gram_memory=settings.step.gram_memory, n_jobs=settings.step.n_jobs,
        backend=_fit_backend(settings, X),
    )
    check_fit_memory(memory, n_components, n_features)
    return FitPlan(n_components, batch_size, schedule, n_steps, memory)


def _fit_backend(settings, X):
    """The backend the fit's steps will resolve, for its memory estimate."""
    return _backend.resolve_backend(
        settings.step.backend, X if is_device_array(X) else None
    )


def fit_memory(
    n_components, n_features, batch_size, n_nonzero_coefs, itemsize, *,
    gram_memory="auto", n_jobs=None, backend=None,
):
    """Estimated peak memory of a fit's step, in bytes, by part.

    The parts a step holds at once: the atoms (the fitted ones, the step's
    copy and the updated ones), the batch and the residual buffer, the codes
    (selections, CSR and CSC: about 40 bytes per nonzero), the correlation
    blocks of the workers, and the Gram rows: the whole matrix (twice: the
    carried one and the new one, at a step's end) when it fits in
    ``gram_memory``, else the budget. ``minimum`` is what no budget can
    shrink: everything but the Gram rows, with one block and one row of them.
    With a ``backend`` whose products run on a device (an
    :class:`~._backend.ArrayBackend` for which
    :func:`~._backend.device_memory` is not None), ``device`` holds
    :func:`fit_device_memory`'s estimate of the device's part.

    Returns
    -------
    dict
        ``atoms``, ``batch``, ``codes``, ``blocks``, ``gram``, ``total`` and
        ``minimum`` in bytes, ``available``: the memory available now, and
        ``device``: a dict or None.
    """
    from . import _encode
    from ._gram_rows import available_memory, resolve_gram_memory

    n_workers = max(1, effective_n_jobs(n_jobs))
    atoms = 3 * n_components * n_features * itemsize
    batch = 2 * batch_size * n_features * itemsize
    codes = 40 * batch_size * n_nonzero_coefs
    whole = n_components * n_components * itemsize
    budget = resolve_gram_memory(gram_memory)
    block = min(
        batch_size, _encode.encode_block_rows(n_components, itemsize, whole <= budget)
    )
    block *= n_components * itemsize
    gram = 2 * whole if whole <= budget else budget
    minimum = atoms + batch + codes + block + n_components * itemsize
    parts = {
        "atoms": atoms,
        "batch": batch,
        "codes": codes,
        "blocks": n_workers * block,
        "gram": gram,
    }
    parts["total"] = sum(parts.values())
    parts["minimum"] = minimum
    parts["available"] = available_memory()
    parts["device"] = None
    device_available = None
    if backend is not None and not backend.is_numpy:
        device_available = _backend.device_memory(backend)
    if device_available is not None:
        parts["device"] = fit_device_memory(
            n_components, n_features, batch_size, itemsize,
            # The budget resolved above: "auto" is read once.
            available=device_available, gram_memory=budget, n_jobs=n_jobs,
        )
    return parts


def fit_device_memory(
    n_components, n_features, batch_size, itemsize, *, available,
    gram_memory="auto", n_jobs=None, n_threads=None,
):
    """Estimated peak device memory of a fit's step, in bytes, by part.

    What a device backend holds at once: the atoms, twice (the encoder's
    copy beside that of the Gram matrix's or Gram rows' products), and one
    product in flight per worker: a block of samples with its block of
    correlations (or of Gram rows, or another product of the step, none
    larger). A block has the encoder's rows (see :func:`fit_memory`), fewer
    when that exceeds the budget of one product,
    :func:`~._backend.product_budget` of the memory left beside one copy of
    the atoms (the budget is resolved when the first product runs, the atoms
    then on the device); at least one row. No budget shrinks this further,
    so ``minimum`` is ``total``.

    Parameters
    ----------
    n_components, n_features, batch_size, itemsize : int
        Sizes of the fit.
    available : int
        Device bytes available (:func:`~._backend.device_memory`).
    gram_memory : "auto", int, float or None, default="auto"
        The host budget of Gram rows: past it the encoder takes larger
        blocks of samples.
    n_jobs : int, default=None
        Workers running products at once.
    n_threads : int, default=None
        Threads the budget is split among (default: the machine's cores).

    Returns
    -------
    dict
        ``atoms``, ``blocks``, ``total`` and ``minimum`` in bytes,
        ``block_rows`` (rows of one block), ``product_bytes`` (the budget of
        one product) and ``available``.
    """
    from . import _encode
    from ._gram_rows import resolve_gram_memory

    n_workers = max(1, effective_n_jobs(n_jobs))
    atoms = n_components * n_features * itemsize
    whole = n_components * n_components * itemsize
    rows = min(
        batch_size,
        _encode.encode_block_rows(
            n_components, itemsize, whole <= resolve_gram_memory(gram_memory)
        ),
    )
    row_bytes = (n_features + n_components) * itemsize
    product = _backend.product_budget(max(0, available - atoms), n_threads)
    rows = max(1, min(rows, product // row_bytes))
    parts = {"atoms": 2 * atoms, "blocks": n_workers * rows * row_bytes}
    parts["total"] = parts["minimum"] = parts["atoms"] + parts["blocks"]
    parts.update(block_rows=rows, product_bytes=product, available=available)
    return parts


def format_bytes(n_bytes):
    """``n_bytes`` in binary units, as NumPy's memory errors write them."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n_bytes < 1024 or unit == "PiB":
            break
        n_bytes /= 1024
    return f"{n_bytes:.3g} {unit}" if unit != "bytes" else f"{int(n_bytes)} bytes"


def check_fit_memory(memory, n_components, n_features):
    """ValueError when even the fit's ``minimum`` exceeds the memory available.

    Host memory first, then, with a device backend, device memory (the
    ``device`` part, see :func:`fit_device_memory`). Called before anything
    of the fit's size is allocated (see :func:`fit_memory`).
    """
    if memory["minimum"] > memory["available"]:
        raise ValueError(
            f"n_components={n_components} with {n_features} features needs at "
            f"least {format_bytes(memory['minimum'])} of memory (atoms "
            f"{format_bytes(memory['atoms'])}, batch and residual "
            f"{format_bytes(memory['batch'])}, codes {format_bytes(memory['codes'])}, "
            f"one correlation block and one Gram row) but "
            f"{format_bytes(memory['available'])} is available: use a "
            f"smaller batch_size or fewer n_components."
        )
    device = memory.get("device")
    if device is not None and device["minimum"] > device["available"]:
        raise ValueError(
            f"n_components={n_components} with {n_features} features needs at "
            f"least {format_bytes(device['minimum'])} of device memory (the "
            f"atoms, twice: {format_bytes(device['atoms'])}; blocks of samples "
            f"and correlations in flight: {format_bytes(device['blocks'])}) but "
            f"the device has {format_bytes(device['available'])} free: use "
            f"fewer n_components, fewer n_jobs or backend='numpy'."
        )


def _epoch_order(plan, state, settings, order):
    """The shuffle of the current epoch: drawn at its start, else replayed."""
    if state.step % plan.schedule.n_batches == 0:
        state.epoch_state = state.random_state.get_state()
        return plan.schedule.draw_order(state.random_state, settings.shuffle)
    if order is None:
        replay = np.random.RandomState()
        replay.set_state(state.epoch_state)
        return plan.schedule.draw_order(replay, settings.shuffle)
    return order


def initialise(settings, X, plan, state, *, code_init=None, order=None):
    """Initial atoms of ``state`` from the first batch of the current epoch.

    Returns the epoch's order of rows (drawn here when the epoch starts).
    """
    _ensure_mean(settings, X, state)
    order = _epoch_order(plan, state, settings, order)
    position = state.step % plan.schedule.n_batches
    batch, _ = step_batch(X, plan.schedule.rows(order, position), state)
    state.components = initial_components(batch, settings, state.random_state)
    del batch
    if code_init is not None:
        state.components = components_from_known_support(
            X, code_init, settings, state.components, state.random_state,
            mean=state.mean,
        )
    return order


def fit_step(
    X, components, settings, *, random_state, replace, scale=1.0, gram=None,
    residual_out=None,
):
    """One step of a fit: :func:`~._step.dbksvd_step`, or the Matryoshka step.

    Parameters
    ----------
    X : array of shape (n_samples, n_features)
        The batch, centred and multiplied by ``scale`` (see
        :func:`batch_scale`); penalties on the codes scale with it.
    components : ndarray of shape (n_components, n_features)
        Unit-norm atoms; not modified.
    settings : StepSettings
        A Matryoshka step when ``settings.levels`` is set.
    random_state : numpy.random.RandomState
        Draws the order of the atom updates.
    replace : bool
        Whether the step replaces atoms.
    scale : float, default=1.0
        The power of two the batch was multiplied by.
    gram, residual_out
        As in :func:`~._step.dbksvd_step`; the Matryoshka step, whose levels
        hold Gram matrices and residuals of their own, uses neither.

    Returns
    -------
    components : ndarray of shape (n_components, n_features)
    info : dict
        The step's metrics.
    gram : array, CacheHint or None
        What the next step takes as ``gram`` (None after a Matryoshka step).
    """
    settings = settings.scaled(scale)
    if settings.levels is not None:
        components, info, _ = matryoshka_step(
            X, components, settings, random_state=random_state, replace=replace
        )
        return components, info, None
    return dbksvd_step(
        X, components, settings, random_state=random_state, replace=replace,
        gram=gram, return_gram=True, residual_out=residual_out,
    )


def run_fit(settings, X, plan, state, *, code_init=None, on_step=None, verbose=None):
    """Run DB-KSVD steps on ``X`` from ``state`` until done.

    Parameters
    ----------
    settings : FitSettings
        From :func:`~._settings.fit_settings`.
    X : ndarray or lazy array of shape (n_samples, n_features)
        Validated training data.
    plan : FitPlan
        From :func:`plan_fit`.
    state : FitState
        Updated in place.
    code_init : scipy.sparse.csr_matrix, default=None
        Known support, used when the atoms are initialised.
    on_step : callable, default=None
        Called with ``state`` after every step (checkpointing).
    verbose : bool, default=None
        Progress display; None means ``settings.verbose``.
    """
    stopper = SmoothedError(
        settings.tol, settings.max_no_improvement, plan.batch_size / X.shape[0]
    )
    for info in state.history:  # a resumed fit replays early stopping
        stopper.should_stop(info["relative_error"])
    seen = state.history[-1]["n_samples_seen"] if state.history else 0
    last_replacing_step = settings.replace_until * plan.n_steps
    verbose = settings.verbose if verbose is None else verbose
    order = None
    _ensure_mean(settings, X, state)
    reader = BatchReader(X)
    try:
        with ProgressReporter(
            plan.n_steps, verbose, initial=state.step, samples_seen=seen
        ) as progress:
            while not state.done and state.step < plan.n_steps:
                if state.components is None:
                    order = initialise(settings, X, plan, state, code_init=code_init)
                else:
                    order = _epoch_order(plan, state, settings, order)
                position = state.step % plan.schedule.n_batches
                batch, scale = step_batch(
                    X, plan.schedule.rows(order, position), state, reader
                )
                if position + 1 < plan.schedule.n_batches and (
                    state.step + 1 < plan.n_steps
                ):  # read the next batch of the epoch while this step runs
                    reader.prefetch(plan.schedule.rows(order, position + 1))
                tic = time.perf_counter()
                state.components, info, state.gram = fit_step(
                    batch,
                    state.components,
                    settings.step,
                    random_state=state.random_state,
                    replace=state.step < last_replacing_step,
                    scale=scale,
                    gram=state.gram,
                    residual_out=residual_buffer(
                        state, batch.shape, state.components.dtype
                    ),
                )
                if isinstance(state.gram, CacheHint):
                    state.usage = state.gram.usage
                seen += batch.shape[0]
                # Not alive while the next batch is read (the buffers are).
                del batch
                info = {
                    "step": state.step,
                    **info,
                    "seconds": time.perf_counter() - tic,
                    "n_samples_seen": seen,
                }
                state.history.append(info)
                progress.update(info)
                state.step += 1
                stop = settings.callback is not None and settings.callback(info) is True
                state.done = (
                    stop
                    or stopper.should_stop(info["relative_error"])
                    or state.step >= plan.n_steps
                )
                if on_step is not None:
                    on_step(state)
    finally:
        # An (m, m) array and two of the batch's size: not kept past the fit,
        # however it ends.
        state.gram = state.residual = state.batch = None
        reader.close()
    return state


def step_batch(X, rows, state, reader=None):
    """Batch ``rows`` of ``X`` as a step sees it: centred, scaled; and the scale.

    In-memory NumPy data is gathered into ``state.batch`` (see
    :func:`batch_buffer`) and centred and scaled there, in place: the buffer
    is the fit's own, so ``X`` is never touched, and the values are those of
    ``scaled(centred(X[rows], mean), scale)`` to the bit. Lazy and device
    data are read into new arrays, as each step of a ``partial_fit`` is.
    """
    if not (
        _REUSE_BATCH_BUFFER
        and reads_into_buffer(X)
        and isinstance(rows, np.ndarray)
    ):
        read = read_batch(X, rows) if reader is None else reader.read(rows)
        batch = centred(read, state.mean)
        scale = batch_scale(batch)
        return scaled(batch, scale), scale
    batch = read_batch(
        X, rows, out=batch_buffer(state, (len(rows), X.shape[1]), X.dtype)
    )
    if state.mean is not None:
        np.subtract(batch, state.mean.astype(batch.dtype, copy=False), out=batch)
    scale = batch_scale(batch)
    if scale != 1.0:
        np.multiply(batch, scale, out=batch)
    return batch, scale


def _leading_rows(buffer, shape, dtype):
    """``(buffer, its first shape[0] rows)``; a new buffer if it cannot hold them."""
    if (
        buffer is None
        or buffer.shape[0] < shape[0]
        or buffer.shape[1:] != tuple(shape[1:])
        or buffer.dtype != dtype
    ):
        buffer = np.empty(shape, dtype=dtype)
    return buffer, buffer[: shape[0]]


def residual_buffer(state, shape, dtype):
    """A C-ordered host array of ``shape`` for the step's residual, reused.

    The leading rows of one buffer per fit, so that steps allocate (and fault
    in) no array of the batch's size each: the batches of a schedule differ
    by a row or so. The buffer is replaced by a larger one when a batch
    outgrows it.
    """
    state.residual, rows = _leading_rows(state.residual, shape, dtype)
    return rows


def batch_buffer(state, shape, dtype):
    """A C-ordered host array of ``shape`` to read a batch into, reused.

    As :func:`residual_buffer`, in ``state.batch``: a different array, since
    the step reads the batch while it writes the residual.
    """
    state.batch, rows = _leading_rows(state.batch, shape, dtype)
    return rows


def fitted_mean(mean, components):
    """``mean_`` of a fitted estimator: the mean, or zeros without centring."""
    if mean is None:
        return np.zeros(components.shape[1], dtype=components.dtype)
    return mean.astype(components.dtype, copy=False)


def fitted_attributes(plan, state):
    """What a finished fit leaves: a dict of the estimator's fitted attributes.

    ``components_``, ``mean_``, ``n_steps_``, ``n_iter_``,
    ``n_samples_seen_``, ``history_``, and ``random_state`` (the generator
    as the fit left it: ``partial_fit`` continues from it) and
    ``atom_usage`` (samples per atom of the last step whose Gram matrix did
    not fit, or None). The estimator sets them (see
    ``_BaseDBKSVD.fit_from_state``).
    """
    n_steps = len(state.history)
    return {
        "components_": state.components,
        "mean_": fitted_mean(state.mean, state.components),
        "n_steps_": n_steps,
        "n_iter_": math.ceil(n_steps / plan.schedule.n_batches),
        "n_samples_seen_": (
            state.history[-1]["n_samples_seen"] if state.history else 0
        ),
        "history_": state.history,
        "random_state": state.random_state,
        "atom_usage": state.usage,
    }


# ----------------------------------------------------------------------
# Initial atoms
# ----------------------------------------------------------------------
def initial_components(X_batch, settings, random_state):
    """Unit-norm starting atoms: ``dict_init``, uniform or samples of the batch.

    With ``positive_dict`` they are projected on the nonnegative orthant
    (see ``_update_positive.nonnegative_directions``). Raises ValueError
    when the fit's atoms and working arrays would not fit in memory (see
    :func:`fit_memory`).
    """
    backend = _fit_backend(settings, X_batch)
    X_batch = to_numpy(X_batch)  # atoms live on the host
    dtype = X_batch.dtype
    n_features = X_batch.shape[1]
    n_components = settings.n_components
    memory = fit_memory(
        n_components, n_features, X_batch.shape[0], settings.n_nonzero_coefs,
        dtype.itemsize, gram_memory=settings.step.gram_memory,
        n_jobs=settings.step.n_jobs, backend=backend,
    )
    check_fit_memory(memory, n_components, n_features)
    if settings.dict_init is not None:
        return unit_atoms(
            checked_dict_init(settings.dict_init, dtype), settings.step, random_state
        )
    atoms = uniform_atoms(n_components, n_features, random_state, dtype)
    init = "samples" if settings.init == "auto" else settings.init
    if init == "samples":
        norms = np.linalg.norm(X_batch, axis=1)
        candidates = np.flatnonzero(norms > 0)
        chosen = random_state.permutation(candidates)[:n_components]
        # Without enough nonzero samples the remaining atoms stay uniform.
        atoms[: len(chosen)] = X_batch[chosen] / norms[chosen, None]
    return unit_atoms(atoms, settings.step, random_state)


def unit_atoms(atoms, settings, random_state):
    """``atoms`` (modified) with unit-norm rows, nonnegative with ``positive_dict``.

    ``settings`` is the :class:`~._settings.StepSettings`. Raises
    ValueError for an all-zero atom.
    """
    # Scaled by the largest entry first: the norms cannot overflow.
    top = np.abs(atoms).max(axis=1, keepdims=True)
    if np.any(top == 0):
        raise ValueError("dict_init has an all-zero atom; it has no direction.")
    atoms /= top
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    if settings.positive_dict:
        atoms = nonnegative_directions(
            atoms, allow_flip=not settings.positive_code, random_state=random_state
        )
    return atoms


def checked_dict_init(dict_init, dtype):
    """``dict_init`` validated, as a fresh array of ``dtype``."""
    return check_array(dict_init, dtype=dtype, copy=True, input_name="dict_init")


def components_from_known_support(
    X, code_init, settings, components, random_state, mean=None
):
    """Initial atoms refitted on the known support ``code_init`` (paper 5.4).

    The samples with a known support (at most ``settings.batch_size`` of
    them, drawn at random when there are more) are read, centred by
    ``mean``, and the atoms get one K-SVD update with ``code_init`` as the
    codes: as if the alternation started from the codes rather than from
    the atoms. Atoms without a known user keep their value; ``components``
    is not modified.
    """
    rows = np.flatnonzero(np.diff(code_init.indptr))
    if len(rows) == 0:
        return components
    if len(rows) > settings.batch_size:
        rows = np.sort(random_state.choice(rows, settings.batch_size, replace=False))
    X_known = centred(read_batch(X, rows), mean)
    codes = code_init[rows].astype(X_known.dtype)
    step = settings.step
    components = components.copy()
    # X and its codes scaled alike keep the K-SVD problem the same.
    scale = batch_scale(X_known)
    X_known, codes = scaled(X_known, scale), codes * scale
    if step.levels is not None:
        # Split by group and refitted level by level, each level on the
        # residual of the levels before it (section 4.2).
        # On the host, as the plain refit below.
        nested_pass(
            X_known, components, dataclasses.replace(step, backend="numpy"),
            random_state=random_state, update=True, codes=codes,
        )
        return components
    refit_atoms(
        X_known,
        components,
        codes,
        dict_update=step.dict_update,
        update_batch_size=step.update_batch_size,
        positive=step.positive_code,
        random_state=random_state,
        n_jobs=step.n_jobs,
        positive_dict=step.positive_dict,
    )
    return components
