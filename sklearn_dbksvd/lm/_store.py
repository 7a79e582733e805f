"""The harvest directory: activation shards, their tokens, the documents.

NumPy only: reading a harvest (to fit, or to build a dashboard) needs
neither torch nor transformers. The format is described in
:mod:`sklearn_dbksvd.lm.harvest`; this module is its one reader and writer.
"""

import contextlib
import hashlib
import json
import re
from pathlib import Path

import numpy as np

from .._data import RowConcatenation, gather_rows
from ..persistence import directory_lock, fsync_directory, write_atomic

MANIFEST = "harvest.json"
FORMAT = 1

#: dtype of the token table: one record per activation row.
TOKEN_DTYPE = np.dtype([("token_id", "<i4"), ("document", "<i8"), ("position", "<i4")])

#: Value of the padding after the end of a document in ``documents-*.npy``.
PAD = -1

STORAGE_DTYPES = ("float32", "bfloat16")

#: Lock file of a harvest being written (the persistence layer's lock).
LOCK = ".dbksvd.lock"

#: The three files of a shard, in the order of :func:`shard_names`.
SHARD_KINDS = ("acts", "tokens", "documents")

# A temporary file of the atomic writer, beside a shard or the manifest.
_TEMPORARY = re.compile(
    r"\.((acts|tokens|documents)-\d{5}\.npy|harvest\.json)\..+\.tmp"
)


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
        if isinstance(rows, np.ndarray) and rows.ndim == 1 and rows.dtype.kind in "iu":
            return bfloat16_to_float32(gather_rows(self.bits, rows))
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
    """The manifest of a harvest directory as a dict, its schema checked.

    Raises
    ------
    FileNotFoundError
        When ``directory`` has no ``harvest.json``.
    ValueError
        When the manifest is not JSON, is not a harvest manifest (a field
        missing or of the wrong type, shard file names other than those a
        harvest writes, counts that do not add up), or is of a newer format
        than this version reads. The message names the file and the field.
    """
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such file; is {directory} a harvest directory?"
        )
    try:
        with open(path, encoding="utf-8") as file:
            manifest = json.load(file)
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(
            f"{path} is not a harvest manifest: not JSON ({error})."
        ) from None
    if isinstance(manifest, dict) and _is_int(manifest.get("format"), 1):
        if manifest["format"] > FORMAT:
            raise ValueError(
                f"{path} is of format {manifest['format']}; this version of "
                f"sklearn-dbksvd reads format {FORMAT}: upgrade."
            )
    problem = _manifest_problem(manifest)
    if problem is not None:
        raise ValueError(
            f"{path} is not a harvest manifest ({problem}); it was changed "
            "after the harvest, or not written by one."
        )
    return manifest


def _is_int(value, minimum=0):
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


_SETTING_TYPES = {
    "model_name": str,
    "module": str,
    "hook_name": str,
    "context_size": int,
    "prepend_bos": bool,
    "skip_special": bool,
    "dtype": str,
}


def _manifest_problem(manifest):
    """What makes ``manifest`` not a harvest manifest, or None.

    The one place that knows the manifest's schema: every reader goes
    through :func:`read_manifest`, so that a damaged file is reported as
    such instead of failing later on a missing key.
    """
    if not isinstance(manifest, dict):
        return f"a JSON {type(manifest).__name__}, not an object"
    if not _is_int(manifest.get("format"), 1):
        return "no format number"
    for key in ("n_rows", "n_documents"):
        if not _is_int(manifest.get(key)):
            return f"{key!r} is not a count"
    if manifest.get("dtype") not in STORAGE_DTYPES:
        return f"dtype {manifest.get('dtype')!r} is not one of {STORAGE_DTYPES}"
    d_in = manifest.get("d_in")
    if d_in is not None and not _is_int(d_in, 1):
        return "'d_in' is not a positive int"
    if not isinstance(manifest.get("complete"), bool):
        return "'complete' is not true or false"
    if not isinstance(manifest.get("documents_sha256"), str):
        return "no 'documents_sha256'"
    settings = manifest.get("settings")
    if not isinstance(settings, dict):
        return "no 'settings' object"
    for key, kind in _SETTING_TYPES.items():
        value = settings.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return f"setting {key!r} missing or not a {kind.__name__}"
    if settings["dtype"] != manifest["dtype"]:
        return "the dtype of the settings and of the manifest differ"
    if settings.get("layer") is not None and not _is_int(settings["layer"]):
        return "setting 'layer' is not an int or null"
    partial = manifest.get("partial")
    if partial is not None and not (
        isinstance(partial, dict)
        and _is_int(partial.get("document"))
        and _is_int(partial.get("position"), 1)
        and partial["document"] < manifest["n_documents"]
    ):
        return "'partial' is not a document and a position"
    shards = manifest.get("shards")
    if not isinstance(shards, list):
        return "no 'shards' list"
    for index, shard in enumerate(shards):
        if not isinstance(shard, dict):
            return f"shard {index} is not an object"
        for kind, name in zip(SHARD_KINDS, shard_names(index), strict=True):
            # Fixed names: a manifest never points outside its directory.
            if shard.get(kind) != name:
                return f"shard {index} does not name its {kind} file {name!r}"
        for key in ("n_rows", "n_documents"):
            if not _is_int(shard.get(key)):
                return f"shard {index}: {key!r} is not a count"
        digests = shard.get("sha256")
        if digests is not None and not (
            isinstance(digests, dict)
            and all(isinstance(digests.get(kind), str) for kind in SHARD_KINDS)
        ):
            return f"shard {index}: 'sha256' is not one digest per file"
    for key in ("n_rows", "n_documents"):
        if sum(shard[key] for shard in shards) != manifest[key]:
            return f"its shards do not add up to {key}={manifest[key]}"
    if shards and d_in is None:
        return "shards without 'd_in'"
    return None


