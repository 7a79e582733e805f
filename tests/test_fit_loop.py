"""The fit loop's early stopping."""

import numpy as np

from sklearn_dbksvd import DBKSVDDictionaryLearning
from sklearn_dbksvd._fit_loop import SmoothedError
from sklearn_dbksvd.datasets import make_sparse_dictionary_problem


def test_early_stopping_leaves_out_the_first_step():
    # A first step coded by atoms taken from its own batch looks far better
    # than the steps after it; the later ones still improve and must not
    # count as stale.
    stopper = SmoothedError(tol=1e-3, patience=3, batch_weight=0.5)
    errors = [0.01, 0.5, 0.45, 0.41, 0.38, 0.36]
    assert not any(stopper.should_stop(error) for error in errors)
    # Then it stops after `patience` steps without improvement.
    assert [stopper.should_stop(0.5) for _ in range(3)] == [False, False, True]


def test_samples_init_on_small_batches_is_not_stopped_by_its_first_step():
    # Batches of twice the atoms: the initial atoms code half of the first
    # batch exactly.
    X, _, _ = make_sparse_dictionary_problem(
        4096, 16, 64, 3, noise=0.05, random_state=0
    )
    model = DBKSVDDictionaryLearning(
        n_components=64,
        n_nonzero_coefs=3,
        batch_size=128,
        max_iter=2,
        init="samples",
        random_state=0,
    ).fit(X)
    first_error = model.history_[0]["relative_error"]
    later = [h["relative_error"] for h in model.history_[1:]]
    assert first_error < min(later[:5])  # the effect the stopper must ignore
    assert model.n_steps_ > 12
    assert np.isfinite(model.score(X))
