"""The fit loop: early stopping, the state carried between steps."""

import numpy as np
import pytest

from sklearn_dbksvd import DBKSVDDictionaryLearning, _base, _fit_loop, _step
from sklearn_dbksvd._fit_loop import (
    FitState,
    SmoothedError,
    batch_buffer,
    residual_buffer,
)
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


def test_residual_buffer_is_one_array_that_grows():
    state = FitState(np.random.RandomState(0))
    first = residual_buffer(state, (5, 3), np.float32)
    assert first.shape == (5, 3) and first.dtype == np.float32
    shorter = residual_buffer(state, (4, 3), np.float32)
    assert shorter.shape == (4, 3) and shorter.flags.c_contiguous
    assert np.shares_memory(shorter, first)
    longer = residual_buffer(state, (6, 3), np.float32)
    assert longer.shape == (6, 3) and not np.shares_memory(longer, first)
    assert residual_buffer(state, (6, 3), np.float64).dtype == np.float64
    assert residual_buffer(state, (6, 2), np.float64).shape == (6, 2)


def _fit_params():
    # 1001 samples in 5 batches: 201, 200, 200, 200 and 200 rows.
    X, _, _ = make_sparse_dictionary_problem(
        1001, 12, 20, 3, noise=0.05, random_state=0
    )
    params = dict(
        n_components=20, n_nonzero_coefs=3, batch_size=250, max_iter=2,
        max_no_improvement=None, random_state=0,
    )
    return X, params


def test_fit_steps_share_one_residual_buffer(monkeypatch):
    X, params = _fit_params()
    # Reference: every step allocates its own residual.
    step = _fit_loop.fit_step
    with monkeypatch.context() as patch:
        patch.setattr(
            _fit_loop,
            "fit_step",
            lambda *a, residual_out=None, **kw: step(*a, **kw),
        )
        expected = DBKSVDDictionaryLearning(**params).fit(X)
    written, states = [], []
    mp_encode, run_fit = _step._mp_encode, _base.run_fit
    monkeypatch.setattr(
        _step,
        "_mp_encode",
        lambda *a, **kw: written.append(kw["residual_out"]) or mp_encode(*a, **kw),
    )
    monkeypatch.setattr(
        _base, "run_fit", lambda *a, **kw: states.append(run_fit(*a, **kw))
    )
    model = DBKSVDDictionaryLearning(**params).fit(X)
    np.testing.assert_array_equal(model.components_, expected.components_)
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in model.history_]
    assert strip == [
        {k: v for k, v in h.items() if k != "seconds"} for h in expected.history_
    ]
    # Every step wrote into the leading rows of the first step's buffer.
    assert len(written) == model.n_steps_ == 10
    assert [len(w) for w in written[:5]] == [201, 200, 200, 200, 200]
    assert all(w.base is written[0].base is not None for w in written)
    # Dropped when the fit ends, with the Gram matrix.
    assert states[0].residual is None and states[0].gram is None
    assert states[0].batch is None


def test_residual_buffer_dropped_when_a_fit_fails(monkeypatch):
    X, params = _fit_params()
    states = []

    def run_fit(model, X, plan, state, **kw):
        states.append(state)
        return _fit_loop.run_fit(model, X, plan, state, **kw)

    def callback(info):
        assert states[0].residual is not None  # held between steps
        assert states[0].batch is not None
        if info["step"] == 2:
            raise RuntimeError("stop here")

    monkeypatch.setattr(_base, "run_fit", run_fit)
    with pytest.raises(RuntimeError, match="stop here"):
        DBKSVDDictionaryLearning(**params, callback=callback).fit(X)
    assert states[0].residual is None and states[0].gram is None
    assert states[0].batch is None


def _strip_seconds(history):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("with_mean", [False, True])
@pytest.mark.parametrize("scale", [1.0, 2.0**30])
def test_batches_read_into_one_buffer_give_the_same_fit(
    monkeypatch, dtype, order, with_mean, scale
):
    X, params = _fit_params()
    # Off the origin, so that centring changes the batches; scaled by 2**30,
    # every batch is out of range and scaled by the fit.
    X = np.asarray((X + 3.0) * scale, dtype=dtype, order=order)
    original = X.copy(order="A")
    params = dict(params, with_mean=with_mean)
    with monkeypatch.context() as patch:
        patch.setattr(_fit_loop, "_REUSE_BATCH_BUFFER", False)
        expected = DBKSVDDictionaryLearning(**params).fit(X)
    batches, states = [], []
    step, run_fit = _fit_loop.fit_step, _base.run_fit

    def recording_step(X_batch, *a, **kw):
        batches.append(X_batch)
        return step(X_batch, *a, **kw)

    monkeypatch.setattr(_fit_loop, "fit_step", recording_step)
    monkeypatch.setattr(
        _base, "run_fit", lambda *a, **kw: states.append(a[3]) or run_fit(*a, **kw)
    )
    model = DBKSVDDictionaryLearning(**params).fit(X)
    assert model.components_.dtype == dtype
    assert model.components_.tobytes() == expected.components_.tobytes()
    assert _strip_seconds(model.history_) == _strip_seconds(expected.history_)
    assert X.tobytes(order="A") == original.tobytes(order="A")  # never modified
    assert X.flags.f_contiguous == (order == "F")
    # Every step read the leading rows of one buffer, the fit's own.
    assert len(batches) == model.n_steps_ == 10
    base = batches[0].base
    assert base is not None and all(b.base is base for b in batches)
    assert all(b.flags.c_contiguous for b in batches)
    assert not np.shares_memory(base, X)
    # Dropped when the fit ends.
    assert states[0].batch is None


def test_lazy_batches_are_read_into_new_arrays(monkeypatch, tmp_path):
    X, params = _fit_params()
    np.save(tmp_path / "X.npy", X)
    mapped = np.load(tmp_path / "X.npy", mmap_mode="r")
    batches, states = [], []
    step, run_fit = _fit_loop.fit_step, _base.run_fit

    def recording_step(X_batch, *a, **kw):
        assert states[0].batch is None  # no batch buffer for lazy data
        batches.append(X_batch)
        return step(X_batch, *a, **kw)

    monkeypatch.setattr(_fit_loop, "fit_step", recording_step)
    monkeypatch.setattr(
        _base, "run_fit", lambda *a, **kw: states.append(a[3]) or run_fit(*a, **kw)
    )
    DBKSVDDictionaryLearning(**params).fit(mapped)
    assert len(batches) == 10
    assert not any(np.shares_memory(batches[0], b) for b in batches[1:])


def test_batch_buffer_is_apart_from_the_residual_buffer():
    state = FitState(np.random.RandomState(0))
    batch = batch_buffer(state, (5, 3), np.float32)
    residual = residual_buffer(state, (5, 3), np.float32)
    assert not np.shares_memory(batch, residual)
    assert batch_buffer(state, (4, 3), np.float32).base is state.batch
    assert np.shares_memory(batch_buffer(state, (4, 3), np.float32), batch)