def harvest_fingerprint(manifest):
    """A digest that identifies a harvest: its settings, documents and shards.

    The SHA-256 of the manifest's settings (the model's fingerprint among
    them), the hash of the documents fed to the model (``documents_sha256``),
    the row and document counts, and the SHA-256 of every shard file as it
    was written. Any change to what was harvested changes it. Computed from
    the manifest alone: no shard is read.
    """
    identity = {
        "settings": manifest["settings"],
        "documents_sha256": manifest["documents_sha256"],
        "partial": manifest.get("partial"),
        "d_in": manifest["d_in"],
        "shards": [
            [shard["n_rows"], shard["n_documents"], shard.get("sha256")]
            for shard in manifest["shards"]
        ],
    }
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def harvest_provenance(directory, manifest=None):
    """What a dictionary fitted on a harvest records about its data.

    Parameters
    ----------
    directory : str or path-like
        A harvest directory.
    manifest : dict, default=None
        Its manifest, if already read.

    Returns
    -------
    provenance : dict
        ``model_name``, ``model_fingerprint`` (SHA-256 of the model's weight
        files, or None for a model given without files), ``module``,
        ``hook_name``, ``layer`` (int, or None for a module given by name),
        ``context_size``, ``prepend_bos``, ``dtype`` (the harvest's storage
        dtype) and ``harvest``: ``{"path", "fingerprint", "n_rows"}``, the
        directory's absolute path, :func:`harvest_fingerprint` and the number
        of rows.
    """
    if manifest is None:
        manifest = read_manifest(directory)
    settings = manifest["settings"]
    return {
        "model_name": settings["model_name"],
        "model_fingerprint": settings.get("model_fingerprint"),
        "module": settings["module"],
        "hook_name": settings["hook_name"],
        "layer": settings.get("layer"),
        "context_size": settings["context_size"],
        "prepend_bos": settings["prepend_bos"],
        "dtype": manifest["dtype"],
        "harvest": {
            "path": str(Path(directory).resolve()),
            "fingerprint": harvest_fingerprint(manifest),
            "n_rows": manifest["n_rows"],
        },
    }


def _expected_shape(manifest, shard, kind):
    """Shape and dtype of one shard file as the manifest describes it."""
    if kind == "acts":
        dtype = np.uint16 if manifest["dtype"] == "bfloat16" else np.float32
        return (shard["n_rows"], manifest["d_in"]), np.dtype(dtype)
    if kind == "tokens":
        return (shard["n_rows"],), TOKEN_DTYPE
    width = manifest["settings"]["context_size"]
    return (shard["n_documents"], width), np.dtype(np.int32)


def _open_shard_file(path, shape, dtype):
    """One shard file, memory-mapped, refused unless it is as listed."""
    try:
        array = np.load(path, mmap_mode="r")
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path}: no such file, though {MANIFEST} lists it."
        ) from None
    except (ValueError, OSError, EOFError) as error:
        raise ValueError(f"{path} is not a readable .npy file ({error}).") from None
    if tuple(array.shape) != shape or array.dtype != dtype:
        raise ValueError(
            f"{path} holds an array of shape {tuple(array.shape)} and dtype "
            f"{array.dtype} where {MANIFEST} lists {shape} and {dtype}: the "
            "shard was changed after the harvest."
        )
    return array


