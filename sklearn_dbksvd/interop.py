"""Interoperability with the sparse-autoencoder ecosystem (SAELens, SAEBench).

Interpretability researchers evaluate dictionaries with SAEBench and load them
with SAELens. A DB-KSVD dictionary is a linear decoder like the decoder of a
sparse autoencoder (SAE); only its encoder differs: matching pursuit instead
of one linear map and an activation. This module writes a fitted estimator in
SAELens' directory layout, reads it back, and runs the same matching pursuit
as :meth:`~sklearn_dbksvd.DBKSVDDictionaryLearning.transform` in PyTorch, on
any torch device.

It needs the optional extra ``pip install sklearn-dbksvd[torch]``:
``safetensors`` for :func:`save_sae` and :func:`load_sae` (which work without
torch), and ``torch`` for :func:`to_torch`, :func:`load_torch` and
:class:`MatchingPursuitEncoder`. ``import sklearn_dbksvd`` imports neither, and
``import sklearn_dbksvd.interop`` imports them only when a function needs them.

The directory layout
--------------------
:func:`save_sae` writes a directory with two files:

``sae_weights.safetensors``
    Four tensors, in the dtype of the dictionary (float32 or float64):

    ========= ================= ===============================================
    key       shape             value
    ========= ================= ===============================================
    ``W_dec`` (d_sae, d_in)     the atoms ``components_``, unit-norm rows
    ``W_enc`` (d_in, d_sae)     ``W_dec.T``
    ``b_enc`` (d_sae,)          zeros
    ``b_dec`` (d_in,)           zeros: the estimators do not centre the data
    ========= ================= ===============================================

``cfg.json``
    The fields SAELens and SAEBench read, each written once at the top level
    as SAELens up to 5.x writes them, and repeated in a ``metadata``
    sub-dictionary as SAELens 6 groups them: ``architecture`` (``"topk"``),
    ``d_in``, ``d_sae``, ``k``, ``dtype``, ``device``,
    ``apply_b_dec_to_input`` (false), ``normalize_activations``
    (``"none"``), ``reshape_activations``, ``activation_fn``/
    ``activation_fn_str`` (``"topk"``) with ``activation_fn_kwargs``
    (``{"k": k}``), ``model_name``, ``hook_name``, ``hook_layer``,
    ``hook_head_index``, ``context_size``, ``prepend_bos``, ``dataset_path``,
    ``finetuning_scaling_factor``, ``neuronpedia_id``, ``seqpos_slice``. It
    records no ``sae_lens_version``, so SAELens 6 reads the file through its
    compatibility path for configs of earlier versions, which takes ``k``
    from ``activation_fn_kwargs`` and the metadata from the top level.

    Under the key ``"sklearn_dbksvd"`` it holds what this package needs to
    rebuild the estimator: the class name, the parameters (those that JSON
    can hold; ``dict_init``, ``code_init``, ``callback`` and a
    ``RandomState`` instance are left out and listed under
    ``dropped_params``), ``n_features_in``, ``feature_names_in``, the fitted
    counters and ``history_``, the package version, and the ``encoder``: the
    matching-pursuit settings of ``transform`` (``n_nonzero_coefs`` resolved,
    ``positive``, ``tol``, ``refit``, the nested ``levels`` of a
    :class:`~sklearn_dbksvd.MatryoshkaDBKSVD` with ``transform_mode="nested"``,
    and ``split_sign``).

Matching pursuit, not top-k
---------------------------
SAELens has no matching-pursuit architecture, so the directory declares the
closest one it has, ``"topk"``, with the same ``k``: loaded by SAELens, the
dictionary encodes by keeping the ``k`` largest entries of ``x @ W_enc``
(ReLU applied). That is the first selection of matching pursuit repeated
without updating the correlations: the same decoder, a cruder encoder. For
the codes :meth:`transform` gives, load the directory with :func:`load_sae`
(scikit-learn) or :func:`load_torch` (PyTorch), or convert a fitted estimator
with :func:`to_torch`; the resulting :class:`MatchingPursuitEncoder` has the
attributes SAEBench asks of a custom SAE (``encode``, ``decode``,
``forward``, ``W_enc``, ``W_dec``, ``b_enc``, ``b_dec``, ``dtype``,
``device`` and a ``cfg`` with ``d_in``, ``d_sae``, ``hook_name``,
``hook_layer``, ``model_name``, ...).

Signed codes and split sign
---------------------------
Matching pursuit selects atoms by the largest ``|correlation|``, so codes
may be negative unless the estimator has ``positive_code=True``. Tools made
for SAEs expect nonnegative latents (SAEBench counts a latent as active
when it is ``> 0``). The split-sign form, as scikit-learn's
``SparseCoder(split_sign=True)`` defines it, turns a code ``c`` of ``m``
entries into ``[max(c, 0), max(-c, 0)]`` of ``2 m`` nonnegative entries, and
the dictionary ``D`` into ``[D; -D]``, so that the reconstruction is
unchanged. It is the ``split_sign`` option of :func:`save_sae` (``d_sae`` is
then ``2 m``) and of :func:`to_torch`, the function :func:`split_sign` and
the transformer :class:`SplitSign`, whose ``get_feature_names_out`` and
``set_output`` count ``2 m`` outputs (scikit-learn 1.9's ``SparseCoder``
names only ``m`` of them and then fails with ``set_output(transform="pandas")``,
scikit-learn issue #34768).

See Also
--------
save_sae : Write a fitted estimator as an SAELens directory.
load_sae : Rebuild the estimator from such a directory.
to_torch : Matching pursuit of a fitted estimator as a ``torch.nn.Module``.
load_torch : The same module, straight from a directory.
SplitSign : Nonnegative split-sign codes in a scikit-learn pipeline.

Examples
--------
Fit, save, load, and get the same codes:

>>> import os, tempfile
>>> import numpy as np
>>> from sklearn_dbksvd import DBKSVDDictionaryLearning
>>> from sklearn_dbksvd.interop import load_sae, save_sae
>>> X = np.random.RandomState(0).randn(400, 16).astype(np.float32)
>>> model = DBKSVDDictionaryLearning(
...     n_components=32, n_nonzero_coefs=3, max_iter=2, random_state=0
... ).fit(X)
>>> with tempfile.TemporaryDirectory() as tmp:
...     path = save_sae(
...         model,
...         os.path.join(tmp, "layer8"),
...         hook_name="blocks.8.hook_resid_post",
...         model_name="pythia-70m-deduped",
...     )
...     files = sorted(os.listdir(path))
...     loaded = load_sae(path)
>>> files
['cfg.json', 'sae_weights.safetensors']
>>> type(loaded).__name__, loaded.components_.shape, loaded.components_.dtype
('DBKSVDDictionaryLearning', (32, 16), dtype('float32'))
>>> np.array_equal(loaded.transform(X), model.transform(X))
True

Nonnegative split-sign codes in a pipeline, with consistent feature names:

>>> from sklearn.pipeline import make_pipeline
>>> from sklearn_dbksvd.interop import SplitSign
>>> pipe = make_pipeline(model, SplitSign()).fit(X)
>>> codes = pipe.transform(X)
>>> codes.shape, bool(codes.min() >= 0)
((400, 64), True)
>>> pipe.get_feature_names_out()[[0, 32]].tolist()
['dbksvddictionarylearning0_pos', 'dbksvddictionarylearning0_neg']

In PyTorch (see :func:`to_torch`), on a GPU where there is one::

    encoder = to_torch(model, device="cuda")
    latents = encoder.encode(activations)      # [..., d_in] -> [..., d_sae]
    reconstruction = encoder(activations)      # decode(encode(x))
"""

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
import uuid
from numbers import Integral, Real
from pathlib import Path

