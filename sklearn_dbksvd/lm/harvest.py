"""Harvest the residual stream of a language model into a directory of shards.

:func:`harvest_activations` runs a causal language model over texts, takes
the output of one decoder layer (the residual stream after the block,
SAELens' ``blocks.<layer>.hook_resid_post``) with a forward hook, stops the
forward pass there, drops the positions of special tokens, and streams the
rows to disk. The estimators' ``fit`` reads the directory out of core
(:func:`load_activations`, or ``dbksvd fit ACTS_DIR``).

The harvest directory (format 1)
--------------------------------
Shards are numbered ``00000``, ``00001``, ... Shard ``i`` is three ``.npy``
files, all written before the manifest lists the shard:

``acts-<i>.npy``
    Activations, shape ``(n_rows_i, d_in)``: float32, or uint16 holding
    bfloat16 bit patterns when the harvest was stored as bfloat16 (the upper
    16 bits of a float32: ``(bits.astype(np.uint32) << 16).view(np.float32)``;
    :func:`load_activations` does it for you).
``tokens-<i>.npy``
    One record per activation row, a structured array (``TOKEN_DTYPE``) with
    the fields ``token_id`` (int32, the token at that position),
    ``document`` (int64, the global index of the document, i.e. the row of
    the stacked ``documents-*.npy``) and ``position`` (int32, the position of
    the token in that document, 0 = first token fed to the model).
``documents-<i>.npy``
    The documents of the shard as fed to the model, int32 of shape
    ``(n_documents_i, context_size)``, padded with ``-1``; special tokens
    (the BOS the harvest prepends) are included, though their rows are not
    harvested. Documents are numbered consecutively across shards.

``harvest.json``
    The manifest: ``format`` (1), ``settings`` (model name and
    ``model_fingerprint``, module and ``hook_name``, ``layer``,
    ``context_size``, ``prepend_bos``, ``skip_special``, ``dtype``, the
    special token ids), ``dtype``, ``d_in``, ``n_rows``, ``n_documents``,
    ``complete`` (false while the harvest runs or after it was stopped),
    ``documents_sha256`` (a hash of the documents written, checked when
    resuming), ``partial`` (where ``max_tokens`` cut the last document, or
    null) and ``shards``: one entry per shard with its three file names,
    ``n_rows``, ``n_documents`` and the ``sha256`` of each file. Files not
    listed there are leftovers of an interrupted run and are not part of the
    harvest.

A row maps back to its token in context::

    tokens = load_tokens(directory)          # structured, one per row
    documents = load_documents(directory)    # (n_documents, context_size)
    d, p = tokens["document"][i], tokens["position"][i]
    context = documents[[d]][0]              # token ids, -1 after the end
    assert context[p] == tokens["token_id"][i]
    # the model saw context[: p + 1] when it produced row i

and re-running the model on ``context[context >= 0]`` gives row ``i`` as its
layer output at position ``p``.

How documents are made
----------------------
Each text is tokenized without special tokens and cut into pieces of
``context_size`` tokens; with ``prepend_bos`` (default) the tokenizer's BOS
token starts every piece (SAELens' ``prepend_bos``), leaving
``context_size - 1`` text tokens. Rows at special tokens (BOS, EOS, padding
and the tokenizer's other special tokens) are not harvested with
``skip_special`` (default): those positions serve as attention sinks, with
norms 10 to 100 times the others, and would dominate a dictionary.

Resuming
--------
Memory stays bounded by one shard: rows are kept until a shard is full, then
written. A harvest stopped midway resumes when called again with the same
output and settings: the documents already written are re-tokenized (not
re-run), checked against ``documents_sha256``, and skipped; a document cut by
``max_tokens`` is run again and only its remaining rows are kept, so that the
rows equal those of one uninterrupted run. The directory is locked while a
harvest writes into it.
"""

import math
from pathlib import Path

import numpy as np

from . import _model, _store
from ._progress import Progress

# Rows per shard: 256 MiB of activations whatever d_in, big enough for
# sequential reads, small enough to keep in memory while it fills.
_SHARD_BYTES = 2**28


