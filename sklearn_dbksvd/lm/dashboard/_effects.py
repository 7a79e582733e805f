"""What an atom is near and what it does: neighbours and logit effects."""

import numpy as np

# Rows of the atom Gram matrix computed at once: bounds the memory of the
# neighbour search at _BLOCK x n_components floats.
_BLOCK = 1024


def nearest_atoms(components, *, absolute=True):
    """The most similar other atom of each atom, by ``|cos|`` (or ``cos``).

    Parameters
    ----------
    components : ndarray of shape (n_components, n_features)
    absolute : bool, default=True
        Compare ``|cos|``; False compares the signed cosines.

    Returns
    -------
    max_cos : ndarray of shape (n_components,)
        ``max_{j != i} |<d_i, d_j>| / (||d_i|| ||d_j||)`` (without the
        absolute value when ``absolute=False``); 0 for a dictionary of one
        atom.
    nearest : ndarray of shape (n_components,), dtype int
        The ``j`` that attains it (-1 for a dictionary of one atom).
    """
    atoms = np.asarray(components, dtype=np.float64)
    norms = np.linalg.norm(atoms, axis=1)
    atoms = atoms / np.where(norms > 0, norms, 1)[:, None]
    n = len(atoms)
    max_cos = np.zeros(n)
    nearest = np.full(n, -1, dtype=np.int64)
    if n < 2:
        return max_cos, nearest
    for start in range(0, n, _BLOCK):
        stop = min(start + _BLOCK, n)
        cos = atoms[start:stop] @ atoms.T
        if absolute:
            cos = np.abs(cos)
        cos[np.arange(stop - start), np.arange(start, stop)] = -np.inf
        nearest[start:stop] = np.argmax(cos, axis=1)
        max_cos[start:stop] = cos[np.arange(stop - start), nearest[start:stop]]
    return max_cos, nearest


def nearest_latents(components, *, signed):
    """The most similar other latent of each latent, by the cosine of directions.

    With ``signed`` codes atom ``i`` is two latents, ``i`` along ``d_i`` and
    ``m + i`` along ``-d_i`` (see :class:`~sklearn_dbksvd.lm._latents.Latents`);
    a latent's twin (the other sign of its atom) is not a neighbour. The
    nearest latent of ``i`` is then ``j`` or ``m + j`` for the atom ``j`` of
    largest ``|cos|``, whichever points the same way.

    Returns
    -------
    max_cos : ndarray of shape (n_latents,)
        The cosine of each latent's direction and its nearest latent's.
    nearest : ndarray of shape (n_latents,), dtype int
        -1 when there is no other atom.
    """
    if not signed:
        return nearest_atoms(components, absolute=False)
    max_abs_cos, nearest = nearest_atoms(components)
    atoms = np.asarray(components, dtype=np.float64)
    m = len(atoms)
    same_way = np.ones(m, dtype=bool)
    has = nearest >= 0
    same_way[has] = (
        np.einsum("ij,ij->i", atoms[has], atoms[nearest[has]]) >= 0
    )
    of_plus = np.where(same_way, nearest, nearest + m)
    of_minus = np.where(same_way, nearest + m, nearest)
    of_plus[~has] = of_minus[~has] = -1
    return np.r_[max_abs_cos, max_abs_cos], np.r_[of_plus, of_minus]


def final_norm(model):
    """The final normalization of a causal LM (before the unembedding), or None.

    Looks for the usual attribute names of the base model of Hugging Face
    causal LMs: ``norm`` (Llama, Mistral, Qwen, SmolLM), ``ln_f`` (GPT-2,
    GPT-J), ``final_layernorm`` (OPT, Phi), ``final_layer_norm``.
    """
    base = getattr(model, "base_model", model)
    for holder in (base, getattr(base, "decoder", None), model):
        if holder is None:
            continue
        for name in ("norm", "ln_f", "final_layernorm", "final_layer_norm"):
            module = getattr(holder, name, None)
            if module is not None and hasattr(module, "weight"):
                return module
    return None


def unembedding_directions(model, components):
    """The atoms as the unembedding reads them: through the final norm.

    The final norm maps ``x`` to ``gamma * (x - mean(x)) / scale`` (LayerNorm)
    or ``gamma * x / scale`` (RMSNorm). An atom added to the residual stream
    moves the logits by ``W_U @ (gamma * d)`` (``d`` centred first for a
    LayerNorm), up to the positive ``1 / scale`` shared by all tokens, which
    ranks the tokens as the model does. The norm's bias and the
    unembedding's bias do not depend on the atom and are left out.

    Returns
    -------
    directions : ndarray of shape (n_components, n_features), float32
    norm : str
        Class name of the final norm used, or ``"none"``.
    """
    directions = np.asarray(components, dtype=np.float32)
    module = final_norm(model)
    if module is None:
        return directions, "none"
    name = type(module).__name__
    if "layernorm" in name.lower() and "rms" not in name.lower():
        directions = directions - directions.mean(axis=1, keepdims=True)
    gamma = module.weight.detach().float().cpu().numpy()
    # Some RMSNorms (Gemma) scale by 1 + weight.
    if getattr(getattr(model, "config", None), "model_type", "") in {
        "gemma",
        "gemma2",
        "gemma3",
    }:
        gamma = 1 + gamma
    return directions * gamma, name


def logit_effects(model, components, n_tokens=10, block=256):
    """Tokens each atom promotes and suppresses through the unembedding.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A causal LM; its output embedding is ``W_U``.
    components : ndarray of shape (n_components, n_features)
    n_tokens : int, default=10
    block : int, default=256
        Atoms scored at once (``vocab_size x block`` floats).

    Returns
    -------
    effects : dict
        ``promoted`` and ``suppressed``, ndarrays of shape (n_components,
        n_tokens): token ids of the largest and of the most negative entries
        of ``W_U @ direction``, strongest first; ``promoted_logits`` and
        ``suppressed_logits``: those entries; ``norm``: the final norm folded
        in (see :func:`unembedding_directions`).
    """
    import torch

    directions, norm = unembedding_directions(model, components)
    unembedding = model.get_output_embeddings()
    if unembedding is None:
        raise ValueError(f"{type(model).__name__} has no output embedding (W_U).")
    weight = unembedding.weight.detach().float().cpu()
    if weight.shape[1] != directions.shape[1]:
        raise ValueError(
            f"the model's residual stream has {weight.shape[1]} features, the "
            f"dictionary {directions.shape[1]}."
        )
    n = len(directions)
    n_tokens = min(n_tokens, weight.shape[0])
    out = {
        key: np.zeros((n, n_tokens), dtype)
        for key, dtype in [
            ("promoted", np.int64),
            ("suppressed", np.int64),
            ("promoted_logits", np.float32),
            ("suppressed_logits", np.float32),
        ]
    }
    with torch.no_grad():
        for start in range(0, n, block):
            stop = min(start + block, n)
            logits = weight @ torch.from_numpy(directions[start:stop]).T
            top = torch.topk(logits, n_tokens, dim=0)
            bottom = torch.topk(logits, n_tokens, dim=0, largest=False)
            out["promoted"][start:stop] = top.indices.T.numpy()
            out["promoted_logits"][start:stop] = top.values.T.numpy()
            out["suppressed"][start:stop] = bottom.indices.T.numpy()
            out["suppressed_logits"][start:stop] = bottom.values.T.numpy()
    out["norm"] = norm
    return out
