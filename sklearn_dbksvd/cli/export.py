"""``dbksvd export``: a dictionary file in the format of another tool.

The work is :func:`sklearn_dbksvd.interop.save_sae`; this module only reads
the dictionary written by ``dbksvd fit`` and maps the command-line options.
"""

FORMATS = ("saelens",)


def add_parser(commands):
    """Add the ``export`` subcommand to the ``dbksvd`` subparsers."""
    export = commands.add_parser(
        "export",
        help="write a dictionary as an SAELens directory (for SAEBench)",
        description="Write the dictionary as an SAELens directory (cfg.json and "
        "sae_weights.safetensors) that SAELens and SAEBench load: by default "
        "SAELens' 'matching_pursuit' architecture (SAELens >= 6.26), whose "
        "encoder is our matching pursuit (W_dec = [D; -D] for signed codes, "
        "k steps), or 'topk' for older SAELens (a top-k approximation of the "
        "encoder). sklearn_dbksvd.interop.load_sae and load_torch read both "
        "with the exact encoder. The directory is written aside and renamed "
        "into place when complete. Needs safetensors (pip install "
        "'sklearn-dbksvd[torch]').",
    )
    export.add_argument("dictionary", help="dictionary file written by 'dbksvd fit'")
    export.add_argument(
        "--format",
        choices=FORMATS,
        default="saelens",
        help="output format (default: %(default)s)",
    )
    export.add_argument("-o", "--output", required=True, help="directory to write")
    export.add_argument(
        "--hook-name",
        default=None,
        help="TransformerLens hook of the activations, e.g. "
        "blocks.8.hook_resid_post (default: the one the dictionary was fitted "
        "on, recorded when it was fitted on a harvest; needed otherwise)",
    )
    export.add_argument(
        "--model-name",
        default=None,
        help="language model, e.g. pythia-70m-deduped (default: as --hook-name)",
    )
    export.add_argument(
        "--hook-layer",
        type=int,
        default=None,
        help="layer of the hook (default: the recorded one, else read from "
        "'blocks.<layer>.' in the name)",
    )
    export.add_argument(
        "--context-size",
        type=int,
        default=None,
        help="tokens per context of the activations (default: the recorded one)",
    )
    bos = export.add_mutually_exclusive_group()
    bos.add_argument(
        "--prepend-bos",
        dest="prepend_bos",
        action="store_true",
        default=None,
        help="the activations were taken with a BOS token (default: the "
        "recorded setting, else yes)",
    )
    bos.add_argument("--no-prepend-bos", dest="prepend_bos", action="store_false")
    export.add_argument(
        "--architecture",
        choices=("matching_pursuit", "topk"),
        default="matching_pursuit",
        help="SAELens architecture to declare (default: %(default)s)",
    )
    export.add_argument(
        "--split-sign",
        action="store_true",
        default=None,
        help="write [D; -D] so that latents are nonnegative (d_sae = 2 m); "
        "implied by matching_pursuit for signed codes",
    )
    export.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        default=None,
        help="dtype of the tensors (default: the dictionary's)",
    )
    export.add_argument(
        "--force", action="store_true", help="replace an existing SAE directory"
    )
    export.set_defaults(handler=run)
    return export


def run(args):
    """Handler of ``dbksvd export``: load the dictionary, write the directory."""
    import json
    import sys
    import warnings
    from pathlib import Path

    from ..interop import save_sae
    from ._io import UserError, load_dictionary

    if Path(args.output).exists() and not args.force:
        raise UserError(f"{args.output} exists; pass --force to replace it.")
    model = load_dictionary(args.dictionary)
    if getattr(model, "provenance_", None) is None and (
        args.hook_name is None or args.model_name is None
    ):
        raise UserError(
            f"{args.dictionary} does not record its model and hook (it was not "
            "fitted on a harvest): pass --hook-name and --model-name."
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = save_sae(
            model,
            args.output,
            hook_name=args.hook_name,
            model_name=args.model_name,
            hook_layer=args.hook_layer,
            context_size=args.context_size,
            prepend_bos=args.prepend_bos,
            architecture=args.architecture,
            split_sign=args.split_sign,
            dtype=args.dtype,
            overwrite=args.force,
        )
    for warning in caught:
        print(f"dbksvd export: warning: {warning.message}", file=sys.stderr)

    with open(path / "cfg.json", encoding="utf-8") as file:
        config = json.load(file)
    print(
        f"SAELens directory ({config['architecture']}) with "
        f"d_in={config['d_in']}, d_sae={config['d_sae']}, "
        f"k={model._transform_n_nonzero_coefs()}: {path}"
    )
    return 0