def _settings(model, tokenizer, name, hook_name, layer, context_size,
              prepend_bos, skip_special, dtype):
    return {
        "model_name": _model.model_name(model),
        "model_fingerprint": _model.model_fingerprint(model),
        "compute_dtype": _model.model_dtype(model),
        "module": name,
        "hook_name": hook_name,
        "layer": layer,
        "context_size": int(context_size),
        "prepend_bos": bool(prepend_bos),
        "skip_special": bool(skip_special),
        "dtype": dtype,
        "special_ids": _model.special_ids(tokenizer),
        "bos_token_id": getattr(tokenizer, "bos_token_id", None)
        if prepend_bos
        else None,
    }


def _check_positive(name, value, allow_none=False):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive int; got {value!r}.")


class _LayerOutput:
    """Forward hook that keeps the layer's output and ends the forward pass."""

    def __init__(self):
        self.value = None

    def __call__(self, module, inputs, output):
        self.value = _model.output_tensor(output).detach()
        raise _model.StopForward


def run_to_layer(model, submodule, input_ids, attention_mask):
    """Hidden states at the output of ``submodule``; later layers never run.

    Returns
    -------
    hidden : torch.Tensor of shape (batch, sequence, d_in)
    """
    import torch

    hook = _LayerOutput()
    handle = submodule.register_forward_hook(hook)
    try:
        with torch.inference_mode():
            model(input_ids=input_ids, attention_mask=attention_mask)
    except _model.StopForward:
        pass
    finally:
        handle.remove()
    if hook.value is None:
        raise ValueError("the chosen module did not run in the forward pass.")
    return hook.value


def _to_storage(rows, dtype):
    """Kept rows (torch) as the NumPy array stored in ``acts-*.npy``."""
    import torch

    if dtype == "bfloat16":
        return rows.to(torch.bfloat16).view(torch.int16).cpu().numpy().view(np.uint16)
    return rows.to(torch.float32).cpu().numpy()


class _ShardBuffer:
    """Rows, tokens and documents waiting to be written as one shard.

    ``partial`` is what the manifest says of a document whose rows were cut
    by ``max_tokens`` once these rows are written: ``{"document",
    "position"}`` (the rows from ``position`` on are not harvested yet), or
    None.
    """

    def __init__(self, partial=None):
        self.acts, self.tokens, self.documents = [], [], []
        self.n_rows = 0
        self.partial = partial

    def add(self, acts, tokens, documents):
        self.acts.append(acts)
        self.tokens.append(tokens)
        self.documents.extend(documents)
        self.n_rows += len(acts)

    def flush(self, directory, manifest, context_size, digest):
        if not self.acts:
            return
        documents = np.full((len(self.documents), context_size), _store.PAD, np.int32)
        for row, ids in enumerate(self.documents):
            documents[row, : len(ids)] = ids
            _store.update_digest(digest, ids)
        manifest["partial"] = self.partial
        _store.write_shard(
            directory,
            manifest,
            np.concatenate(self.acts),
            np.concatenate(self.tokens),
            documents,
            digest,
        )
        self.__init__(self.partial)


def _feed(documents, manifest, resumed_ids):
    """The documents to run, as ``(index, ids, first_position, new)``.

    ``index`` is the document's global number, ``first_position`` the first
    position whose row is harvested and ``new`` whether it still has to be
    written to ``documents-*.npy``. A document cut by ``max_tokens`` in the
    previous run comes first, again, with its remaining positions only.
    """
    partial = manifest.get("partial")
    if partial is not None:
        yield partial["document"], resumed_ids, partial["position"], False
    index = manifest["n_documents"]
    for ids in documents:
        yield index, ids, 0, True
        index += 1


