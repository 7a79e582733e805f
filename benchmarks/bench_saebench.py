"""How SAEBench encodes a DB-KSVD dictionary: our adapter against SAELens'.

SAEBench casts every SAE to the language model's dtype (bfloat16 for Gemma-2)
and then calls ``sae.encode`` on batches of activations. This measures, on
the same dictionary and the same activations, cast to bfloat16 as SAEBench
casts them:

- ``to_saebench``: the adapter of ``sklearn_dbksvd.interop`` (the pursuit on
  the Gram matrix, in float32 whatever the module's dtype);
- ``saelens matching_pursuit``: SAELens' own ``matching_pursuit``
  architecture, loaded from the ``save_sae`` export of the dictionary (it
  recomputes ``x Dᵀ`` at every one of its k iterations, and runs in the
  module's dtype);
- ``transform``: the estimator itself (NumPy, float32), the reference.

For each: the encoding time, the fraction of tokens whose set of active
latents differs from ``transform``'s (split into signs), and the relative
distance of the reconstruction from ``transform``'s.

Run it in the SAEBench virtualenv (doc/saebench.rst; it has SAELens)::

    python benchmarks/bench_saebench.py ACTS DICT.npz [--tokens 2000]

ACTS: a harvest directory of ``dbksvd harvest`` (or a .npy of activations);
DICT.npz: a dictionary of ``dbksvd fit`` on it. Without arguments, a random
dictionary of SmolLM2-135M's shape (d=576, m=4096, k=32) on Gaussian data.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _data(args):
    from sklearn_dbksvd import DBKSVDDictionaryLearning
    from sklearn_dbksvd.persistence import load_dictionary

    if args.activations is None:
        rng = np.random.RandomState(0)
        d, m = 576, 4096
        atoms = rng.randn(m, d).astype(np.float32)
        atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
        X = rng.randn(args.tokens, d).astype(np.float32)
        model = DBKSVDDictionaryLearning(
            n_components=m, n_nonzero_coefs=32, max_steps=1, random_state=0
        ).fit(X[:64])  # a fitted estimator; its atoms are replaced below
        model.components_ = atoms
        return model, X, "random dictionary, Gaussian data"
    path = Path(args.activations)
    if path.suffix == ".npy":
        X = np.load(path, mmap_mode="r")
    else:
        from sklearn_dbksvd.lm import load_activations

        X = load_activations(path)
    X = np.asarray(X[: args.tokens], dtype=np.float32)
    return load_dictionary(args.dictionary), X, f"{path.name}, {args.dictionary}"


def _compare(name, latents, seconds, expected, model):
    latents = latents.float().numpy()
    m = model.components_.shape[0]
    folded = latents if model.positive_code else latents[:, :m] - latents[:, m:]
    different = ((latents != 0) != (expected != 0)).any(axis=1).mean()
    reference = model.inverse_transform(
        expected if model.positive_code else expected[:, :m] - expected[:, m:]
    )
    reconstruction = model.inverse_transform(folded)
    distance = np.linalg.norm(reconstruction - reference) / np.linalg.norm(reference)
    return name, seconds, different, distance


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("activations", nargs="?")
    parser.add_argument("dictionary", nargs="?")
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=500, help="tokens per encode")
    parser.add_argument(
        "--threads", type=int, default=None,
        help="torch threads (default: torch's); on a loaded machine, 1 avoids "
        "OpenMP threads waiting for each other",
    )
    args = parser.parse_args()
    if (args.activations is None) != (args.dictionary is None):
        sys.exit("bench_saebench: give both ACTS and DICT.npz, or neither.")
    try:
        import torch
        from sae_lens import SAE
    except ImportError as error:
        sys.exit(f"bench_saebench: needs torch and SAELens ({error}).")
    from sklearn_dbksvd.interop import save_sae, split_sign, to_saebench

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model, X, what = _data(args)
    k = model._transform_n_nonzero_coefs()
    print(f"{what}: {X.shape[0]} tokens, d={X.shape[1]}, "
          f"m={model.components_.shape[0]}, k={k}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    # What SAEBench feeds the SAE: activations of the model's dtype.
    x = torch.from_numpy(X).to(torch.bfloat16)
    X16 = x.float().numpy()
    model.transform(X16[:8])
    tic, cpu = time.perf_counter(), time.process_time()
    codes = model.transform(X16)
    seconds = (time.perf_counter() - tic, time.process_time() - cpu)
    expected = codes if model.positive_code else split_sign(codes)
    rows = [("transform (NumPy, float32)", seconds, 0.0, 0.0)]

    def timed(sae):
        # A first call outside the timing: the adapter computes its Gram
        # matrix once per SAE (SAELens' encoder has nothing to set up).
        with torch.no_grad():
            sae.encode(x[:8])
            tic, cpu = time.perf_counter(), time.process_time()
            parts = [
                sae.encode(x[i : i + args.batch]) for i in range(0, len(x), args.batch)
            ]
        return torch.cat(parts), (time.perf_counter() - tic, time.process_time() - cpu)

    sae = to_saebench(model, model_name="model", hook_name="blocks.0.hook_resid_post")
    sae = sae.to("cpu", dtype=torch.bfloat16)
    latents, seconds = timed(sae)
    rows.append(_compare("to_saebench, cast to bfloat16", latents, seconds, expected, model))
    with tempfile.TemporaryDirectory() as tmp:
        save_sae(model, Path(tmp) / "sae", model_name="model",
                 hook_name="blocks.0.hook_resid_post")
        saelens = SAE.load_from_disk(str(Path(tmp) / "sae"), device="cpu")
    saelens = saelens.to("cpu", dtype=torch.bfloat16)
    latents, seconds = timed(saelens)
    rows.append(_compare("SAELens matching_pursuit, bfloat16", latents, seconds,
                         expected, model))
    print(f"{'encoder':<36} {'wall s':>7} {'CPU s':>7} "
          f"{'tokens, other latents':>22} {'recon. distance':>16}")
    for name, (wall, cpu), different, distance in rows:
        print(f"{name:<36} {wall:7.2f} {cpu:7.2f} {100 * different:21.1f}% "
              f"{distance:16.2e}")


if __name__ == "__main__":
    main()
