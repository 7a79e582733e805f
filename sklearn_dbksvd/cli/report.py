"""``dbksvd report``: plots of a dictionary: convergence, coherence, usage, atoms."""

from pathlib import Path

from ._common import INPUT_HELP, add_common, check_compatible, positive_int
from ._io import UserError


def report_format(path):
    suffix = Path(path).suffix.lower()
    if suffix == ".png":
        return "png"
    if suffix in {".html", ".htm"}:
        return "html"
    raise UserError(f"{path}: the report is written as .png or .html.")


def add_parser(commands):
    """Add this subcommand to the ``dbksvd`` subparsers."""
    report = commands.add_parser(
        "report",
        help="plots of a dictionary: convergence, coherence, usage, atoms",
        description="Plot the convergence curves of the fit, the histogram of "
        "per-atom coherence and, when INPUT is given, the histogram of atom "
        "usage with the number of dead atoms; dictionaries of square image "
        "patches also get a grid of atoms. Writes .png or .html.",
    )
    report.add_argument("dictionary", help="dictionary file written by 'dbksvd fit'")
    report.add_argument("input", nargs="?", help=INPUT_HELP + "; optional")
    report.add_argument(
        "--max-samples",
        type=positive_int,
        default=100_000,
        help="samples of INPUT encoded for atom usage (default: %(default)s)",
    )
    add_common(report, output="report file to write (.png or .html)")
    report.set_defaults(handler=run)
    return report


def run(args):
    """Plots of a dictionary file, with atom usage on INPUT when given."""
    from ._figures import atom_usage, make_figure, render
    from ._io import atomic_write, check_output, load_dictionary, open_input

    fmt = report_format(args.output)
    check_output(args.output, args.force)
    model = load_dictionary(args.dictionary)
    usage = n_used = None
    if args.input is not None:
        X = open_input(args.input, args.key)
        check_compatible(model, X, args.dictionary, args.input)
        # Codes as CSR: k nonzeros per sample rather than n_components.
        model.set_params(n_jobs=args.n_jobs, sparse_output=True)
        usage, n_used = atom_usage(model, X, args.max_samples)
    fig, summary = make_figure(model, usage, n_used)
    with atomic_write(args.output, args.force) as file:
        file.write(render(fig, summary, fmt))
    print(f"report: {args.output}")
    return 0
