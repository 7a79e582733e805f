"""Language models, their layers, and the documents fed to them.

Needs torch (and transformers to load a model by name); imported only by the
functions that run a model.
"""

import hashlib
import os
import struct
from pathlib import Path

#: Files whose bytes are a model's weights, in a model directory.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")

# Attributes that load_model sets on the model it returns: where its weights
# were read from, their fingerprint, and the name to record.
_SOURCE = "_sklearn_dbksvd_weights"
_FINGERPRINT = "_sklearn_dbksvd_fingerprint"
_NAME = "_sklearn_dbksvd_name"

_HASH_CHUNK = 2**24


class StopForward(Exception):
    """Raised by a hook to end a forward pass once the layer has run."""


def _sha256_file(path):
    """SHA-256 (hex) of a file, read in chunks of 16 MiB."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def weight_files(path):
    """The weight files of a model directory, sorted by name.

    Files directly in ``path`` ending in one of ``WEIGHT_SUFFIXES``
    (``.safetensors``, ``.bin``, ``.gguf``, ``.pt``, ``.pth``); symbolic links
    (the Hugging Face cache) are followed.
    """
    return sorted(
        (entry for entry in Path(path).iterdir()
         if entry.suffix.lower() in WEIGHT_SUFFIXES and entry.is_file()),
        key=lambda entry: entry.name,
    )


def weights_fingerprint(path):
    """SHA-256 (hex) of a model's weights: a weights file or a model directory.

    For a file (a ``.gguf``, a ``.safetensors``, ...) the SHA-256 of its
    bytes, as ``sha256sum FILE`` prints it. For a directory, the SHA-256 of
    the lines ``"<sha256 of the file>  <name>\n"`` of its weight files
    (:func:`weight_files`) in name order, as ``sha256sum FILES | sha256sum``
    prints it; None when it has no weight file. Files are read in chunks, so
    that a model of many gigabytes never sits in memory.
    """
    path = Path(path)
    if path.is_file():
        return _sha256_file(path)
    files = weight_files(path)
    if not files:
        return None
    lines = "".join(f"{_sha256_file(file)}  {file.name}\n" for file in files)
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


def _weights_source(model):
    """Path of the file or directory the model's weights were read from."""
    source = getattr(model, _SOURCE, None)
    if source is not None:
        return Path(source)
    config = getattr(model, "config", None)
    name = getattr(config, "_name_or_path", None) or getattr(
        config, "name_or_path", None
    )
    if name and Path(str(name)).is_dir():
        return Path(str(name))
    if name and "/" in str(name) and not Path(str(name)).exists():
        return _cached_snapshot(str(name))  # a hub name, from the local cache
    return None


def model_fingerprint(model):
    """:func:`weights_fingerprint` of the files ``model`` was loaded from.

    Known for a model returned by :func:`load_model`, and for a Hugging Face
    model loaded from a directory or the local Hugging Face cache (its
    ``name_or_path``): the fingerprint of the files it was loaded from, not of
    changes made to it in memory since. None for a model built in memory,
    whose weights come from no file. Computed once per model object.
    """
    fingerprint = getattr(model, _FINGERPRINT, None)
    if fingerprint is None:
        source = _weights_source(model)
        if source is None:
            return None
        fingerprint = weights_fingerprint(source)
        _remember(model, _FINGERPRINT, fingerprint)
    return fingerprint


def _remember(model, name, value):
    """Set an attribute on ``model`` where it takes one (not on a slotted object)."""
    try:
        setattr(model, name, value)
    except (AttributeError, TypeError):
        pass


