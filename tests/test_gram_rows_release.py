"""The Gram rows of a wide dictionary are freed as soon as a call ends.

``dbksvd evaluate`` calls ``transform`` once per forward batch; each call
plans a row cache within ``gram_memory``. A reference cycle between the rows
and their per-worker tables kept every call's cache alive until the cyclic
garbage collector ran: at m = 65,536 three calls held 10 GB at once.
"""

import gc
import weakref

import numpy as np

from sklearn_dbksvd import DBKSVDDictionaryLearning, _encode
from sklearn_dbksvd._gram_rows import GramRows


def test_transform_frees_its_gram_rows_without_the_garbage_collector(monkeypatch):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((700, 16)).astype(np.float32)
    # A budget of 100 rows of 512: the coder reads rows, never the whole matrix.
    estimator = DBKSVDDictionaryLearning(
        n_components=512, n_nonzero_coefs=4, max_steps=1, batch_size=700,
        random_state=0, gram_memory=512 * 4 * 100,
    ).fit(X)
    plans = []
    plan_gram = _encode.plan_gram

    def recording(*args, **kwargs):
        gram = plan_gram(*args, **kwargs)
        plans.append(weakref.ref(gram))
        return gram

    monkeypatch.setattr(_encode, "plan_gram", recording)
    gc.disable()
    try:
        codes = estimator.transform(X[:100])
        assert plans and isinstance(plans[0](), (GramRows, type(None)))
        alive = [ref for ref in plans if ref() is not None]
    finally:
        gc.enable()
    assert alive == []
    # Same codes as a coder reading the whole Gram matrix.
    whole = DBKSVDDictionaryLearning(
        n_components=512, n_nonzero_coefs=4, gram_memory=None
    )
    whole.components_, whole.mean_ = estimator.components_, estimator.mean_
    whole.n_features_in_ = 16
    np.testing.assert_allclose(codes, whole.transform(X[:100]), rtol=1e-4, atol=1e-5)