import numpy as np
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from ._split_sign import SplitSign, split_sign

__all__ = [
    "MatchingPursuitEncoder",  # noqa: F822 (module __getattr__: needs torch)
    "SplitSign",
    "load_sae",
    "load_torch",
    "save_sae",
    "split_sign",
    "to_torch",
]

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


def __getattr__(name):
    # MatchingPursuitEncoder subclasses torch.nn.Module: importing it here
    # would import torch with this module.
    if name == "MatchingPursuitEncoder":
        try:
            return _torch_encoder().MatchingPursuitEncoder
        except ImportError as error:
            # AttributeError, so that hasattr() says False without torch.
            raise AttributeError(f"MatchingPursuitEncoder: {error}") from error
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _torch_encoder():
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


# ----------------------------------------------------------------------
# Writing and reading directories
# ----------------------------------------------------------------------
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


def _sae_config(
    estimator,
    *,
    d_sae,
    dtype,
    hook_name,
    model_name,
    hook_layer,
    hook_head_index,
    context_size,
    prepend_bos,
    dataset_path,
    split_sign,
):
    """The contents of cfg.json: SAELens/SAEBench fields and our own block."""
    from . import __version__

    d_in = int(estimator.components_.shape[1])
    settings = _encoder_settings(estimator, split_sign=split_sign)
    k = settings["n_nonzero_coefs"]
    model_metadata = {
        "model_name": model_name,
        "hook_name": hook_name,
        "hook_layer": hook_layer,
        "hook_head_index": hook_head_index,
        "context_size": context_size,
        "prepend_bos": bool(prepend_bos),
        "dataset_path": dataset_path,
        "seqpos_slice": [None],
        "model_from_pretrained_kwargs": {},
        "neuronpedia_id": None,
        "sae_lens_training_version": None,
    }
    params, dropped, tuples = _params_block(estimator)
    feature_names = getattr(estimator, "feature_names_in_", None)
    ours = {
        "format": _FORMAT,
        "version": __version__,
        "estimator": type(estimator).__name__,
        "params": params,
        "dropped_params": dropped,
        "tuple_params": tuples,
        "n_components": int(estimator.components_.shape[0]),
        "n_features_in": int(estimator.n_features_in_),
        "feature_names_in": None if feature_names is None else _plain(feature_names),
        "fitted": {
            name: _plain(getattr(estimator, name))
            for name in ("n_iter_", "n_steps_", "n_samples_seen_", "history_")
            if hasattr(estimator, name)
        },
        "encoder": settings,
        # Codes are nonnegative only with positive_code or in split-sign form.
        "signed_codes": not (settings["positive"] or split_sign),
    }
    return {
        # What SAELens' config classes read (5.x flat, 6.x the same names).
        "architecture": "topk",
        "d_in": d_in,
        "d_sae": int(d_sae),
        "k": k,
        "dtype": dtype,
        "device": "cpu",
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        # SAELens' own default: attention-output hooks are [..., heads, d_head].
        "reshape_activations": "hook_z" if "hook_z" in hook_name else "none",
        "activation_fn": "topk",
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": k},
        "finetuning_scaling_factor": False,
        "dataset_trust_remote_code": True,
        **model_metadata,
        # SAELens 6 groups the fields about the language model here.
        "metadata": dict(model_metadata),
        CONFIG_KEY: ours,
    }


