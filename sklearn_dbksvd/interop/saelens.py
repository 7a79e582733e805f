"""SAELens / SAEBench directories: :func:`save_sae` and :func:`load_sae`.

The directory layout
--------------------
:func:`save_sae` writes a directory with two files:

``sae_weights.safetensors``
    The tensors, in the dtype of the dictionary (float32 or float64). With
    ``architecture="matching_pursuit"`` (the default):

    ========= ================= ===============================================
    key       shape             value
    ========= ================= ===============================================
    ``W_dec`` (d_sae, d_in)     ``[D; -D]`` (``d_sae = 2 m``) for signed codes,
                                ``D`` (``d_sae = m``) with ``positive_code``;
                                ``D`` is ``components_``, unit-norm rows
    ``b_dec`` (d_in,)           the estimator's ``mean_`` when it centres the
                                data, else zeros
    ========= ================= ===============================================

    SAELens' matching-pursuit SAE is tied (its encoder is ``W_dec.T``), so
    there is no ``W_enc`` or ``b_enc``. With ``architecture="topk"`` the
    directory also holds ``W_enc = W_dec.T`` and ``b_enc = 0``, and
    ``W_dec`` is ``D``, or ``[D; -D]`` with ``split_sign=True``.

``cfg.json``
    The fields SAELens and SAEBench read, each written once at the top level
    as SAELens up to 5.x writes them, and repeated in a ``metadata``
    sub-dictionary as SAELens 6 groups them: ``architecture``, ``d_in``,
    ``d_sae``, ``dtype``, ``device``, ``apply_b_dec_to_input`` (true when the
    estimator centres the data), ``normalize_activations`` (``"none"``),
    ``reshape_activations``, ``model_name``, ``hook_name``, ``hook_layer``,
    ``hook_head_index``, ``context_size``, ``prepend_bos``, ``dataset_path``,
    ``finetuning_scaling_factor``, ``neuronpedia_id``, ``seqpos_slice``;
    for ``"matching_pursuit"`` ``residual_threshold`` (0: no early stop),
    ``max_iterations`` (``k``) and ``stop_on_duplicate_support`` (false);
    for ``"topk"`` ``k`` and ``activation_fn``/``activation_fn_str``
    (``"topk"``) with ``activation_fn_kwargs`` (``{"k": k}``). It records
    no ``sae_lens_version``, so SAELens 6 reads the file through its
    compatibility path for configs of earlier versions.

    Under the key ``"sklearn_dbksvd"`` it holds what this package needs to
    rebuild the estimator: the class name, the parameters (those that JSON
    can hold; ``dict_init``, ``code_init``, ``callback`` and a
    ``RandomState`` instance are left out and listed under
    ``dropped_params``), ``n_features_in``, ``feature_names_in``, the fitted
    counters and ``history_``, the state of the random generator
    (``random_state``), the ``provenance``, the package version (the
    description of a fitted estimator of
    :mod:`sklearn_dbksvd.persistence`, also in the dictionary file),
    ``centred``, and the
    ``encoder``: the matching-pursuit settings of ``transform``
    (``n_nonzero_coefs`` resolved, ``positive``, ``tol``, ``refit``, the
    nested ``levels`` of a :class:`~sklearn_dbksvd.MatryoshkaDBKSVD` with
    ``transform_mode="nested"``, and ``split_sign``: whether ``W_dec`` is
    ``[D; -D]``).

SAELens runs our matching pursuit
---------------------------------
SAELens (from 6.26) has a ``matching_pursuit`` architecture: ``encode``
selects, ``max_iterations`` times, the latent of largest positive
correlation with the residual, adds that correlation to its activation and
subtracts the atom from the residual. On ``[D; -D]`` the largest positive
correlation is the largest ``|correlation|`` with ``D``: the signed k-step
matching pursuit of :meth:`transform`, its codes in split-sign form
(``acts[:, :m] - acts[:, m:]`` gives them back; max difference 5e-7 in
float32 with sae-lens 6.54). SAELens and SAEBench therefore evaluate the
dictionary with its own encoder. Settings that SAELens' loop cannot express
(``mp_tol``, ``mp_refit``, nested Matryoshka levels, a
``transform_algorithm`` other than ``"mp"``) make :func:`save_sae` warn:
SAELens then runs ``k`` plain steps, and only :func:`load_sae` and
:func:`load_torch` reproduce :meth:`transform`.

SAEDashboard cannot fold the decoder norms of a matching-pursuit SAE
(``fold_W_dec_norm`` raises ``NotImplementedError``; the atoms are unit-norm
already, so there is nothing to fold): load the directory with
``fold_W_dec_norm=False``.

``architecture="topk"`` writes the layout of SAELens before 6.26: loaded by
SAELens, the dictionary then encodes by keeping the ``k`` largest entries of
``x @ W_enc`` (ReLU applied), the first selection of matching pursuit
repeated without updating the correlations: the same decoder, a cruder
encoder. :func:`load_sae` reads both layouts.

For the codes :meth:`transform` gives in PyTorch, load the directory with
:func:`load_torch`, or convert a fitted estimator with :func:`to_torch`; the
resulting :class:`MatchingPursuitEncoder` has the attributes SAEBench asks
of a custom SAE (``encode``, ``decode``, ``forward``, ``W_enc``, ``W_dec``,
``b_enc``, ``b_dec``, ``dtype``, ``device`` and a ``cfg`` with ``d_in``,
``d_sae``, ``hook_name``, ``hook_layer``, ``model_name``, ...).
"""

