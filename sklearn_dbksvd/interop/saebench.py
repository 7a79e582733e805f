"""A fitted dictionary as an SAE that SAEBench evaluates.

SAEBench (``pip install sae-bench``) evaluates sparse autoencoders given as
``selected_saes=[(name, sae)]``: modules with ``encode``, ``decode``,
``W_dec``, ``W_enc`` and a ``cfg`` naming the language model and its hook.
:func:`to_saebench` builds one from a DB-KSVD estimator whose ``encode`` is
the estimator's own matching pursuit, and fills the ``cfg`` from the
estimator's provenance (the harvest it was fitted on) where the caller does
not give the fields. ``dbksvd saebench`` runs SAEBench's evaluations on it.
"""

import contextlib
import dataclasses
import os
from pathlib import Path

from ._common import _check_estimator, model_fields


def saebench_fields(
    estimator, *, model_name=None, hook_name=None, context_size=None, prepend_bos=None
):
    """The model fields of the SAEBench cfg (see ``_common.model_fields``)."""
    return model_fields(
        estimator, model_name=model_name, hook_name=hook_name,
        context_size=context_size, prepend_bos=prepend_bos,
    )


def to_saebench(
    estimator,
    *,
    model_name=None,
    hook_name=None,
    context_size=None,
    prepend_bos=None,
    device="cpu",
):
    """A fitted estimator as an SAE for SAEBench's ``selected_saes``.

    The module's ``encode`` is the estimator's matching pursuit on the Gram
    matrix of the atoms (:class:`~sklearn_dbksvd.interop.MatchingPursuitEncoder`),
    so SAEBench evaluates the codes that ``transform`` computes. Latents are
    nonnegative, as SAEBench counts a latent as active when it is ``> 0``:
    signed atom ``i`` is two latents, atom+ at ``i`` and atom- at ``m + i``
    (``W_dec = [D; -D]``, ``d_sae = 2 m``); with ``positive_code=True`` the
    ``m`` atoms are the latents. SAEBench casts every SAE to the language
    model's dtype (``sae.to(device, dtype=torch.bfloat16)`` for Gemma): the
    module keeps float32 weights for the pursuit and the decoder, so the
    codes do not depend on that cast (they come back rounded to it).

    Parameters
    ----------
    estimator : DBKSVDDictionaryLearning or MatryoshkaDBKSVD
        Fitted estimator with ``transform_algorithm="mp"``.
    model_name : str, default=None
        TransformerLens name of the language model (``cfg.model_name``,
        which SAEBench loads). None: the ``model_name`` of the estimator's
        ``provenance_``.
    hook_name : str, default=None
        TransformerLens hook of the activations, e.g.
        ``"blocks.15.hook_resid_post"``; its layer is ``cfg.hook_layer``.
        None: from the provenance.
    context_size : int, default=None
        Tokens per prompt of the harvest (``cfg.context_size``, read by
        SAEBench's autointerp and by SAELens' activation store). None: from
        the provenance, else left None (the evals then use their own).
    prepend_bos : bool, default=None
        Whether prompts start with a BOS token. None: from the provenance,
        else True.
    device : str or torch.device, default="cpu"
        Device of the module (SAEBench moves it to its own anyway).

    Returns
    -------
    sae : MatchingPursuitEncoder
        A ``torch.nn.Module`` in float32 (float64 for a float64 dictionary)
        with ``encode``, ``decode``, ``forward``, ``W_dec``, ``W_enc``
        (``W_dec.T``, not used by ``encode``), ``b_enc`` (zeros), ``b_dec``
        (the estimator's ``mean_``, else zeros), ``dtype``, ``device`` and a
        ``cfg`` with ``d_in``, ``d_sae``, ``model_name``, ``hook_name``,
        ``hook_layer``, ``context_size``, ``prepend_bos``, ``dtype``,
        ``device``, ``architecture`` (``"matching_pursuit"``),
        ``normalize_activations`` (``"none"``) and ``metadata``.

    Raises
    ------
    ValueError
        When ``model_name`` or ``hook_name`` is neither given nor in the
        estimator's provenance.
    NotImplementedError
        When ``transform_algorithm`` is not ``"mp"``.

    See Also
    --------
    to_torch : The same module with signed codes and no SAEBench fields.

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> from sklearn_dbksvd import DBKSVDDictionaryLearning
    >>> from sklearn_dbksvd.interop import split_sign, to_saebench
    >>> X = np.random.RandomState(0).randn(200, 8).astype(np.float32)
    >>> model = DBKSVDDictionaryLearning(
    ...     n_components=16, n_nonzero_coefs=2, max_iter=2, random_state=0
    ... ).fit(X)
    >>> sae = to_saebench(
    ...     model, model_name="pythia-70m-deduped", hook_name="blocks.3.hook_resid_post"
    ... )
    >>> sae.cfg.d_sae, sae.cfg.hook_layer
    (32, 3)
    >>> sae = sae.to("cpu", dtype=torch.bfloat16)  # as SAEBench does
    >>> latents = sae.encode(torch.from_numpy(X))
    >>> latents.dtype
    torch.bfloat16
    >>> expected = torch.from_numpy(split_sign(model.transform(X)))
    >>> torch.equal(latents != 0, expected != 0)
    True
    """
    _check_estimator(estimator)
    fields = saebench_fields(
        estimator,
        model_name=model_name,
        hook_name=hook_name,
        context_size=context_size,
        prepend_bos=prepend_bos,
    )
    config = {**fields, "metadata": dict(fields)}
    # The decoder bias is the estimator's centring.
    from .pytorch import to_torch

    positive = bool(estimator.positive_code)
    sae = to_torch(estimator, device=device, split_sign=not positive)
    from ._torch_encoder import _SAEBENCH_FIELDS

    # SAELens 6 reads the model fields from cfg.metadata (its activation
    # store: hook_name, context_size, prepend_bos, seqpos_slice, ...).
    metadata = {
        **{key: getattr(sae.cfg, key) for key in _SAEBENCH_FIELDS},
        **config.pop("metadata"),
    }
    sae.cfg = _dataclass_config({**vars(sae.cfg), **config}, metadata)
    return sae


