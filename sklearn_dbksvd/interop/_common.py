"""What the SAELens directories and the PyTorch encoder share.

The encoder settings of a fitted estimator as plain data, the file names of a
directory and how to read one back, and the lazy imports of the optional
dependencies.
"""

import json
import re
import warnings
from numbers import Integral
from pathlib import Path

import numpy as np

from ..persistence._state import (
    ESTIMATOR_NAMES,
    UNSAVED_PARAMS,
    check_estimator,
    to_json_value,
)

SAE_WEIGHTS_FILENAME = "sae_weights.safetensors"
SAE_CFG_FILENAME = "cfg.json"
# Key of our own block in cfg.json; SAELens and SAEBench ignore unknown keys.
CONFIG_KEY = "sklearn_dbksvd"
# Version of that block; load_sae refuses newer ones it cannot read. Format 2
# adds the random generator and the provenance to the estimator's state.
_FORMAT = 2
# The registry of estimator classes, the parameter policy and the JSON policy
# are the persistence layer's (sklearn_dbksvd.persistence._state): a
# directory can only name one of its classes.
_ESTIMATOR_NAMES = ESTIMATOR_NAMES
_UNSAVED_PARAMS = UNSAVED_PARAMS
_check_estimator = check_estimator
_plain = to_json_value
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


def model_fields(
    estimator, *, model_name=None, hook_name=None, hook_layer=None,
    context_size=None, prepend_bos=None,
):
    """The language-model fields of an SAELens or SAEBench cfg.

    What is given wins; what is not comes from the estimator's
    ``provenance_`` (a dictionary fitted on a harvest). A given model, hook
    or layer that differs from the provenance's is written as given, with a
    :class:`~sklearn_dbksvd.lm.ProvenanceWarning` (a user may mean it).

    Returns
    -------
    fields : dict
        ``model_name``, ``hook_name``, ``hook_layer``, ``context_size``
        (None when unknown) and ``prepend_bos`` (True when unknown, SAELens'
        default and a harvest's).

    Raises
    ------
    ValueError
        When ``model_name`` or ``hook_name`` is neither given nor recorded,
        or a value is of the wrong type.
    """
    from ..lm._provenance import ProvenanceWarning, provenance_of

    provenance = provenance_of(estimator)
    recorded = {
        "model_name": provenance.get("model_name"),
        "hook_name": provenance.get("hook_name"),
        # Another hook given: its layer is read from its name.
        "hook_layer": provenance.get("layer")
        if hook_name in (None, provenance.get("hook_name"))
        else None,
        "context_size": provenance.get("context_size"),
        "prepend_bos": provenance.get("prepend_bos"),
    }
    given = {
        "model_name": model_name,
        "hook_name": hook_name,
        "hook_layer": hook_layer,
        "context_size": context_size,
        "prepend_bos": prepend_bos,
    }
    for key in ("model_name", "hook_name", "hook_layer"):
        if given[key] is not None and recorded[key] is not None and (
            given[key] != recorded[key]
        ):
            warnings.warn(
                f"{key}={given[key]!r}, but the dictionary was fitted on the "
                f"activations of {key}={recorded[key]!r} (its provenance_): "
                "writing the one given.",
                ProvenanceWarning,
                stacklevel=3,
            )
    fields = {
        key: recorded[key] if value is None else value for key, value in given.items()
    }
    for key in ("model_name", "hook_name"):
        value = fields[key]
        if value is None:
            raise ValueError(
                f"{key} is not known: the estimator records no provenance "
                f"(it was not fitted on a harvest directory); pass {key}=..."
            )
        if not isinstance(value, str) or not value:
            raise ValueError(f"{key} must be a non-empty string; got {value!r}.")
    if fields["context_size"] is not None and not _positive_int(fields["context_size"]):
        raise ValueError(
            f"context_size must be a positive int; got {fields['context_size']!r}."
        )
    if fields["prepend_bos"] is None:
        fields["prepend_bos"] = True
    elif not isinstance(fields["prepend_bos"], bool):
        raise ValueError(f"prepend_bos must be a bool; got {fields['prepend_bos']!r}.")
    layer = fields["hook_layer"]
    fields["hook_layer"] = _resolve_hook_layer(
        fields["hook_name"], layer if isinstance(layer, Integral) else None
    )
    return fields