import json
import warnings
from pathlib import Path

import numpy as np

from ..persistence import atomic_directory, describe_estimator, rebuild_estimator
from ._common import (
    _DTYPES,
    _FORMAT,
    CONFIG_KEY,
    SAE_CFG_FILENAME,
    SAE_WEIGHTS_FILENAME,
    _check_estimator,
    _encoder_settings,
    _read_sae,
    _safetensors_numpy,
    model_fields,
)


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
    architecture,
    centred,
):
    """The contents of cfg.json: SAELens/SAEBench fields and our own block."""
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
    _, state = describe_estimator(estimator)
    ours = {
        "format": _FORMAT,
        **state,
        "encoder": settings,
        "centred": bool(centred),
        # Codes are nonnegative only with positive_code or in split-sign form.
        "signed_codes": not (settings["positive"] or split_sign),
    }
    if architecture == "matching_pursuit":
        encoder = {
            # k selections for every sample, as transform makes them.
            "residual_threshold": 0.0,
            "max_iterations": k,
            "stop_on_duplicate_support": False,
        }
    else:
        encoder = {
            "k": k,
            "activation_fn": "topk",
            "activation_fn_str": "topk",
            "activation_fn_kwargs": {"k": k},
        }
    return {
        # What SAELens' config classes read (5.x flat, 6.x the same names).
        "architecture": architecture,
        "d_in": d_in,
        "d_sae": int(d_sae),
        **encoder,
        "dtype": dtype,
        "device": "cpu",
        "apply_b_dec_to_input": bool(centred),
        "normalize_activations": "none",
        # SAELens' own default: attention-output hooks are [..., heads, d_head].
        "reshape_activations": "hook_z" if "hook_z" in hook_name else "none",
        "finetuning_scaling_factor": False,
        "dataset_trust_remote_code": True,
        **model_metadata,
        # SAELens 6 groups the fields about the language model here.
        "metadata": dict(model_metadata),
        CONFIG_KEY: ours,
    }


_ARCHITECTURES = ("matching_pursuit", "topk")