def _dataclass_config(fields, metadata):
    """The cfg as a dataclass: one of SAEBench's evals reads it with ``asdict``.

    ``metadata`` stays an attribute, not a field, as in SAEBench's own
    ``CustomSAEConfig``: ``asdict`` leaves it out, ``to_dict`` converts it.
    """
    from ._torch_encoder import _Config

    fields = {key: value for key, value in fields.items() if key != "metadata"}
    cls = dataclasses.make_dataclass(
        "SAEBenchConfig",
        [(key, object, dataclasses.field(default=None)) for key in fields],
        bases=(_Config,),
        repr=False,
        eq=False,
    )
    cfg = cls(**fields)
    cfg.metadata = _Config(**metadata)
    return cfg


# ----------------------------------------------------------------------
# Running SAEBench's evaluations
# ----------------------------------------------------------------------
SAEBENCH_INSTALL = (
    "pip install -c requirements/saebench-constraints.txt sae-bench==0.6.0 "
    "(in a virtualenv of its own, then pip uninstall torchvision; see the "
    "'SAEBench' page of the documentation)"
)

# Evaluation name -> (module under sae_bench.evals, config class).
EVALS = {
    "core": ("core.main", "CoreEvalConfig"),
    "absorption": ("absorption.main", "AbsorptionEvalConfig"),
    "sparse_probing": ("sparse_probing.main", "SparseProbingEvalConfig"),
    "sparse_probing_sae_probes": (
        "sparse_probing_sae_probes.main",
        "SparseProbingSaeProbesEvalConfig",
    ),
    "scr": ("scr_and_tpp.main", "ScrAndTppEvalConfig"),
    "tpp": ("scr_and_tpp.main", "ScrAndTppEvalConfig"),
    "ravel": ("ravel.main", "RAVELEvalConfig"),
    "autointerp": ("autointerp.main", "AutoInterpEvalConfig"),
}
# The arguments of the core evaluation's ``multiple_evals`` that options may
# set, with the values of SAEBench's run_all_evals_custom_saes.py.
_CORE_DEFAULTS = {
    "n_eval_reconstruction_batches": 200,
    "n_eval_sparsity_variance_batches": 2000,
    "eval_batch_size_prompts": 16,
    "exclude_special_tokens_from_reconstruction": True,
    "dataset": "Skylion007/openwebtext",
    "context_size": 128,
    "verbose": False,
}
# Name of the SAE in SAEBench's file names: <name>_custom_sae_eval_results.json.
_SAE_ID = "custom_sae"


