"""``dbksvd saebench``: SAEBench's own evaluations of a dictionary.

The work is :func:`sklearn_dbksvd.interop.saebench.run_saebench`; this module
reads the dictionary, loads a local model where one is given, maps the
command-line options and prints the table of metrics.
"""

import json

EVAL_CHOICES = (
    "core",
    "absorption",
    "sparse_probing",
    "sparse_probing_sae_probes",
    "scr",
    "tpp",
    "ravel",
    "autointerp",
)


def add_parser(commands):
    """Add the ``saebench`` subcommand to the ``dbksvd`` subparsers."""
    saebench = commands.add_parser(
        "saebench",
        help="evaluate a dictionary with SAEBench's own evaluations",
        description="Run SAEBench's evaluations (core, absorption, sparse "
        "probing, SCR/TPP, RAVEL, autointerp) on the dictionary, in this "
        "process, with its exact matching pursuit as the SAE's encoder and "
        "nonnegative latents (atom+ and atom- of each signed atom). Writes "
        "SAEBench's JSON of each evaluation to RESULTS_DIR/<eval>/ and prints a "
        "table. Needs SAEBench in the environment: see the documentation's "
        "SAEBench page (pip install -c requirements/saebench-constraints.txt "
        "sae-bench==0.6.0, in a virtualenv of its own).",
    )
    saebench.add_argument("dictionary", help="dictionary file written by 'dbksvd fit'")
    saebench.add_argument(
        "--model",
        default=None,
        help="TransformerLens model name, or a local Hugging Face model "
        "directory (then --model-name names its TransformerLens architecture); "
        "default: the model the dictionary was fitted on",
    )
    saebench.add_argument(
        "--eval",
        nargs="+",
        choices=EVAL_CHOICES,
        default=["core"],
        dest="evals",
        metavar="EVAL",
        help=f"evaluations to run, among {', '.join(EVAL_CHOICES)} "
        "(default: core)",
    )
    saebench.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="RESULTS_DIR",
        help="directory of the results",
    )
    saebench.add_argument(
        "--model-name",
        default=None,
        help="TransformerLens name of the model (default: --model, else the "
        "dictionary's provenance)",
    )
    saebench.add_argument(
        "--hook-name",
        default=None,
        help="hook of the activations, e.g. blocks.15.hook_resid_post "
        "(default: the dictionary's provenance)",
    )
    saebench.add_argument(
        "--context-size",
        type=int,
        default=None,
        help="tokens per prompt (default: the dictionary's provenance)",
    )
    bos = saebench.add_mutually_exclusive_group()
    bos.add_argument(
        "--prepend-bos", dest="prepend_bos", action="store_true", default=None,
        help="prompts start with BOS (default: the provenance, else yes)",
    )
    bos.add_argument("--no-prepend-bos", dest="prepend_bos", action="store_false")
    saebench.add_argument(
        "--dataset",
        default=None,
        help="text dataset of the core evaluation: a Hugging Face name or a "
        "local directory of .jsonl files with a 'text' field (default: "
        "SAEBench's, Skylion007/openwebtext)",
    )
    saebench.add_argument(
        "--device", default="cpu", help="torch device (default: %(default)s)"
    )
    saebench.add_argument(
        "--llm-dtype",
        default="float32",
        choices=("float32", "bfloat16", "float16"),
        help="dtype of the language model, as SAEBench's --llm_dtype "
        "(default: %(default)s; the pursuit runs in float32 regardless)",
    )
    saebench.add_argument(
        "--name", default="dbksvd", help="name of the SAE in the results"
    )
    saebench.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="EVAL.FIELD=VALUE",
        help="a field of SAEBench's config of an evaluation (for core: an "
        "argument of its multiple_evals), e.g. core.n_eval_reconstruction_batches=20 "
        "or absorption.llm_batch_size=4; VALUE is read as JSON, else as text; "
        "repeatable",
    )
    saebench.add_argument(
        "--api-key-file",
        default=None,
        help="file holding the OpenAI API key of autointerp",
    )
    saebench.add_argument(
        "--force", action="store_true", help="replace results this command wrote"
    )
    saebench.set_defaults(handler=run)
    return saebench


def parse_settings(items):
    """``{"eval": {"field": value}}`` from ``EVAL.FIELD=VALUE`` strings."""
    from ._io import UserError

    options = {}
    for item in items:
        key, sep, text = item.partition("=")
        eval_name, dot, field = key.partition(".")
        if not sep or not dot or not field or eval_name not in EVAL_CHOICES:
            raise UserError(
                f"--set {item!r}: expected EVAL.FIELD=VALUE with EVAL among "
                f"{', '.join(EVAL_CHOICES)}."
            )
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        options.setdefault(eval_name, {})[field] = value
    return options


def _local_model(path, model_name, device):
    """A ``HookedTransformer`` of a local Hugging Face model directory."""
    from ._io import UserError

    if model_name is None:
        raise UserError(
            f"--model {path} is a directory: name its TransformerLens "
            "architecture with --model-name."
        )
    from transformer_lens import HookedTransformer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return HookedTransformer.from_pretrained_no_processing(
        model_name, hf_model=hf_model, tokenizer=tokenizer, device=device
    )


def _print_table(rows):
    width = max((len(f"{item} {metric}") for item, metric, _ in rows), default=0)
    for item, metric, value in rows:
        print(f"{item + ' ' + metric:<{width}}  {value:.6g}")


def run(args):
    """Handler of ``dbksvd saebench``: run the evaluations, print the metrics."""
    from pathlib import Path

    from ..interop.saebench import (
        SAEBenchError,
        import_saebench,
        metrics_table,
        run_saebench,
        saebench_fields,
    )
    from ._io import UserError, load_dictionary

    options = parse_settings(args.set)
    if args.dataset is not None:
        options.setdefault("core", {})["dataset"] = args.dataset
    api_key = None
    if args.api_key_file is not None:
        api_key = Path(args.api_key_file).read_text(encoding="utf-8").strip()
    if "autointerp" in args.evals and not api_key:
        raise UserError("autointerp needs an OpenAI API key: pass --api-key-file.")
    model = load_dictionary(args.dictionary)
    import_saebench()
    model_name = args.model_name
    language_model = args.model
    if language_model is not None and Path(language_model).is_dir():
        fields = saebench_fields(
            model, model_name=model_name, hook_name=args.hook_name
        )
        model_name = fields["model_name"]
        language_model = _local_model(language_model, model_name, args.device)
    elif language_model is not None:
        model_name = model_name or language_model
    else:
        model_name = saebench_fields(
            model, model_name=model_name, hook_name=args.hook_name
        )["model_name"]
        language_model = model_name
    try:
        results = run_saebench(
            model,
            language_model,
            args.output,
            evals=tuple(dict.fromkeys(args.evals)),
            name=args.name,
            model_name=model_name,
            hook_name=args.hook_name,
            context_size=args.context_size,
            prepend_bos=args.prepend_bos,
            device=args.device,
            llm_dtype=args.llm_dtype,
            options=options,
            api_key=api_key,
            force=args.force,
        )
    except SAEBenchError as error:
        raise UserError(str(error)) from error
    _print_table(metrics_table(results))
    for item in results:
        print(f"{item}: {Path(args.output) / item}")
    return 0
