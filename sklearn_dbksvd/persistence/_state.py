"""One description of a fitted estimator, shared by every file format.

A fitted estimator is described by two arrays, ``components_`` and ``mean_``,
and one JSON-able dict (the *state*):

``estimator``
    Class name, one of :func:`estimator_classes` (a file can never make this
    package import a class it names).
``version``
    Version of sklearn-dbksvd that wrote it.
``params``
    ``get_params(deep=False)`` as JSON values. The parameter policy: a
    parameter whose value is not a JSON value (``dict_init``, ``code_init``,
    ``callback`` when set, a ``RandomState`` instance, non-finite floats) is
    stored as None and its name listed in ``dropped_params``; tuples are
    stored as lists and their names listed in ``tuple_params``.
``n_components``, ``n_features_in``, ``feature_names_in``
``fitted``
    ``n_iter_``, ``n_steps_``, ``n_samples_seen_`` and ``history_``.
``random_state``
    The state of the estimator's generator (``_random_state``), so that a
    loaded estimator's :meth:`partial_fit` continues exactly as the saved
    one's would; None when the estimator has none.
``provenance``
    ``provenance_`` (the harvest the dictionary was fitted on), or None.
"""

import math
from numbers import Integral, Real

import numpy as np
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

ESTIMATOR_NAMES = ("DBKSVDDictionaryLearning", "MatryoshkaDBKSVD")
# Parameters that are arrays or callables: components_ supersedes the
# initialisations, and a callback cannot be written as data.
UNSAVED_PARAMS = ("dict_init", "code_init", "callback")
FITTED_COUNTERS = ("n_iter_", "n_steps_", "n_samples_seen_")


def estimator_classes():
    """The estimator classes a file may name, by class name.

    Returns
    -------
    classes : dict of str to type
    """
    import sklearn_dbksvd

    return {
        name: getattr(sklearn_dbksvd, name)
        for name in ESTIMATOR_NAMES
        if hasattr(sklearn_dbksvd, name)
    }


def check_estimator(estimator):
    """Raise ``TypeError`` unless ``estimator`` is a fitted estimator of ours."""
    cls = type(estimator)
    if cls.__name__ not in ESTIMATOR_NAMES or not cls.__module__.startswith(
        "sklearn_dbksvd"
    ):
        raise TypeError(
            f"expected a fitted {' or '.join(ESTIMATOR_NAMES)}; got {cls.__name__}."
        )
    check_is_fitted(estimator, "components_")