class SAEBenchError(RuntimeError):
    """An evaluation of SAEBench failed or produced no result."""


def import_saebench():
    """``sae_bench``, or an ImportError naming the install command."""
    try:
        import sae_bench
        import sae_bench.sae_bench_utils.general_utils  # noqa: F401
    except ImportError as error:
        raise ImportError(
            f"SAEBench is not importable ({error}): {SAEBENCH_INSTALL}"
        ) from error
    return sae_bench


@contextlib.contextmanager
def _logged_errors(logger_name):
    """The messages of the errors ``logger_name`` logs, as a list."""
    import logging

    messages = []
    handler = logging.Handler(level=logging.ERROR)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


@contextlib.contextmanager
def _served_model(model, model_name):
    """SAEBench's evals load the model by name: give them ``model``.

    Every evaluation calls ``HookedTransformer.from_pretrained_no_processing``
    with ``sae.cfg.model_name``; for that name it returns ``model``, moved to
    the device and dtype asked for. Other names load as usual.
    """
    from transformer_lens import HookedTransformer

    original = vars(HookedTransformer)["from_pretrained_no_processing"]
    load = original.__get__(None, HookedTransformer)

    def serve(name, *args, device=None, dtype=None, **kwargs):
        if name != model_name:
            return load(name, *args, device=device, dtype=dtype, **kwargs)
        served = model
        if device is not None:
            served = served.to(device)
        if dtype is not None:
            served = served.to(dtype)
        return served

    # The evaluations move the model: give it back as it came.
    device, dtype = model.cfg.device, model.cfg.dtype
    HookedTransformer.from_pretrained_no_processing = staticmethod(serve)
    try:
        yield
    finally:
        HookedTransformer.from_pretrained_no_processing = original
        model.to(device)
        model.to(dtype)


@contextlib.contextmanager
def _working_directory(path):
    # Some evaluations write caches under "artifacts/" of the working directory.
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def _eval_config(name, options, model_name, llm_dtype):
    import importlib

    module_name, class_name = EVALS[name]
    module = importlib.import_module(f"sae_bench.evals.{module_name}")
    config_module = importlib.import_module(
        f"sae_bench.evals.{module_name.split('.')[0]}.eval_config"
    )
    cls = getattr(config_module, class_name)
    values = {"model_name": model_name, **options}
    accepted = {field.name for field in dataclasses.fields(cls)}
    if "llm_dtype" in accepted:
        values.setdefault("llm_dtype", llm_dtype)
    if name in ("scr", "tpp"):
        values["perform_scr"] = name == "scr"
    unknown = sorted(set(values) - accepted)
    if unknown:
        raise ValueError(
            f"{name}: SAEBench's {class_name} has no field {', '.join(unknown)}."
        )
    return module, cls(**values)


def _run_core(sae, name, output, options, device, llm_dtype):
    from sae_bench.evals.core import main as core

    values = {**_CORE_DEFAULTS, **options}
    unknown = sorted(set(values) - set(_CORE_DEFAULTS))
    if unknown:
        raise ValueError(f"core: unknown option {', '.join(unknown)}.")
    with _logged_errors(core.__name__) as errors:
        results = core.multiple_evals(
            selected_saes=[(name, sae)],
            # Without both, SAEBench 0.6 drops the SAE ("7 validation errors
            # for MiscMetrics").
            compute_featurewise_density_statistics=True,
            compute_featurewise_weight_based_metrics=True,
            output_folder=str(output),
            dtype=llm_dtype,
            device=device,
            force_rerun=True,
            **values,
        )
    if not results:
        raise SAEBenchError(errors[-1] if errors else "core: no result")


