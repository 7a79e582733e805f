"""The dictionary file: a fitted estimator as one ``.npz``.

Format 2 (written since the persistence layer) holds, all loadable with
``np.load(path)`` without pickle:

``components_``, ``mean_``
    The atoms and the mean (zeros without centring).
``format``
    ``2``.
``estimator``, ``version``
    Class name and the version of sklearn-dbksvd that wrote it.
``state``
    JSON text of the state described in :mod:`._state`: parameters (JSON
    values), ``n_features_in``, ``feature_names_in``, the fitted counters,
    ``history_``, the random generator and the provenance.

Format 1 (``dbksvd fit`` before) stored ``params`` and ``history_`` as JSON
with the ``repr`` of non-JSON values, and the counters as arrays; it is
still read (invalid parameters dropped, a generator seeded from
``random_state``).
"""

import json
from pathlib import Path

import numpy as np

from ._atomic import atomic_file
from ._state import describe_estimator, rebuild_estimator

FORMAT = 2


def read_npz(path, what="file", pick=None):
    """The members of the ``.npz`` at ``path``, read and checked.

    Any damage (truncation, flipped bits, a bad header, an empty file, a
    pickled member) raises ``ValueError`` naming ``path``: the zip's CRC is
    checked as each member is read.

    Parameters
    ----------
    path : path-like
    what : str, default="file"
        What the file is, for the messages.
    pick : callable, default=None
        ``pick(names)`` gives the one member to read; None reads all.

    Returns
    -------
    members : dict of str to ndarray
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such {what}.")

    def damaged(error):
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        return ValueError(
            f"{path} is not a readable .npz {what} ({reason}); it is damaged or "
            "of another kind."
        )

    with open(path, "rb") as file:
        magic = file.read(4)
    if magic != b"PK\x03\x04":
        # Not a zip: an empty file, a .npy, anything else; never read whole.
        raise damaged("it is not a zip archive")
    try:
        archive = np.load(path, allow_pickle=False)
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as error:  # noqa: BLE001 - zipfile, zlib, EOF, tokenize...
        raise damaged(error) from error
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise damaged("it holds one array, not an archive")
    with archive:
        names = archive.files if pick is None else [pick(archive.files)]
        try:
            return {name: archive[name] for name in names}
        except (KeyboardInterrupt, MemoryError):
            raise
        except Exception as error:  # noqa: BLE001 - CRC, truncation, header...
            raise damaged(error) from error


def is_dictionary_file(path):
    """Whether ``path`` is a dictionary file of this package (any format).

    Reads only the zip's list of members: ``components_`` and ``estimator``.
    """
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False
    return {"components_.npy", "estimator.npy"} <= names


def json_member(members, name, where):
    """The JSON text stored in member ``name``, parsed."""
    try:
        return json.loads(str(members[name]))
    except KeyError:
        raise ValueError(f"{where} has no {name!r}.") from None
    except ValueError as error:
        raise ValueError(f"{where}: {name!r} is not valid JSON ({error}).") from error


def save_dictionary(estimator, path, *, overwrite=False):
    """Write a fitted estimator as a dictionary file (``.npz``).

    The file holds everything the fitted estimator has: atoms, mean,
    parameters, feature names, counters, ``history_``, the state of its
    random generator and its ``provenance_``. It is what ``dbksvd fit -o``
    writes, and loads with :func:`load_dictionary`, ``np.load`` (no pickle)
    or the ``dbksvd`` commands. It is written to a temporary file, fsynced
    and renamed into place: ``path`` never holds a half-written file.

    Parameters
    ----------
    estimator : DBKSVDDictionaryLearning or MatryoshkaDBKSVD
        Fitted estimator.
    path : str or path-like
        File to write (conventionally ``.npz``); its directory must exist.
    overwrite : bool, default=False
        Replace an existing file.

    Returns
    -------
    path : pathlib.Path
        The file written.

    See Also
    --------
    load_dictionary : Read it back.
    sklearn_dbksvd.interop.save_sae : Write an SAELens directory instead.

    Notes
    -----
    Parameters that are not JSON values (``dict_init``, ``code_init``,
    ``callback``, a ``RandomState`` instance given as ``random_state``) are
    saved as None; the fitted random generator itself is saved, so
    :meth:`partial_fit` continues as it would have without the round trip.
    """
    arrays, state = describe_estimator(estimator)
    path = Path(path)
    text = json.dumps(state, sort_keys=True, allow_nan=False)
    with atomic_file(path, overwrite=overwrite) as file:
        np.savez(
            file,
            components_=arrays["components_"],
            mean_=arrays["mean_"],
            format=np.array(FORMAT),
            estimator=np.array(state["estimator"]),
            version=np.array(state["version"]),
            state=np.array(text),
        )
    return path


def _state_of_format_1(members, where):
    """The state of a file written by ``dbksvd fit`` before format 2."""
    state = {
        "estimator": str(members["estimator"]),
        "params": json_member(members, "params", where),
        "fitted": {"history_": json_member(members, "history_", where)}
        if "history_" in members
        else {},
    }
    for name in ("n_steps_", "n_iter_", "n_samples_seen_"):
        if name in members:
            state["fitted"][name] = int(members[name])
    return state


def load_dictionary(path):
    """Load a dictionary file written by :func:`save_dictionary` or ``dbksvd fit``.

    Parameters
    ----------
    path : str or path-like
        The ``.npz`` file.

    Returns
    -------
    estimator : DBKSVDDictionaryLearning or MatryoshkaDBKSVD
        The fitted estimator, ready for ``transform``, ``fit`` and
        ``partial_fit`` (which continues with the saved random generator).

    Raises
    ------
    ValueError
        The file is damaged, not a dictionary, of a newer format, or holds
        non-finite atoms; the message names the file.
    FileNotFoundError
        There is no such file.
    """
    where = str(path)
    members = read_npz(path, "dictionary file")
    missing = {"components_", "estimator"} - set(members)
    if missing:
        raise ValueError(
            f"{where} is not a dbksvd dictionary (missing "
            f"{', '.join(sorted(missing))})."
        )
    try:
        version = int(members.get("format", 1))
    except (TypeError, ValueError):
        raise ValueError(f"{where}: unreadable format number.") from None
    if version > FORMAT:
        raise ValueError(
            f"{where} is in format {version}, written by sklearn-dbksvd "
            f"{members.get('version')}; this version reads up to format {FORMAT}: "
            "upgrade sklearn-dbksvd."
        )
    if version >= 2:
        state = json_member(members, "state", where)
    else:
        if "params" not in members:
            raise ValueError(f"{where} is not a dbksvd dictionary (missing params).")
        state = _state_of_format_1(members, where)
    return rebuild_estimator(members, state, where=where, lenient=version < 2)
