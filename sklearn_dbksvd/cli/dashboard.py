"""``dbksvd dashboard``: a static site of what each atom means.

The work is :func:`sklearn_dbksvd.lm.build_dashboard`; this module only reads
the dictionary written by ``dbksvd fit`` and maps the command-line options.
"""

from ._common import add_common, positive_int, progress_wanted


def add_parser(commands):
    """Add the ``dashboard`` subcommand to the ``dbksvd`` subparsers."""
    dashboard = commands.add_parser(
        "dashboard",
        help="a static site showing what each atom means (open index.html)",
        description="Encode the harvested rows of ACTS_DIR chunk by chunk and "
        "write a static site to SITE_DIR: an index of the atoms (usage "
        "frequency, mean |code|, max |cos| to another atom; sortable and "
        "filterable) and one page per atom with its strongest uses in "
        "context, examples from activation quantiles, a histogram of its "
        "codes and, with --model, the tokens it promotes and suppresses "
        "through the unembedding. The site opens from disk (no server) and "
        "is written aside and renamed into place when complete.",
    )
    dashboard.add_argument("dictionary", help="dictionary file written by 'dbksvd fit'")
    dashboard.add_argument(
        "acts_dir", help="harvest directory (sklearn_dbksvd.lm.harvest_activations)"
    )
    dashboard.add_argument(
        "--model",
        default=None,
        help="the language model (directory, name in the Hugging Face cache or "
        ".gguf file), for the logit effects and the tokenizer",
    )
    dashboard.add_argument(
        "--top", type=positive_int, default=20, help="strongest uses per atom"
    )
    dashboard.add_argument(
        "--samples",
        type=positive_int,
        default=32,
        help="uses sampled per atom for the quantile examples",
    )
    dashboard.add_argument(
        "--window", type=positive_int, default=8, help="tokens of context each side"
    )
    dashboard.add_argument(
        "--chunk-size",
        type=positive_int,
        default=None,
        help="rows encoded at once (default: within 256 MiB)",
    )
    dashboard.add_argument("--title", default=None, help="title of the site")
    add_common(dashboard, key=False, output="site directory to write")
    dashboard.set_defaults(handler=run)
    return dashboard


def run(args):
    """Build the dashboard of DICTIONARY on ACTS_DIR."""
    from pathlib import Path

    from ..lm import build_dashboard, is_harvest
    from ._io import UserError, load_dictionary

    output = Path(args.output)
    if output.exists() and not args.force:
        raise UserError(f"{output} exists; pass --force to overwrite it.")
    if not is_harvest(args.acts_dir):
        raise UserError(
            f"{args.acts_dir} is not a harvest directory (no harvest.json); "
            "make one with sklearn_dbksvd.lm.harvest_activations."
        )
    model = load_dictionary(args.dictionary)
    site = build_dashboard(
        model,
        args.acts_dir,
        output,
        model=args.model,
        n_top=args.top,
        n_samples=args.samples,
        window=args.window,
        chunk_size=args.chunk_size,
        n_jobs=args.n_jobs,
        title=args.title,
        overwrite=args.force,
        progress=progress_wanted(args),
    )
    print(f"dashboard of {model.components_.shape[0]} atoms: {site / 'index.html'}")
    return 0