@contextlib.contextmanager
def _absorption_artifacts(directory):
    """Absorption's probes and caches in ``directory``, not in site-packages.

    SAEBench 0.6 keeps the first-letter probes of a model under its own
    installation directory, keyed by ``model.cfg.model_name`` only: a later
    run on another model of that name (any model built from a config is
    "custom") would reuse them. Here each run trains its own.
    """
    import functools

    from sae_bench.evals.absorption import feature_absorption, k_sparse_probing
    from sae_bench.evals.absorption import main as absorption

    directory = Path(directory)
    sparse = directory / k_sparse_probing.SPARSE_PROBING_EXPERIMENT_NAME
    originals = {
        "run_k_sparse_probing_experiment": absorption.run_k_sparse_probing_experiment,
        "run_feature_absortion_experiment": absorption.run_feature_absortion_experiment,
    }
    absorption.run_k_sparse_probing_experiment = functools.partial(
        originals["run_k_sparse_probing_experiment"],
        experiment_dir=sparse,
        probes_dir=directory / "probes",
    )
    absorption.run_feature_absortion_experiment = functools.partial(
        originals["run_feature_absortion_experiment"],
        experiment_dir=directory
        / feature_absorption.FEATURE_ABSORPTION_EXPERIMENT_NAME,
        sparse_probing_experiment_dir=sparse,
        probes_dir=directory / "probes",
    )
    try:
        yield
    finally:
        for key, value in originals.items():
            setattr(absorption, key, value)


def _run_eval(eval_name, sae, name, output, options, device, llm_dtype, api_key):
    if eval_name == "core":
        return _run_core(sae, name, output, options, device, llm_dtype)
    module, config = _eval_config(eval_name, options, sae.cfg.model_name, llm_dtype)
    kwargs = {"force_rerun": True}
    if eval_name == "autointerp":
        if not api_key:
            raise ValueError("autointerp needs an OpenAI API key (api_key=...).")
        kwargs["api_key"] = api_key
    import torch

    output.mkdir(parents=True, exist_ok=True)
    grad = torch.is_grad_enabled()
    artifacts = (
        _absorption_artifacts(output.parent / "artifacts")
        if eval_name == "absorption"
        else contextlib.nullcontext()
    )
    try:
        with artifacts:
            results = module.run_eval(
                config, [(name, sae)], device, output_path=str(output), **kwargs
            )
    finally:
        # absorption turns gradients on for the whole process.
        torch.set_grad_enabled(grad)
    if not results:
        raise SAEBenchError(
            f"{eval_name}: SAEBench produced no result (see its messages above)"
        )


