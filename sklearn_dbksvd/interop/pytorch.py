"""Matching pursuit of a fitted estimator as a ``torch.nn.Module``."""

import numpy as np

from ._common import (
    CONFIG_KEY,
    _encoder_settings,
    _read_sae,
    _resolve_hook_layer,
)
from ._common import load_torch_encoder as _torch_encoder


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
    split_sign=None,
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
    split_sign : bool, default=None
        Output split-sign codes ``[max(c, 0), max(-c, 0)]`` (``d_sae = 2 *
        n_components``, ``W_dec = [D; -D]``). None follows the estimator's
        own ``split_sign``, so that ``encode`` gives what ``transform`` gives.
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
    if split_sign is None:
        split_sign = bool(getattr(estimator, "split_sign", False))
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
    encoder = _torch_encoder().MatchingPursuitEncoder(
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
    # Centring is the decoder bias: encode x - b_dec, decode codes @ W_dec + b_dec.
    mean = getattr(estimator, "mean_", None)
    if mean is not None:
        encoder.b_dec.data.copy_(encoder.b_dec.new_tensor(np.asarray(mean)))
    return encoder


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
    sae = _read_sae(directory)
    config, ours = sae["config"], sae["ours"]
    settings = ours["encoder"]
    if settings["algorithm"] != "mp":
        raise NotImplementedError(
            f"{directory} encodes with transform_algorithm="
            f"{settings['algorithm']!r}, which has no PyTorch encoder."
        )
    if sae["n_nonzero_coefs"] != settings["n_nonzero_coefs"] and settings["levels"]:
        raise ValueError(
            f"{directory}: max_iterations was edited, but the nested levels in "
            "cfg.json were saved for the original number of selections."
        )
    module = _torch_encoder()
    components = sae["components"]
    encoder = module.MatchingPursuitEncoder(
        components,
        sae["n_nonzero_coefs"],
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
    if sae["b_dec"] is not None:
        # Centring is the decoder bias, as in to_torch.
        encoder.b_dec.data.copy_(encoder.b_dec.new_tensor(sae["b_dec"]))
    return encoder
