"""Atom updates against a plain, obviously correct K-SVD."""

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.linear_model import orthogonal_mp_gram

from sklearn_dbksvd import _backend, _fit_loop, _numba, _replace, _step
from sklearn_dbksvd._step import batch_metrics, clear_dictionary, dbksvd_step
from sklearn_dbksvd._update import leading_singular_pair, rank_one_power_step
from tests import _helpers
from tests.test_encode import textbook_matching_pursuit


def flip(atom, code):
    """Largest-magnitude entry of the atom positive, as the estimator does."""
    sign = np.sign(atom[np.argmax(np.abs(atom))])
    return sign * atom, sign * code


def reference_ksvd_step(X, dictionary, codes, order, batch_size=1):
    """K-SVD atom updates with a full SVD, recomputing every error matrix.

    Atoms of one inner batch all see the codes and atoms from before the batch.
    """
    dictionary, codes = dictionary.copy(), codes.copy()
    for start in range(0, len(order), batch_size):
        snapshot_dictionary, snapshot_codes = dictionary.copy(), codes.copy()
        for j in order[start : start + batch_size]:
            users = np.flatnonzero(snapshot_codes[:, j])
            if len(users) == 0:
                continue
            E = (
                X[users]
                - snapshot_codes[users] @ snapshot_dictionary
                + np.outer(snapshot_codes[users, j], snapshot_dictionary[j])
            )
            U, s, Vt = np.linalg.svd(E, full_matrices=False)
            dictionary[j], codes[users, j] = flip(Vt[0], s[0] * U[:, 0])
    return dictionary, codes


def omp_codes(X, dictionary, k):
    gram = dictionary @ dictionary.T
    return orthogonal_mp_gram(gram, dictionary @ X.T, n_nonzero_coefs=k).T


def mp_codes(X, dictionary, k):
    return np.array([textbook_matching_pursuit(x, dictionary, k) for x in X])


def step_settings(**overrides):
    """Exact sequential K-SVD: one atom per inner batch, no replacement."""
    exact = dict(
        update_batch_size=1, replace=False, replace_min_usage=0.0, replace_coherence=1.0
    )
    return _helpers.step_settings(**{**exact, **overrides})


planted = _helpers.planted


@pytest.mark.parametrize("fit_algorithm, coder", [("omp", omp_codes), ("mp", mp_codes)])
@pytest.mark.parametrize("update_batch_size", [1, 4])
def test_step_equals_reference_ksvd(fit_algorithm, coder, update_batch_size):
    X, start = planted()
    order = np.random.RandomState(7).permutation(len(start))
    expected, _ = reference_ksvd_step(
        X, start, coder(X, start, 3), order, batch_size=update_batch_size
    )
    atoms, info = dbksvd_step(
        X,
        start,
        **step_settings(
            fit_algorithm=fit_algorithm, update_batch_size=update_batch_size
        ),
    )
    np.testing.assert_allclose(atoms, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(atoms, axis=1), 1.0)
    assert info["n_replaced"] == 0


def test_step_lowers_the_error_of_fixed_codes():
    X, start = planted()
    codes = mp_codes(X, start, 3)
    before = np.linalg.norm(X - codes @ start)
    order = np.random.RandomState(7).permutation(len(start))
    atoms, new_codes = reference_ksvd_step(X, start, codes, order)
    assert np.linalg.norm(X - new_codes @ atoms) < before