def _read_directory(directory):
    """``(config, our block)`` of a directory written by :func:`save_sae`.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError``
    naming the file for anything unreadable.
    """
    directory = Path(directory)
    cfg_path = directory / SAE_CFG_FILENAME
    weights_path = directory / SAE_WEIGHTS_FILENAME
    for path in (cfg_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file; is {directory} an SAE?")
    try:
        with open(cfg_path, encoding="utf-8") as file:
            config = json.load(file)
    except (UnicodeDecodeError, ValueError) as error:
        raise ValueError(f"{cfg_path} is not valid JSON ({error}).") from error
    ours = config.get(CONFIG_KEY) if isinstance(config, dict) else None
    if not isinstance(ours, dict):
        raise ValueError(
            f"{cfg_path} has no '{CONFIG_KEY}' block: it was not written by "
            "sklearn_dbksvd.interop.save_sae, and a plain SAE has no "
            "matching-pursuit settings to rebuild."
        )
    version = ours.get("format", 0)
    if not isinstance(version, int) or version > _FORMAT:
        raise ValueError(
            f"{cfg_path} was written in format {version!r} by sklearn-dbksvd "
            f"{ours.get('version')}; this version reads format {_FORMAT}: upgrade."
        )
    name = ours.get("estimator")
    if name not in ESTIMATOR_NAMES:
        raise ValueError(
            f"{directory} holds a {name!r}, which this version of sklearn-dbksvd "
            "does not have."
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


def _positive_int(value):
    return isinstance(value, Integral) and not isinstance(value, bool) and value > 0


def _read_sae(directory):
    """A directory of :func:`save_sae`, read and checked against itself.

    Everything SAELens would use is checked against what rebuilding needs:
    the tensors ``W_dec`` and ``b_dec`` (present, finite, of the shapes
    ``d_sae``, ``d_in`` and our block say), and the number of selections.
    An edited ``max_iterations`` (``k`` for ``"topk"``) is honoured, as
    SAELens honours it, with a warning; an edited ``d_in``, ``d_sae`` or
    ``b_dec`` that no longer matches the weights is an error.

    Returns
    -------
    sae : dict
        ``config``, ``ours``, ``components`` (the atoms), ``b_dec`` (the mean,
        or None without centring) and ``n_nonzero_coefs`` (selections per
        sample).

    Raises
    ------
    ValueError
        Naming the file and the field.
    """
    directory = Path(directory)
    config, ours = _read_directory(directory)
    cfg_path = directory / SAE_CFG_FILENAME
    weights_path = directory / SAE_WEIGHTS_FILENAME
    encoder = ours.get("encoder")
    required = ("n_components", "n_features_in", "params")
    missing = [key for key in required if key not in ours]
    if not isinstance(encoder, dict) or "split_sign" not in encoder:
        missing.append("encoder")
    missing += [key for key in ("d_in", "d_sae") if key not in config]
    if missing:
        raise ValueError(f"{cfg_path} lacks {', '.join(missing)}; it was edited.")
    try:
        weights = _safetensors_numpy().load_file(weights_path)
    except ImportError:
        raise
    except Exception as error:  # noqa: BLE001 - safetensors' own errors
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"{weights_path} is unreadable ({reason}).") from error
    for key in ("W_dec", "b_dec"):
        if key not in weights:
            raise ValueError(f"{weights_path} has no tensor {key!r}.")
    W_dec, b_dec = weights["W_dec"], weights["b_dec"]
    if W_dec.ndim != 2 or W_dec.dtype not in (np.float32, np.float64):
        raise ValueError(
            f"{weights_path}: W_dec is not a 2D float32 or float64 tensor "
            f"(shape {W_dec.shape}, dtype {W_dec.dtype})."
        )
    if (config["d_sae"], config["d_in"]) != W_dec.shape:
        raise ValueError(
            f"{cfg_path} says d_sae={config['d_sae']}, d_in={config['d_in']}, but "
            f"W_dec in {weights_path.name} has shape {W_dec.shape}."
        )
    if b_dec.shape != (W_dec.shape[1],):
        raise ValueError(
            f"{weights_path}: b_dec has shape {b_dec.shape}; expected "
            f"({W_dec.shape[1]},)."
        )
    if not np.isfinite(b_dec).all():
        raise ValueError(f"{weights_path}: b_dec holds NaN or infinity.")
    if not np.isfinite(W_dec).all():
        bad = np.flatnonzero(~np.isfinite(W_dec).all(axis=1))
        raise ValueError(
            f"{weights_path}: W_dec holds NaN or infinity in {bad.size} row(s) "
            f"(first: {bad[0]}); the dictionary is corrupt."
        )
    components = _atoms_from_decoder(W_dec, ours, weights_path)
    if ours.get("centred"):
        mean = b_dec
    elif np.any(b_dec):
        raise ValueError(
            f"{weights_path}: b_dec is nonzero but the dictionary was saved "
            "without centring; it was edited."
        )
    else:
        mean = None
    k = encoder.get("n_nonzero_coefs")
    field = (
        "max_iterations" if config.get("architecture") == "matching_pursuit" else "k"
    )
    edited = config.get(field, k)
    if not _positive_int(edited) or edited > components.shape[0]:
        raise ValueError(
            f"{cfg_path}: {field}={edited!r} is not a number of selections "
            f"between 1 and {components.shape[0]}."
        )
    if edited != k:
        warnings.warn(
            f"{cfg_path}: {field}={edited} differs from the saved "
            f"n_nonzero_coefs={k}; encoding with {edited} selections, as SAELens "
            "does.",
            UserWarning,
            stacklevel=3,
        )
    return {
        "config": config,
        "ours": ours,
        "components": components,
        "b_dec": mean,
        "n_nonzero_coefs": int(edited),
    }
