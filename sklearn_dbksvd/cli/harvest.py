"""``dbksvd harvest``: activations of one layer of a language model, to shards.

The work is :func:`sklearn_dbksvd.lm.harvest_activations`; this module loads
the model, reads the text files and maps the options.
"""

from ._common import positive_int, progress_wanted
from ._io import UserError

# Texts are read in pieces of about this many characters, cut at a blank line
# when there is one, so that a large file never sits in memory whole.
_PIECE_CHARS = 2**16


def read_texts(paths):
    """The texts of ``paths``, file by file, in pieces ending at blank lines."""
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as file:
            lines, size = [], 0
            for line in file:
                lines.append(line)
                size += len(line)
                at_blank = size >= _PIECE_CHARS and not line.strip()
                if at_blank or size >= 4 * _PIECE_CHARS:
                    yield "".join(lines)
                    lines, size = [], 0
            if lines:
                yield "".join(lines)


def add_model_options(parser, *, fitted_defaults=False):
    """Options shared by ``harvest`` and ``evaluate``: where and what to run.

    ``fitted_defaults``: the layer, context size and BOS setting default to
    the dictionary's provenance (``evaluate``), so none is required.
    """
    where = parser.add_mutually_exclusive_group(required=not fitted_defaults)
    where.add_argument(
        "--layer",
        type=int,
        help="decoder layer whose output (the residual stream after the block, "
        "SAELens' blocks.L.hook_resid_post) is used; negative counts from the end",
    )
    where.add_argument(
        "--module", help="name of any submodule of the model instead of --layer"
    )
    parser.add_argument(
        "--text",
        nargs="+",
        required=True,
        metavar="FILE",
        help="UTF-8 text files, read in pieces and cut into documents",
    )
    parser.add_argument(
        "--context-size",
        type=positive_int,
        default=None if fitted_defaults else 128,
        help="tokens per document, BOS included (default: "
        + ("the dictionary's, else 128)" if fitted_defaults else "%(default)s)"),
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=8,
        help="documents per forward pass (default: %(default)s)",
    )
    parser.add_argument(
        "--max-tokens", type=positive_int, default=None, help="stop after N tokens"
    )
    parser.add_argument(
        "--no-bos",
        action="store_true",
        default=None if fitted_defaults else False,
        help="do not start every document with the tokenizer's BOS token",
    )
    parser.add_argument(
        "--device", default=None, help="torch device, e.g. cuda (default: cpu)"
    )


MODEL_HELP = (
    "a Hugging Face causal LM: a directory saved with save_pretrained, a name in "
    "the local Hugging Face cache (read offline) or a .gguf file (needs gguf)"
)


def add_parser(commands):
    """Add the ``harvest`` subcommand to the ``dbksvd`` subparsers."""
    from ._common import add_common

    harvest = commands.add_parser(
        "harvest",
        help="write a language model's activations at one layer as shards",
        description="Run MODEL over the text files and write the output of one "
        "decoder layer, at every non-special token, to ACTS_DIR: .npy shards "
        "of activations, the token id, document and position of every row, "
        "and the documents fed to the model (see sklearn_dbksvd.lm.harvest). "
        "'dbksvd fit ACTS_DIR' reads it out of core. Running the same command "
        "again resumes a harvest that was stopped. Needs the lm extra "
        "(pip install 'sklearn-dbksvd[lm]').",
    )
    harvest.add_argument("model", help=MODEL_HELP)
    add_model_options(harvest)
    harvest.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="storage of the activations; bfloat16 halves the disk (default: "
        "%(default)s)",
    )
    harvest.add_argument(
        "--compute-dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="dtype of the model's weights and forward pass; bfloat16 is faster "
        "on CPUs with bfloat16 instructions (AVX-512 BF16, AMX) and GPUs, and "
        "moves the rows by about their bfloat16 rounding (default: %(default)s)",
    )
    harvest.add_argument(
        "--no-model-cache",
        action="store_true",
        help="do not keep a .gguf model dequantized in the cache "
        "($SKLEARN_DBKSVD_CACHE, else ~/.cache/sklearn_dbksvd), nor read it there",
    )
    harvest.add_argument(
        "--keep-special",
        action="store_true",
        help="also harvest the rows of special tokens (BOS, EOS, padding)",
    )
    add_common(
        harvest,
        key=False,
        n_jobs=False,
        output="harvest directory to write or resume",
        force=False,
    )
    harvest.add_argument(
        "--force",
        action="store_true",
        help="start again: replace the harvest in the output (needed when its "
        "settings or texts differ); removes only the files the harvest wrote",
    )
    harvest.set_defaults(handler=run)
    return harvest


def check_texts(paths):
    """Refuse text files that cannot be read, before any model is loaded."""
    for path in paths:
        try:
            with open(path, encoding="utf-8", errors="replace") as file:
                file.read(1)
        except OSError as error:
            reason = error.strerror or type(error).__name__
            raise UserError(f"--text {path}: {reason}.") from None


def run(args):
    """Handler of ``dbksvd harvest``."""
    from ..lm import harvest_activations, load_model, read_manifest
    from ..lm._store import check_output

    # Everything that can be checked without the model is checked first, so
    # that a mistake costs no model load and leaves nothing behind.
    check_texts(args.text)
    check_output(args.output, args.force)
    import torch

    model, tokenizer = load_model(
        args.model,
        device=args.device,
        dtype=getattr(torch, args.compute_dtype),
        cache=False if args.no_model_cache else None,
    )
    directory = harvest_activations(
        model,
        tokenizer,
        read_texts(args.text),
        output=args.output,
        layer=args.layer,
        module=args.module,
        context_size=args.context_size,
        batch_size=args.batch_size,
        max_tokens=args.max_tokens,
        skip_special=not args.keep_special,
        prepend_bos=not args.no_bos,
        dtype=args.dtype,
        overwrite=args.force,
        # Off a terminal (a log, a batch job): plain lines, unless -q.
        progress=progress_wanted(args) or (False if args.quiet else "lines"),
    )
    manifest = read_manifest(directory)
    print(
        f"{manifest['n_rows']} rows of {manifest['d_in']} features from "
        f"{manifest['n_documents']} documents ({manifest['settings']['hook_name']}, "
        f"{manifest['dtype']}, {len(manifest['shards'])} shards): {directory}"
    )
    return 0