@pytest.mark.parametrize("shape", [(40, 15), (15, 40), (1, 9), (9, 1)])
@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-9), (np.float32, 1e-4)])
def test_leading_singular_pair_matches_svd(shape, dtype, rtol):
    rng = np.random.RandomState(0)
    E = rng.randn(*shape).astype(dtype)
    atom, code = leading_singular_pair(E, rng.randn(shape[1]).astype(dtype))
    U, s, Vt = np.linalg.svd(E.astype(np.float64), full_matrices=False)
    expected_atom, expected_code = flip(Vt[0], s[0] * U[:, 0])
    assert atom.dtype == dtype and code.dtype == dtype
    np.testing.assert_allclose(atom, expected_atom, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(code, expected_code, rtol=rtol, atol=rtol * s[0])


def test_leading_singular_pair_of_rank_one_and_zero_matrices():
    u, v = np.arange(1.0, 6.0), np.array([0.6, -0.8, 0.0])
    atom, code = leading_singular_pair(np.outer(u, v), np.ones(3))
    np.testing.assert_allclose(np.outer(code, atom), np.outer(u, v), atol=1e-12)
    atom, code = leading_singular_pair(np.zeros((4, 3)), np.array([0.0, 0.0, 2.0]))
    np.testing.assert_allclose(atom, [0.0, 0.0, 1.0])
    np.testing.assert_allclose(code, 0.0)


def test_power_step_is_one_rubinstein_iteration():
    rng = np.random.RandomState(0)
    E, atom, code = rng.randn(30, 8), rng.randn(8), rng.randn(30)
    new_atom, new_code = rank_one_power_step(E, atom, code)
    expected = E.T @ code / np.linalg.norm(E.T @ code)
    expected, expected_code = flip(expected, E @ expected)
    np.testing.assert_allclose(new_atom, expected)
    np.testing.assert_allclose(new_code, expected_code)


def test_approximate_update_lowers_the_error():
    X, start = planted()
    settings = step_settings(dict_update="approx", update_batch_size=4)
    atoms, info = dbksvd_step(X, start, **settings)
    codes = mp_codes(X, start, 3)
    assert info["relative_error"] < np.mean(
        np.linalg.norm(X - codes @ start, axis=1) / np.linalg.norm(X, axis=1)
    )


def test_positive_codes_stay_nonnegative():
    X, start = planted()
    atoms, _ = dbksvd_step(X, start, **step_settings(positive=True))
    from sklearn_dbksvd import sparse_encode_mp

    assert np.all(sparse_encode_mp(X, atoms, 3, positive=True) >= 0)
    np.testing.assert_allclose(np.linalg.norm(atoms, axis=1), 1.0)


def test_replacement_removes_duplicates_and_dead_atoms():
    X, start = planted()
    start[1] = start[0]  # duplicate
    start[2] = -start[3]  # duplicate up to sign
    settings = step_settings(replace=True, replace_coherence=0.99)
    atoms, info = dbksvd_step(X, start, **settings)
    overlap = np.abs(atoms @ atoms.T) - np.eye(len(atoms))
    assert overlap.max() < 0.99
    assert info["n_replaced"] >= 2


def test_replacement_catches_a_new_atom_that_duplicates_another():
    rng = np.random.RandomState(0)
    atoms = np.linalg.qr(rng.randn(8, 8))[0][:5].copy()
    residual = np.zeros((6, 8))
    residual[0] = 3 * atoms[1]  # the worst sample duplicates atom 1
    residual[1] = 2 * np.linalg.qr(rng.randn(8, 8))[0][7]
    codes = sp.csc_matrix(np.array([[1, 1, 1, 1, 0]] * 6, dtype=float))
    n = clear_dictionary(
        atoms, codes, residual, n_nonzero_coefs=4, min_usage=0.5, max_coherence=0.99
    )
    # Atom 4 is unused: it takes the worst sample, a copy of atom 1, then, as
    # the less used of the pair, the next worst one.
    assert n == 1
    np.testing.assert_allclose(atoms[4], residual[1] / 2)


@pytest.mark.parametrize("positive_dict", [False, True])
def test_replacement_ranks_samples_by_the_given_squared_norms(positive_dict):
    rng = np.random.RandomState(0)
    atoms = np.abs(np.linalg.qr(rng.randn(8, 8))[0][:6])
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    residual = rng.randn(10, 8) * rng.uniform(0.5, 2, (10, 1))
    codes = sp.csc_matrix(np.array([[1, 1, 1, 1, 0, 0]] * 10, dtype=float))
    settings = dict(
        n_nonzero_coefs=4, min_usage=0.5, max_coherence=0.99,
        positive_dict=positive_dict,
    )
    sq_norms = (residual**2).sum(axis=1)
    recomputed, given = atoms.copy(), atoms.copy()
    n = clear_dictionary(recomputed, codes, residual, **settings)
    assert n == 2
    assert clear_dictionary(given, codes, residual, sq_norms=sq_norms, **settings) == 2
    np.testing.assert_array_equal(given, recomputed)
    # The given norms decide which samples are the worst: not recomputed.
    flipped = atoms.copy()
    clear_dictionary(flipped, codes, residual, sq_norms=sq_norms[::-1], **settings)
    assert not np.allclose(flipped[4:], recomputed[4:])


def test_step_hands_the_metrics_norms_to_the_replacement(monkeypatch):
    seen = []
    clear = _step._clear_dictionary
    monkeypatch.setattr(
        _step,
        "_clear_dictionary",
        lambda *a, **kw: seen.append((a[2].copy(), kw["sq_norms"])) or clear(*a, **kw),
    )
    X, start = _helpers.planted()
    dbksvd_step(X, start, **_helpers.step_settings())
    (residual, sq_norms), = seen
    np.testing.assert_allclose(sq_norms, (residual**2).sum(axis=1), rtol=1e-12)


def brute_force_near_duplicates(gram, usage, max_coherence):
    """Every pair i < j in turn; the less used loses, the later one on a tie."""
    threshold = gram.dtype.type(max_coherence)
    losers = set()
    for i in range(len(gram)):
        for j in range(i + 1, len(gram)):
            if abs(gram[i, j]) > threshold:
                losers.add(i if usage[i] < usage[j] else j)
    return np.array(sorted(losers), dtype=int)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("seed", range(4))
def test_near_duplicates_match_brute_force(monkeypatch, dtype, seed):
    rng = np.random.RandomState(seed)
    n = 37
    gram = rng.uniform(-1, 1, (n, n)).astype(dtype)
    # Entries at the threshold (not above it) and just above, both signs.
    threshold = dtype(0.99)  # above 0.99 in float32: compared in its dtype
    gram.flat[rng.choice(n * n, 40)] = threshold
    gram.flat[rng.choice(n * n, 40)] = -threshold
    gram.flat[rng.choice(n * n, 20)] = np.nextafter(threshold, dtype(1))
    gram = np.triu(gram, 1) + np.triu(gram, 1).T + np.eye(n, dtype=dtype)
    usage = rng.randint(0, 4, n)  # many ties of usage
    expected = brute_force_near_duplicates(gram, usage, 0.99)
    assert 0 < len(expected) < n
    # The NumPy version in several blocks of rows.
    monkeypatch.setattr(_replace, "_OVERLAP_BLOCK_BYTES", 5 * n * gram.itemsize)
    for compiled in (True, False):
        if compiled and _numba.numba is None:
            continue
        monkeypatch.setattr(_numba, "USE_NUMBA", compiled)
        found = _replace.near_duplicates(gram, usage, 0.99)
        np.testing.assert_array_equal(found, expected)
        assert len(_replace.near_duplicates(gram, usage, 1.0)) == 0


@pytest.mark.parametrize("fit_algorithm", ["mp", "omp"])
def test_step_writes_its_residual_into_the_given_buffer(fit_algorithm):
    X, start = _helpers.planted()

    def step(**kw):
        settings = _helpers.step_settings(fit_algorithm=fit_algorithm)
        return dbksvd_step(X, start, return_gram=True, **settings, **kw)

    expected, expected_info, expected_gram = step()
    assert expected_gram is not None
    buffer = np.full(X.shape, np.nan)
    atoms, info, gram = step(residual_out=buffer)
    np.testing.assert_array_equal(atoms, expected)
    np.testing.assert_array_equal(gram, expected_gram)
    assert info == expected_info
    # It holds the residual the metrics were computed from.
    assert batch_metrics(X, buffer) == (
        info["relative_error"], info["variance_explained"]
    )
    # Of another shape, dtype or layout it is left alone.
    for unfit in (
        np.full((len(X) - 1, X.shape[1]), np.nan),
        np.full(X.shape, np.nan, dtype=np.float32),
        np.full(X.shape[::-1], np.nan).T,
    ):
        atoms, info, _ = step(residual_out=unfit)
        np.testing.assert_array_equal(atoms, expected)
        assert info == expected_info
        assert np.isnan(unfit).all()
    with pytest.raises(ValueError, match="shares memory"):
        step(residual_out=X)


def count_gram_calls(monkeypatch):
    """A list that grows by one at every ``_backend.gram`` call."""
    calls = []
    gram = _backend.gram
    monkeypatch.setattr(_backend, "gram", lambda *a: calls.append(1) or gram(*a))
    return calls


def gram_fit_params(**overrides):
    """A short fit on ``planted()`` data whose steps hand on their Gram matrix."""
    return dict(
        n_components=20, n_nonzero_coefs=3, batch_size=100, max_iter=3,
        max_no_improvement=None, random_state=0, **overrides,
    )


def fit_computing_every_gram(params, monkeypatch, X):
    """The reference fit: every step computes its own Gram matrix."""
    from sklearn_dbksvd import DBKSVDDictionaryLearning

    step = _fit_loop.fit_step
    with monkeypatch.context() as patch:
        patch.setattr(
            _fit_loop, "fit_step", lambda *a, gram=None, **kw: step(*a, **kw)
        )
        return DBKSVDDictionaryLearning(**params).fit(X)


@pytest.mark.parametrize(
    "settings", [{}, dict(positive_dict=True, replace_coherence=0.999)]
)
def test_gram_matrix_once_per_step_and_same_steps(monkeypatch, settings):
    calls = count_gram_calls(monkeypatch)
    X, start = planted()
    if settings:
        start = np.abs(start)
        start /= np.linalg.norm(start, axis=1, keepdims=True)
    first, info, first_gram = dbksvd_step(
        X, start, return_gram=True, **_helpers.step_settings(**settings)
    )
    assert first_gram is not None
    assert len(calls) == 2  # the encoder's and the coherence check's
    np.testing.assert_allclose(first_gram, first @ first.T, rtol=1e-12, atol=1e-12)
    if settings:
        assert info["n_replaced"] == 0 and first.min() >= 0
    calls.clear()
    second, info = dbksvd_step(
        X, first, gram=first_gram, **_helpers.step_settings(**settings)
    )
    assert len(calls) == 1  # the coherence check's; the encoder took first_gram
    # The same step computing its own Gram matrix gives the same atoms.
    calls.clear()
    fresh, fresh_info = dbksvd_step(
        X, first.copy(), **_helpers.step_settings(**settings)
    )
    assert len(calls) == 2
    np.testing.assert_array_equal(second, fresh)
    assert info == fresh_info


def test_fit_computes_one_gram_matrix_per_step(monkeypatch):
    from sklearn_dbksvd import DBKSVDDictionaryLearning

    X, _ = planted()
    params = gram_fit_params()
    expected = fit_computing_every_gram(params, monkeypatch, X)
    calls = count_gram_calls(monkeypatch)
    model = DBKSVDDictionaryLearning(**params).fit(X)
    # Without duplicates to replace, every step but the first reuses the
    # previous step's matrix, and the atoms are those of separate steps.
    assert len(calls) <= model.n_steps_ + 1 + sum(
        h["n_replaced"] > 0 for h in model.history_
    )
    assert len(calls) < 2 * model.n_steps_
    np.testing.assert_array_equal(model.components_, expected.components_)


def _positive_problem(seed, n_samples=200, n_features=10, n_components=16):
    """Nonnegative atoms with planted near-duplicate pairs, tied usage, rare atoms."""
    rng = np.random.RandomState(seed)
    atoms = np.abs(rng.randn(n_components, n_features))
    # Near-duplicates: 1 of 0, 3 of 2 (and 5 of 3, a chain), 7 of 6 to 1e-3.
    for a, b in [(0, 1), (2, 3), (3, 5), (6, 7)]:
        atoms[b] = atoms[a] + 1e-3 * np.abs(rng.randn(n_features))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    codes = (rng.uniform(size=(n_samples, n_components)) < 0.2).astype(float)
    codes[:, 8] = 0  # unused
    codes[3:, 9] = 0  # rare
    codes[:, 2] = codes[:, 3]  # a near-duplicate pair with tied usage
    residual = rng.randn(n_samples, n_features) * rng.uniform(0.5, 2, (n_samples, 1))
    return atoms, sp.csc_matrix(codes), residual


def _block_overlap_losers(atoms, usage, max_coherence, block_rows):
    """The less used atom of each near-duplicate pair, from overlaps by blocks."""
    losers = np.zeros(len(atoms), dtype=bool)
    for start in range(0, len(atoms), block_rows):
        overlap = atoms[start : start + block_rows] @ atoms[start:].T
        i, j = np.nonzero(np.abs(overlap) > max_coherence)
        i, j = i + start, j + start
        upper = j > i
        i, j = i[upper], j[upper]
        losers[np.where(usage[i] < usage[j], i, j)] = True
    return losers


def _replaced_by_block_overlaps(
    atoms, codes, residual, settings, positive_code, sq_norms=None, block_rows=5
):
    """The positive_dict replacement as it was: block overlaps, then new atoms.

    Several blocks of rows by default, as at a large dictionary.
    """
    usage = np.diff(codes.indptr)
    mean_usage = codes.shape[0] * settings["n_nonzero_coefs"] / codes.shape[1]
    chosen = (usage < settings["min_usage"] * mean_usage) | (usage == 0)
    if settings["max_coherence"] < 1:
        chosen |= _block_overlap_losers(
            atoms, usage, settings["max_coherence"], block_rows
        )
    chosen = np.flatnonzero(chosen)
    return _replace.replace_atoms(
        atoms, chosen, residual, positive_dict=True, positive_code=positive_code,
        sq_norms=sq_norms,
    )


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("positive_code", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_positive_dict_replaces_the_atoms_of_block_overlaps(
    monkeypatch, seed, positive_code, dtype
):
    atoms, codes, residual = _positive_problem(seed)
    atoms, residual = atoms.astype(dtype), residual.astype(dtype)
    for max_coherence in (0.99, 0.9, 0.5, 1.0):
        settings = dict(n_nonzero_coefs=3, min_usage=0.1, max_coherence=max_coherence)
        expected = atoms.copy()
        replaced = _replaced_by_block_overlaps(
            expected, codes, residual, settings, positive_code
        )
        assert {8, 9} <= set(replaced)
        if max_coherence == 0.99:  # one of each planted pair; 3 on the tie
            assert 3 in replaced
            assert all({a, b} & set(replaced) for a, b in [(0, 1), (3, 5), (6, 7)])
        for compiled in (True, False):
            if compiled and _numba.numba is None:
                continue
            monkeypatch.setattr(_numba, "USE_NUMBA", compiled)
            found = atoms.copy()
            n = clear_dictionary(
                found, codes, residual, positive_dict=True,
                positive_code=positive_code, **settings,
            )
            assert n == len(replaced)
            np.testing.assert_array_equal(found, expected)


def test_positive_dict_returns_the_gram_matrix_only_when_no_atom_changes():
    atoms, codes, residual = _positive_problem(0)
    settings = dict(
        n_nonzero_coefs=3, max_coherence=0.99, positive_dict=True,
        positive_code=False, backend=_backend.ArrayBackend(np),
    )
    n, gram = _step._clear_dictionary(
        atoms.copy(), codes, residual, min_usage=0.1, **settings
    )
    assert n > 0 and gram is None
    # Without duplicates and with every atom used enough: nothing changes.
    distinct = np.abs(np.linalg.qr(np.random.RandomState(0).randn(16, 16))[0])
    distinct /= np.linalg.norm(distinct, axis=1, keepdims=True)
    codes = sp.csc_matrix(np.ones((200, 16)))
    kept = distinct.copy()
    n, gram = _step._clear_dictionary(kept, codes, residual, min_usage=0.1, **settings)
    assert n == 0
    np.testing.assert_array_equal(kept, distinct)
    np.testing.assert_array_equal(gram, distinct @ distinct.T)


def test_positive_dict_fit_computes_one_gram_matrix_per_step(monkeypatch):
    from sklearn_dbksvd import DBKSVDDictionaryLearning

    X, _ = planted()
    params = gram_fit_params(positive_dict=True, replace_coherence=0.999)
    expected = fit_computing_every_gram(params, monkeypatch, X)
    calls, given = count_gram_calls(monkeypatch), []
    step = _fit_loop.fit_step

    def recording_step(*a, gram=None, **kw):
        given.append(gram is not None)
        return step(*a, gram=gram, **kw)

    monkeypatch.setattr(_fit_loop, "fit_step", recording_step)
    model = DBKSVDDictionaryLearning(**params).fit(X)
    # A step hands its matrix on when it checked coherence (the first 80 %
    # of the steps) and replaced no atom; then the next step computes none.
    checks = [step < 0.8 * model.n_steps_ for step in range(model.n_steps_)]
    handed_on = [
        check and h["n_replaced"] == 0
        for check, h in zip(checks, model.history_, strict=True)
    ]
    assert given == [False] + handed_on[:-1]
    assert sum(given) >= model.n_steps_ // 2
    assert len(calls) == sum(checks) + given.count(False)
    np.testing.assert_array_equal(model.components_, expected.components_)


def test_positive_dict_steps_replace_as_with_block_overlaps(monkeypatch):
    X, start = planted()
    start = np.abs(start)
    start[1] = start[0]  # duplicates
    start[5] = start[4] + 1e-4
    start /= np.linalg.norm(start, axis=1, keepdims=True)
    settings = dict(positive_dict=True, replace_min_usage=0.5)

    def run(n_steps=3):
        atoms, infos, gram = start.copy(), [], None
        random_state = np.random.RandomState(7)
        for _ in range(n_steps):
            atoms, info, gram = dbksvd_step(
                X, atoms, gram=gram, return_gram=True,
                **_helpers.step_settings(**settings, random_state=random_state),
            )
            infos.append(info)
        return atoms, infos

    new_atoms, new_infos = run()
    assert new_infos[0]["n_replaced"] >= 2

    def by_block_overlaps(components, codes, residual, **kw):
        settings = dict(
            n_nonzero_coefs=kw["n_nonzero_coefs"], min_usage=kw["min_usage"],
            max_coherence=kw["max_coherence"],
        )
        replaced = _replaced_by_block_overlaps(
            components, codes, residual, settings, kw["positive_code"],
            kw["sq_norms"],
        )
        return len(replaced), None

    monkeypatch.setattr(_step, "_clear_dictionary", by_block_overlaps)
    old_atoms, old_infos = run()
    np.testing.assert_array_equal(new_atoms, old_atoms)
    assert new_infos == old_infos
