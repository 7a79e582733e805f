"""Peak memory of ``build_dashboard`` against the size of the harvest.

Writes a synthetic harvest directory (Gaussian rows in the harvest format of
:mod:`sklearn_dbksvd.lm.harvest`, random token ids, documents of
``--context-size`` tokens whose first, a BOS, is not harvested) and a
dictionary of random unit atoms, then builds the dashboard of each size in a
fresh subprocess and reports its peak memory:

- ``peak_rss``: the child's peak resident set size (``getrusage``). It counts
  the pages of the memory-mapped shards that the kernel keeps mapped, which
  the kernel may drop at will, so it grows with the harvest read;
- ``peak_anon``: the peak of the child's anonymous memory (``RssAnon`` of
  ``/proc/self/status``, sampled every 20 ms): what the build itself holds.

The floors printed next to them are the dense float32 code matrix
(``n x m``) and the activations (``n x d``) that a non-streaming build would
hold. A bounded build has the same ``peak_anon`` at every size.

Usage::

    python benchmarks/bench_dashboard.py [--sizes 100000 1000000] [--n-features 128]
        [--n-components 1024] [-k 8] [--n-jobs 1] [--json out.json]
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

MiB = 2**20


def write_harvest(directory, n_rows, n_features, context_size, vocab, seed=0):
    """A harvest directory of Gaussian rows, written shard by shard."""
    from sklearn_dbksvd.lm import _store

    rng = np.random.RandomState(seed)
    settings = {
        "model_name": "synthetic",
        "module": "synthetic",
        "hook_name": "synthetic",
        "layer": None,
        "dtype": "float32",
        "context_size": context_size,
        "prepend_bos": True,
        "skip_special": True,
    }
    manifest = _store.prepare_directory(directory, settings, overwrite=True)
    manifest["d_in"] = n_features
    digest = _store.document_digest()
    per_document = context_size - 1  # position 0 is the BOS, not harvested
    shard_documents = max(1, 100_000 // per_document)
    document = 0
    written = 0
    while written < n_rows:
        n_docs = min(shard_documents, -(-(n_rows - written) // per_document))
        documents = rng.randint(1, vocab, (n_docs, context_size)).astype(np.int32)
        documents[:, 0] = 0
        positions = np.tile(np.arange(1, context_size), n_docs)
        doc_ids = np.repeat(np.arange(document, document + n_docs), per_document)
        rows = min(len(positions), n_rows - written)
        tokens = np.zeros(rows, _store.TOKEN_DTYPE)
        tokens["document"], tokens["position"] = doc_ids[:rows], positions[:rows]
        tokens["token_id"] = documents[
            tokens["document"] - document, tokens["position"]
        ]
        for ids in documents:
            _store.update_digest(digest, ids)
        acts = rng.standard_normal((rows, n_features)).astype(np.float32)
        _store.write_shard(directory, manifest, acts, tokens, documents, digest)
        document += n_docs
        written += rows
    manifest["complete"] = True
    _store.write_manifest(directory, manifest)


def write_dictionary(path, n_components, n_features, k, seed=0):
    from sklearn_dbksvd import DBKSVDDictionaryLearning
    from sklearn_dbksvd.cli._io import save_dictionary
    from sklearn_dbksvd.datasets import uniform_atoms

    model = DBKSVDDictionaryLearning(n_components, n_nonzero_coefs=k)
    model.components_ = uniform_atoms(
        n_components, n_features, np.random.RandomState(seed), np.float32
    )
    model.n_features_in_ = n_features
    model.n_steps_ = model.n_iter_ = model.n_samples_seen_ = 0
    model.history_ = []
    save_dictionary(path, model, force=True)


def _anon_kib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


def child(dictionary, acts, output, n_jobs):
    """Build one dashboard; print its time and peak memory as JSON."""
    from sklearn_dbksvd.cli._io import load_dictionary
    from sklearn_dbksvd.lm import build_dashboard

    peak = {"anon": _anon_kib()}
    done = threading.Event()

    def sample():
        while not done.wait(0.02):
            peak["anon"] = max(peak["anon"], _anon_kib())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    tic = time.perf_counter()
    build_dashboard(load_dictionary(dictionary), acts, output, n_jobs=n_jobs)
    seconds = time.perf_counter() - tic
    usage = resource.getrusage(resource.RUSAGE_SELF)
    done.set()
    thread.join()
    print(
        json.dumps(
            {
                "seconds": seconds,
                # CPU time of the whole child (imports included): on a
                # shared machine a steadier measure than the wall clock.
                "cpu_seconds": usage.ru_utime + usage.ru_stime,
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                / 1024,
                "peak_anon_mib": peak["anon"] / 1024,
            }
        )
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--n-features", type=int, default=128)
    parser.add_argument("--n-components", type=int, default=1024)
    parser.add_argument("-k", type=int, default=8)
    parser.add_argument("--context-size", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=50_000)
    parser.add_argument("--n-jobs", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", nargs=3, metavar=("DICT", "ACTS", "OUT"))
    args = parser.parse_args()
    if args.child:
        child(*args.child, n_jobs=args.n_jobs)
        return

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_dictionary(tmp / "dict.npz", args.n_components, args.n_features, args.k)
        for n_rows in args.sizes:
            acts = tmp / f"acts-{n_rows}"
            write_harvest(acts, n_rows, args.n_features, args.context_size, args.vocab)
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--n-jobs",
                    str(args.n_jobs),
                    "--child",
                    str(tmp / "dict.npz"),
                    str(acts),
                    str(tmp / f"site-{n_rows}"),
                ],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            measured = json.loads(out.strip().splitlines()[-1])
            site_mib = (
                sum(
                    p.stat().st_size
                    for p in (tmp / f"site-{n_rows}").rglob("*")
                    if p.is_file()
                )
                / MiB
            )
            results.append(
                {
                    "n_rows": n_rows,
                    **{key: round(value, 1) for key, value in measured.items()},
                    "dense_codes_mib": round(n_rows * args.n_components * 4 / MiB),
                    "acts_mib": round(n_rows * args.n_features * 4 / MiB),
                    "site_mib": round(site_mib, 1),
                }
            )
            print(json.dumps(results[-1]), flush=True)
    first = results[0]
    print(
        f"\nd = {args.n_features}, m = {args.n_components}, k = {args.k}, "
        f"n_jobs = {args.n_jobs}\n\n"
        "| tokens | peak anonymous memory | peak RSS | dense codes | activations "
        "| site | time | CPU time |\n|---|---|---|---|---|---|---|---|"
    )
    for r in results:
        print(
            f"| {r['n_rows']:,} | {r['peak_anon_mib']:.0f} MiB "
            f"({r['peak_anon_mib'] / first['peak_anon_mib']:.2f}x) "
            f"| {r['peak_rss_mib']:.0f} MiB | {r['dense_codes_mib']} MiB "
            f"| {r['acts_mib']} MiB | {r['site_mib']:.0f} MiB | {r['seconds']:.0f} s "
            f"| {r['cpu_seconds']:.0f} s |"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
