"""``dbksvd encode``: sparse codes of a data file, chunk by chunk, as CSR."""

from ._common import (
    INPUT_HELP,
    add_common,
    check_compatible,
    positive_int,
    progress_bar,
    progress_wanted,
)


def add_parser(commands):
    """Add this subcommand to the ``dbksvd`` subparsers."""
    encode = commands.add_parser(
        "encode",
        help="sparse codes of a data file as a scipy.sparse CSR .npz",
        description="Encode INPUT with the dictionary, chunk by chunk, and save "
        "the codes with scipy.sparse.save_npz (load with "
        "scipy.sparse.load_npz). No dense (n_samples, n_components) array is "
        "ever made.",
    )
    encode.add_argument("dictionary", help="dictionary file written by 'dbksvd fit'")
    encode.add_argument("input", help=INPUT_HELP)
    encode.add_argument(
        "-k",
        "--n-nonzero-coefs",
        type=positive_int,
        default=None,
        help="nonzeros per code (default: the dictionary's)",
    )
    encode.add_argument(
        "--chunk-size",
        type=positive_int,
        default=None,
        help="samples encoded at once (default: within 256 MiB)",
    )
    add_common(encode, output="codes file to write (.npz)")
    encode.set_defaults(handler=run)
    return encode


def run(args):
    """Sparse codes of INPUT, chunk by chunk, saved as CSR."""
    import numpy as np
    import scipy.sparse as sp

    from ._io import atomic_write, check_output, load_dictionary, open_input

    check_output(args.output, args.force)
    model = load_dictionary(args.dictionary)
    X = open_input(args.input, args.key)
    check_compatible(model, X, args.dictionary, args.input)
    model.set_params(sparse_output=True, n_jobs=args.n_jobs)
    if args.n_nonzero_coefs is not None:
        model.set_params(transform_n_nonzero_coefs=args.n_nonzero_coefs)
    n_samples = X.shape[0]
    # Only CSR pieces are kept: k nonzeros per sample, never n_samples x m.
    data, indices, counts = [], [], []
    bar = progress_bar(
        progress_wanted(args), total=n_samples, unit="sample", desc="encode"
    )
    try:
        for block, code in model.iter_transform(X, chunk_size=args.chunk_size):
            data.append(code.data)
            indices.append(code.indices)
            counts.append(np.diff(code.indptr))
            n_columns = code.shape[1]  # 2 m with split_sign
            if bar is not None:
                bar.update(block.stop - block.start)
    finally:
        if bar is not None:
            bar.close()
    indptr = np.zeros(n_samples + 1, dtype=np.int64)
    np.cumsum(np.concatenate(counts), out=indptr[1:])
    codes = sp.csr_matrix(
        (np.concatenate(data), np.concatenate(indices), indptr),
        shape=(n_samples, n_columns),
    )
    with atomic_write(args.output, args.force) as file:
        sp.save_npz(file, codes)
    print(
        f"{n_samples} codes, {codes.nnz} nonzeros "
        f"({codes.nnz / max(n_samples, 1):.2f} per sample): {args.output}"
    )
    return 0
