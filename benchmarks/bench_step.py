"""Time one DB-KSVD step, phase by phase, against the GEMM ``X @ D.T``.

The machine this project runs on is shared and its timings are noisy, so
every number is a ratio to a floor measured in the same run: the single GEMM
``X @ D.T`` for the same samples (BLAS on all cores). Each measurement is the
best of ``--repeat`` runs.

Usage::

    python benchmarks/bench_step.py                      # paper size, 2^16 x 2304, m=4096, k=20
    python benchmarks/bench_step.py -m 16384 -k 80
    python benchmarks/bench_step.py --grid                # ratio at m = 1024, 4096, 16384, k = 20, 80
    python benchmarks/bench_step.py --cpu                 # one thread, CPU seconds (robust to load)
    python benchmarks/bench_step.py --scaling             # n_jobs=1 (one core) vs n_jobs=2
    python benchmarks/bench_step.py --omp                 # sparse_encode_mp vs orthogonal_mp_gram
    python benchmarks/bench_step.py --stream 16           # partial_fit over 16 batches, RSS per step
    python benchmarks/bench_step.py --rss                 # peak RSS of one step, in a fresh process
    python benchmarks/bench_step.py --wide -m 65536 -k 32 -d 576 -n 131072 --zipf 1 \
        --gram-memory 5e9                                 # past the Gram wall: cached rows

Random Gaussian data and unit-norm random atoms: the worst case for the
Lanczos solves (small spectral gaps), fine for timing. A step is timed as in
a fit: on the atoms the previous step returned, encoding with the Gram matrix
that step's coherence check computed (one ``D Dᵀ`` per step) and writing the
residual into the fit's one buffer.
The BLAS kernel that ran the GEMM is printed with the results.
"""

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits


def best_time(func, repeat):
    """Best wall-clock time of ``repeat`` calls, and the last result."""
    best, result = np.inf, None
    for _ in range(repeat):
        tic = time.perf_counter()
        result = func()
        best = min(best, time.perf_counter() - tic)
    return best, result


def problem(n_samples, n_features, n_components, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_samples, n_features), dtype=np.float32)
    D = rng.standard_normal((n_components, n_features), dtype=np.float32)
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    return X, D


def step_kwargs(k, n_jobs, seed=0, **settings):
    """Arguments of ``dbksvd_step`` after the batch and the atoms.

    ``settings`` are other fields of ``StepSettings`` (``gram_memory``,
    ``backend``).
    """
    from sklearn_dbksvd._settings import StepSettings

    return dict(
        settings=StepSettings(
            n_nonzero_coefs=k,
            fit_algorithm="mp",
            dict_update="ksvd",
            update_batch_size=16,
            positive_code=False,
            replace_min_usage=0.02,
            replace_coherence=0.99,
            n_jobs=n_jobs,
            **settings,
        ),
        replace=True,
        random_state=np.random.RandomState(seed),
    )


class FitSteps:
    """Steps chained as a fit runs them.

    Each step encodes with the Gram matrix the previous step's coherence
    check computed and writes the residual into the fit's one buffer
    (``dbksvd_step(gram=, return_gram=True, residual_out=)``).
    """

    def __init__(self, X, atoms, k, n_jobs):
        self.X, self.atoms, self.k, self.n_jobs = X, atoms, k, n_jobs
        self.gram = None
        self.residual = np.empty_like(X)

    def step(self, seed):
        from sklearn_dbksvd._step import dbksvd_step

        self.atoms, _, self.gram = dbksvd_step(
            self.X, self.atoms, **step_kwargs(self.k, self.n_jobs, seed),
            gram=self.gram, return_gram=True, residual_out=self.residual,
        )
        return self.atoms


def chained_steps(X, D, k, n_jobs, repeat):
    """Best time of ``repeat`` steps chained as in a fit (:class:`FitSteps`).

    A first, untimed step makes the atoms and the Gram matrix the chain
    starts from (and compiles the kernels).
    """
    steps = FitSteps(X, D, k, n_jobs)
    steps.step(0)
    best = np.inf
    for seed in range(1, repeat + 1):
        tic = time.perf_counter()
        steps.step(seed)
        best = min(best, time.perf_counter() - tic)
    return best


