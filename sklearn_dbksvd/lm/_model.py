"""Language models, their layers, and the documents fed to them.

Needs torch (and transformers to load a model by name); imported only by the
functions that run a model.
"""

import os
from pathlib import Path


class StopForward(Exception):
    """Raised by a hook to end a forward pass once the layer has run."""


def load_model(model, *, device=None, dtype=None):
    """A Hugging Face causal language model and its tokenizer.

    Parameters
    ----------
    model : str or path-like
        A directory holding a model saved by ``save_pretrained``, a name in
        the local Hugging Face cache (read offline: nothing is downloaded),
        or a ``.gguf`` file (transformers' GGUF loader, which needs the
        ``gguf`` package).
    device : str or torch.device, default=None
        Where to put the model; None keeps the CPU.
    dtype : torch.dtype, default=None
        Dtype of the weights; None: float32.

    Returns
    -------
    model : transformers.PreTrainedModel
        In evaluation mode.
    tokenizer : transformers.PreTrainedTokenizerBase
    """
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as error:
        raise ImportError(
            f"loading a language model needs torch and transformers ({error}): "
            "pip install 'sklearn-dbksvd[lm]'."
        ) from error

    dtype = torch.float32 if dtype is None else dtype
    path = Path(model)
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such GGUF file.")
        kwargs = {"gguf_file": path.name}
        source = str(path.parent)
    else:
        kwargs = {}
        source = str(model)
        if not path.exists():
            # A hub name: only from the local cache, never downloaded.
            kwargs["local_files_only"] = True
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        loaded = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    except OSError as error:
        raise FileNotFoundError(
            f"cannot load the model {model!r}: not a model directory, a .gguf "
            f"file or a name in the Hugging Face cache ({error})."
        ) from error
    if device is not None:
        loaded = loaded.to(device)
    loaded.eval()
    return loaded, tokenizer


def decoder_layers(model):
    """Name and ``ModuleList`` of the decoder layers of a causal LM."""
    import torch

    n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.ModuleList) and len(module) > 0
    ]
    for name, module in candidates:
        if n_layers is None or len(module) == n_layers:
            return name, module
    raise ValueError(
        "cannot find the decoder layers of this model (no ModuleList of "
        f"{n_layers} layers); pass module='<name of a submodule>'."
    )


def find_module(model, *, layer=None, module=None):
    """The submodule whose output is harvested or replaced.

    Parameters
    ----------
    model : torch.nn.Module
    layer : int, default=None
        Decoder layer: its output is the residual stream after the block
        (SAELens' ``blocks.<layer>.hook_resid_post``). Negative values count
        from the end.
    module : str, default=None
        Name of any submodule (as in ``model.named_modules()``), instead of
        ``layer``.

    Returns
    -------
    name : str
        Full name of the submodule.
    submodule : torch.nn.Module
    hook_name : str
        ``blocks.<layer>.hook_resid_post`` for a decoder layer, else ``name``.
    """
    if (layer is None) == (module is None):
        raise ValueError("pass exactly one of layer and module.")
    if module is not None:
        modules = dict(model.named_modules())
        if module not in modules:
            raise ValueError(f"the model has no submodule named {module!r}.")
        return module, modules[module], module
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise TypeError(f"layer must be an int; got {layer!r}.")
    name, layers = decoder_layers(model)
    if not -len(layers) <= layer < len(layers):
        raise ValueError(
            f"layer {layer} is out of range: the model has {len(layers)} layers."
        )
    layer %= len(layers)
    return f"{name}.{layer}", layers[layer], f"blocks.{layer}.hook_resid_post"


def output_tensor(output):
    """The hidden states in a module's output (a tensor or a tuple)."""
    return output[0] if isinstance(output, tuple) else output


def replace_output(output, hidden):
    """``output`` with its hidden states replaced by ``hidden``."""
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    return hidden


def model_name(model):
    """A name for the manifest and SAELens configs."""
    config = getattr(model, "config", None)
    name = getattr(config, "name_or_path", None) or ""
    return os.path.basename(str(name).rstrip("/")) or type(model).__name__


def model_device(model):
    """Device of the first parameter (CPU for a module without any)."""
    import torch

    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


# ----------------------------------------------------------------------
# Documents
# ----------------------------------------------------------------------
def special_ids(tokenizer):
    """Token ids of the tokenizer's special tokens (BOS, EOS, pad, ...)."""
    ids = set(getattr(tokenizer, "all_special_ids", None) or [])
    for attribute in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, attribute, None)
        if value is not None:
            ids.add(int(value))
    return sorted(ids)


def iter_documents(tokenizer, texts, context_size, prepend_bos):
    """The documents fed to the model: token ids of at most ``context_size``.

    Each text is tokenized without special tokens and cut into pieces of
    ``context_size`` tokens (``context_size - 1`` after a BOS token when
    ``prepend_bos`` and the tokenizer has one), so that every document
    starts like the model's training sequences. Empty texts give nothing.

    Yields
    ------
    ids : list of int
    """
    bos = getattr(tokenizer, "bos_token_id", None) if prepend_bos else None
    prefix = [] if bos is None else [int(bos)]
    width = context_size - len(prefix)
    if width < 1:
        raise ValueError(f"context_size={context_size} leaves no room for text.")
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"texts must be strings; got {type(text).__name__}.")
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for start in range(0, len(ids), width):
            yield prefix + [int(i) for i in ids[start : start + width]]


def batches(documents, batch_size):
    """Lists of ``batch_size`` documents (the last one shorter)."""
    batch = []
    for document in documents:
        batch.append(document)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def pad_batch(batch, pad_id, device):
    """Right-padded ``input_ids`` and ``attention_mask`` tensors of a batch.

    Right padding leaves the hidden states of real tokens unchanged in a
    causal model: no real token attends to a later (padding) position.
    """
    import torch

    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[row, : len(ids)] = 1
    return input_ids.to(device), mask.to(device)


def kept_mask(input_ids, attention_mask, special, skip_special):
    """Positions whose activations are harvested or replaced.

    Real (unpadded) positions, without special tokens when ``skip_special``:
    BOS and other special positions serve as attention sinks with norms far
    above the rest and are left alone.
    """
    import torch

    keep = attention_mask.bool()
    if skip_special and special:
        ids = torch.tensor(special, dtype=input_ids.dtype, device=input_ids.device)
        keep &= ~torch.isin(input_ids, ids)
    return keep