def _fsync_directory(path):
    with contextlib.suppress(OSError):  # not every file system allows it
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _publish_directory(tmp, directory, overwrite):
    """Rename the complete ``tmp`` to ``directory``, replacing an old SAE.

    A directory cannot be renamed over a non-empty one, so an old one is
    first renamed aside and removed only once the new one is in place:
    ``directory`` is always absent, the old one or the new one, never a mix.
    """
    if not directory.exists():
        os.rename(tmp, directory)
        return
    if not overwrite:  # created since _check_target looked
        raise FileExistsError(f"{directory} exists; pass overwrite=True to replace it.")
    aside = directory.parent / f".{directory.name}.old.{uuid.uuid4().hex}"
    os.rename(directory, aside)
    try:
        os.rename(tmp, directory)
    except BaseException:
        os.rename(aside, directory)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def _check_target(directory, overwrite):
    if not directory.parent.is_dir():
        raise FileNotFoundError(f"{directory.parent}: no such directory.")
    if not directory.exists() and not directory.is_symlink():
        return
    if not overwrite:
        raise FileExistsError(f"{directory} exists; pass overwrite=True to replace it.")
    # Only ever replace what looks like an SAE directory or nothing at all,
    # so that a wrong path cannot wipe unrelated files.
    if directory.is_symlink() or not directory.is_dir():
        raise FileExistsError(f"{directory} exists and is not a directory.")
    contents = {entry.name for entry in directory.iterdir()}
    if contents and SAE_CFG_FILENAME not in contents:
        raise FileExistsError(
            f"{directory} is a non-empty directory without {SAE_CFG_FILENAME}; "
            "refusing to replace it."
        )


