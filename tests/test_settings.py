"""Fit settings resolved once, and the fit loop that takes them (and nothing else)."""

import ast
import copy
import dataclasses
import inspect

import numpy as np
import pytest

from sklearn_dbksvd import DBKSVDDictionaryLearning, MatryoshkaDBKSVD, _fit_loop
from sklearn_dbksvd._fit_loop import FitState, plan_fit, run_fit
from sklearn_dbksvd._settings import FitSettings, StepSettings, fit_settings
from sklearn_dbksvd.cli import _resume
from sklearn_dbksvd.datasets import make_sparse_dictionary_problem


@pytest.fixture(scope="module")
def X():
    X, _, _ = make_sparse_dictionary_problem(500, 12, 24, 3, random_state=0)
    return X.astype(np.float32)


@pytest.mark.parametrize(
    "params, shape, expected",
    [
        # The documented defaults: m = n_features, k = max(1, n_features // 10)
        # capped at m, batch min(n, max(4096, 32 * n_features)), w = min(16, m).
        ({}, (500, 12), dict(n_components=12, k=1, batch=500, w=12)),
        ({}, (9000, 200), dict(n_components=200, k=20, batch=6400, w=16)),
        ({"n_components": 3}, (100, 64), dict(n_components=3, k=3, batch=100, w=3)),
        (
            {"n_components": 40, "n_nonzero_coefs": 5, "batch_size": 64,
             "update_batch_size": 4},
            (100, 12), dict(n_components=40, k=5, batch=64, w=4),
        ),
        ({"batch_size": 1000}, (100, 12), dict(n_components=12, k=1, batch=100, w=12)),
    ],
)
def test_defaults_resolved_for_the_data_shape(params, shape, expected):
    settings = fit_settings(DBKSVDDictionaryLearning(**params), *shape)
    assert settings.n_components == expected["n_components"]
    assert settings.n_nonzero_coefs == expected["k"]
    assert settings.batch_size == expected["batch"]
    assert settings.step.update_batch_size == expected["w"]
    assert settings.step.levels is None


@pytest.mark.parametrize(
    "k, expected",
    [
        # 32 atoms: groups (2, 2, 4, 8, 16); k=7 shares 2, 2, 1, 1, 1.
        (7, [(0, 2, 2), (2, 4, 2), (4, 8, 1), (8, 16, 1), (16, 32, 1)]),
        # k=2 < 5 groups: groups 2.. merge into one level of one nonzero.
        (2, [(0, 2, 1), (2, 32, 1)]),
    ],
)
def test_matryoshka_settings_carry_the_nested_levels(k, expected):
    settings = fit_settings(MatryoshkaDBKSVD(32, n_nonzero_coefs=k), 100, 16)
    levels = [(atoms.start, atoms.stop, share) for atoms, share in settings.step.levels]
    assert levels == expected


@pytest.mark.parametrize(
    "cls, params, match",
    [
        (DBKSVDDictionaryLearning, {"n_components": 4, "n_nonzero_coefs": 5},
         "n_nonzero_coefs=5 exceeds n_components=4"),
        (DBKSVDDictionaryLearning, {"mp_refit": True, "positive_code": True},
         "mp_refit=True cannot keep codes nonnegative"),
        (DBKSVDDictionaryLearning, {"n_components": 4, "dict_init": np.ones((3, 12))},
         r"dict_init has shape \(3, 12\)"),
        (MatryoshkaDBKSVD, {"n_components": 8, "group_sizes": (4, 3)},
         "sum to 7"),
        (MatryoshkaDBKSVD,
         {"transform_mode": "nested", "transform_algorithm": "lasso_lars"},
         "transform_mode='nested'"),
    ],
)
def test_inconsistent_settings_refused_before_the_fit(X, cls, params, match):
    with pytest.raises(ValueError, match=match):
        fit_settings(cls(**params), *X.shape)
    model = cls(**params)
    with pytest.raises(ValueError, match=match):
        model.fit(X)
    assert not hasattr(model, "components_")


def test_settings_are_frozen():
    settings = fit_settings(DBKSVDDictionaryLearning(), 100, 12)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.batch_size = 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.step.n_nonzero_coefs = 3
    assert settings.step.scaled(1.0) is settings.step
    assert settings.step.scaled(4.0).alpha == 4 * settings.step.alpha


def test_the_fit_loop_needs_only_the_settings(X):
    """A fit from settings written by hand is the estimator's fit, bit for bit."""
    params = dict(
        n_components=24, n_nonzero_coefs=3, batch_size=100, max_iter=2,
        update_batch_size=4, random_state=0,
    )
    expected = DBKSVDDictionaryLearning(**params).fit(X)
    settings = FitSettings(
        step=StepSettings(n_components=24, n_nonzero_coefs=3, update_batch_size=4),
        batch_size=100,
        max_iter=2,
    )
    plan = plan_fit(settings, X)
    state = run_fit(settings, X, plan, FitState(np.random.RandomState(0)))
    assert np.array_equal(state.components, expected.components_)
    assert [h["relative_error"] for h in state.history] == [
        h["relative_error"] for h in expected.history_
    ]


@pytest.mark.parametrize("cls", [DBKSVDDictionaryLearning, MatryoshkaDBKSVD])
def test_fit_from_a_saved_state_ends_as_the_uninterrupted_fit(X, cls):
    params = dict(
        n_components=24, n_nonzero_coefs=5, batch_size=100, max_iter=2,
        max_no_improvement=None, random_state=0,
    )
    expected = cls(**params).fit(X)
    saved = {}

    def save(state):
        if state.step == 3:
            saved["state"] = copy.deepcopy(state)

    cls(**params).fit_from_state(X, on_step=save)
    resumed = cls(**params).fit_from_state(X, saved["state"])
    assert np.array_equal(resumed.components_, expected.components_)
    assert resumed.n_steps_ == expected.n_steps_ == 10
    # Continues with partial_fit from the generator the fit left.
    batch = X[:100]
    assert np.array_equal(
        resumed.partial_fit(batch).components_, expected.partial_fit(batch).components_
    )


@pytest.mark.parametrize("module", [_fit_loop, _resume])
def test_no_private_estimator_attribute_is_used(module):
    """The fit loop and the checkpointed fit reach the estimator by its public API."""
    tree = ast.parse(inspect.getsource(module))
    private = [
        f"{node.value.id}.{node.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in {"model", "estimator", "self"}
        and node.attr.startswith("_")
    ]
    assert private == []


def test_memorising_warning_points_at_the_callers_line():
    X = np.random.RandomState(0).randn(10, 12)
    with pytest.warns(UserWarning, match="at least n_samples") as record:
        DBKSVDDictionaryLearning(12, max_iter=1).fit(X)
    assert record[0].filename == __file__
