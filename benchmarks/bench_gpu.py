"""One paper-size DB-KSVD step with ``backend="cupy"`` against the CPU step.

The n-dependent products (``X Dᵀ``, ``D Dᵀ``, the residual, ``EᵀE`` of wide
error matrices) run on the GPU through ``sklearn_dbksvd._backend``; matching
pursuit and the atom updates stay on the host. The SPEC's target is one step
under 1 s on a GPU.

Usage::

    python benchmarks/bench_gpu.py                # n=2^16, d=2304, m=4096, k=20
    python benchmarks/bench_gpu.py -n 1048576     # the paper's appendix B size
    python benchmarks/bench_gpu.py --device-input # X already on the GPU

Prints the device budget the run used (a quarter of the free device memory,
split among the cores: ``_backend.product_budget``), the rows of the blocks
that budget and the encoder give, the estimate of the device's part
(``_fit_loop.fit_device_memory``) and what CuPy's memory pool held after
the step, to set the computed table "largest width per GPU memory" of the
user guide against a measurement.

Exits with status 1 and a message where CuPy or a GPU is missing.
"""

import argparse
import sys


def gpu_or_exit():
    try:
        import cupy
    except ImportError:
        sys.exit(
            "bench_gpu: CuPy is not installed (pip install 'sklearn-dbksvd[gpu]'); "
            "no GPU benchmark."
        )
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # CUDA driver missing or broken
        sys.exit(f"bench_gpu: no usable GPU ({error}).")
    if count == 0:
        sys.exit("bench_gpu: no GPU found.")
    return cupy


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2**16)
    parser.add_argument("-d", type=int, default=2304)
    parser.add_argument("-m", type=int, default=4096)
    parser.add_argument("-k", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--n-jobs", type=int, default=-1)
    parser.add_argument("--device-input", action="store_true")
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU step")
    args = parser.parse_args()
    cupy = gpu_or_exit()
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    from bench_step import best_time, problem, step_kwargs

    from sklearn_dbksvd import _backend
    from sklearn_dbksvd._fit_loop import fit_device_memory
    from sklearn_dbksvd._step import dbksvd_step

    X, D = problem(args.n, args.d, args.m)
    X_in = cupy.asarray(X) if args.device_input else X
    name = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    print(f"n={args.n} d={args.d} m={args.m} k={args.k} float32 on {name}")
    backend = _backend.resolve_backend("cupy", X_in)
    free = _backend.device_memory(backend)
    budget = backend.product_bytes
    estimate = fit_device_memory(
        args.m, args.d, args.n, 4, available=free, gram_memory=None,
        n_jobs=args.n_jobs,
    )
    row_bytes = (args.d + args.m) * 4
    print(
        f"  device memory free: {free / 1e9:.2f} GB; budget of one product: "
        f"{budget / 1e6:.1f} MB ({budget // row_bytes} rows of X Dᵀ or D Dᵀ)"
    )
    print(
        f"  estimate: atoms (twice) {estimate['atoms'] / 1e9:.2f} GB + blocks of "
        f"{estimate['block_rows']} samples in flight "
        f"{estimate['blocks'] / 1e9:.2f} GB = {estimate['total'] / 1e9:.2f} GB"
    )

    def gemm():
        Xg, Dg = cupy.asarray(X), cupy.asarray(D)
        out = Xg @ Dg.T
        cupy.cuda.runtime.deviceSynchronize()
        return out.shape

    t_gemm, _ = best_time(gemm, args.repeat)

    def gpu_step():
        kwargs = step_kwargs(args.k, args.n_jobs, backend="cupy")
        result = dbksvd_step(X_in, D, **kwargs)
        cupy.cuda.runtime.deviceSynchronize()
        return result

    pool = cupy.get_default_memory_pool()
    pool.free_all_blocks()  # the pool then holds what the steps asked for
    gpu_step()  # warm-up: CUDA context, cuBLAS handles, compiled kernels
    t_gpu, _ = best_time(gpu_step, args.repeat)
    print(f"  CuPy memory pool after the steps: {pool.total_bytes() / 1e9:.2f} GB held")
    print(f"  GEMM X @ D.T on the GPU (with transfer): {t_gemm:.3f} s")
    print(f"  one step, backend='cupy'               : {t_gpu:.3f} s  (target < 1 s)")
    if not args.no_cpu:
        t_cpu, _ = best_time(
            lambda: dbksvd_step(X, D, **step_kwargs(args.k, args.n_jobs)), 1
        )
        print(f"  one step, backend='numpy'              : {t_cpu:.3f} s")


if __name__ == "__main__":
    main()