def cpu_ratio(X, D, k, repeat):
    """One step and the GEMM on one thread, in CPU seconds of the process.

    On a machine shared with other jobs, wall-clock ratios move with their
    load; one thread's CPU time moves much less (memory-bound phases still
    feel the neighbours' traffic). Steps are chained as in a fit.
    """
    with threadpool_limits(limits=1, user_api="blas"):
        gemm = np.inf
        for _ in range(repeat):
            tic = time.process_time()
            X @ D.T
            gemm = min(gemm, time.process_time() - tic)
        steps = FitSteps(X, D, k, 1)
        steps.step(0)
        step = np.inf
        for seed in range(1, repeat + 1):
            tic = time.process_time()
            steps.step(seed)
            step = min(step, time.process_time() - tic)
    print(f"  GEMM, one thread : {gemm:.2f} CPU s")
    print(f"  step, n_jobs=1   : {step:.2f} CPU s")
    print(f"  ratio            : {step / gemm:.3f}")


def blas_kernel():
    """``architecture`` and threads of the BLAS that NumPy uses."""
    from threadpoolctl import threadpool_info

    blas = [i for i in threadpool_info() if i["user_api"] == "blas"]
    return ", ".join(
        f"{i['internal_api']} {i.get('version')} {i.get('architecture')} kernel, "
        f"{i['num_threads']} threads" for i in blas
    )


def grid(n, d, sizes, n_jobs, repeat):
    """One step against the GEMM ``X @ D.T`` at several (m, k), same run."""
    print(f"  {'m':>6s} {'k':>4s} {'GEMM s':>8s} {'step s':>8s} {'step / GEMM':>12s}")
    for m, k in sizes:
        X, D = problem(n, d, m)
        gemm, _ = best_time(lambda: X @ D.T, repeat)  # noqa: B023
        step = chained_steps(X, D, k, n_jobs, repeat)
        print(f"  {m:6d} {k:4d} {gemm:8.2f} {step:8.2f} {step / gemm:12.3f}",
              flush=True)


def breakdown(X, D, k, n_jobs, repeat):
    """Seconds of each phase of one step, as the step runs them."""
    import scipy.sparse as sp

    from sklearn_dbksvd import _backend
    from sklearn_dbksvd._encode import (
        _block_size,
        _matching_pursuit_gram,
        _mp_encode,
        selections_to_csr,
    )
    from sklearn_dbksvd._step import batch_metrics, clear_dictionary
    from sklearn_dbksvd._update import update_dictionary

    backend = _backend.ArrayBackend(np)
    times = {}
    times["gemm X @ D.T (floor)"], _ = best_time(lambda: X @ D.T, repeat)
    times["gram D @ D.T"], G = best_time(lambda: D @ D.T, repeat)
    step = _block_size(len(D), D.itemsize)
    blocks = [slice(i, i + step) for i in range(0, len(X), step)]

    def correlations_only():
        for b in blocks:
            X[b] @ D.T

    times["X @ D.T in blocks"], _ = best_time(correlations_only, repeat)
    corr = X[blocks[0]] @ D.T
    t_mp, _ = best_time(
        lambda: _matching_pursuit_gram(corr.copy(), G, k, False), repeat
    )
    times["matching pursuit"] = t_mp * len(X) / corr.shape[0]
    # The residual goes into one buffer, as in a fit (a fresh one would time
    # its page faults too).
    out = np.empty_like(X)
    times["encode + residual (all)"], (idx, val, R) = best_time(
        lambda: _mp_encode(
            X, D, k, gram=G, n_jobs=n_jobs, return_residual=True, residual_out=out
        ),
        repeat,
    )
    R = R.copy()

    def residual_only():
        for b in blocks:
            _backend.residual(backend, X[b], idx[b], val[b], D, D, out=out[b])

    times["residual"], _ = best_time(residual_only, repeat)

    def codes_csc():
        codes = sp.csc_matrix(selections_to_csr(idx, val, len(D)))
        codes.sort_indices()
        return codes

    times["codes csr/csc"], codes = best_time(codes_csc, repeat)
    order = np.random.RandomState(0).permutation(len(D))

    def update():
        C, R2, c2 = D.copy(), R.copy(), codes.copy()
        tic = time.perf_counter()
        update_dictionary(R2, C, c2, order, update_batch_size=16, n_jobs=n_jobs)
        return time.perf_counter() - tic, (C, R2, c2)

    times["atom updates"] = np.inf
    for _ in range(repeat):
        seconds, (C, R2, c2) = update()
        times["atom updates"] = min(times["atom updates"], seconds)
    times["metrics"], _ = best_time(lambda: batch_metrics(X, R2), repeat)
    times["replacement (with D D.T)"], _ = best_time(
        lambda: clear_dictionary(
            C.copy(), c2, R2, n_nonzero_coefs=k, min_usage=0.02, max_coherence=0.99
        ),
        repeat,
    )
    times["one step (dbksvd_step)"] = chained_steps(X, D, k, n_jobs, repeat)
    return times


