"""``dbksvd evaluate``: SAEBench's core metrics of a dictionary in its model.

The work is :func:`sklearn_dbksvd.lm.evaluate_dictionary`; this module loads
the dictionary and the model and prints the table or the JSON.
"""

import sys

from ._common import progress_wanted
from .harvest import MODEL_HELP, add_model_options, read_texts


def add_parser(commands):
    """Add the ``evaluate`` subcommand to the ``dbksvd`` subparsers."""
    from ._common import add_common

    evaluate = commands.add_parser(
        "evaluate",
        help="splice a dictionary into its language model and report "
        "SAEBench's core metrics",
        description="Replace the output of one layer of MODEL by the "
        "dictionary's reconstruction at every non-special token of the text "
        "files, and report SAEBench's core metrics with SAELens' definitions: "
        "CE loss score, KL div score, explained variance (global and legacy), "
        "MSE, cosine similarity, L0, dead and dense latents (an atom with "
        "signed codes is two latents, as in the SAELens export; see "
        "sklearn_dbksvd.lm.evaluate). The layer, context size and BOS setting "
        "default to those the dictionary was fitted with, when it records "
        "them. Needs the lm extra (pip install 'sklearn-dbksvd[lm]').",
    )
    evaluate.add_argument(
        "dictionary",
        help="dictionary file written by 'dbksvd fit', or an SAELens directory "
        "written by 'dbksvd export'",
    )
    evaluate.add_argument("--model", required=True, help=MODEL_HELP)
    add_model_options(evaluate, fitted_defaults=True)
    evaluate.add_argument(
        "--allow-other-layer",
        action="store_true",
        help="evaluate at another layer than the one the dictionary was fitted on",
    )
    evaluate.add_argument(
        "--json",
        action="store_true",
        help="print the metrics as JSON (SAEBench's groups and names)",
    )
    evaluate.add_argument(
        "-o",
        "--output",
        default=None,
        help="also write the JSON to this file (--force replaces only a "
        "metrics file of this command)",
    )
    add_common(evaluate, key=False, n_jobs=True, output=None, force=True)
    evaluate.set_defaults(handler=run)
    return evaluate


def _load(path):
    from pathlib import Path

    from ._io import load_dictionary

    if Path(path).is_dir():
        from ..interop import load_sae

        return load_sae(path)
    return load_dictionary(path)


# Groups every metrics file of 'dbksvd evaluate' has: --force replaces only
# such a file.
_METRIC_GROUPS = ("model_performance_preservation", "config", "token_stats")


def _check_replaceable(path, force):
    """Refuse an existing ``path`` that is not a metrics file of this command."""
    import json
    from pathlib import Path

    from ._io import UserError, check_output

    check_output(path, force)
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        return
    try:
        if path.is_symlink() or not path.is_file():
            raise ValueError
        if path.stat().st_size > 2**20:
            raise ValueError
        written = json.loads(path.read_text(encoding="utf-8"))
        if not all(group in written for group in _METRIC_GROUPS):
            raise ValueError
    except (ValueError, OSError, UnicodeDecodeError, TypeError):
        raise UserError(
            f"{path} is not a metrics file written by 'dbksvd evaluate'; --force "
            "never replaces it: choose another output."
        ) from None


def run(args):
    """Handler of ``dbksvd evaluate``."""
    from ..lm import evaluate_dictionary, format_metrics, load_model
    from ..lm._provenance import provenance_warnings_to
    from ._io import atomic_write, to_json

    if args.output is not None:
        _check_replaceable(args.output, args.force)
    estimator = _load(args.dictionary)
    if args.n_jobs is not None:
        estimator.set_params(n_jobs=args.n_jobs)
    model, tokenizer = load_model(args.model, device=args.device)
    # Off a terminal (a log, a batch job): plain lines, unless -q.
    progress = progress_wanted(args) or (False if args.quiet else "lines")
    with provenance_warnings_to(sys.stderr, prefix="dbksvd evaluate: "):
        results = evaluate_dictionary(
            estimator,
            model,
            tokenizer,
            read_texts(args.text),
            layer=args.layer,
            module=args.module,
            context_size=args.context_size,
            batch_size=args.batch_size,
            max_tokens=args.max_tokens,
            prepend_bos=None if args.no_bos is None else not args.no_bos,
            allow_other_layer=args.allow_other_layer,
            progress=progress,
        )
    # Per-latent densities are for Python users; the summary stays readable.
    results.pop("feature_density")
    text = to_json(results)
    if args.output is not None:
        _check_replaceable(args.output, args.force)
        with atomic_write(args.output, args.force) as file:
            file.write(text.encode("utf-8") + b"\n")
    print(text if args.json else format_metrics(results))
    return 0