def run_saebench(
    estimator,
    model,
    output_dir,
    *,
    evals=("core",),
    name="dbksvd",
    model_name=None,
    hook_name=None,
    context_size=None,
    prepend_bos=None,
    device="cpu",
    llm_dtype="float32",
    options=None,
    api_key=None,
    force=False,
):
    """Run SAEBench's own evaluations on a fitted dictionary.

    Builds the SAE of :func:`to_saebench` and runs SAEBench's evaluations on
    it in this process, one after another: ``core`` (its
    ``multiple_evals``, with the feature-wise statistics on, without which
    SAEBench 0.6 drops the SAE), and the ``run_eval`` of the others. A
    failure is raised, not logged and skipped as SAEBench does.

    Parameters
    ----------
    estimator : DBKSVDDictionaryLearning or MatryoshkaDBKSVD
        Fitted estimator.
    model : str or transformer_lens.HookedTransformer
        The language model: a TransformerLens name (SAEBench loads it) or a
        loaded ``HookedTransformer``, which SAEBench's evaluations then get
        when they load the SAE's ``model_name``.
    output_dir : str or path-like
        Directory of the results: SAEBench's JSON of each evaluation in
        ``<output_dir>/<eval>/<name>_custom_sae_eval_results.json``.
    evals : sequence of str, default=("core",)
        Among ``core``, ``absorption``, ``sparse_probing``,
        ``sparse_probing_sae_probes``, ``scr``, ``tpp``, ``ravel`` and
        ``autointerp``.
    name : str, default="dbksvd"
        Name of the SAE in the results (SAEBench's "release").
    model_name, hook_name, context_size, prepend_bos : default=None
        See :func:`to_saebench`. ``model_name`` defaults to ``model`` when it
        is a name.
    device : str, default="cpu"
        Device of the model and the SAE.
    llm_dtype : str, default="float32"
        Dtype SAEBench runs the language model (and casts the SAE) in.
    options : dict, default=None
        Per evaluation, fields of SAEBench's config of that evaluation (for
        ``core``: the arguments of ``multiple_evals``, e.g. ``dataset`` and
        ``n_eval_reconstruction_batches``).
    api_key : str, default=None
        OpenAI API key, for ``autointerp``.
    force : bool, default=False
        Replace result files this function wrote before.

    Returns
    -------
    results : dict
        Evaluation name -> SAEBench's result (the JSON file, loaded).

    Raises
    ------
    ImportError
        Without SAEBench.
    SAEBenchError
        When an evaluation fails or gives no result.
    """
    import json
    import shutil
    import tempfile

    from ..persistence import write_atomic

    import_saebench()
    unknown = [item for item in evals if item not in EVALS]
    if unknown or not evals:
        raise ValueError(
            f"unknown evaluation {', '.join(unknown) or '(none given)'}; "
            f"choose among {', '.join(EVALS)}."
        )
    options = dict(options or {})
    output_dir = Path(output_dir).resolve()
    file_name = f"{name}_{_SAE_ID}_eval_results.json".replace("/", "_")
    targets = {item: output_dir / item / file_name for item in evals}
    existing = [str(path) for path in targets.values() if path.exists()]
    if existing and not force:
        raise FileExistsError(f"{existing[0]} exists; pass force=True to replace it.")
    if isinstance(model, str):
        model_name = model_name or model
        model = None
    sae = to_saebench(
        estimator,
        model_name=model_name,
        hook_name=hook_name,
        context_size=context_size,
        prepend_bos=prepend_bos,
        device=device,
    )
    served = (
        contextlib.nullcontext()
        if model is None
        else _served_model(model, sae.cfg.model_name)
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    with served:
        for item in evals:
            work = Path(tempfile.mkdtemp(prefix=f".{item}-", dir=output_dir))
            try:
                with _working_directory(work):
                    _run_eval(
                        item,
                        sae,
                        name,
                        work / "results",
                        options.get(item, {}),
                        device,
                        llm_dtype,
                        api_key,
                    )
                # SCR and TPP write to a folder of their name below it.
                written = sorted((work / "results").rglob(file_name))
                if len(written) != 1:
                    raise SAEBenchError(f"{item}: SAEBench wrote no {file_name}")
                written = written[0]
                with open(written, encoding="utf-8") as file:
                    results[item] = json.load(file)
                targets[item].parent.mkdir(exist_ok=True)
                write_atomic(targets[item], written.read_bytes(), overwrite=force)
            finally:
                # Only what SAEBench wrote in this run: its caches.
                shutil.rmtree(work, ignore_errors=True)
    return results


def metrics_table(results):
    """Rows ``(eval, metric, value)`` of the scalar metrics of the results.

    Parameters
    ----------
    results : dict
        What :func:`run_saebench` returns.

    Returns
    -------
    rows : list of (str, str, float)
        The numbers of ``eval_result_metrics`` (SAEBench's JSON), with
        dotted names, in file order.
    """
    rows = []

    def walk(prefix, value, item):
        if isinstance(value, dict):
            for key, child in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), child, item)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            rows.append((item, prefix, float(value)))

    for item, result in results.items():
        walk("", result.get("eval_result_metrics", {}), item)
    return rows
