"""What the SAELens directories and the PyTorch encoder share.

The encoder settings of a fitted estimator as plain data, the file names of a
directory and how to read one back, and the lazy imports of the optional
dependencies.
"""

import json
import math
import re
from numbers import Integral, Real
from pathlib import Path

import numpy as np
from sklearn.utils.validation import check_is_fitted

SAE_WEIGHTS_FILENAME = "sae_weights.safetensors"
SAE_CFG_FILENAME = "cfg.json"
# Key of our own block in cfg.json; SAELens and SAEBench ignore unknown keys.
CONFIG_KEY = "sklearn_dbksvd"
# Version of that block; load_sae refuses newer ones it cannot read.
_FORMAT = 1
# Estimators that save_sae writes and load_sae rebuilds, by class name. A
# directory can only name one of these: load_sae never imports a class
# named by a file.
_ESTIMATOR_NAMES = ("DBKSVDDictionaryLearning", "MatryoshkaDBKSVD")
# Parameters that are arrays or callables: components_ supersedes the
# initialisations, and a callback cannot be written as data.
_UNSAVED_PARAMS = ("dict_init", "code_init", "callback")
_DTYPES = {"float32": np.float32, "float64": np.float64}
_LAYER_IN_HOOK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


def load_torch_encoder():
    try:
        from . import _torch_encoder
    except ImportError as error:
        raise ImportError(
            "the PyTorch encoder needs torch: pip install 'sklearn-dbksvd[torch]'"
        ) from error
    return _torch_encoder


def _safetensors_numpy():
    try:
        import safetensors.numpy
    except ImportError as error:
        raise ImportError(
            "SAELens directories are written with safetensors: pip install "
            "'sklearn-dbksvd[torch]' (or pip install safetensors)"
        ) from error
    return safetensors.numpy


# ----------------------------------------------------------------------
# What the encoder does, as data
# ----------------------------------------------------------------------
def _check_estimator(estimator):
    if type(estimator).__name__ not in _ESTIMATOR_NAMES or not type(
        estimator
    ).__module__.startswith("sklearn_dbksvd"):
        raise TypeError(
            f"expected a fitted {' or '.join(_ESTIMATOR_NAMES)}; got "
            f"{type(estimator).__name__}."
        )
    check_is_fitted(estimator, "components_")


def _encoder_settings(estimator, *, split_sign=False):
    """Matching-pursuit settings of ``transform``, resolved, as plain data.

    Parameters
    ----------
    estimator : DBKSVDDictionaryLearning or MatryoshkaDBKSVD
        Fitted estimator.
    split_sign : bool, default=False
        Whether the encoder outputs split-sign codes.

    Returns
    -------
    settings : dict
        ``algorithm`` (the ``transform_algorithm``), ``n_nonzero_coefs``
        (``transform_n_nonzero_coefs`` resolved), ``positive``, ``tol``,
        ``refit``, ``levels`` (``[start, stop, nonzeros]`` of each nested
        level, or None when encoding with all atoms at once) and
        ``split_sign``: what :class:`MatchingPursuitEncoder` takes.
    """
    _check_estimator(estimator)
    n_components = estimator.components_.shape[0]
    k = int(estimator._transform_n_nonzero_coefs())
    levels = None
    if getattr(estimator, "transform_mode", "full") == "nested":
        levels = [
            [int(atoms.start), int(atoms.stop), int(share)]
            for atoms, share in estimator._levels(n_components, k)
        ]
    return {
        "algorithm": estimator.transform_algorithm,
        "n_nonzero_coefs": k,
        "positive": bool(estimator.positive_code),
        "tol": None if estimator.mp_tol is None else float(estimator.mp_tol),
        "refit": bool(estimator.mp_refit),
        "levels": levels,
        "split_sign": bool(split_sign),
    }


# ----------------------------------------------------------------------
# JSON
# ----------------------------------------------------------------------
def _plain(value):
    """``value`` with NumPy scalars and arrays as Python numbers and lists.

    Non-finite floats become None: strict JSON has no NaN.
    """
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_plain(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _is_json_value(value):
    if value is None or isinstance(value, bool | str):
        return True
    if isinstance(value, Integral | Real):
        return isinstance(value, Integral) or math.isfinite(value)
    if isinstance(value, list | tuple):
        return all(_is_json_value(item) for item in value)
    return False


def _params_block(estimator):
    """Parameters as JSON data, and the names of those left out or tuples."""
    params, dropped, tuples = {}, [], []
    for name, value in estimator.get_params(deep=False).items():
        if name in _UNSAVED_PARAMS and value is not None:
            dropped.append(name)
            value = None
        elif not _is_json_value(value):
            # A RandomState instance: the loaded estimator gets a fresh one.
            dropped.append(name)
            value = None
        elif isinstance(value, tuple):
            tuples.append(name)
        params[name] = _plain(value)
    return params, dropped, tuples


def _resolve_hook_layer(hook_name, hook_layer):
    if hook_layer is not None:
        if not isinstance(hook_layer, Integral) or hook_layer < 0:
            raise ValueError(
                f"hook_layer must be a nonnegative int; got {hook_layer!r}."
            )
        return int(hook_layer)
    match = _LAYER_IN_HOOK.search(hook_name)
    if match is None:
        raise ValueError(
            f"cannot read the layer from hook_name={hook_name!r} (no "
            "'blocks.<layer>.'); pass hook_layer, which SAEBench needs."
        )
    return int(match.group(1))


def _read_directory(directory):
    """``(config, our block)`` of a directory written by :func:`save_sae`."""
    directory = Path(directory)
    cfg_path = directory / SAE_CFG_FILENAME
    weights_path = directory / SAE_WEIGHTS_FILENAME
    for path in (cfg_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file; is {directory} an SAE?")
    with open(cfg_path, encoding="utf-8") as file:
        config = json.load(file)
    ours = config.get(CONFIG_KEY) if isinstance(config, dict) else None
    if not isinstance(ours, dict):
        raise ValueError(
            f"{cfg_path} has no '{CONFIG_KEY}' block: it was not written by "
            "sklearn_dbksvd.interop.save_sae, and a plain SAE has no "
            "matching-pursuit settings to rebuild."
        )
    if ours.get("format", 0) > _FORMAT:
        raise ValueError(
            f"{cfg_path} was written in format {ours['format']} by sklearn-dbksvd "
            f"{ours.get('version')}; this version reads format {_FORMAT}: upgrade."
        )
    return config, ours


def _atoms_from_decoder(W_dec, ours, where):
    """``components_`` from ``W_dec``: its first half when split-sign."""
    m = ours["n_components"]
    if ours["encoder"]["split_sign"]:
        if W_dec.shape[0] != 2 * m or not np.array_equal(W_dec[m:], -W_dec[:m]):
            raise ValueError(f"{where}: W_dec is not the split-sign [D; -D].")
        W_dec = W_dec[:m]
    if W_dec.shape != (m, ours["n_features_in"]):
        raise ValueError(
            f"{where}: W_dec has shape {W_dec.shape}; the config says "
            f"({m}, {ours['n_features_in']})."
        )
    return W_dec