def harvest_activations(
    model,
    tokenizer,
    texts,
    *,
    output,
    layer=None,
    module=None,
    context_size=128,
    batch_size=8,
    max_tokens=None,
    skip_special=True,
    prepend_bos=True,
    dtype="float32",
    shard_rows=None,
    overwrite=False,
    progress=False,
):
    """Write the activations of one layer of a language model over ``texts``.

    Parameters
    ----------
    model : torch.nn.Module
        A causal language model taking ``input_ids`` and ``attention_mask``
        (any Hugging Face ``AutoModelForCausalLM``, or any module with the
        named submodule), on the device where it should run.
        :func:`load_model` loads one from a directory, the Hugging Face cache
        or a ``.gguf`` file.
    tokenizer : transformers.PreTrainedTokenizerBase
        Its tokenizer: called as ``tokenizer(text, add_special_tokens=False)``
        and read for ``bos_token_id``, ``pad_token_id`` and
        ``all_special_ids``.
    texts : iterable of str
        Read once, lazily: a generator over a large corpus is fine.
    output : str or path-like
        Harvest directory to create, or to resume (see the module
        documentation for its files).
    layer : int, default=None
        Decoder layer whose output is harvested (the residual stream after
        the block). Exactly one of ``layer`` and ``module`` is given.
    module : str, default=None
        Name of a submodule whose output is harvested instead.
    context_size : int, default=128
        Tokens per document fed to the model, BOS included.
    batch_size : int, default=8
        Documents per forward pass.
    max_tokens : int, default=None
        Stop after this many rows; None: all of ``texts``.
    skip_special : bool, default=True
        Leave out the rows of special tokens (BOS, EOS, padding, ...).
    prepend_bos : bool, default=True
        Start every document with the tokenizer's BOS token, if it has one.
    dtype : {"float32", "bfloat16"}, default="float32"
        Storage of the activations; bfloat16 halves the disk and reads back
        as float32.
    shard_rows : int, default=None
        Rows per shard (whole documents, so a shard may hold a few more);
        None: 256 MiB of activations.
    overwrite : bool, default=False
        Start again: replace the harvest in ``output`` (which is refused
        without it when its settings or texts differ), removing only the
        files the harvest wrote, never the directory nor other files in it.
        Without it, a harvest with the same settings and texts is resumed;
        one that is complete (its texts ran out, or it holds ``max_tokens``
        rows) is returned as it is once ``texts`` are checked to be the
        texts it was made of.
    progress : bool or "lines", default=False
        ``True``: a tqdm progress bar counting rows (lines when tqdm is not
        installed); ``"lines"``: a line on stderr every 10 s and one at the
        end, for logs; ``False``: nothing.

    Returns
    -------
    directory : pathlib.Path
        The harvest directory; read it with :func:`load_activations`,
        :func:`load_tokens` and :func:`load_documents`.

    Examples
    --------
    >>> from sklearn_dbksvd.lm import (  # doctest: +SKIP
    ...     harvest_activations, load_activations, load_model)
    >>> model, tokenizer = load_model("HuggingFaceTB/SmolLM2-135M")  # doctest: +SKIP
    >>> harvest_activations(model, tokenizer, texts, layer=15,
    ...                     output="acts")  # doctest: +SKIP
    >>> DBKSVDDictionaryLearning(n_components=4096, n_nonzero_coefs=16).fit(
    ...     load_activations("acts"))  # doctest: +SKIP
    """

    if dtype not in _store.STORAGE_DTYPES:
        raise ValueError(f"dtype must be 'float32' or 'bfloat16'; got {dtype!r}.")
    _check_positive("context_size", context_size)
    _check_positive("batch_size", batch_size)
    _check_positive("max_tokens", max_tokens, allow_none=True)
    _check_positive("shard_rows", shard_rows, allow_none=True)
    name, submodule, hook_name = _model.find_module(model, layer=layer, module=module)
    settings = _settings(
        model, tokenizer, name, hook_name,
        None if layer is None else int(name.rsplit(".", 1)[1]),
        context_size, prepend_bos, skip_special, dtype,
    )
    directory = Path(output)
    with _store.open_for_writing(directory, settings, overwrite) as manifest:
        _run(
            model, tokenizer, texts, submodule, directory, manifest, settings,
            batch_size=batch_size, max_tokens=max_tokens, shard_rows=shard_rows,
            progress=progress,
        )
    return directory


