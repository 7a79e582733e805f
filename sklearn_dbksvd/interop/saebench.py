"""A fitted dictionary as an SAE that SAEBench evaluates.

SAEBench (``pip install sae-bench``) evaluates sparse autoencoders given as
``selected_saes=[(name, sae)]``: modules with ``encode``, ``decode``,
``W_dec``, ``W_enc`` and a ``cfg`` naming the language model and its hook.
:func:`to_saebench` builds one from a DB-KSVD estimator whose ``encode`` is
the estimator's own matching pursuit, and fills the ``cfg`` from the
estimator's provenance (the harvest it was fitted on) where the caller does
not give the fields. ``dbksvd saebench`` runs SAEBench's evaluations on it.
"""

from numbers import Integral

from ._common import _check_estimator, _resolve_hook_layer

# Provenance keys (see the estimators' ``provenance_``) that fill the cfg.
_PROVENANCE_FIELDS = ("model_name", "hook_name", "context_size", "prepend_bos")


def _provenance(estimator):
    provenance = getattr(estimator, "provenance_", None)
    return provenance if isinstance(provenance, dict) else {}


def saebench_fields(
    estimator, *, model_name=None, hook_name=None, context_size=None, prepend_bos=None
):
    """The model fields of the SAEBench cfg: given, else from the provenance.

    Parameters
    ----------
    estimator : DBKSVDDictionaryLearning or MatryoshkaDBKSVD
        Fitted estimator; its ``provenance_`` (when fitted on a harvest)
        supplies what is not given.
    model_name, hook_name, context_size, prepend_bos : default=None
        See :func:`to_saebench`.

    Returns
    -------
    fields : dict
        ``model_name``, ``hook_name``, ``hook_layer``, ``context_size`` and
        ``prepend_bos``.

    Raises
    ------
    ValueError
        When ``model_name`` or ``hook_name`` is neither given nor recorded,
        or a value is of the wrong type.
    """
    provenance = _provenance(estimator)
    given = {
        "model_name": model_name,
        "hook_name": hook_name,
        "context_size": context_size,
        "prepend_bos": prepend_bos,
    }
    fields = {
        key: provenance.get(key) if value is None else value
        for key, value in given.items()
    }
    for key in ("model_name", "hook_name"):
        if fields[key] is None:
            raise ValueError(
                f"{key} is not known: the estimator records no provenance "
                f"(it was not fitted on a harvest directory); pass {key}=..."
            )
        if not isinstance(fields[key], str) or not fields[key]:
            raise ValueError(f"{key} must be a non-empty string; got {fields[key]!r}.")
    if fields["context_size"] is not None and (
        not isinstance(fields["context_size"], Integral)
        or isinstance(fields["context_size"], bool)
        or fields["context_size"] < 1
    ):
        raise ValueError(
            f"context_size must be a positive int; got {fields['context_size']!r}."
        )
    if fields["prepend_bos"] is None:
        # SAELens' and SAEBench's default, and what a harvest does by default.
        fields["prepend_bos"] = True
    elif not isinstance(fields["prepend_bos"], bool):
        raise ValueError(f"prepend_bos must be a bool; got {fields['prepend_bos']!r}.")
    layer = provenance.get("layer") if hook_name is None else None
    fields["hook_layer"] = _resolve_hook_layer(
        fields["hook_name"], layer if isinstance(layer, Integral) else None
    )
    return fields


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
    sae.cfg.metadata.__dict__.update(config.pop("metadata"))
    sae.cfg.__dict__.update(config)
    return sae
