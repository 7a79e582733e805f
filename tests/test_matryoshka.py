"""MatryoshkaDBKSVD, known-support initialisation (code_init), MP options."""

import copy

import numpy as np
import pytest
import scipy.sparse as sp
from numpy.testing import assert_allclose, assert_array_equal

from sklearn_dbksvd import (
    DBKSVDDictionaryLearning,
    MatryoshkaDBKSVD,
)
from sklearn_dbksvd._fit_loop import components_from_known_support
from sklearn_dbksvd._settings import fit_settings
from sklearn_dbksvd._step_matryoshka import (
    default_group_sizes,
    matryoshka_step,
    nested_levels,
    nonzero_shares,
)
from sklearn_dbksvd.datasets import make_sparse_dictionary_problem, uniform_atoms
from sklearn_dbksvd.metrics import atom_recovery
from tests import _helpers
from tests import _oracles as oracles


@pytest.fixture(scope="module")
def problem():
    X, D, C = make_sparse_dictionary_problem(600, 16, 32, 4, noise=0.05, random_state=0)
    return X, D, C


@pytest.fixture(scope="module")
def fitted(problem):
    X, _, _ = problem
    model = MatryoshkaDBKSVD(
        32, n_nonzero_coefs=7, max_steps=3, random_state=0, transform_mode="nested"
    )
    return model.fit(X)


def _with(model, **params):
    """A copy of a fitted model with other parameters (the fixture stays as is)."""
    return copy.deepcopy(model).set_params(**params)


def _step_kwargs(**overrides):
    """Arguments of ``matryoshka_step``; ``levels`` in ``overrides``."""
    return _helpers.step_settings(
        **{"random_state": np.random.RandomState(0), **overrides}
    )


# ----------------------------------------------------------------------
# Groups and shares of k
# ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "n_components, expected",
    [
        (4096, (256, 256, 512, 1024, 2048)),
        (1000, (62, 62, 124, 248, 504)),  # not a power of two: last absorbs 8
        (16, (1, 1, 2, 4, 8)),
        (10, (1, 1, 2, 6)),
        (3, (1, 2)),
        (1, (1,)),
    ],
)
def test_default_group_sizes(n_components, expected):
    assert default_group_sizes(n_components) == expected


