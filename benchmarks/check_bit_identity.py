"""Fit both estimators on planted data and save or compare atoms and codes bit for bit.

A check for behaviour-preserving refactors of the fit loop and the steps::

    python benchmarks/check_bit_identity.py save /tmp/before.npz   # on the old code
    python benchmarks/check_bit_identity.py check /tmp/before.npz  # on the new code

``check`` exits 1 and names the cases whose ``components_`` or ``transform``
differ in any bit (``np.array_equal``).
"""

import sys
import warnings

import numpy as np
import scipy.sparse as sp

from sklearn_dbksvd import DBKSVDDictionaryLearning, MatryoshkaDBKSVD
from sklearn_dbksvd.datasets import make_sparse_dictionary_problem

COMMON = dict(n_nonzero_coefs=4, batch_size=300, max_iter=3, random_state=0)
CASES = {
    "default": (DBKSVDDictionaryLearning, {}),
    "default64": (DBKSVDDictionaryLearning, {"dtype": np.float64}),
    "positive_dict": (DBKSVDDictionaryLearning, {"positive_dict": True}),
    "positive_both": (
        DBKSVDDictionaryLearning, {"positive_dict": True, "positive_code": True}
    ),
    "omp": (DBKSVDDictionaryLearning, {"fit_algorithm": "omp"}),
    "split_sign": (DBKSVDDictionaryLearning, {"split_sign": True}),
    "mp_tol_refit": (DBKSVDDictionaryLearning, {"mp_tol": 0.3, "mp_refit": True}),
    "approx_ub1": (
        DBKSVDDictionaryLearning, {"dict_update": "approx", "update_batch_size": 1}
    ),
    "with_mean": (DBKSVDDictionaryLearning, {"with_mean": True}),
    "small_gram": (DBKSVDDictionaryLearning, {"gram_memory": 4096.0}),
    "code_init": (DBKSVDDictionaryLearning, {"code_init": True}),
    "matryoshka": (MatryoshkaDBKSVD, {}),
    "matryoshka_omp": (MatryoshkaDBKSVD, {"fit_algorithm": "omp"}),
    "matryoshka_positive": (
        MatryoshkaDBKSVD, {"positive_dict": True, "split_sign": True}
    ),
    "matryoshka_nested": (MatryoshkaDBKSVD, {"transform_mode": "nested"}),
    "matryoshka_code_init": (MatryoshkaDBKSVD, {"code_init": True}),
}


def run_case(cls, params):
    params = dict(params)
    dtype = params.pop("dtype", np.float32)
    X, _, codes = make_sparse_dictionary_problem(
        900, 12, 32, 4, random_state=1
    )
    X = X.astype(dtype)
    if params.pop("code_init", False):
        codes = sp.csr_matrix(codes)
        params["code_init"] = codes
    model = cls(32, **COMMON, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(X)
    out = {"components": model.components_, "transform": model.transform(X)}
    # partial_fit: three steps on thirds of the data
    pf = cls(32, **COMMON, **{k: v for k, v in params.items() if k != "code_init"})
    for part in np.array_split(X, 3):
        pf.partial_fit(part)
    out["partial_components"] = pf.components_
    out["partial_transform"] = pf.transform(X)
    return {
        key: value.toarray() if sp.issparse(value) else np.asarray(value)
        for key, value in out.items()
    }


def main(mode, path):
    results = {}
    for name, (cls, params) in CASES.items():
        for key, value in run_case(cls, params).items():
            results[f"{name}/{key}"] = value
    if mode == "save":
        np.savez(path, **results)
        print(f"saved {len(results)} arrays to {path}")
        return 0
    saved = np.load(path)
    bad = [
        key for key in saved.files
        if key not in results
        or saved[key].dtype != results[key].dtype
        or not np.array_equal(saved[key], results[key])
    ]
    print(f"{len(saved.files) - len(bad)} of {len(saved.files)} arrays bit-identical")
    for key in bad:
        print(f"DIFFERS: {key}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
