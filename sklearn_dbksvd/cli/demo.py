"""``dbksvd demo``: a dictionary of image patches, its quality and timing."""

import time
from pathlib import Path

from ._common import positive_int
from .report import report_format


def add_parser(commands):
    """Add this subcommand to the ``dbksvd`` subparsers."""
    demo = commands.add_parser(
        "demo",
        help="fit a dictionary on scikit-learn's sample-image patches",
        description="Fit a dictionary on 8x8 patches of scikit-learn's bundled "
        "sample image and print held-out relative error, variance explained "
        "and time; with --report, also write a report image.",
    )
    demo.add_argument("--n-patches", type=positive_int, default=20000)
    demo.add_argument("-m", "--n-components", type=positive_int, default=256)
    demo.add_argument("-k", "--n-nonzero-coefs", type=positive_int, default=5)
    demo.add_argument("--epochs", type=positive_int, default=10)
    demo.add_argument("--n-jobs", type=int, default=None)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--report",
        default=None,
        metavar="PATH",
        help="also write a report image (.png or .html) to PATH; none by default",
    )
    demo.add_argument(
        "--no-report",
        dest="report",
        action="store_const",
        const=None,
        help="do not write the report (the default)",
    )
    demo.add_argument(
        "--force", action="store_true", help="overwrite an existing report file"
    )
    demo.add_argument("-v", "--verbose", action="store_true")
    demo.set_defaults(handler=run)
    return demo


def run(args):
    """Fit a dictionary on image patches, print quality and timing (and a report)."""
    from sklearn.model_selection import train_test_split

    from .. import DBKSVDDictionaryLearning
    from ..datasets import load_sample_patches
    from ..metrics import relative_error, variance_explained
    from ._figures import atom_usage, make_figure, render
    from ._io import atomic_write, check_output

    fmt = None
    if args.report is not None:
        fmt = report_format(args.report)
        check_output(args.report, args.force)
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
        with atomic_write(args.report, args.force) as file:
            file.write(render(fig, summary, fmt))
        print(f"report: {Path(args.report).resolve()}")
    return 0