def _run(model, tokenizer, texts, submodule, directory, manifest, settings, *,
         batch_size, max_tokens, shard_rows, progress):
    """Harvest into the open directory: check what is written, add the rest."""
    import torch

    context_size, dtype = settings["context_size"], settings["dtype"]
    documents = _model.iter_documents(
        tokenizer, texts, context_size, settings["prepend_bos"]
    )
    digest, last_ids = _skip_done(documents, manifest, directory)
    limit = math.inf if max_tokens is None else max_tokens
    if manifest["complete"]:
        # The texts ran out last time: these must run out too.
        if next(documents, None) is not None:
            raise ValueError(
                f"{directory} holds a complete harvest of other texts (these "
                "have more documents); pass overwrite=True to replace it, or "
                "choose another directory."
            )
        return
    if manifest["n_rows"] >= limit:
        return

    special = settings["special_ids"]
    pad_id = getattr(tokenizer, "pad_token_id", None)
    if pad_id is None:
        # Any id will do: padding comes after the real tokens and is masked.
        pad_id = special[0] if special else 0
    device = _model.model_device(model)
    itemsize = 2 if dtype == "bfloat16" else 4
    buffer = _ShardBuffer(manifest.get("partial"))
    bar = Progress(progress, "harvest", max_tokens, initial=manifest["n_rows"])
    exhausted = True
    try:
        for batch in _model.batches(_feed(documents, manifest, last_ids), batch_size):
            input_ids, mask = _model.pad_batch([b[1] for b in batch], pad_id, device)
            hidden = run_to_layer(model, submodule, input_ids, mask)
            keep = _model.kept_mask(
                input_ids, mask, special, settings["skip_special"]
            ).cpu().numpy()
            for row, (_, _, first, _) in enumerate(batch):
                keep[row, :first] = False  # rows of a cut document already written
            # Row-major: the kept positions document by document, in order.
            doc, position = np.nonzero(keep)
            room = limit - manifest["n_rows"] - buffer.n_rows
            used, cut = len(batch), None
            if len(doc) >= room:
                room = int(room)
                if len(doc) > room and doc[room] == doc[room - 1]:
                    # max_tokens ends inside a document: remember where, so
                    # that a larger max_tokens harvests the rest of it.
                    cut = {
                        "document": int(batch[doc[room - 1]][0]),
                        "position": int(position[room - 1]) + 1,
                    }
                doc, position = doc[:room], position[:room]
                used = int(doc[-1]) + 1
            index = (torch.from_numpy(doc), torch.from_numpy(position))
            rows = hidden[index[0].to(device), index[1].to(device)]
            if manifest["d_in"] is None:
                manifest["d_in"] = int(hidden.shape[-1])
            tokens = np.empty(len(doc), dtype=_store.TOKEN_DTYPE)
            tokens["token_id"] = input_ids.cpu().numpy()[doc, position]
            tokens["document"] = np.array([b[0] for b in batch], np.int64)[doc]
            tokens["position"] = position
            buffer.add(
                _to_storage(rows, dtype),
                tokens,
                [ids for _, ids, _, new in batch[:used] if new],
            )
            buffer.partial = cut
            bar.update(
                len(doc),
                f", {manifest['n_documents'] + len(buffer.documents)} documents",
            )
            target = shard_rows or max(1, _SHARD_BYTES // (hidden.shape[-1] * itemsize))
            if buffer.n_rows >= target:
                buffer.flush(directory, manifest, context_size, digest)
            if manifest["n_rows"] + buffer.n_rows >= limit:
                exhausted = False
                break
        buffer.flush(directory, manifest, context_size, digest)
    finally:
        bar.close()
    # Complete only when the texts ran out: a larger max_tokens resumes.
    manifest["complete"] = exhausted
    _store.write_manifest(directory, manifest)


def _skip_done(documents, manifest, directory):
    """Advance ``documents`` past those already written; check they match.

    Returns
    -------
    digest : hashlib object
        The running hash of the documents written, to continue.
    last : list of int or None
        The last document written (run again when ``max_tokens`` cut it).
    """
    digest = _store.document_digest()
    last = None
    for _ in range(manifest["n_documents"]):
        last = next(documents, None)
        if last is None:
            break
        _store.update_digest(digest, last)
    if digest.hexdigest() != manifest["documents_sha256"]:
        raise ValueError(
            f"{directory} was harvested from other texts (or another "
            "tokenizer): the documents written differ from those of these "
            "texts; pass overwrite=True to start again."
        )
    return digest, last
