"""The ``dbksvd`` command line: one module per subcommand.

Mistakes of the user (missing or malformed files, NaN in the data, a
dictionary that does not match the data, an output that exists) are reported
as one line on stderr with exit status 1; argument errors exit with 2 as in
argparse. Every output file is written to a temporary file and renamed into
place, so a killed run never leaves a half-written output behind.
"""

import argparse
import importlib
import sys

from ._io import UserError

# The subcommands, in the order ``dbksvd --help`` lists them: each module has
# ``add_parser(commands)``, which sets ``run`` as the handler. They import
# their heavy dependencies inside ``run``, so ``--help`` stays fast.
SUBCOMMANDS = (
    "demo", "harvest", "fit", "encode", "report", "export", "evaluate", "dashboard",
    "saebench",
)


def build_parser():
    """The ``dbksvd`` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="dbksvd",
        description="Double-Batch K-SVD sparse dictionary learning.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(commands)
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