def _shards(directory, manifest, column):
    """The ``column`` files of every shard, memory-mapped, shapes checked."""
    directory = Path(directory)
    if not manifest["shards"]:
        raise ValueError(f"{directory} holds no activations yet.")
    return [
        _open_shard_file(
            directory / shard[column], *_expected_shape(manifest, shard, column)
        )
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
        estimators' ``fit`` reads it batch by batch (out of core), and
        records ``X.provenance`` (:func:`harvest_provenance`) as their
        ``provenance_``.

    Raises
    ------
    ValueError
        When the manifest is damaged, or a shard's shape or dtype is not the
        one the manifest lists (a shard replaced after the harvest).
    """
    manifest = read_manifest(directory)
    shards = _shards(directory, manifest, "acts")
    if manifest["dtype"] == "bfloat16":
        shards = [BFloat16Rows(shard) for shard in shards]
    return RowConcatenation(
        shards, provenance=harvest_provenance(directory, manifest)
    )


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
def write_manifest(directory, manifest):
    """Replace the manifest atomically: it is the commit point of a shard."""
    text = json.dumps(manifest, indent=2, allow_nan=False).encode("utf-8")
    write_atomic(Path(directory) / MANIFEST, text)


class _HashingFile:
    """A file object that hashes what is written through it."""

    def __init__(self, file):
        self.file = file
        self.digest = hashlib.sha256()

    def write(self, data):
        self.digest.update(data)
        return self.file.write(data)


def write_shard(directory, manifest, acts, tokens, documents, digest):
    """Write one shard's three files, then list it in the manifest.

    A shard not yet in the manifest does not exist for readers; a killed run
    leaves at most orphan files that the next run overwrites. The manifest
    records the SHA-256 of each file as written (``sha256``).

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
    digests = {}
    arrays = (acts, tokens, documents)
    for kind, name, array in zip(SHARD_KINDS, names, arrays, strict=True):
        def write(file, array=array, kind=kind):
            hashing = _HashingFile(file)
            np.save(hashing, array)
            digests[kind] = hashing.digest.hexdigest()

        write_atomic(directory / name, write)
    manifest["shards"].append(
        {
            "acts": names[0],
            "tokens": names[1],
            "documents": names[2],
            "n_rows": int(len(acts)),
            "n_documents": int(len(documents)),
            "sha256": digests,
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


def _changed_settings(old, new):
    return sorted(
        key for key in set(old) | set(new) if old.get(key) != new.get(key)
    )


def _harvest_files(directory, manifest):
    """The files of ``directory`` that a harvest wrote: what ``overwrite`` removes.

    The manifest, the shard files it lists, and the temporary files of an
    interrupted write (``.<name>.*.tmp`` beside a shard or the manifest).
    Nothing else: files of the user in the directory are kept.
    """
    names = {MANIFEST}
    for shard in manifest["shards"]:
        names.update(shard[kind] for kind in SHARD_KINDS)
    names.update(
        entry.name for entry in directory.iterdir() if _TEMPORARY.fullmatch(entry.name)
    )
    return [directory / name for name in sorted(names)]


def check_output(directory, overwrite):
    """Refuse an output directory that a harvest may not write into.

    Checked before anything is loaded or written: the parent must exist, and
    ``directory`` must be absent, empty (but for a lock file) or a harvest.

    Raises
    ------
    FileNotFoundError, ValueError
    """
    directory = Path(directory)
    if not directory.parent.is_dir():
        raise FileNotFoundError(f"{directory.parent}: no such directory.")
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"{directory} exists and is not a directory.")
    if directory.is_dir() and not is_harvest(directory):
        if any(entry.name != LOCK for entry in directory.iterdir()):
            raise ValueError(
                f"{directory} is a non-empty directory without {MANIFEST}; "
                "refusing to write a harvest into it."
            )
    if is_harvest(directory):
        read_manifest(directory)  # a damaged manifest is reported, not replaced


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
    check_output(directory, overwrite)
    old_files = []
    if is_harvest(directory):
        manifest = read_manifest(directory)
        if not overwrite:
            if manifest["settings"] != settings:
                changed = _changed_settings(manifest["settings"], settings)
                unknown = [key for key in changed if key not in manifest["settings"]]
                older = (
                    f" (it was written by an earlier version, without "
                    f"{', '.join(unknown)})"
                    if unknown
                    else ""
                )
                raise ValueError(
                    f"{directory} holds a harvest with other settings "
                    f"({', '.join(changed)}){older}; pass overwrite=True to "
                    "replace it, or choose another directory."
                )
            return manifest
        # overwrite: remove only what a harvest wrote, never the directory
        # nor the user's files in it; once the new (empty) manifest is in
        # place, so that a kill on the way leaves an empty harvest.
        old_files = _harvest_files(directory, manifest)
        old_files = [path for path in old_files if path.name != MANIFEST]
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
        "partial": None,
        "shards": [],
    }
    write_manifest(directory, manifest)
    for path in old_files:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    if old_files:
        fsync_directory(directory)
    return manifest


@contextlib.contextmanager
def open_for_writing(directory, settings, overwrite):
    """Lock ``directory`` and prepare it for a harvest with ``settings``.

    Yields the manifest (:func:`prepare_directory`). The lock is held until
    the end, so that two harvests never write into one directory at once. A
    run that fails before writing any shard leaves nothing behind: neither
    its manifest nor, if it created it, the directory.
    """
    directory = Path(directory)
    check_output(directory, overwrite)
    created = not directory.exists()
    directory.mkdir(exist_ok=True)
    try:
        with directory_lock(directory, name=LOCK):
            fresh = overwrite or not is_harvest(directory)
            manifest = prepare_directory(directory, settings, overwrite)
            try:
                yield manifest
            except BaseException:
                if fresh and not manifest["shards"]:
                    with contextlib.suppress(FileNotFoundError):
                        (directory / MANIFEST).unlink()
                raise
    finally:
        if created:
            with contextlib.suppress(OSError):
                directory.rmdir()  # only when empty: a failed first run
