"""What the subcommands share: common options, progress bars, checks."""

import argparse
import sys

from ._io import UserError

INPUT_HELP = (
    "data of shape (n_samples, n_features): .npy (memory-mapped), .npz, a "
    "directory of .npy shards (stacked in name order), a harvest directory of "
    "'dbksvd harvest', HDF5 (needs h5py) or "
    "zarr (needs zarr)"
)


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def add_common(parser, *, key=True, n_jobs=True, output=None, force=True):
    if key:
        parser.add_argument(
            "--key",
            help="array in an .npz, dataset in an HDF5 file, array in a zarr group",
        )
    if n_jobs:
        parser.add_argument(
            "--n-jobs",
            type=int,
            default=None,
            help="threads (results do not depend on it)",
        )
    if output is not None:
        parser.add_argument("-o", "--output", required=True, help=output)
    if force:
        parser.add_argument(
            "--force", action="store_true", help="overwrite an existing output"
        )
    progress = parser.add_mutually_exclusive_group()
    progress.add_argument(
        "--progress",
        action="store_true",
        help="show progress even when not on a terminal",
    )
    progress.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def progress_wanted(args):
    """A bar on a terminal, none in logs, unless asked otherwise."""
    return (not args.quiet and sys.stderr.isatty()) or args.progress


def progress_bar(enabled, **kwargs):
    """A tqdm bar, or None when not wanted or tqdm (the cli extra) is missing."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(**kwargs)


def check_compatible(model, X, dictionary_path, input_path):
    n_features = model.components_.shape[1]
    if X.shape[1] != n_features:
        raise UserError(
            f"{input_path} has {X.shape[1]} features but the dictionary "
            f"{dictionary_path} has {n_features}."
        )