def _resolve_split_sign(estimator, architecture, split_sign):
    positive = bool(estimator.positive_code)
    if split_sign is None:
        return architecture == "matching_pursuit" and not positive
    split_sign = bool(split_sign)
    if architecture == "matching_pursuit" and split_sign == positive:
        # SAELens' loop takes the largest *positive* correlation: on D it
        # is positive matching pursuit, on [D; -D] the signed one.
        raise ValueError(
            "with architecture='matching_pursuit', split_sign must be "
            f"{not positive} for an estimator with positive_code={positive}: "
            "SAELens' matching pursuit keeps positive activations only."
        )
    return split_sign


def _warn_if_saelens_differs(estimator):
    settings = _encoder_settings(estimator)
    differences = []
    if settings["algorithm"] != "mp":
        differences.append(f"transform_algorithm={settings['algorithm']!r}")
    if settings["tol"] is not None:
        differences.append(f"mp_tol={settings['tol']}")
    if settings["refit"]:
        differences.append("mp_refit=True")
    if settings["levels"] is not None:
        differences.append("transform_mode='nested'")
    if differences:
        warnings.warn(
            "SAELens' matching pursuit makes k plain selections; with "
            f"{', '.join(differences)} its codes differ from transform's. "
            "load_sae and load_torch reproduce transform.",
            UserWarning,
            stacklevel=3,
        )


def save_sae(
    estimator,
    directory,
    *,
    hook_name=None,
    model_name=None,
    hook_layer=None,
    hook_head_index=None,
    context_size=None,
    prepend_bos=None,
    dataset_path=None,
    architecture="matching_pursuit",
    split_sign=None,
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
    hook_name : str, default=None
        TransformerLens hook whose activations the dictionary was fitted on,
        e.g. ``"blocks.8.hook_resid_post"``. None takes it from the
        estimator's ``provenance_`` (a dictionary fitted on a harvest) and
        raises ``ValueError`` without one.
    model_name : str, default=None
        Name of the language model, e.g. ``"pythia-70m-deduped"``; None
        takes it from ``provenance_``, as ``hook_name``.
    hook_layer : int, default=None
        Layer of the hook. None takes the provenance's ``layer``, else reads
        it from ``hook_name`` (``"blocks.<layer>."``) and raises
        ``ValueError`` when it is not there. A ``hook_name``, ``model_name``
        or ``hook_layer`` that differs from the provenance's is written with
        a ``UserWarning``.
    hook_head_index : int, default=None
        Attention head, for SAEs of one head.
    context_size : int, default=None
        Tokens per context of the activations; None takes the provenance's.
    prepend_bos : bool, default=None
        Whether the activations were taken with a BOS token prepended; None
        takes the provenance's, else True.
    dataset_path : str, default=None
        Dataset the activations came from, if known.
    architecture : {"matching_pursuit", "topk"}, default="matching_pursuit"
        SAELens architecture to declare. ``"matching_pursuit"`` (SAELens
        >= 6.26) makes SAELens and SAEBench encode with our matching
        pursuit; ``"topk"`` is for older SAELens, which then encodes with a
        top-k approximation (see the module documentation).
    split_sign : bool, default=None
        Write the split-sign dictionary ``[D; -D]`` (``d_sae = 2 *
        n_components``), for tools that expect nonnegative latents. None:
        true for ``"matching_pursuit"`` with signed codes (SAELens' loop
        keeps positive activations only, so the signs need their own
        latents), false otherwise.
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
    fields = model_fields(
        estimator,
        model_name=model_name,
        hook_name=hook_name,
        hook_layer=hook_layer,
        context_size=context_size,
        prepend_bos=prepend_bos,
    )
    hook_name, model_name = fields["hook_name"], fields["model_name"]
    context_size, prepend_bos = fields["context_size"], fields["prepend_bos"]
    hook_layer = fields["hook_layer"]
    if architecture not in _ARCHITECTURES:
        raise ValueError(
            f"architecture must be one of {_ARCHITECTURES}; got {architecture!r}."
        )
    split_sign = _resolve_split_sign(estimator, architecture, split_sign)
    if architecture == "matching_pursuit":
        _warn_if_saelens_differs(estimator)
    components = estimator.components_
    if dtype is None:
        dtype = np.dtype(components.dtype).name
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be 'float32', 'float64' or None; got {dtype!r}.")
    safetensors_numpy = _safetensors_numpy()
    directory = Path(directory)

    atoms = np.asarray(components, dtype=_DTYPES[dtype])
    W_dec = np.concatenate([atoms, -atoms]) if split_sign else atoms
    W_dec = np.ascontiguousarray(W_dec)
    # Centring (the estimator's mean_, when it has one) is SAELens' b_dec
    # applied to the input: encode x - b_dec, decode codes @ W_dec + b_dec.
    # mean_ is zeros for an estimator fitted without centring.
    mean = getattr(estimator, "mean_", None)
    centred = mean is not None and bool(np.any(mean))
    b_dec = (
        np.asarray(mean, dtype=W_dec.dtype).reshape(-1)
        if centred
        else np.zeros(W_dec.shape[1], dtype=W_dec.dtype)
    )
    tensors = {"W_dec": W_dec, "b_dec": np.ascontiguousarray(b_dec)}
    if architecture == "topk":
        tensors["W_enc"] = np.ascontiguousarray(W_dec.T)
        tensors["b_enc"] = np.zeros(W_dec.shape[0], dtype=W_dec.dtype)
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
        architecture=architecture,
        centred=centred,
    )
    text = json.dumps(config, indent=2, allow_nan=False)

    with atomic_directory(
        directory, overwrite=overwrite, marker=SAE_CFG_FILENAME
    ) as tmp:
        # "pt": the format tag torch tooling expects of safetensors files.
        safetensors_numpy.save_file(
            tensors, tmp / SAE_WEIGHTS_FILENAME, metadata={"format": "pt"}
        )
        (tmp / SAE_CFG_FILENAME).write_text(text, encoding="utf-8")
    return directory


