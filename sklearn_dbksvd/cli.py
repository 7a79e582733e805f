"""The ``dbksvd`` command line: demo, fit, encode, report, export.

Mistakes of the user (missing or malformed files, NaN in the data, a
dictionary that does not match the data, an output that exists) are reported
as one line on stderr with exit status 1; argument errors exit with 2 as in
argparse. Every output file is written to a temporary file and renamed into
place, so a killed run never leaves a half-written output behind.
"""

import argparse
import math
import sys
import time
from pathlib import Path

from ._cli_export import add_export_parser
from ._cli_io import UserError


def _progress_wanted(args):
    """A bar on a terminal, none in logs, unless asked otherwise."""
    return (not args.quiet and sys.stderr.isatty()) or args.progress


def _tqdm(enabled, **kwargs):
    """A tqdm bar, or None when not wanted or tqdm (the cli extra) is missing."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(**kwargs)


# ----------------------------------------------------------------------
# demo
# ----------------------------------------------------------------------
def _demo(args):
    """Fit a dictionary on image patches, print quality and timing, write a report."""
    from sklearn.model_selection import train_test_split

    from . import DBKSVDDictionaryLearning
    from ._cli_io import atomic_write
    from ._cli_report import atom_usage, make_figure, render
    from .datasets import load_sample_patches
    from .metrics import relative_error, variance_explained

    fmt = None if args.report is None else _report_format(args.report)
    patches = load_sample_patches(max_patches=args.n_patches, random_state=args.seed)
    train, test = train_test_split(patches, test_size=0.2, random_state=args.seed)
    model = DBKSVDDictionaryLearning(
        n_components=args.n_components,
        n_nonzero_coefs=args.n_nonzero_coefs,
        max_iter=args.epochs,
        n_jobs=args.n_jobs,
        random_state=args.seed,
        verbose=args.verbose,
    )
    tic = time.perf_counter()
    model.fit(train)
    seconds = time.perf_counter() - tic
    reconstruction = model.inverse_transform(model.transform(test))
    print(
        f"DB-KSVD on {len(train)} 8x8 image patches: {args.n_components} atoms, "
        f"k={args.n_nonzero_coefs}, {model.n_steps_} steps in {seconds:.2f} s"
    )
    print(f"held-out relative error:     {relative_error(test, reconstruction):.4f}")
    print(
        f"held-out variance explained: {variance_explained(test, reconstruction):.4f}"
    )
    if args.report is not None:
        usage, n_used = atom_usage(model, test, len(test))
        fig, summary = make_figure(model, usage, n_used)
        # The demo's own artefact: rerunning the README command replaces it.
        with atomic_write(args.report, force=True) as file:
            file.write(render(fig, summary, fmt))
        print(f"report: {args.report}")
    return 0


# ----------------------------------------------------------------------
# fit
# ----------------------------------------------------------------------
def _estimator_class(matryoshka):
    import sklearn_dbksvd

    if not matryoshka:
        return sklearn_dbksvd.DBKSVDDictionaryLearning
    if not hasattr(sklearn_dbksvd, "MatryoshkaDBKSVD"):
        raise UserError(
            "--matryoshka needs sklearn_dbksvd.MatryoshkaDBKSVD, which this "
            "installed version does not have."
        )
    return sklearn_dbksvd.MatryoshkaDBKSVD


def _fit(args):
    """Learn a dictionary from INPUT and write it to OUTPUT."""
    from ._cli_fit import fit_resumable
    from ._cli_io import check_output, describe_input, open_input, save_dictionary

    check_output(args.output, args.force)
    X = open_input(args.input, args.key)
    cls = _estimator_class(args.matryoshka)
    model = cls(
        n_components=args.n_components,
        n_nonzero_coefs=args.n_nonzero_coefs,
        batch_size=args.batch_size if args.batch_size is not None else "auto",
        max_iter=args.epochs,
        n_jobs=args.n_jobs,
        random_state=args.seed,
        backend=args.backend,
    )
    if args.steps is not None:
        # As many epochs as the steps need; early stopping may end sooner.
        n_samples, n_features = X.shape
        batch_size = model._resolved_batch_size(n_samples, n_features)
        n_batches = math.ceil(n_samples / batch_size)
        model.set_params(
            max_steps=args.steps, max_iter=math.ceil(args.steps / n_batches)
        )
    if args.checkpoint is not None:
        Path(args.checkpoint).mkdir(parents=True, exist_ok=True)
    tic = time.perf_counter()
    _, resumed_from = fit_resumable(
        model,
        X,
        checkpoint_dir=args.checkpoint,
        every=args.checkpoint_every,
        input_description=describe_input(args.input, X),
        progress=_progress_wanted(args),
    )
    save_dictionary(args.output, model, args.force)
    last = model.history_[-1]
    if resumed_from:
        print(f"resumed from step {resumed_from} of checkpoint {args.checkpoint}")
    print(
        f"{model.n_steps_} steps, relative error {last['relative_error']:.4f}, "
        f"variance explained {last['variance_explained']:.4f} "
        f"({time.perf_counter() - tic:.1f} s): {args.output}"
    )
    return 0


# ----------------------------------------------------------------------
# encode
# ----------------------------------------------------------------------
def _check_compatible(model, X, dictionary_path, input_path):
    n_features = model.components_.shape[1]
    if X.shape[1] != n_features:
        raise UserError(
            f"{input_path} has {X.shape[1]} features but the dictionary "
            f"{dictionary_path} has {n_features}."
        )


def _encode(args):
    """Sparse codes of INPUT, chunk by chunk, saved as CSR."""
    import numpy as np
    import scipy.sparse as sp

    from ._cli_io import atomic_write, check_output, load_dictionary, open_input
    from ._data import check_lazy_array, chunk_rows, iter_row_chunks

    check_output(args.output, args.force)
    model = load_dictionary(args.dictionary)
    X = open_input(args.input, args.key)
    _check_compatible(model, X, args.dictionary, args.input)
    model.set_params(sparse_output=True, n_jobs=args.n_jobs)
    if args.n_nonzero_coefs is not None:
        model.set_params(transform_n_nonzero_coefs=args.n_nonzero_coefs)
    dtype = check_lazy_array(X)
    gram = model._transform_gram(dtype)
    n_samples, n_components = X.shape[0], model.components_.shape[0]
    rows = args.chunk_size or chunk_rows(X.shape[1], n_components, dtype.itemsize)
    # Only CSR pieces are kept: k nonzeros per sample, never n_samples x m.
    data, indices, counts = [], [], []
    bar = _tqdm(_progress_wanted(args), total=n_samples, unit="sample", desc="encode")
    try:
        for block, chunk in iter_row_chunks(X, rows):
            code = model._encode(chunk, gram)
            data.append(code.data)
            indices.append(code.indices)
            counts.append(np.diff(code.indptr))
            if bar is not None:
                bar.update(block.stop - block.start)
    finally:
        if bar is not None:
            bar.close()
    indptr = np.zeros(n_samples + 1, dtype=np.int64)
    np.cumsum(np.concatenate(counts), out=indptr[1:])
    codes = sp.csr_matrix(
        (np.concatenate(data), np.concatenate(indices), indptr),
        shape=(n_samples, n_components),
    )
    with atomic_write(args.output, args.force) as file:
        sp.save_npz(file, codes)
    print(
        f"{n_samples} codes, {codes.nnz} nonzeros "
        f"({codes.nnz / max(n_samples, 1):.2f} per sample): {args.output}"
    )
    return 0


# ----------------------------------------------------------------------
# report
# ----------------------------------------------------------------------
def _report_format(path):
    suffix = Path(path).suffix.lower()
    if suffix == ".png":
        return "png"
    if suffix in {".html", ".htm"}:
        return "html"
    raise UserError(f"{path}: the report is written as .png or .html.")


def _report(args):
    """Plots of a dictionary file, with atom usage on INPUT when given."""
    from ._cli_io import atomic_write, check_output, load_dictionary, open_input
    from ._cli_report import atom_usage, make_figure, render

    fmt = _report_format(args.output)
    check_output(args.output, args.force)
    model = load_dictionary(args.dictionary)
    usage = n_used = None
    if args.input is not None:
        X = open_input(args.input, args.key)
        _check_compatible(model, X, args.dictionary, args.input)
        model.set_params(n_jobs=args.n_jobs)
        usage, n_used = atom_usage(model, X, args.max_samples)
    fig, summary = make_figure(model, usage, n_used)
    with atomic_write(args.output, args.force) as file:
        file.write(render(fig, summary, fmt))
    print(f"report: {args.output}")
    return 0


# ----------------------------------------------------------------------
# Parser
# ----------------------------------------------------------------------
_INPUT_HELP = (
    "data of shape (n_samples, n_features): .npy (memory-mapped), .npz, a "
    "directory of .npy shards (stacked in name order), HDF5 (needs h5py) or "
    "zarr (needs zarr)"
)


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _add_common(parser, *, key=True, n_jobs=True, output=None, force=True):
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


def build_parser():
    parser = argparse.ArgumentParser(
        prog="dbksvd",
        description="Double-Batch K-SVD sparse dictionary learning.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo",
        help="fit a dictionary on scikit-learn's sample-image patches",
        description="Fit a dictionary on 8x8 patches of scikit-learn's bundled "
        "sample image, print held-out relative error, variance explained "
        "and time, and write a report image.",
    )
    demo.add_argument("--n-patches", type=_positive_int, default=20000)
    demo.add_argument("-m", "--n-components", type=_positive_int, default=256)
    demo.add_argument("-k", "--n-nonzero-coefs", type=_positive_int, default=5)
    demo.add_argument("--epochs", type=_positive_int, default=10)
    demo.add_argument("--n-jobs", type=int, default=None)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--report",
        default="dbksvd-demo-report.png",
        help="report image (.png or .html), replaced if it exists "
        "(default: %(default)s)",
    )
    demo.add_argument(
        "--no-report",
        dest="report",
        action="store_const",
        const=None,
        help="do not write the report",
    )
    demo.add_argument("-v", "--verbose", action="store_true")
    demo.set_defaults(handler=_demo)

    fit = commands.add_parser(
        "fit",
        help="learn a dictionary from a data file",
        description="Learn a dictionary of M atoms with K nonzeros per code from "
        "INPUT, read batch by batch, and write it as .npz (components_, "
        "parameters, history_, version). With --checkpoint, the run saves its "
        "state atomically every N steps; running the same command again "
        "resumes where it stopped and gives the dictionary an uninterrupted "
        "run would have given.",
    )
    fit.add_argument("input", help=_INPUT_HELP)
    fit.add_argument(
        "-m",
        "--n-components",
        type=_positive_int,
        required=True,
        help="number of atoms",
    )
    fit.add_argument(
        "-k",
        "--n-nonzero-coefs",
        type=_positive_int,
        required=True,
        help="nonzeros per code",
    )
    fit.add_argument(
        "--backend",
        choices=["numpy", "cupy"],
        default="numpy",
        help="where the products that grow with the batch run; cupy needs a "
        "CUDA GPU and the gpu extra (default: %(default)s)",
    )
    fit.add_argument(
        "--matryoshka",
        action="store_true",
        help="nested groups of atoms (MatryoshkaDBKSVD)",
    )
    fit.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        help="samples per step (default: max(4096, 32 * n_features))",
    )
    length = fit.add_mutually_exclusive_group()
    length.add_argument(
        "--epochs",
        type=_positive_int,
        default=10,
        help="passes over the data (default: %(default)s)",
    )
    length.add_argument(
        "--steps",
        type=_positive_int,
        default=None,
        help="number of steps, instead of --epochs",
    )
    fit.add_argument(
        "--seed", type=int, default=0, help="random seed (default: %(default)s)"
    )
    fit.add_argument(
        "--checkpoint",
        metavar="DIR",
        help="directory of the checkpoint to save and resume from",
    )
    fit.add_argument(
        "--checkpoint-every",
        metavar="N",
        type=_positive_int,
        default=1,
        help="steps between checkpoints (default: %(default)s)",
    )
    _add_common(fit, output="dictionary file to write (.npz)")
    fit.set_defaults(handler=_fit)

    encode = commands.add_parser(
        "encode",
        help="sparse codes of a data file as a scipy.sparse CSR .npz",
        description="Encode INPUT with the dictionary, chunk by chunk, and save "
        "the codes with scipy.sparse.save_npz (load with "
        "scipy.sparse.load_npz). No dense (n_samples, n_components) array is "
        "ever made.",
    )
    encode.add_argument("dictionary", help="dictionary file written by 'dbksvd fit'")
    encode.add_argument("input", help=_INPUT_HELP)
    encode.add_argument(
        "-k",
        "--n-nonzero-coefs",
        type=_positive_int,
        default=None,
        help="nonzeros per code (default: the dictionary's)",
    )
    encode.add_argument(
        "--chunk-size",
        type=_positive_int,
        default=None,
        help="samples encoded at once (default: within 256 MiB)",
    )
    _add_common(encode, output="codes file to write (.npz)")
    encode.set_defaults(handler=_encode)

    report = commands.add_parser(
        "report",
        help="plots of a dictionary: convergence, coherence, usage, atoms",
        description="Plot the convergence curves of the fit, the histogram of "
        "per-atom coherence and, when INPUT is given, the histogram of atom "
        "usage with the number of dead atoms; dictionaries of square image "
        "patches also get a grid of atoms. Writes .png or .html.",
    )
    report.add_argument("dictionary", help="dictionary file written by 'dbksvd fit'")
    report.add_argument("input", nargs="?", help=_INPUT_HELP + "; optional")
    report.add_argument(
        "--max-samples",
        type=_positive_int,
        default=100_000,
        help="samples of INPUT encoded for atom usage (default: %(default)s)",
    )
    _add_common(report, output="report file to write (.png or .html)")
    report.set_defaults(handler=_report)

    add_export_parser(commands)
    return parser


def main(argv=None):
    """Entry point of the ``dbksvd`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print(f"dbksvd {args.command}: interrupted", file=sys.stderr)
        return 130
    except (UserError, ValueError, TypeError, OSError, ImportError) as error:
        # The first line only: scikit-learn appends advice on further lines.
        message = (
            str(error).strip().splitlines()[0]
            if str(error).strip()
            else type(error).__name__
        )
        print(f"dbksvd {args.command}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
