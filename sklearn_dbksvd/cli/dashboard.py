"""``dbksvd dashboard``: a static site of what each latent means.

The work is :func:`sklearn_dbksvd.lm.build_dashboard`; this module only reads
the dictionary written by ``dbksvd fit`` and maps the command-line options.
"""

from ._common import add_common, positive_int, progress_wanted


def add_parser(commands):
    """Add the ``dashboard`` subcommand to the ``dbksvd`` subparsers."""
    dashboard = commands.add_parser(
        "dashboard",
        help="a static site showing what each latent means (open index.html)",
        description="Encode the harvested rows of ACTS_DIR chunk by chunk and "
        "write a static site to SITE_DIR: an index of the latents (usage "
        "frequency, mean activation, max cos to another latent; sortable and "
        "filterable) and one page per latent with its strongest uses in "
        "context, examples from activation quantiles, a histogram of its "
        "activations and, with --model, the tokens it promotes and suppresses "
        "through the unembedding. An atom with signed codes is two latents, "
        "12+ (its positive codes) and 12- (its negative codes), as in the "
        "SAELens export. The site opens from disk (no server) and is written "
        "aside and renamed into place when complete; --force replaces only a "
        "site the dashboard wrote.",
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
        "--allow-other-layer",
        action="store_true",
        help="show a harvest of another layer than the dictionary was fitted on",
    )
    dashboard.add_argument(
        "--top", type=positive_int, default=20, help="strongest uses per latent"
    )
    dashboard.add_argument(
        "--samples",
        type=positive_int,
        default=32,
        help="uses sampled per latent for the quantile examples",
    )
    dashboard.add_argument(
        "--window", type=positive_int, default=8, help="tokens of context each side"
    )
    dashboard.add_argument(
        "--chunk-size",
        type=positive_int,
        default=None,
        help="rows encoded at once (default: a few tens of megabytes)",
    )
    dashboard.add_argument("--title", default=None, help="title of the site")
    add_common(dashboard, key=False, output="site directory to write")
    dashboard.set_defaults(handler=run)
    return dashboard


def run(args):
    """Build the dashboard of DICTIONARY on ACTS_DIR."""
    import sys
    from pathlib import Path

    from ..lm import build_dashboard, is_harvest
    from ..lm._provenance import provenance_warnings_to
    from ..lm.dashboard._site import check_output
    from ._io import UserError, load_dictionary

    output = Path(args.output)
    try:
        check_output(output, args.force)
    except FileExistsError as error:
        message = str(error).replace("overwrite=True (--force)", "--force")
        raise UserError(message) from None
    if not is_harvest(args.acts_dir):
        raise UserError(
            f"{args.acts_dir} is not a harvest directory (no harvest.json); "
            "make one with sklearn_dbksvd.lm.harvest_activations."
        )
    model = load_dictionary(args.dictionary)
    with provenance_warnings_to(sys.stderr, prefix="dbksvd dashboard: "):
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
            # Off a terminal (a log, a batch job): plain lines, unless -q.
            progress=progress_wanted(args) or (False if args.quiet else "lines"),
            allow_other_layer=args.allow_other_layer,
        )
    print(
        f"dashboard of {model.components_.shape[0]} atoms: {site / 'index.html'}"
    )
    return 0
