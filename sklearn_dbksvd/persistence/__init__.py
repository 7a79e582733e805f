"""The one persistence layer of sklearn-dbksvd.

- :mod:`._atomic`: the atomic file writer, the directory publisher and the
  lock of a directory a run owns.
- :mod:`._state`: one description of a fitted estimator (registry of
  classes, parameter and JSON policy, the full fitted state).
- :mod:`._dictionary`: the dictionary file (``.npz``) over that description.
- :mod:`._checkpoint`: the checkpoint of ``dbksvd fit --checkpoint`` and the
  fingerprint of its input.
- The SAELens directory is :mod:`sklearn_dbksvd.interop.saelens`, over the
  same description.
"""

from ._atomic import (
    DirectoryLockedError,
    atomic_directory,
    atomic_file,
    directory_lock,
    fsync_directory,
    write_atomic,
)
from ._checkpoint import fingerprint_path
from ._dictionary import (
    is_dictionary_file,
    load_dictionary,
    read_npz,
    save_dictionary,
)
from ._state import (
    ESTIMATOR_NAMES,
    check_components,
    check_estimator,
    describe_estimator,
    estimator_classes,
    rebuild_estimator,
    to_json_value,
)

__all__ = [
    "ESTIMATOR_NAMES",
    "DirectoryLockedError",
    "check_components",
    "check_estimator",
    "describe_estimator",
    "estimator_classes",
    "fingerprint_path",
    "is_dictionary_file",
    "load_dictionary",
    "read_npz",
    "rebuild_estimator",
    "save_dictionary",
    "to_json_value",
    "atomic_directory",
    "atomic_file",
    "directory_lock",
    "fsync_directory",
    "write_atomic",
]
