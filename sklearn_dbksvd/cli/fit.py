"""``dbksvd fit``: learn a dictionary from a data file, resumably."""

import math
import time
from pathlib import Path

from ._common import INPUT_HELP, add_common, positive_int, progress_wanted
from ._io import UserError


def _estimator_class(matryoshka):
    import sklearn_dbksvd

    if not matryoshka:
        return sklearn_dbksvd.DBKSVDDictionaryLearning
    if not hasattr(sklearn_dbksvd, "MatryoshkaDBKSVD"):
        raise UserError(
            "--matryoshka needs sklearn_dbksvd.MatryoshkaDBKSVD, which this "
            "installed version does not have."
        )
    return sklearn_dbksvd.MatryoshkaDBKSVD


def add_parser(commands):
    """Add this subcommand to the ``dbksvd`` subparsers."""
    fit = commands.add_parser(
        "fit",
        help="learn a dictionary from a data file",
        description="Learn a dictionary of M atoms with K nonzeros per code from "
        "INPUT, read batch by batch, and write it as .npz (components_, "
        "parameters, history_, version). With --checkpoint, the run saves its "
        "state atomically every N steps; running the same command again "
        "resumes where it stopped and gives the dictionary an uninterrupted "
        "run would have given.",
    )
    fit.add_argument("input", help=INPUT_HELP)
    fit.add_argument(
        "-m",
        "--n-components",
        type=positive_int,
        required=True,
        help="number of atoms",
    )
    fit.add_argument(
        "-k",
        "--n-nonzero-coefs",
        type=positive_int,
        required=True,
        help="nonzeros per code",
    )
    fit.add_argument(
        "--backend",
        choices=["numpy", "cupy"],
        default="numpy",
        help="where the products that grow with the batch run; cupy needs a "
        "CUDA GPU and the gpu extra (default: %(default)s)",
    )
    fit.add_argument(
        "--matryoshka",
        action="store_true",
        help="nested groups of atoms (MatryoshkaDBKSVD)",
    )
    fit.add_argument(
        "--with-mean",
        action="store_true",
        help="centre the data: learn its mean and fit the atoms to centred "
        "samples (the decoder bias of an SAE; helps on language-model "
        "activations)",
    )
    fit.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="samples per step (default: max(4096, 32 * n_features))",
    )
    length = fit.add_mutually_exclusive_group()
    length.add_argument(
        "--epochs",
        type=positive_int,
        default=10,
        help="passes over the data (default: %(default)s)",
    )
    length.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help="number of steps, instead of --epochs",
    )
    fit.add_argument(
        "--seed", type=int, default=0, help="random seed (default: %(default)s)"
    )
    fit.add_argument(
        "--checkpoint",
        metavar="DIR",
        help="directory of the checkpoint to save and resume from",
    )
    fit.add_argument(
        "--checkpoint-every",
        metavar="N",
        type=positive_int,
        default=1,
        help="steps between checkpoints (default: %(default)s)",
    )
    add_common(fit, output="dictionary file to write (.npz)")
    fit.set_defaults(handler=run)
    return fit


def run(args):
    """Learn a dictionary from INPUT and write it to OUTPUT."""
    from .._settings import resolved_batch_size
    from ._io import (
        check_dictionary_output,
        describe_input,
        open_input,
        save_dictionary,
    )
    from ._resume import fit_resumable

    if Path(args.output).resolve() == Path(args.input).resolve():
        raise UserError(f"{args.output} is the input; write the dictionary elsewhere.")
    check_dictionary_output(args.output, args.force)
    X = open_input(args.input, args.key)
    cls = _estimator_class(args.matryoshka)
    model = cls(
        n_components=args.n_components,
        n_nonzero_coefs=args.n_nonzero_coefs,
        batch_size=args.batch_size if args.batch_size is not None else "auto",
        max_iter=args.epochs,
        n_jobs=args.n_jobs,
        random_state=args.seed,
        backend=args.backend,
        with_mean=args.with_mean,
    )
    if args.steps is not None:
        # As many epochs as the steps need; early stopping may end sooner.
        n_samples, n_features = X.shape
        batch_size = resolved_batch_size(model.batch_size, n_samples, n_features)
        n_batches = math.ceil(n_samples / batch_size)
        model.set_params(
            max_steps=args.steps, max_iter=math.ceil(args.steps / n_batches)
        )
    if args.checkpoint is not None:
        Path(args.checkpoint).mkdir(parents=True, exist_ok=True)
    tic = time.perf_counter()
    _, resumed_from = fit_resumable(
        model,
        X,
        checkpoint_dir=args.checkpoint,
        every=args.checkpoint_every,
        input_description=describe_input(args.input, X),
        progress=progress_wanted(args),
    )
    save_dictionary(args.output, model, args.force)
    last = model.history_[-1]
    if resumed_from:
        print(f"resumed from step {resumed_from} of checkpoint {args.checkpoint}")
    print(
        f"{model.n_steps_} steps, relative error {last['relative_error']:.4f}, "
        f"variance explained {last['variance_explained']:.4f} "
        f"({time.perf_counter() - tic:.1f} s): {args.output}"
    )
    return 0