def test_default_group_sizes_any_n_components():
    for m in range(1, 300):
        sizes = default_group_sizes(m)
        assert sum(sizes) == m and min(sizes) >= 1
        assert sizes[0] == max(1, m // 16)


@pytest.mark.parametrize(
    "group_sizes, match",
    [
        ((8, 8), "sum to 16"),
        ((0, 32), "positive"),
        ((-4, 36), "positive"),
        ((16.0, 16.0), "ints"),
        ((), "non-empty"),
        (((16, 16),), "non-empty"),
    ],
)
def test_group_sizes_validation(problem, group_sizes, match):
    X, _, _ = problem
    model = MatryoshkaDBKSVD(32, group_sizes=group_sizes, n_nonzero_coefs=4)
    with pytest.raises(ValueError, match=match):
        model.fit(X)
    assert not hasattr(model, "components_")


def test_explicit_group_sizes(problem):
    X, _, _ = problem
    model = MatryoshkaDBKSVD(
        32, group_sizes=[4, 12, 16], n_nonzero_coefs=4, max_steps=1
    )
    assert model.fit(X).group_sizes_ == (4, 12, 16)


def test_shares_sum_to_k():
    assert nonzero_shares(7, 5) == [2, 2, 1, 1, 1]
    assert nonzero_shares(20, 5) == [4] * 5
    for k in range(1, 30):
        for n_groups in range(1, 9):
            shares = nonzero_shares(k, n_groups)
            assert sum(shares) == k and max(shares) - min(shares) <= 1


def test_levels_merge_groups_without_share():
    # k=2 < 5 groups: groups 3-5 have no nonzero of their own and join group 2.
    levels = nested_levels((2, 2, 4, 8, 16), 2)
    assert levels == [(slice(0, 2), 1), (slice(2, 32), 1)]
    assert nested_levels((2, 2, 4, 8, 16), 7)[-1] == (slice(16, 32), 1)


def test_atoms_of_merged_groups_are_learned(problem):
    X, _, _ = problem
    init = uniform_atoms(32, 16, np.random.RandomState(1))
    model = MatryoshkaDBKSVD(
        32, n_nonzero_coefs=2, dict_init=init, max_steps=2, replace_until=0
    ).fit(X)
    changed = np.abs(model.components_ - init).max(axis=1) > 1e-6
    assert changed[16:].mean() > 0.5  # the last, merged group is used


# ----------------------------------------------------------------------
# The nested step
# ----------------------------------------------------------------------
def test_step_encodes_each_group_on_the_updated_residual(problem):
    X, _, _ = problem
    D0 = uniform_atoms(32, 16, np.random.RandomState(3))
    levels = nested_levels((8, 24), 4)  # shares 2 and 2
    kwargs = _step_kwargs(replace=False, levels=levels)
    components, _, codes = matryoshka_step(X, D0, **kwargs)

    # Group 1 codes X, group 2 what group 1 left *after* its update: each
    # level's support is that of textbook matching pursuit of that residual
    # on the level's starting atoms (the K-SVD update keeps supports), and
    # the update lowers the level's error below matching pursuit's.
    residual = X
    for atoms, share in levels:
        selected = oracles.matching_pursuit(residual, D0[atoms], share)
        assert_array_equal(codes[:, atoms].toarray() != 0, selected != 0)
        error_before = np.linalg.norm(residual - selected @ D0[atoms])
        residual = residual - codes[:, atoms] @ components[atoms]
        assert np.linalg.norm(residual) < 0.95 * error_before
    assert_allclose(np.linalg.norm(components, axis=1), 1, rtol=1e-12)
    assert_allclose(X - codes @ components, residual, atol=1e-10)


def test_step_metrics_are_of_the_final_residual(problem):
    X, _, _ = problem
    D0 = uniform_atoms(32, 16, np.random.RandomState(3))
    components, info, codes = matryoshka_step(
        X, D0, **_step_kwargs(levels=nested_levels((8, 24), 4), replace=False)
    )
    residual = X - codes @ components
    ratio = np.linalg.norm(residual, axis=1) / np.linalg.norm(X, axis=1)
    assert info["relative_error"] == pytest.approx(ratio.mean(), rel=1e-10)
    assert info["n_replaced"] == 0


@pytest.mark.parametrize("k", [2, 4, 7])
@pytest.mark.parametrize("fit_algorithm", ["mp", "omp"])
def test_fit_codes_have_at_most_k_nonzeros(problem, k, fit_algorithm):
    X, _, _ = problem
    D0 = uniform_atoms(32, 16, np.random.RandomState(3))
    levels = nested_levels(default_group_sizes(32), k)
    _, _, codes = matryoshka_step(
        X, D0, **_step_kwargs(levels=levels, fit_algorithm=fit_algorithm)
    )
    assert np.diff(codes.indptr).max() <= k
    for atoms, share in levels:
        assert np.diff(codes[:, atoms].tocsr().indptr).max() <= share


def test_replacement_is_per_group(problem):
    X, _, _ = problem
    # Group 2 holds two copies of one atom: one of them must be replaced.
    D0 = uniform_atoms(32, 16, np.random.RandomState(3))
    D0[20] = D0[21]
    _, info, _ = matryoshka_step(
        X, D0, **_step_kwargs(levels=nested_levels((8, 24), 4), replace_min_usage=0)
    )
    assert info["n_replaced"] >= 1


# ----------------------------------------------------------------------
# Transform
# ----------------------------------------------------------------------
def test_nested_transform_prefix_property(problem, fitted):
    """The first g groups alone give the reconstruction nested transform reports."""
    X, _, _ = problem
    D = fitted.components_
    code = fitted.transform(X)
    levels = nested_levels(fitted.group_sizes_, 7)
    residual = X
    for atoms, share in levels:
        alone = oracles.matching_pursuit(residual, D[atoms], share)
        assert_allclose(code[:, atoms], alone, atol=1e-10)
        residual = residual - alone @ D[atoms]
        prefix = slice(0, atoms.stop)
        assert_allclose(X - code[:, prefix] @ D[prefix], residual, atol=1e-10)


def test_nested_transform_prefix_of_truncated_model(problem, fitted):
    """Dropping the last groups does not change the codes of the others."""
    X, _, _ = problem
    sizes = fitted.group_sizes_
    code = fitted.transform(X)
    for g in range(1, len(sizes)):
        n_atoms = sum(sizes[:g])
        shares = nonzero_shares(7, len(sizes))[:g]
        truncated = MatryoshkaDBKSVD(
            n_atoms,
            group_sizes=sizes[:g],
            n_nonzero_coefs=sum(shares),
            dict_init=fitted.components_[:n_atoms],
            transform_mode="nested",
            max_steps=1,
        ).fit(X[:50])
        truncated.components_ = fitted.components_[:n_atoms]
        assert_allclose(truncated.transform(X), code[:, :n_atoms], atol=1e-10)


def test_full_transform_is_one_encoding(problem, fitted):
    X, _, _ = problem
    fitted_full = MatryoshkaDBKSVD(
        32, n_nonzero_coefs=7, max_steps=3, random_state=0
    ).fit(X)
    assert_allclose(fitted_full.components_, fitted.components_)
    expected = oracles.matching_pursuit(X, fitted.components_, 7)
    assert_allclose(fitted_full.transform(X), expected, atol=1e-10)


@pytest.mark.parametrize("mode", ["full", "nested"])
@pytest.mark.parametrize("transform_k", [None, 3, 6])
def test_transform_has_at_most_k_nonzeros(problem, fitted, mode, transform_k):
    X, _, _ = problem
    model = _with(fitted, transform_mode=mode, transform_n_nonzero_coefs=transform_k)
    code = model.transform(X)
    assert (code != 0).sum(axis=1).max() <= (transform_k or 7)


def test_nested_sparse_output_and_float32(problem):
    X, _, _ = problem
    X32 = X.astype(np.float32)
    model = MatryoshkaDBKSVD(
        32,
        n_nonzero_coefs=4,
        max_steps=2,
        random_state=0,
        transform_mode="nested",
        sparse_output=True,
    ).fit(X32)
    code = model.transform(X32)
    assert sp.issparse(code) and code.dtype == np.float32
    assert model.components_.dtype == np.float32
    dense = model.set_params(sparse_output=False).transform(X32)
    assert_allclose(code.toarray(), dense)


def test_nested_needs_k_sparse_coder(problem):
    X, _, _ = problem
    model = MatryoshkaDBKSVD(
        32, n_nonzero_coefs=4, transform_mode="nested", transform_algorithm="lasso_lars"
    )
    with pytest.raises(ValueError, match="needs transform_algorithm 'mp' or 'omp'"):
        model.fit(X)


def test_nested_omp_transform(problem, fitted):
    X, _, _ = problem
    model = _with(fitted, transform_algorithm="omp")
    assert (model.transform(X) != 0).sum(axis=1).max() <= 7
    assert model.score(X) > fitted.score(X) > 0.5


def test_partial_fit_and_score(problem):
    X, _, _ = problem
    model = MatryoshkaDBKSVD(32, n_nonzero_coefs=4, random_state=0)
    model.partial_fit(X[:300]).partial_fit(X[300:])
    assert model.n_steps_ == 2 and len(model.history_) == 2
    assert 0 < model.score(X) <= 1


# ----------------------------------------------------------------------
# Matching-pursuit options through the estimators
# ----------------------------------------------------------------------
@pytest.mark.parametrize("cls", [DBKSVDDictionaryLearning, MatryoshkaDBKSVD])
def test_mp_tol_and_refit_in_full_transform(problem, cls):
    X, _, _ = problem
    model = cls(32, n_nonzero_coefs=4, max_steps=2, random_state=0).fit(X)
    D = model.components_
    model.set_params(mp_tol=0.5)
    expected = oracles.matching_pursuit(X, D, 4, tol=0.5)
    assert_allclose(model.transform(X), expected, atol=1e-10)
    model.set_params(mp_tol=None, mp_refit=True)
    expected = oracles.matching_pursuit(X, D, 4, refit=True)
    assert_allclose(model.transform(X), expected, atol=1e-8)


@pytest.mark.parametrize("cls", [DBKSVDDictionaryLearning, MatryoshkaDBKSVD])
@pytest.mark.parametrize("option", [{"mp_tol": 0.5}, {"mp_refit": True}])
def test_mp_options_change_fit(problem, cls, option):
    X, _, _ = problem
    # k=8: two nonzeros in the first groups, where a refit can change them
    # (with one selection, matching pursuit already is least squares).
    plain = cls(32, n_nonzero_coefs=8, max_steps=2, random_state=0).fit(X)
    model = cls(32, n_nonzero_coefs=8, max_steps=2, random_state=0, **option).fit(X)
    assert not np.allclose(plain.components_, model.components_)


def test_mp_tol_in_nested_transform(problem, fitted):
    X, _, _ = problem
    # ‖x‖ ≤ 1·‖x‖: every sample meets the tolerance before any selection.
    assert not _with(fitted, mp_tol=1.0).transform(X).any()
    code = _with(fitted, mp_tol=0.3).transform(X)
    plain = fitted.transform(X)
    assert (code != 0).sum() < (plain != 0).sum()
    # A code stops short only once the whole residual meets the tolerance.
    short = (code != 0).sum(axis=1) < (plain != 0).sum(axis=1)
    residual = X - code @ fitted.components_
    ratio = np.linalg.norm(residual, axis=1) / np.linalg.norm(X, axis=1)
    assert short.any() and np.all(ratio[short] <= 0.3 + 1e-10)


def test_mp_refit_in_nested_transform(problem, fitted):
    X, _, _ = problem
    code = _with(fitted, mp_refit=True).transform(X)
    D = fitted.components_
    (atoms, _), *_ = nested_levels(fitted.group_sizes_, 7)
    # Least squares on each sample's support: level-1 residual ⟂ its atoms.
    residual = X - code[:, atoms] @ D[atoms]
    assert_allclose((residual @ D[atoms].T) * (code[:, atoms] != 0), 0, atol=1e-8)


# ----------------------------------------------------------------------
# Known-structure initialisation (code_init)
# ----------------------------------------------------------------------
@pytest.mark.parametrize("cls", [DBKSVDDictionaryLearning, MatryoshkaDBKSVD])
@pytest.mark.parametrize(
    "shape, match", [((599, 32), r"\(600, 32\)"), ((600, 31), r"\(600, 32\)")]
)
def test_code_init_shape_is_validated(problem, cls, shape, match):
    X, _, _ = problem
    model = cls(32, n_nonzero_coefs=4, code_init=np.zeros(shape))
    with pytest.raises(ValueError, match=match):
        model.fit(X)
    assert not hasattr(model, "components_")


def test_code_init_rejects_nan(problem):
    X, _, C = problem
    code_init = C.copy()
    code_init[0, 0] = np.nan
    with pytest.raises(ValueError, match="code_init"):
        DBKSVDDictionaryLearning(32, n_nonzero_coefs=4, code_init=code_init).fit(X)


@pytest.mark.parametrize("cls", [DBKSVDDictionaryLearning, MatryoshkaDBKSVD])
def test_empty_code_init_is_a_plain_start(problem, cls):
    X, _, _ = problem
    params = dict(n_nonzero_coefs=4, max_steps=2, random_state=0)
    plain = cls(32, **params).fit(X)
    empty = cls(32, code_init=sp.csr_matrix((600, 32)), **params).fit(X)
    assert_array_equal(plain.components_, empty.components_)


@pytest.mark.parametrize("cls", [DBKSVDDictionaryLearning, MatryoshkaDBKSVD])
def test_code_init_refits_only_known_atoms(problem, cls):
    X, D, C = problem
    init = uniform_atoms(32, 16, np.random.RandomState(1))
    known = (C != 0) * (np.arange(32) < 8)  # support of the first 8 atoms
    model = cls(32, n_nonzero_coefs=4, dict_init=init, code_init=sp.csr_matrix(known))
    settings = fit_settings(model.set_params(batch_size=10_000), *X.shape)
    components = components_from_known_support(
        X, sp.csr_matrix(known, dtype=float), settings, init, np.random.RandomState(0)
    )
    assert_array_equal(components[8:], init[8:])
    assert_allclose(np.linalg.norm(components, axis=1), 1)
    # The planted truth: refitted on their true users, the 8 random atoms
    # turn towards the planted ones (|cos| 0.05-0.49 before, 0.84-0.97 after).
    before = np.abs(np.sum(init[:8] * D[:8], axis=1))
    after = np.abs(np.sum(components[:8] * D[:8], axis=1))
    assert before.max() < 0.5 and after.min() > 0.8


def _steps_to_recover(model, X, D, target, max_steps):
    """First step count after which the planted atoms are recovered."""
    model.set_params(max_steps=1).fit(X)
    for step in range(1, max_steps + 1):
        if atom_recovery(D, model.components_, threshold=0.99) >= target:
            return step
        model.partial_fit(X)  # one more step on the same full batch
    return np.inf


def test_full_known_support_recovers_in_fewer_steps():
    X, D, C = make_sparse_dictionary_problem(
        1500, 16, 32, 3, noise=0.05, random_state=0
    )
    params = dict(n_nonzero_coefs=3, batch_size=1500, random_state=0)
    known = DBKSVDDictionaryLearning(32, code_init=(C != 0).astype(float), **params)
    random = DBKSVDDictionaryLearning(32, **params)
    steps_known = _steps_to_recover(known, X, D, target=0.9, max_steps=8)
    steps_random = _steps_to_recover(random, X, D, target=0.9, max_steps=8)
    assert steps_known <= 3
    assert steps_known < steps_random


def test_one_group_is_plain_dbksvd(problem):
    """With a single group the Matryoshka step is the DB-KSVD step."""
    X, _, _ = problem
    params = dict(n_nonzero_coefs=4, max_steps=3, batch_size=300, random_state=0)
    plain = DBKSVDDictionaryLearning(32, **params).fit(X)
    nested = MatryoshkaDBKSVD(32, group_sizes=[32], **params).fit(X)
    assert_allclose(nested.components_, plain.components_, atol=1e-12)
    for ours, theirs in zip(nested.history_, plain.history_, strict=True):
        assert ours["relative_error"] == pytest.approx(theirs["relative_error"])
        assert ours["n_replaced"] == theirs["n_replaced"]