def load_sae(directory):
    """Rebuild the fitted estimator saved by :func:`save_sae`.

    The estimator has the class, parameters and ``components_`` it was saved
    with, so its :meth:`transform` gives the same codes (when the tensors
    were saved in the dtype of ``components_``). Parameters that were not
    saved (``dict_init``, ``code_init``, ``callback``, a ``RandomState``
    instance) are None; a later :meth:`partial_fit` continues from the saved
    random generator (from ``random_state`` for directories of format 1).

    A directory edited by hand is checked: a missing key, a ``b_dec`` or
    ``W_dec`` of the wrong shape or with NaN, or ``d_in`` / ``d_sae`` that no
    longer match the tensors raise ``ValueError`` naming the file; an edited
    ``max_iterations`` (``k`` for ``"topk"``) is honoured, as SAELens
    honours it, with a ``UserWarning``.

    Parameters
    ----------
    directory : str or path-like
        Directory written by :func:`save_sae`.

    Returns
    -------
    estimator : DBKSVDDictionaryLearning or MatryoshkaDBKSVD
        Fitted estimator with ``components_``, ``n_features_in_`` (and
        ``feature_names_in_``, ``n_iter_``, ``n_steps_``,
        ``n_samples_seen_``, ``history_``, ``mean_``, ``provenance_`` when
        saved). Both
        layouts are read: ``"matching_pursuit"`` and the ``"topk"`` one of
        earlier versions.

    See Also
    --------
    save_sae : Write the directory.
    load_torch : Load the directory as a :class:`MatchingPursuitEncoder`.
    """
    sae = _read_sae(directory)
    ours = sae["ours"]
    arrays = {"components_": sae["components"], "mean_": sae["b_dec"]}
    estimator = rebuild_estimator(arrays, ours, where=str(directory))
    if sae["n_nonzero_coefs"] != ours["encoder"].get("n_nonzero_coefs"):
        # max_iterations was edited: SAELens makes that many selections.
        estimator.transform_n_nonzero_coefs = sae["n_nonzero_coefs"]
        estimator._validate_params()
    return estimator
