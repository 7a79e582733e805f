"""The one persistence layer of sklearn-dbksvd.

- :mod:`._atomic`: the atomic file writer, the directory publisher and the
  lock of a directory a run owns.
"""

from ._atomic import (
    DirectoryLockedError,
    atomic_directory,
    atomic_file,
    directory_lock,
    fsync_directory,
    write_atomic,
)

__all__ = [
    "DirectoryLockedError",
    "atomic_directory",
    "atomic_file",
    "directory_lock",
    "fsync_directory",
    "write_atomic",
]
