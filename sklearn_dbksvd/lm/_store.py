"""The harvest directory: activation shards, their tokens, the documents.

NumPy only: reading a harvest (to fit, or to build a dashboard) needs
neither torch nor transformers. The format is described in
:mod:`sklearn_dbksvd.lm.harvest`; this module is its one reader and writer.
"""

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .._data import RowConcatenation

MANIFEST = "harvest.json"
FORMAT = 1

#: dtype of the token table: one record per activation row.
TOKEN_DTYPE = np.dtype([("token_id", "<i4"), ("document", "<i8"), ("position", "<i4")])

#: Value of the padding after the end of a document in ``documents-*.npy``.
PAD = -1

STORAGE_DTYPES = ("float32", "bfloat16")


def shard_names(index):
    """File names of shard ``index``: activations, tokens, documents."""
    stem = f"{index:05d}.npy"
    return f"acts-{stem}", f"tokens-{stem}", f"documents-{stem}"


class BFloat16Rows:
    """A 2-D array of bfloat16 bit patterns (uint16) read as float32.

    bfloat16 is the upper half of a float32, so widening is a 16-bit shift:
    exact, and done only for the rows read.

    Parameters
    ----------
    bits : array-like of shape (n_rows, n_features), dtype uint16
        Typically a memory map of an ``acts-*.npy`` shard.
    """

    dtype = np.dtype(np.float32)
    ndim = 2

    def __init__(self, bits):
        if np.dtype(bits.dtype) != np.uint16 or len(bits.shape) != 2:
            raise ValueError(
                "bfloat16 shards hold 2-D uint16 bit patterns; got dtype "
                f"{bits.dtype} and shape {tuple(bits.shape)}."
            )
        self.bits = bits
        self.shape = tuple(bits.shape)

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, rows):
        return bfloat16_to_float32(np.asarray(self.bits[rows]))


def bfloat16_to_float32(bits):
    """float32 values of bfloat16 bit patterns stored as uint16."""
    return (np.asarray(bits, dtype=np.uint32) << 16).view(np.float32)


def float32_to_bfloat16(values):
    """bfloat16 bit patterns (uint16) of float32 values, rounded to nearest even.

    Used only when the activations arrive as NumPy float32; torch tensors are
    rounded by torch itself.
    """
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    return ((bits + rounding) >> 16).astype(np.uint16)


# ----------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------
def is_harvest(path):
    """Whether ``path`` is a directory written by ``harvest_activations``."""
    return (Path(path) / MANIFEST).is_file()


def read_manifest(directory):
    """The manifest of a harvest directory as a dict.

    Raises
    ------
    FileNotFoundError
        When ``directory`` has no ``harvest.json``.
    ValueError
        When the manifest is of a newer format than this version reads.
    """
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such file; is {directory} a harvest directory?"
        )
    with open(path, encoding="utf-8") as file:
        manifest = json.load(file)
    if manifest.get("format", 0) > FORMAT:
        raise ValueError(
            f"{path} is of format {manifest['format']}; this version of "
            f"sklearn-dbksvd reads format {FORMAT}: upgrade."
        )
    return manifest


def _shards(directory, manifest, column):
    directory = Path(directory)
    if not manifest["shards"]:
        raise ValueError(f"{directory} holds no activations yet.")
    return [
        np.load(directory / shard[column], mmap_mode="r")
        for shard in manifest["shards"]
    ]


def load_activations(directory):
    """The activations of a harvest directory, read lazily, as float32 rows.

    Parameters
    ----------
    directory : str or path-like
        Directory written by :func:`~sklearn_dbksvd.lm.harvest_activations`.

    Returns
    -------
    X : RowConcatenation of shape (n_rows, d_in)
        The ``acts-*.npy`` shards memory-mapped and stacked in order;
        bfloat16 shards are widened to float32 as rows are read. The
        estimators' ``fit`` reads it batch by batch (out of core).
    """
    manifest = read_manifest(directory)
    shards = _shards(directory, manifest, "acts")
    if manifest["dtype"] == "bfloat16":
        shards = [BFloat16Rows(shard) for shard in shards]
    return RowConcatenation(shards)


def load_tokens(directory):
    """The token table of a harvest: one record per activation row.

    Returns
    -------
    tokens : ndarray of shape (n_rows,), dtype ``TOKEN_DTYPE``
        Fields ``token_id``, ``document`` and ``position``: row ``i`` of
        :func:`load_activations` is the hidden state at
        ``documents[tokens["document"][i], tokens["position"][i]]``, a token
        equal to ``tokens["token_id"][i]``.
    """
    manifest = read_manifest(directory)
    return np.concatenate(_shards(directory, manifest, "tokens"))


