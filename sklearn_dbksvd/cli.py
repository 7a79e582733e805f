"""The ``dbksvd`` command line."""

import argparse
import sys
import time


def _demo(args):
    """Fit a dictionary on image patches and print quality and timing."""
    from sklearn.model_selection import train_test_split

    from . import DBKSVDDictionaryLearning
    from .datasets import load_sample_patches
    from .metrics import relative_error, variance_explained

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
    print(f"held-out variance explained: {variance_explained(test, reconstruction):.4f}")
    return 0


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
        "sample image and print held-out relative error, variance explained "
        "and time.",
    )
    demo.add_argument("--n-patches", type=int, default=20000)
    demo.add_argument("-m", "--n-components", type=int, default=256)
    demo.add_argument("-k", "--n-nonzero-coefs", type=int, default=5)
    demo.add_argument("--epochs", type=int, default=10)
    demo.add_argument("--n-jobs", type=int, default=None)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("-v", "--verbose", action="store_true")
    demo.set_defaults(handler=_demo)
    return parser


def main(argv=None):
    """Entry point of the ``dbksvd`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, OSError, ImportError) as error:
        print(f"dbksvd {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