def load_model(model, *, device=None, dtype=None, cache=None):
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
    cache : str, path-like or bool, default=None
        Where a ``.gguf`` model is kept dequantized, so that it loads in
        about a second the next time instead of being parsed and dequantized
        again (25 to 50 s for SmolLM2-135M on 2 cores): a directory
        ``<cache>/gguf/<SHA-256 of the file>`` in the format of
        ``save_pretrained``, float32 weights (4 bytes per parameter). None:
        ``$SKLEARN_DBKSVD_CACHE``, else ``$XDG_CACHE_HOME/sklearn_dbksvd``,
        else ``~/.cache/sklearn_dbksvd``; False: no cache. The cache is keyed
        by the file's SHA-256, so an edited file is never confused with the
        old one; a cache that cannot be written is skipped with a warning.

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
    gguf = path.suffix.lower() == ".gguf"
    fingerprint, cached = None, None
    if gguf:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such GGUF file.")
        if cache_directory(cache) is not None:  # the cache's key
            fingerprint = weights_fingerprint(path)
            cached = _gguf_cache(cache, fingerprint)
    if cached is not None and (cached / "config.json").is_file():
        kwargs, source = {}, str(cached)
    elif gguf:
        kwargs, source = {"gguf_file": path.name}, str(path.parent)
    else:
        kwargs, source = {}, str(model)
        if not path.exists():
            # A hub name: only from the local cache, never downloaded.
            kwargs["local_files_only"] = True
    # A GGUF model to cache is loaded (and kept) in float32 whatever dtype.
    load_dtype = torch.float32 if "gguf_file" in kwargs and cached else dtype
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        loaded = AutoModelForCausalLM.from_pretrained(
            source, dtype=load_dtype, **kwargs
        )
    except OSError as error:
        raise FileNotFoundError(
            f"cannot load the model {model!r}: not a model directory, a .gguf "
            f"file or a name in the Hugging Face cache ({error})."
        ) from error
    except (struct.error, ValueError, KeyError, IndexError, EOFError) as error:
        if "gguf_file" not in kwargs:
            raise
        raise ValueError(
            f"{path} is not a GGUF model that transformers can read "
            f"({type(error).__name__}: {error})."
        ) from error
    if "gguf_file" in kwargs and cached is not None:
        _save_dequantized(loaded, tokenizer, cached)
    if loaded.dtype != dtype:
        loaded = loaded.to(dtype)
    if device is not None:
        loaded = loaded.to(device)
    loaded.eval()
    source = path if path.exists() else _cached_snapshot(str(model))
    if source is not None:
        _remember(loaded, _SOURCE, str(source))
    if fingerprint is not None:
        _remember(loaded, _FINGERPRINT, fingerprint)
    if gguf:
        _remember(loaded, _NAME, path.name[: -len(path.suffix)])
    return loaded, tokenizer


def cache_directory(cache=None):
    """The cache directory of :func:`load_model`, or None when disabled."""
    if cache is False:
        return None
    if cache is None or cache is True:
        cache = os.environ.get("SKLEARN_DBKSVD_CACHE")
        if not cache:
            base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
            cache = Path(base) / "sklearn_dbksvd"
    return Path(cache)


def _gguf_cache(cache, fingerprint):
    directory = cache_directory(cache)
    return None if directory is None else directory / "gguf" / fingerprint


def _save_dequantized(loaded, tokenizer, directory):
    """Save a GGUF-loaded model as a plain float32 model in ``directory``.

    transformers refuses to serialise a GGUF-quantised model, so its weights
    are shared (not copied) with a model built on the meta device from the
    same config without its quantisation entry, which is saved. Returns
    ``loaded``, which serves as it is.
    """
    import copy
    import warnings

    import torch
    from transformers import AutoModelForCausalLM

    from ..persistence import atomic_directory

    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # Non-persistent buffers (rotary frequencies) stay on the meta device:
    # save_pretrained does not write them.
    plain.load_state_dict(loaded.state_dict(), assign=True)
    plain.tie_weights()
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        with atomic_directory(directory) as tmp:
            plain.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    except FileExistsError:
        pass  # another run cached it first
    except OSError as error:
        warnings.warn(
            f"could not cache the dequantized model in {directory} ({error}); "
            "it will be dequantized again next time.",
            UserWarning,
            stacklevel=3,
        )
    return loaded


def _cached_snapshot(name):
    """Directory of a model in the local Hugging Face cache, or None."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(name, "config.json")
    return Path(found).parent if isinstance(found, str) else None


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
    name = getattr(model, _NAME, None)
    if name:
        return name
    config = getattr(model, "config", None)
    name = getattr(config, "name_or_path", None) or ""
    return os.path.basename(str(name).rstrip("/")) or type(model).__name__


def model_dtype(model):
    """Name of the dtype of the first floating parameter, e.g. ``"float32"``."""
    for parameter in model.parameters():
        if parameter.is_floating_point():
            return str(parameter.dtype).removeprefix("torch.")
    return None


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