def print_table(times, floor_key="gemm X @ D.T (floor)"):
    floor = times[floor_key]
    for name, seconds in times.items():
        print(f"  {name:28s} {seconds:8.2f} s {seconds / floor:7.3f} x floor")


def scaling(X, D, k, repeat):
    """One step with n_jobs=1 on one core against n_jobs=2 on two.

    Alternated, best of each, since a neighbour's job takes a core now and
    then. Also prints the process CPU time of each run: with two free cores
    the speed-up is (CPU time with one job) / (wall time with two), and CPU
    time / wall time says how busy the two threads kept the cores.
    """
    from sklearn_dbksvd._step import dbksvd_step

    best = {1: (np.inf, 0.0), 2: (np.inf, 0.0)}
    results = {}
    # One Gram matrix for both, as a fit hands it over: computed here with
    # BLAS on one thread for n_jobs=1, it would round differently from the
    # two-thread one (OpenBLAS), which is this benchmark's doing, not n_jobs'.
    gram = D @ D.T
    for _ in range(repeat):
        for n_jobs in (1, 2):
            limit = 1 if n_jobs == 1 else None
            with threadpool_limits(limits=limit, user_api="blas"):
                cpu = time.process_time()
                tic = time.perf_counter()
                results[n_jobs] = dbksvd_step(
                    X, D, **step_kwargs(k, n_jobs), gram=gram
                )
                wall = time.perf_counter() - tic
                cpu = time.process_time() - cpu
            if wall < best[n_jobs][0]:
                best[n_jobs] = (wall, cpu)
    (one, cpu_one), (two, cpu_two) = best[1], best[2]
    print(f"  n_jobs=1 (BLAS 1 thread): {one:.2f} s wall, {cpu_one:.2f} s CPU")
    print(f"  n_jobs=2                : {two:.2f} s wall, {cpu_two:.2f} s CPU"
          f" ({cpu_two / two:.2f} cores busy)")
    print(f"  speed-up (wall)         : {one / two:.2f}x")
    print(f"  identical components    : {np.array_equal(results[1][0], results[2][0])}")


def versus_omp(X, D, k, repeat, n_omp=256):
    """sparse_encode_mp against orthogonal_mp_gram and the GEMM, per sample."""
    from sklearn.linear_model import orthogonal_mp_gram

    from sklearn_dbksvd import sparse_encode_mp

    G = D @ D.T
    t_gemm, cov = best_time(lambda: D @ X.T, repeat)
    t_mp_cov, _ = best_time(
        lambda: sparse_encode_mp(None, D, k, gram=G, cov=cov, n_jobs=2), repeat
    )
    t_mp_full, _ = best_time(lambda: sparse_encode_mp(X, D, k, gram=G, n_jobs=2), repeat)
    t_omp, _ = best_time(
        lambda: orthogonal_mp_gram(G, cov[:, :n_omp], n_nonzero_coefs=k), 1
    )
    per = len(X)
    t_omp_all = t_omp * per / n_omp
    print(f"  GEMM D @ X.T                : {t_gemm:.2f} s")
    print(f"  sparse_encode_mp(gram, cov) : {t_mp_cov:.2f} s  {t_mp_cov / t_gemm:.3f} x GEMM")
    print(f"  sparse_encode_mp(X)         : {t_mp_full:.2f} s  {t_mp_full / t_gemm:.3f} x GEMM")
    print(f"  orthogonal_mp_gram (est.)   : {t_omp_all:.1f} s  ({n_omp} samples timed)")
    print(f"  speed-up vs OMP (gram, cov) : {t_omp_all / t_mp_cov:.0f}x")
    print(f"  speed-up vs OMP (from X)    : {t_omp_all / t_mp_full:.0f}x")