# ----------------------------------------------------------------------
# JSON
# ----------------------------------------------------------------------
def to_json_value(value):
    """``value`` as plain JSON data: the one JSON policy of the package.

    Dicts, lists, tuples and arrays become dicts and lists, NumPy scalars
    Python numbers, paths strings; non-finite floats become None (strict
    JSON has no NaN). Any other object is written as its ``repr`` (only in
    reports: the estimator's parameters never reach here unless they are
    JSON values, see :func:`params_to_json`).
    """
    if isinstance(value, dict):
        return {str(key): to_json_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [to_json_value(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if hasattr(value, "__fspath__"):
        return str(value)
    return repr(value)


def is_json_value(value):
    """Whether ``value`` is stored exactly by JSON (tuples as lists)."""
    if value is None or isinstance(value, bool | str):
        return True
    if isinstance(value, Integral):
        return True
    if isinstance(value, Real):
        return math.isfinite(value)
    if isinstance(value, list | tuple):
        return all(is_json_value(item) for item in value)
    return False


def params_to_json(estimator):
    """Parameters as JSON data, with the names dropped and the tuples.

    Returns
    -------
    params : dict
    dropped : list of str
        Parameters stored as None because their value is not data.
    tuples : list of str
        Parameters whose list is a tuple.
    """
    params, dropped, tuples = {}, [], []
    for name, value in estimator.get_params(deep=False).items():
        if (name in UNSAVED_PARAMS and value is not None) or not is_json_value(value):
            dropped.append(name)
            value = None
        elif isinstance(value, tuple):
            tuples.append(name)
        params[name] = to_json_value(value)
    return params, dropped, tuples


def params_from_json(cls, params, tuple_params=(), *, where, lenient=False):
    """Keyword arguments of ``cls`` from stored parameters, validated.

    Unknown names (parameters of another version) are ignored. A value that
    fails the estimator's validation raises ``ValueError`` naming ``where``,
    or, with ``lenient=True`` (files of format 1, which stored the ``repr``
    of non-JSON values), is dropped.
    """
    if not isinstance(params, dict):
        raise ValueError(f"{where}: the parameters are not a JSON object.")
    accepted = cls().get_params(deep=False)
    kwargs = {}
    for key, value in params.items():
        if key not in accepted:
            continue
        if key in tuple_params and isinstance(value, list):
            value = tuple(value)
        try:
            cls(**{key: value})._validate_params()
        except (ValueError, TypeError) as error:
            if lenient:
                continue
            raise ValueError(
                f"{where}: parameter {key}={value!r} is invalid "
                f"({str(error).splitlines()[0]})."
            ) from error
        kwargs[key] = value
    return kwargs


# ----------------------------------------------------------------------
# Random state
# ----------------------------------------------------------------------
def random_state_to_json(random_state):
    """``RandomState.get_state()`` as JSON data (None for None)."""
    if random_state is None:
        return None
    name, keys, pos, has_gauss, cached = random_state.get_state()
    return {
        "bit_generator": str(name),
        # 624 32-bit words as little-endian hex: one short line of JSON.
        "keys": np.asarray(keys, dtype="<u4").tobytes().hex(),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def random_state_from_json(data, *, where):
    """A ``numpy.random.RandomState`` in the state :func:`random_state_to_json` gave."""
    try:
        keys = data["keys"]
        if isinstance(keys, str):
            keys = np.frombuffer(bytes.fromhex(keys), dtype="<u4")
        keys = np.asarray(keys, dtype=np.int64)
        if keys.shape != (624,) or keys.min() < 0 or keys.max() >= 2**32:
            raise ValueError("the keys are not 624 32-bit integers")
        random_state = np.random.RandomState()
        random_state.set_state(
            (
                str(data["bit_generator"]),
                keys.astype(np.uint32),
                int(data["pos"]),
                int(data["has_gauss"]),
                float(data["cached_gaussian"]),
            )
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(
            f"{where}: the random state is unreadable ({error})."
        ) from error
    return random_state


# ----------------------------------------------------------------------
# Arrays
# ----------------------------------------------------------------------
def check_components(components, where, name="components_"):
    """``components`` if it is a finite 2D float array, else ``ValueError``."""
    components = np.asarray(components)
    if components.ndim != 2 or components.dtype not in (np.float32, np.float64):
        raise ValueError(
            f"{where}: {name} is not a 2D float32 or float64 array "
            f"(shape {components.shape}, dtype {components.dtype})."
        )
    if components.shape[0] == 0 or components.shape[1] == 0:
        raise ValueError(f"{where}: {name} is empty (shape {components.shape}).")
    finite = np.isfinite(components).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ValueError(
            f"{where}: {name} holds NaN or infinity in {bad.size} atom(s) "
            f"(first: atom {bad[0]}); the dictionary is corrupt."
        )
    return components


def check_mean(mean, components, where, name="mean_"):
    """``mean`` as a finite vector of the atoms' length and dtype."""
    mean = np.asarray(mean)
    if mean.shape != (components.shape[1],) or mean.dtype.kind != "f":
        raise ValueError(
            f"{where}: {name} has shape {mean.shape} and dtype {mean.dtype}; "
            f"expected ({components.shape[1]},) floats to match the atoms."
        )
    if not np.isfinite(mean).all():
        raise ValueError(f"{where}: {name} holds NaN or infinity.")
    return mean.astype(components.dtype)


# ----------------------------------------------------------------------
# The description
# ----------------------------------------------------------------------
def describe_estimator(estimator):
    """The arrays and the JSON state of a fitted estimator.

    Parameters
    ----------
    estimator : DBKSVDDictionaryLearning or MatryoshkaDBKSVD
        Fitted estimator.

    Returns
    -------
    arrays : dict
        ``components_`` and ``mean_`` (zeros without centring).
    state : dict
        JSON data, see the module documentation.
    """
    from .. import __version__

    check_estimator(estimator)
    components = np.asarray(estimator.components_)
    mean = getattr(estimator, "mean_", None)
    if mean is None:
        mean = np.zeros(components.shape[1], dtype=components.dtype)
    params, dropped, tuples = params_to_json(estimator)
    feature_names = getattr(estimator, "feature_names_in_", None)
    provenance = getattr(estimator, "provenance_", None)
    state = {
        "estimator": type(estimator).__name__,
        "version": __version__,
        "params": params,
        "dropped_params": dropped,
        "tuple_params": tuples,
        "n_components": int(components.shape[0]),
        "n_features_in": int(getattr(estimator, "n_features_in_", components.shape[1])),
        "feature_names_in": (
            None if feature_names is None else to_json_value(feature_names)
        ),
        "fitted": {
            name: to_json_value(getattr(estimator, name))
            for name in (*FITTED_COUNTERS, "history_")
            if hasattr(estimator, name)
        },
        "random_state": random_state_to_json(getattr(estimator, "_random_state", None)),
        "provenance": None if provenance is None else to_json_value(provenance),
    }
    return {"components_": components, "mean_": np.asarray(mean)}, state


def rebuild_estimator(arrays, state, *, where, lenient=False):
    """The fitted estimator of :func:`describe_estimator`'s output.

    Parameters
    ----------
    arrays : dict
        ``components_`` and optionally ``mean_``.
    state : dict
        The JSON state.
    where : str
        The file or directory, named in every error.
    lenient : bool, default=False
        Drop invalid parameters instead of raising (format-1 files).

    Returns
    -------
    estimator : DBKSVDDictionaryLearning or MatryoshkaDBKSVD

    Raises
    ------
    ValueError
        Anything missing, of the wrong shape, non-finite or unknown, with a
        message naming ``where``.
    """
    if not isinstance(state, dict):
        raise ValueError(f"{where}: the saved state is not a JSON object.")
    name = state.get("estimator")
    classes = estimator_classes()
    if name not in classes:
        raise ValueError(
            f"{where} holds a {name!r}, which this version of sklearn-dbksvd "
            "does not have."
        )
    cls = classes[name]
    components = check_components(arrays["components_"], where)
    n_features = components.shape[1]
    if "n_components" in state and state["n_components"] != components.shape[0]:
        raise ValueError(
            f"{where}: {components.shape[0]} atoms, but the state says "
            f"n_components={state['n_components']}."
        )
    if state.get("n_features_in", n_features) != n_features:
        raise ValueError(
            f"{where}: atoms of {n_features} features, but the state says "
            f"n_features_in={state['n_features_in']}."
        )
    kwargs = params_from_json(
        cls,
        state.get("params", {}),
        state.get("tuple_params", ()),
        where=where,
        lenient=lenient,
    )
    estimator = cls(**kwargs)
    estimator.components_ = np.array(components, order="C")
    estimator.n_features_in_ = n_features
    mean = arrays.get("mean_")
    if mean is None:
        # Files written before centring have no mean_: the mean was zero.
        mean = np.zeros(n_features, dtype=components.dtype)
    estimator.mean_ = check_mean(mean, components, where)
    names = state.get("feature_names_in")
    if names is not None:
        if not isinstance(names, list) or len(names) != n_features:
            raise ValueError(f"{where}: feature_names_in does not match the atoms.")
        estimator.feature_names_in_ = np.asarray(names, dtype=object)
    fitted = state.get("fitted", {})
    if not isinstance(fitted, dict):
        raise ValueError(f"{where}: the fitted counters are not a JSON object.")
    for attribute in FITTED_COUNTERS:
        if attribute in fitted:
            value = fitted[attribute]
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{where}: {attribute}={value!r} is not a count.")
            setattr(estimator, attribute, value)
    history = fitted.get("history_", [])
    if not isinstance(history, list):
        raise ValueError(f"{where}: history_ is not a list.")
    estimator.history_ = history
    provenance = state.get("provenance")
    if provenance is not None and not isinstance(provenance, dict):
        raise ValueError(f"{where}: the provenance is not a JSON object.")
    estimator.provenance_ = provenance
    if state.get("random_state") is not None:
        estimator._random_state = random_state_from_json(
            state["random_state"], where=where
        )
    else:
        # Not saved (an older file): partial_fit continues from a generator
        # seeded by random_state.
        estimator._random_state = check_random_state(kwargs.get("random_state"))
    return estimator