def save_sae(
    estimator,
    directory,
    *,
    hook_name,
    model_name,
    hook_layer=None,
    hook_head_index=None,
    context_size=None,
    prepend_bos=True,
    dataset_path=None,
    split_sign=False,
    dtype=None,
    overwrite=False,
):
    """Write a fitted estimator as an SAELens directory.

    The directory holds ``cfg.json`` and ``sae_weights.safetensors`` (see the
    module documentation for every key). It is written in a temporary
    directory beside ``directory`` and renamed into place once complete, so
    ``directory`` never holds a half-written SAE, even if the process is
    killed.

    Parameters
    ----------
    estimator : DBKSVDDictionaryLearning or MatryoshkaDBKSVD
        Fitted estimator.
    directory : str or path-like
        Directory to create. Its parent must exist.
    hook_name : str
        TransformerLens hook whose activations the dictionary was fitted on,
        e.g. ``"blocks.8.hook_resid_post"``.
    model_name : str
        Name of the language model, e.g. ``"pythia-70m-deduped"``.
    hook_layer : int, default=None
        Layer of the hook. None reads it from ``hook_name``
        (``"blocks.<layer>."``) and raises ``ValueError`` when it is not there.
    hook_head_index : int, default=None
        Attention head, for SAEs of one head.
    context_size : int, default=None
        Tokens per context of the activations, if known.
    prepend_bos : bool, default=True
        Whether the activations were taken with a BOS token prepended.
    dataset_path : str, default=None
        Dataset the activations came from, if known.
    split_sign : bool, default=False
        Write the split-sign dictionary ``[D; -D]`` (``d_sae = 2 *
        n_components``), for tools that expect nonnegative latents.
    dtype : {"float32", "float64"}, default=None
        Dtype of the tensors; None keeps the dtype of ``components_``.
        :func:`load_sae` gives back ``components_`` in this dtype.
    overwrite : bool, default=False
        Replace an existing directory (only one that holds a ``cfg.json`` or
        is empty).

    Returns
    -------
    directory : pathlib.Path
        The directory written.

    See Also
    --------
    load_sae : Rebuild the estimator.
    load_torch : Load the directory as a :class:`MatchingPursuitEncoder`.
    """
    _check_estimator(estimator)
    if not isinstance(hook_name, str) or not hook_name:
        raise ValueError(f"hook_name must be a non-empty str; got {hook_name!r}.")
    if not isinstance(model_name, str) or not model_name:
        raise ValueError(f"model_name must be a non-empty str; got {model_name!r}.")
    hook_layer = _resolve_hook_layer(hook_name, hook_layer)
    components = estimator.components_
    if dtype is None:
        dtype = np.dtype(components.dtype).name
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be 'float32', 'float64' or None; got {dtype!r}.")
    safetensors_numpy = _safetensors_numpy()
    directory = Path(directory)
    _check_target(directory, overwrite)

    atoms = np.asarray(components, dtype=_DTYPES[dtype])
    W_dec = np.concatenate([atoms, -atoms]) if split_sign else atoms
    W_dec = np.ascontiguousarray(W_dec)
    tensors = {
        "W_dec": W_dec,
        "W_enc": np.ascontiguousarray(W_dec.T),
        "b_enc": np.zeros(W_dec.shape[0], dtype=W_dec.dtype),
        "b_dec": np.zeros(W_dec.shape[1], dtype=W_dec.dtype),
    }
    config = _sae_config(
        estimator,
        d_sae=W_dec.shape[0],
        dtype=dtype,
        hook_name=hook_name,
        model_name=model_name,
        hook_layer=hook_layer,
        hook_head_index=hook_head_index,
        context_size=context_size,
        prepend_bos=prepend_bos,
        dataset_path=dataset_path,
        split_sign=split_sign,
    )
    text = json.dumps(config, indent=2, allow_nan=False)

    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.tmp."))
    try:
        # "pt": the format tag torch tooling expects of safetensors files.
        safetensors_numpy.save_file(
            tensors, tmp / SAE_WEIGHTS_FILENAME, metadata={"format": "pt"}
        )
        with open(tmp / SAE_CFG_FILENAME, "w", encoding="utf-8") as file:
            file.write(text)
        for name in (SAE_WEIGHTS_FILENAME, SAE_CFG_FILENAME):
            with open(tmp / name, "rb") as file:
                os.fsync(file.fileno())
        # mkdtemp makes the directory private (0700); give it the usual mode.
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)
        _fsync_directory(tmp)
        _publish_directory(tmp, directory, overwrite)
        _fsync_directory(directory.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


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


def load_sae(directory):
    """Rebuild the fitted estimator saved by :func:`save_sae`.

    The estimator has the class, parameters and ``components_`` it was saved
    with, so its :meth:`transform` gives the same codes (when the tensors
    were saved in the dtype of ``components_``). Parameters that were not
    saved (``dict_init``, ``code_init``, ``callback``, a ``RandomState``
    instance) are None; a later :meth:`partial_fit` draws from a fresh
    random state.

    Parameters
    ----------
    directory : str or path-like
        Directory written by :func:`save_sae`.

    Returns
    -------
    estimator : DBKSVDDictionaryLearning or MatryoshkaDBKSVD
        Fitted estimator with ``components_``, ``n_features_in_`` (and
        ``feature_names_in_``, ``n_iter_``, ``n_steps_``,
        ``n_samples_seen_``, ``history_`` when saved).

    See Also
    --------
    save_sae : Write the directory.
    load_torch : Load the directory as a :class:`MatchingPursuitEncoder`.
    """
    import sklearn_dbksvd

    config, ours = _read_directory(directory)
    name = ours.get("estimator")
    cls = getattr(sklearn_dbksvd, name, None) if name in _ESTIMATOR_NAMES else None
    if cls is None:
        raise ValueError(
            f"{directory} holds a {name!r}, which this version of sklearn-dbksvd "
            "does not have."
        )
    weights = _safetensors_numpy().load_file(Path(directory) / SAE_WEIGHTS_FILENAME)
    components = _atoms_from_decoder(weights["W_dec"], ours, directory)
    if components.dtype not in (np.float32, np.float64):
        raise ValueError(f"{directory}: W_dec has dtype {components.dtype}.")

    accepted = cls().get_params(deep=False)
    params = {
        key: tuple(value) if key in ours.get("tuple_params", []) else value
        for key, value in ours["params"].items()
        if key in accepted
    }
    estimator = cls(**params)
    estimator._validate_params()
    estimator.components_ = np.array(components, order="C")
    estimator.n_features_in_ = int(ours["n_features_in"])
    if ours.get("feature_names_in") is not None:
        estimator.feature_names_in_ = np.asarray(ours["feature_names_in"], dtype=object)
    for attribute, value in ours.get("fitted", {}).items():
        setattr(estimator, attribute, value)
    # partial_fit continues from the fit's generator, which is not saved.
    estimator._random_state = check_random_state(estimator.random_state)
    return estimator


# ----------------------------------------------------------------------
# PyTorch
# ----------------------------------------------------------------------
def _model_fields(hook_name, model_name, hook_layer):
    fields = {
        "model_name": model_name,
        "hook_name": hook_name,
        "hook_layer": hook_layer,
    }
    return {**fields, "metadata": dict(fields)}


def to_torch(
    estimator,
    device=None,
    dtype=None,
    *,
    split_sign=False,
    hook_name=None,
    model_name=None,
    hook_layer=None,
):
    """The matching pursuit of a fitted estimator as a ``torch.nn.Module``.

    The module's :meth:`~MatchingPursuitEncoder.encode` runs the same
    ``k``-sparse matching pursuit on the Gram matrix as the estimator's
    :meth:`transform` (same ``transform_n_nonzero_coefs``, ``positive_code``,
    ``mp_tol``, ``mp_refit`` and nested levels of a
    :class:`~sklearn_dbksvd.MatryoshkaDBKSVD`), batched over ``[..., d_in]``
    tensors on the module's device, so the dictionary can be evaluated in
    SAEBench-style code on a GPU.

    Parameters
    ----------
    estimator : DBKSVDDictionaryLearning or MatryoshkaDBKSVD
        Fitted estimator with ``transform_algorithm="mp"``.
    device : str or torch.device, default=None
        Device of the module; None means the CPU.
    dtype : torch.dtype or str, default=None
        Dtype of the module (and of its codes); None means the dtype of
        ``components_``. Matching pursuit runs in float32 at least.
    split_sign : bool, default=False
        Output split-sign codes ``[max(c, 0), max(-c, 0)]`` (``d_sae = 2 *
        n_components``, ``W_dec = [D; -D]``).
    hook_name, model_name, hook_layer : str, str, int, default=None
        Stored in ``cfg`` for SAEBench; ``hook_layer`` is read from
        ``hook_name`` when None.

    Returns
    -------
    encoder : MatchingPursuitEncoder

    Raises
    ------
    NotImplementedError
        When ``transform_algorithm`` is not ``"mp"``: the other coders are
        scikit-learn's, with no PyTorch counterpart here.

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> from sklearn_dbksvd import DBKSVDDictionaryLearning
    >>> from sklearn_dbksvd.interop import to_torch
    >>> X = np.random.RandomState(0).randn(300, 8)
    >>> model = DBKSVDDictionaryLearning(
    ...     n_components=16, n_nonzero_coefs=2, max_iter=2, random_state=0
    ... ).fit(X)
    >>> encoder = to_torch(model)
    >>> activations = torch.as_tensor(X).reshape(30, 10, 8)  # [batch, tokens, d_in]
    >>> latents = encoder.encode(activations)
    >>> latents.shape
    torch.Size([30, 10, 16])
    >>> np.allclose(latents.reshape(300, 16).numpy(), model.transform(X))
    True
    >>> encoder(activations).shape  # the reconstruction, as an SAE's forward
    torch.Size([30, 10, 8])
    """
    settings = _encoder_settings(estimator, split_sign=split_sign)
    if settings["algorithm"] != "mp":
        raise NotImplementedError(
            f"transform_algorithm={settings['algorithm']!r} has no PyTorch "
            "encoder; only matching pursuit ('mp') is ported."
        )
    fields = {}
    if hook_name is not None:
        fields = _model_fields(
            hook_name, model_name, _resolve_hook_layer(hook_name, hook_layer)
        )
    return _torch_encoder().MatchingPursuitEncoder(
        estimator.components_,
        settings["n_nonzero_coefs"],
        positive=settings["positive"],
        tol=settings["tol"],
        refit=settings["refit"],
        levels=settings["levels"],
        split_sign=split_sign,
        config=fields,
        device=device,
        dtype=dtype,
    )


def load_torch(directory, device=None, dtype=None):
    """Load a directory written by :func:`save_sae` as a PyTorch encoder.

    Reads the tensors with safetensors and torch only (no scikit-learn
    estimator is built), with the split sign and matching-pursuit settings
    the directory was saved with, and the config fields in ``cfg``.

    Parameters
    ----------
    directory : str or path-like
        Directory written by :func:`save_sae`.
    device : str or torch.device, default=None
        Device of the module; None means the CPU.
    dtype : torch.dtype or str, default=None
        Dtype of the module; None means the dtype of the saved tensors.

    Returns
    -------
    encoder : MatchingPursuitEncoder

    See Also
    --------
    to_torch : The same from a fitted estimator.
    """
    config, ours = _read_directory(directory)
    settings = ours["encoder"]
    if settings["algorithm"] != "mp":
        raise NotImplementedError(
            f"{directory} encodes with transform_algorithm="
            f"{settings['algorithm']!r}, which has no PyTorch encoder."
        )
    module = _torch_encoder()
    weights = _safetensors_numpy().load_file(Path(directory) / SAE_WEIGHTS_FILENAME)
    components = _atoms_from_decoder(weights["W_dec"], ours, directory)
    return module.MatchingPursuitEncoder(
        components,
        settings["n_nonzero_coefs"],
        positive=settings["positive"],
        tol=settings["tol"],
        refit=settings["refit"],
        levels=settings["levels"],
        split_sign=settings["split_sign"],
        config={
            key: value
            for key, value in config.items()
            if key not in (CONFIG_KEY, "d_in", "d_sae", "k", "dtype", "device")
        },
        device=device,
        dtype=dtype,
    )