def max_rss_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def stream(n_batches, n_samples, n_features, n_components, k, n_jobs):
    """partial_fit over fresh batches; time and peak RSS after each step."""
    from sklearn_dbksvd import DBKSVDDictionaryLearning

    model = DBKSVDDictionaryLearning(
        n_components, n_nonzero_coefs=k, n_jobs=n_jobs, random_state=0
    )
    rng = np.random.default_rng(1)
    X = np.empty((n_samples, n_features), dtype=np.float32)
    out = None
    for step in range(n_batches):
        X[:] = rng.standard_normal(X.shape, dtype=np.float32)
        tic = time.perf_counter()
        model.partial_fit(X)
        seconds = time.perf_counter() - tic
        rss = max_rss_gb()
        # The GEMM X Dᵀ of the same batch and atoms, right after, block by
        # block into one 32 MiB buffer (a whole one would raise the peak RSS
        # that the next steps report).
        D = model.components_
        rows = max(64, 2**25 // (4 * n_components))
        if out is None:
            out = np.empty((rows, n_components), dtype=np.float32)

        def gemm_blocks(D=D, rows=rows, out=out):
            for start in range(0, n_samples, rows):
                block = X[start : start + rows]
                np.matmul(block, D.T, out=out[: len(block)])

        gemm, _ = best_time(gemm_blocks, 1)
        print(f"  step {step:3d}: {seconds:7.2f} s  GEMM {gemm:6.2f} s  "
              f"{seconds / gemm:5.2f} x GEMM  peak RSS {rss:.2f} GiB", flush=True)


def zipf_problem(n_samples, n_features, n_components, zipf, n_active=8, seed=0):
    """Planted data whose atom usage is heavy-tailed, and atoms near the truth.

    Each sample is ``n_active`` planted atoms, drawn with probability
    proportional to ``rank ** -zipf``, with Gaussian coefficients, plus 5 %
    noise; the dictionary is the planted atoms perturbed (as in the middle of
    a fit), so that its usage follows the planted frequencies.
    """
    rng = np.random.default_rng(seed)
    truth = rng.standard_normal((n_components, n_features), dtype=np.float32)
    truth /= np.linalg.norm(truth, axis=1, keepdims=True)
    weights = 1.0 / np.arange(1, n_components + 1) ** zipf
    weights /= weights.sum()
    X = np.empty((n_samples, n_features), dtype=np.float32)
    for start in range(0, n_samples, 8192):
        rows = slice(start, min(start + 8192, n_samples))
        count = rows.stop - rows.start
        atoms = rng.choice(n_components, size=(count, n_active), p=weights)
        coefs = rng.standard_normal((count, n_active), dtype=np.float32)
        X[rows] = np.einsum("nk,nkd->nd", coefs, truth[atoms])
        X[rows] += 0.05 * rng.standard_normal((count, n_features), dtype=np.float32)
    D = truth + np.float32(0.1 / np.sqrt(n_features)) * rng.standard_normal(
        truth.shape, dtype=np.float32
    )
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    return X, D.astype(np.float32, copy=False)


def wide_step(args):
    """One step of a dictionary too wide for its Gram matrix, against its GEMM.

    The floor is ``X Dᵀ`` computed block by block into one buffer (the whole
    product would not fit either); the step encodes from a cache of Gram rows
    ranked by a pilot of the batch plus rows computed per block, within
    ``--gram-memory`` bytes. Prints seconds, the ratio, the cache's hit rate
    and the peak RSS of the process (run it alone).
    """
    from sklearn_dbksvd._encode import _block_size
    from sklearn_dbksvd._gram_rows import _ROWS_BLOCK_BYTES, plan_gram
    from sklearn_dbksvd._step import dbksvd_step

    if args.zipf:
        X, D = zipf_problem(args.n, args.d, args.m, args.zipf, args.active)
    else:
        X, D = problem(args.n, args.d, args.m)
    kind = f"zipf {args.zipf:.2f} planted" if args.zipf else "gaussian"
    print(f"  data: {kind}"
          f", X {X.nbytes / 2**30:.2f} GiB, D {D.nbytes / 2**30:.2f} GiB, "
          f"whole Gram {D.shape[0] ** 2 * 4 / 2**30:.1f} GiB, budget "
          f"{args.gram_memory / 2**30:.2f} GiB", flush=True)
    step = _block_size(len(D), D.itemsize, _ROWS_BLOCK_BYTES)
    out = np.empty((step, len(D)), dtype=np.float32)

    def gemm():
        for start in range(0, len(X), step):
            block = X[start : start + step]
            np.matmul(block, D.T, out=out[: len(block)])

    floor, _ = best_time(gemm, args.repeat)
    print(f"  GEMM X @ D.T in blocks : {floor:8.2f} s", flush=True)
    for round_ in range(args.wide_steps):
        tic = time.perf_counter()
        rows = plan_gram(
            D, args.gram_memory, n_jobs=args.n_jobs,
            usage=None if round_ == 0 else hint.usage,  # noqa: F821
            X=X if round_ == 0 else None, n_nonzero_coefs=args.k,
        )
        plan = time.perf_counter() - tic
        D, info, hint = dbksvd_step(
            X, D, **step_kwargs(args.k, args.n_jobs, gram_memory=args.gram_memory),
            gram=rows, return_gram=True,
        )
        seconds = time.perf_counter() - tic
        reads = sum(rows.stats.values())
        print(f"  step {round_} ({'pilot' if round_ == 0 else 'usage'}-ranked cache "
              f"of {rows.cache_rows.shape[0]} rows, planned in {plan:.1f} s): "
              f"{seconds:8.2f} s  {seconds / floor:6.2f} x GEMM", flush=True)
        print(f"    row reads {reads}, cache hit rate {rows.hit_rate:.3f}, "
              f"rows computed {rows.stats['computed']} "
              f"({rows.stats['computed'] / len(X):.3f} per sample), "
              f"replaced {info['n_replaced']}, peak RSS {max_rss_gb():.2f} GiB",
              flush=True)
        del rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2**16, help="samples per batch")
    parser.add_argument("-d", type=int, default=2304, help="features")
    parser.add_argument("-m", type=int, default=4096, help="atoms")
    parser.add_argument("-k", type=int, default=20, help="nonzeros per code")
    parser.add_argument("--n-jobs", type=int, default=-1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cpu", action="store_true",
                        help="one thread, ratio of CPU seconds")
    parser.add_argument("--grid", action="store_true",
                        help="step / GEMM at m = 1024, 4096, 16384 and k = 20, 80")
    parser.add_argument("--scaling", action="store_true")
    parser.add_argument("--omp", action="store_true")
    parser.add_argument("--stream", type=int, default=0, metavar="N_BATCHES")
    parser.add_argument("--rss", action="store_true")
    parser.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--wide", action="store_true",
                        help="one step within --gram-memory, rows cached/computed")
    parser.add_argument("--gram-memory", type=float, default=6e9,
                        help="bytes of Gram rows for --wide")
    parser.add_argument("--zipf", type=float, default=0.0,
                        help="planted data with Zipf-distributed atom usage")
    parser.add_argument("--active", type=int, default=8,
                        help="planted atoms per sample of --zipf data")
    parser.add_argument("--wide-steps", type=int, default=1,
                        help="steps of --wide (later ones rank by usage)")
    args = parser.parse_args()
    print(f"n={args.n} d={args.d} m={args.m} k={args.k} float32, n_jobs={args.n_jobs}")
    print(f"BLAS: {blas_kernel()}")
    if args.grid:
        sizes = [(m, k) for k in (20, 80) for m in (1024, 4096, 16384)]
        grid(args.n, args.d, sizes, args.n_jobs, args.repeat)
        return
    if args.stream:
        stream(args.stream, args.n, args.d, args.m, args.k, args.n_jobs)
        return
    if args.wide:
        wide_step(args)
        return
    if args.rss:
        # A fresh process, so that the peak is the step's and nothing else's.
        child_args = [a for a in sys.argv[1:] if a != "--rss"]
        out = subprocess.run(
            [sys.executable, __file__, "--rss-child", *child_args],
            check=True, capture_output=True, text=True,
        ).stdout
        print(out.strip())
        return
    X, D = problem(args.n, args.d, args.m)
    if args.rss_child:
        from sklearn_dbksvd._step import dbksvd_step

        base = max_rss_gb()
        tic = time.perf_counter()
        dbksvd_step(X, D, **step_kwargs(args.k, args.n_jobs))
        print(json.dumps({
            "seconds": time.perf_counter() - tic,
            "peak_rss_gib": max_rss_gb(),
            "rss_before_step_gib": base,
            "batch_gib": X.nbytes / 2**30,
        }))
        return
    if args.scaling:
        scaling(X, D, args.k, args.repeat)
        return
    if args.cpu:
        cpu_ratio(X, D, args.k, args.repeat)
        return
    if args.omp:
        versus_omp(X, D, args.k, args.repeat)
        return
    # Rounds of every phase, floor included, and the best of each: the
    # others' load comes and goes, and a round is short enough that its
    # phases share the same conditions more often than not.
    times = {}
    for _ in range(args.repeat):
        for name, seconds in breakdown(X, D, args.k, args.n_jobs, 1).items():
            times[name] = min(seconds, times.get(name, np.inf))
    print_table(times)
    floor = times["gemm X @ D.T (floor)"]
    step = times["one step (dbksvd_step)"]
    print(f"  ratio one step / GEMM: {step / floor:.3f}")
    # The step's own blocked product runs faster than the one-shot GEMM here:
    # the ratio to it too, the stricter reading of the floor.
    print(f"  ratio one step / X @ D.T in blocks: "
          f"{step / times['X @ D.T in blocks']:.3f}")


if __name__ == "__main__":
    main()