def load_documents(directory):
    """The token ids of every document fed to the model, read lazily.

    Returns
    -------
    documents : RowConcatenation of shape (n_documents, context_size)
        int32 token ids, special tokens included, padded with ``-1`` after
        the end of a document.
    """
    manifest = read_manifest(directory)
    return RowConcatenation(_shards(directory, manifest, "documents"))


# ----------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------
def _fsync_directory(path):
    with contextlib.suppress(OSError):  # not every file system allows it
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_atomic(path, write):
    """Call ``write(file)`` on a temporary file, then rename it to ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_manifest(directory, manifest):
    """Replace the manifest atomically: it is the commit point of a shard."""
    text = json.dumps(manifest, indent=2, allow_nan=False).encode("utf-8")
    _write_atomic(Path(directory) / MANIFEST, lambda file: file.write(text))
    _fsync_directory(directory)


def write_shard(directory, manifest, acts, tokens, documents, digest):
    """Write one shard's three files, then list it in the manifest.

    A shard not yet in the manifest does not exist for readers; a killed run
    leaves at most orphan files that the next run overwrites.

    Parameters
    ----------
    acts : ndarray of shape (n_rows, d_in), float32 or uint16 (bfloat16 bits)
    tokens : ndarray of shape (n_rows,), dtype ``TOKEN_DTYPE``
    documents : ndarray of shape (n_documents, context_size), int32
    digest : hashlib object
        Running hash of every document written so far, this shard's included.
    """
    directory = Path(directory)
    index = len(manifest["shards"])
    names = shard_names(index)
    for name, array in zip(names, (acts, tokens, documents), strict=True):
        _write_atomic(directory / name, lambda file, a=array: np.save(file, a))
    manifest["shards"].append(
        {
            "acts": names[0],
            "tokens": names[1],
            "documents": names[2],
            "n_rows": int(len(acts)),
            "n_documents": int(len(documents)),
        }
    )
    manifest["n_rows"] += int(len(acts))
    manifest["n_documents"] += int(len(documents))
    manifest["documents_sha256"] = digest.hexdigest()
    write_manifest(directory, manifest)


def document_digest():
    """The running hash that identifies the documents of a harvest."""
    return hashlib.sha256()


def update_digest(digest, ids):
    """Add one document's token ids to the running hash."""
    digest.update(np.asarray(ids, dtype="<i4").tobytes())
    digest.update(b"\xff")  # document boundary


def prepare_directory(directory, settings, overwrite):
    """Create or reopen a harvest directory for ``settings``.

    Returns
    -------
    manifest : dict
        A fresh manifest, or the one of an unfinished harvest with the same
        settings (to resume).

    Raises
    ------
    ValueError
        When the directory holds a harvest with other settings, or files that
        are not a harvest, and ``overwrite`` is false.
    """
    directory = Path(directory)
    if not directory.parent.is_dir():
        raise FileNotFoundError(f"{directory.parent}: no such directory.")
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"{directory} exists and is not a directory.")
    if is_harvest(directory) and not overwrite:
        manifest = read_manifest(directory)
        if manifest["settings"] != settings:
            changed = sorted(
                key
                for key in set(settings) | set(manifest["settings"])
                if settings.get(key) != manifest["settings"].get(key)
            )
            raise ValueError(
                f"{directory} holds a harvest with other settings "
                f"({', '.join(changed)}); pass overwrite=True to replace it, "
                "or choose another directory."
            )
        return manifest
    if directory.is_dir() and any(directory.iterdir()):
        if not is_harvest(directory):
            raise ValueError(
                f"{directory} is a non-empty directory without {MANIFEST}; "
                "refusing to write a harvest into it."
            )
        # overwrite: only ever remove what a harvest wrote.
        shutil.rmtree(directory)
    directory.mkdir(exist_ok=True)
    manifest = {
        "format": FORMAT,
        "settings": settings,
        "dtype": settings["dtype"],
        "d_in": None,
        "n_rows": 0,
        "n_documents": 0,
        "complete": False,
        "documents_sha256": document_digest().hexdigest(),
        "shards": [],
    }
    write_manifest(directory, manifest)
    return manifest
