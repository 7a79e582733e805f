"""Coding speed: matching pursuit on the Gram matrix vs orthogonal matching pursuit.

All coders get the same float32 dictionary (uniform atoms, the paper's A.1),
the same precomputed Gram matrix ``D Dᵀ`` and the same samples, drawn from a
planted k-sparse model on that dictionary so that the codes mean something.
Times are per sample and "from X": they include the correlation GEMM
``X @ D.T`` that every Gram-domain coder needs. The GEMM alone is the floor.
"""

import numpy as np

from .common import fmt, log, table, timed

NAME = "encode"

SIZES = {
    "full": {"n_features": 2304, "n_components": 4096, "k": 20, "n_samples": 1024},
    "quick": {"n_features": 2304, "n_components": 4096, "k": 20, "n_samples": 128},
}


def _data(n_samples, n_features, n_components, k, seed):
    """Planted samples ``code @ D`` with k nonzeros in U(1, 2), float32."""
    from sklearn_dbksvd.datasets import uniform_atoms

    rng = np.random.RandomState(seed)
    D = uniform_atoms(n_components, n_features, rng, np.float32)
    support = np.argsort(rng.random_sample((n_samples, n_components)), axis=1)[:, :k]
    code = np.zeros((n_samples, n_components), dtype=np.float32)
    code[np.arange(n_samples)[:, None], support] = rng.uniform(1, 2, support.shape)
    return (code @ D).astype(np.float32), D


def run(quick, seed):
    from sklearn.linear_model import orthogonal_mp_gram

    from sklearn_dbksvd import sparse_encode_mp
    from sklearn_dbksvd.metrics import relative_error

    size = SIZES["quick" if quick else "full"]
    d, m, k, n = size["n_features"], size["n_components"], size["k"], size["n_samples"]
    X, D = _data(n, d, m, k, seed)
    log(f"encode: d={d} m={m} k={k} n={n} float32")

    gram, gram_wall, gram_cpu = timed(lambda: D @ D.T, repeat=2)
    cov, gemm_wall, gemm_cpu = timed(lambda: X @ D.T, repeat=5)
    rows = []

    def add(name, wall, cpu, code, note=""):
        err = None if code is None else relative_error(X, code.astype(np.float32) @ D)
        rows.append(
            {
                "coder": name,
                "seconds": wall,
                "cpu_seconds": cpu,
                "us_per_sample": 1e6 * wall / n,
                "relative_error": err,
                "note": note,
            }
        )

    add("GEMM X @ D.T (floor)", gemm_wall, gemm_cpu, None, "correlations only")

    log("encode: sparse_encode_mp")
    sparse_encode_mp(X[:2], D[:64], k)  # compile numba kernels, if any, untimed
    code, wall, cpu = timed(sparse_encode_mp, X, D, k, gram=gram, repeat=3)
    add("sklearn_dbksvd.sparse_encode_mp", wall, cpu, code, "n_jobs=None")
    mp_wall, mp_cpu = wall, cpu
    code, wall, cpu = timed(sparse_encode_mp, X, D, k, gram=gram, n_jobs=2, repeat=3)
    add("sklearn_dbksvd.sparse_encode_mp", wall, cpu, code, "n_jobs=2")

    log("encode: orthogonal_mp_gram (slow)")

    def omp():
        return orthogonal_mp_gram(gram, (X @ D.T).T, n_nonzero_coefs=k).T

    code, omp_wall, omp_cpu = timed(omp)
    add(
        "sklearn.linear_model.orthogonal_mp_gram", omp_wall, omp_cpu, code, "Xy = D X^T"
    )

    try:
        from dictlearn._coders._omp import batch_omp_gram
    except ImportError:
        batch_omp_gram = None
    if batch_omp_gram is not None:
        log("encode: dictlearn batch OMP")
        # Compile the numba kernel outside the timing.
        batch_omp_gram(gram[:8, :8], cov[:2, :8].T, n_nonzero_coefs=2)

        def dictlearn_omp():
            return batch_omp_gram(gram, (X @ D.T).T, n_nonzero_coefs=k).T

        code, wall, cpu = timed(dictlearn_omp)
        add("dictlearn batch_omp_gram (numba, float64)", wall, cpu, code, "Batch-OMP")

    mp_coding = mp_wall - gemm_wall
    omp_coding = omp_wall - gemm_wall
    summary = {
        "omp_over_mp_from_X": omp_wall / mp_wall,
        "omp_over_mp_from_X_cpu": omp_cpu / mp_cpu if mp_cpu > 0 else None,
        "omp_over_mp_coding_only": omp_coding / mp_coding if mp_coding > 0 else None,
        "mp_over_gemm": mp_wall / gemm_wall,
        "target_ratio": 100.0,
        "gram_seconds": gram_wall,
    }
    summary["target_met"] = summary["omp_over_mp_from_X"] >= 100.0
    return {"sizes": size, "rows": rows, "summary": summary}


def markdown(result):
    size, s = result["sizes"], result["summary"]
    header = [
        "coder",
        "note",
        "seconds (wall)",
        "CPU s",
        "µs / sample",
        "relative error",
    ]
    rows = [
        [
            r["coder"],
            r["note"],
            fmt(r["seconds"]),
            fmt(r["cpu_seconds"]),
            fmt(r["us_per_sample"]),
            fmt(r["relative_error"]),
        ]
        for r in result["rows"]
    ]
    lines = [
        f"d={size['n_features']}, m={size['n_components']}, k={size['k']}, "
        f"{size['n_samples']} samples, float32; Gram D D^T precomputed once "
        f"({fmt(s['gram_seconds'])} s) and shared. Times are best of 3 (MP), "
        "5 (GEMM) or 1 (OMP) and include the GEMM X @ D.T.",
        "",
        table(header, rows),
        "",
        f"- orthogonal_mp_gram / sparse_encode_mp, from X: "
        f"**{fmt(s['omp_over_mp_from_X'])}x** (target >= 100x: "
        f"{'met' if s['target_met'] else 'missed'})",
        f"- same ratio in CPU seconds: {fmt(s.get('omp_over_mp_from_X_cpu'))}x",
        f"- same ratio on the coding alone (GEMM subtracted from both): "
        f"{fmt(s['omp_over_mp_coding_only'])}x",
        f"- sparse_encode_mp / GEMM floor: {fmt(s['mp_over_gemm'])}x",
    ]
    return "\n".join(lines)
