"""Dictionary update of DB-KSVD: inner-batched K-SVD atom updates.

Atom ``j`` is refitted to the error of the samples that use it,
``E = R[Ω_j] + x_j d_jᵀ`` (paper Eq. 4, with samples as rows), by the leading
singular pair of ``E``. Atoms are visited in a shuffled order, in inner batches
that all read the same residual snapshot; the residual is then corrected for
the whole batch (paper section 4.1, "Inner Batching"). With batches of one atom
this is exactly the sequential K-SVD of Aharon, Elad and Bruckstein.

The leading pair comes from Lanczos iterations on ``EᵀE`` (n_features wide,
whatever the number of users). ``E`` is never formed: one product
``EᵀE v = Σ_i e_i ⟨e_i, v⟩`` reads each user's residual row once, straight
from ``R``, and uses it twice while it is in the L1 cache; ``E v`` comes for
free from the same pass. Compiled with numba, a whole group of atoms runs in
one call without the GIL, so threads refit atoms of an inner batch in
parallel; without numba the same Lanczos code runs on a gathered ``E``.
"""

import numpy as np
from threadpoolctl import threadpool_limits

from . import _backend, _numba
from ._parallel import WorkerPool
from ._update_positive import nonnegative_rank_one

# Largest Krylov basis before a restart: on random data (the worst case:
# σ₂²/σ₁² ≈ 0.8) the leading pair reaches the float32 tolerance in 9 steps on
# average, 11 at most (measured, 160 users), so 32 leaves room for harder
# spectra without restarting while the basis (32 x n_features) stays in the
# L2 cache. Restarts (from the Ritz vector) are a safety net for pairs that
# cannot converge, such as nearly equal leading singular values.
_MAX_STEPS = 32
_MAX_RESTARTS = 10

# Error matrices with at least this many users are "wide": with a non-NumPy
# backend their EᵀE (n_features²) is formed on the device, which pays off
# once E has more rows than columns (paper 4.1).
_WIDE_FACTOR = 1.0


# Relative residual reached in float32. The one-pass products of float32 rows
# round at about sqrt(n_users) * eps ≈ 1e-6..1e-5, where the residual estimate
# stalls: asking for 100 eps (1.2e-5) made some atoms burn every restart
# (62 ms instead of 0.66 ms per atom, 80 users). At 1e-4 the atoms are within
# 4e-4 rad of the exact singular vector (worst of 40 atoms, random data: the
# worst case, σ₂²/σ₁² ≈ 0.85), far below what the next encoding notices.
_FLOAT32_TOL = 1e-4


def _singular_tol(dtype):
    """Relative residual ``‖EᵀE v − θ v‖ / θ`` at which a pair is final.

    ``θ = σ²``, and ``(EᵀE v − θ v) / σ = Eᵀu − σv``: this is also the
    relative residual of the singular pair. A hundred machine epsilons, but
    no tighter than ``_FLOAT32_TOL`` in single precision.
    """
    return max(100 * np.finfo(dtype).eps, _FLOAT32_TOL if dtype == np.float32 else 0.0)


def _flip_sign(atom, code):
    """Make the largest-magnitude entry of the atom positive (as ``svd_flip``)."""
    if atom[np.argmax(np.abs(atom))] < 0:
        return -atom, -code
    return atom, code


def _rows_product_numpy(op, v, s, w):
    """``s = E v`` and ``w = Eᵀs`` for a dense ``E = op[0]`` (NumPy, BLAS)."""
    E = op[0]
    s[:] = E @ v
    w[:] = E.T @ s


@_numba.jit(fastmath=True)
def _rows_product_jit(op, v, s, w):  # pragma: no cover
    """``s = E v`` and ``w = EᵀE v`` for ``E = R[rows] + x atomᵀ``, one pass.

    ``op = (R, rows, x, atom)``. Each residual row is read from memory once
    and reused from the cache for the second product. Rows go eight at a
    time, which loads and stores ``w`` once per eight rows (1.5x faster than
    row by row: 39 against 26 GFLOP/s on one core); ``fastmath`` lets the dot
    products vectorise (summation order changes rounding only).
    """
    R, rows, x, atom = op
    n_features = v.shape[0]
    n_rows = rows.shape[0]
    atom_v = np.dot(atom, v)
    w[:] = 0
    i = 0
    while i + 8 <= n_rows:
        r0, r1, r2, r3 = R[rows[i]], R[rows[i + 1]], R[rows[i + 2]], R[rows[i + 3]]
        r4, r5, r6, r7 = R[rows[i + 4]], R[rows[i + 5]], R[rows[i + 6]], R[rows[i + 7]]
        d0 = d1 = d2 = d3 = d4 = d5 = d6 = d7 = v[0] - v[0]
        for f in range(n_features):
            vf = v[f]
            d0 += r0[f] * vf
            d1 += r1[f] * vf
            d2 += r2[f] * vf
            d3 += r3[f] * vf
            d4 += r4[f] * vf
            d5 += r5[f] * vf
            d6 += r6[f] * vf
            d7 += r7[f] * vf
        d0 += x[i] * atom_v
        d1 += x[i + 1] * atom_v
        d2 += x[i + 2] * atom_v
        d3 += x[i + 3] * atom_v
        d4 += x[i + 4] * atom_v
        d5 += x[i + 5] * atom_v
        d6 += x[i + 6] * atom_v
        d7 += x[i + 7] * atom_v
        s[i], s[i + 1], s[i + 2], s[i + 3] = d0, d1, d2, d3
        s[i + 4], s[i + 5], s[i + 6], s[i + 7] = d4, d5, d6, d7
        for f in range(n_features):
            w[f] += (d0 * r0[f] + d1 * r1[f] + d2 * r2[f] + d3 * r3[f]) + (
                d4 * r4[f] + d5 * r5[f] + d6 * r6[f] + d7 * r7[f]
            )
        i += 8
    for i in range(i, n_rows):
        row = R[rows[i]]
        dot = v[0] - v[0]
        for f in range(n_features):
            dot += row[f] * v[f]
        dot += x[i] * atom_v
        s[i] = dot
        for f in range(n_features):
            w[f] += dot * row[f]
    x_s = np.dot(x, s)
    for f in range(n_features):
        w[f] += x_s * atom[f]


@_numba.jit()
def _ritz_pair(T, size, beta, tol, tiny):  # pragma: no cover
    """Leading eigenvector of the tridiagonal ``T[:size, :size]``; converged?

    The Ritz pair's residual ``‖A v − θ v‖`` is ``β |z_last|``; a tiny ``β``
    means an invariant subspace, where the Ritz pair is exact.
    """
    theta, Z = np.linalg.eigh(T[:size, :size])
    z = Z[:, size - 1].copy()
    scale = max(abs(theta[size - 1]), abs(theta[0]))
    done = beta <= 10 * tiny * scale or beta * abs(z[size - 1]) <= tol * scale
    return z, done


@_numba.jit()
def _orthogonalise(V, size, w):  # pragma: no cover
    """``w −= Vᵀ V w`` on the first ``size`` basis vectors; returns ``‖w‖``.

    Full reorthogonalisation: the basis is tiny next to one product with E.
    """
    for i in range(size):
        w -= np.dot(V[i], w) * V[i]
    return np.sqrt(np.dot(w, w))


@_numba.jit()
def _ritz_vectors(V, S, z, size):  # pragma: no cover
    """Unit Ritz vector ``V z`` and ``E V z = S z`` scaled alike."""
    zc = z.astype(V.dtype)
    v = np.zeros(V.shape[1], dtype=V.dtype)
    code = np.zeros(S.shape[1], dtype=V.dtype)
    for i in range(size):
        v += zc[i] * V[i]
        code += zc[i] * S[i]
    norm = np.sqrt(np.dot(v, v))
    if norm > 0:
        v /= norm
        code /= norm
    return v, code


def _lanczos(product, op, v0, tol, max_steps, max_restarts, n_rows):
    """Leading eigenpair of ``EᵀE`` by restarted Lanczos, and ``E v``.

    The NumPy version; :func:`_lanczos_rows_jit` is the same iteration
    compiled around the one-pass product on residual rows.

    Parameters
    ----------
    product : callable
        ``product(op, v, s, w)`` sets ``s = E v`` and ``w = EᵀE v``.
    op : tuple
        The operator's data, passed to ``product``.
    v0 : ndarray of shape (n_features,)
        Nonzero starting vector (the old atom).
    tol : float
        Relative residual ``‖EᵀE v − θ v‖ / θ`` to reach.
    max_steps, max_restarts : int
        Krylov basis size and number of restarts (from the Ritz vector).
    n_rows : int
        Number of rows of ``E``.

    Returns
    -------
    v : ndarray of shape (n_features,)
        Unit leading right singular vector (sign not fixed).
    code : ndarray of shape (n_rows,)
        ``E v = σ u``.
    """
    ritz_pair = _py(_ritz_pair)
    orthogonalise = _py(_orthogonalise)
    ritz_vectors = _py(_ritz_vectors)
    n_steps = min(max_steps, v0.shape[0])
    V = np.zeros((n_steps, v0.shape[0]), dtype=v0.dtype)
    S = np.zeros((n_steps, n_rows), dtype=v0.dtype)
    T = np.zeros((n_steps, n_steps))
    w = np.zeros(v0.shape[0], dtype=v0.dtype)
    tiny = np.finfo(v0.dtype).eps
    V[0] = v0 / np.sqrt(np.dot(v0, v0))
    for _ in range(max_restarts):
        T[:] = 0
        for j in range(n_steps):
            product(op, V[j], S[j], w)
            T[j, j] = np.dot(w, V[j])
            beta = orthogonalise(V, j + 1, w)
            z, done = ritz_pair(T, j + 1, beta, tol, tiny)
            if done or j + 1 == n_steps:
                break
            V[j + 1] = w / beta
            T[j, j + 1] = T[j + 1, j] = beta
        v, code = ritz_vectors(V, S, z, j + 1)
        if done:
            break
        V[0] = v
    return v, code


@_numba.jit()
def _lanczos_rows_jit(op, v0, tol, max_steps, max_restarts, n_rows):  # pragma: no cover
    """:func:`_lanczos` compiled, with the one-pass product on residual rows.

    (A compiled function taking the product as an argument could not be
    cached by numba, so the loop is spelled out again here.)
    """
    n_steps = min(max_steps, v0.shape[0])
    V = np.zeros((n_steps, v0.shape[0]), dtype=v0.dtype)
    S = np.zeros((n_steps, n_rows), dtype=v0.dtype)
    T = np.zeros((n_steps, n_steps))
    w = np.zeros(v0.shape[0], dtype=v0.dtype)
    tiny = np.finfo(v0.dtype).eps
    V[0] = v0 / np.sqrt(np.dot(v0, v0))
    z = np.ones(1)
    done = False
    size = 1
    for _ in range(max_restarts):
        T[:] = 0
        for j in range(n_steps):
            _rows_product_jit(op, V[j], S[j], w)
            T[j, j] = np.dot(w, V[j])
            beta = _orthogonalise(V, j + 1, w)
            size = j + 1
            z, done = _ritz_pair(T, size, beta, tol, tiny)
            if done or j + 1 == n_steps:
                break
            V[j + 1] = w / beta
            T[j, j + 1] = beta
            T[j + 1, j] = beta
        v, code = _ritz_vectors(V, S, z, size)
        if done:
            return v, code
        V[0] = v
    return _ritz_vectors(V, S, z, size)


def _py(func):
    """The Python function behind a compiled kernel (itself without numba)."""
    return getattr(func, "py_func", func)


def _dense_op(E):
    """Rows operator of a dense ``E`` for the compiled product."""
    rows = np.arange(E.shape[0])
    return (E, rows, np.zeros(E.shape[0], E.dtype), np.zeros(E.shape[1], E.dtype))


def leading_singular_pair(E, v0, *, tol=None, max_restarts=_MAX_RESTARTS):
    """Leading singular pair of ``E`` by Lanczos iterations on ``EᵀE``.

    Never forms a full SVD of ``E``, nor ``EᵀE``: each step costs one pass
    over ``E`` (compiled) or two matrix-vector products (NumPy), plus an
    eigendecomposition of a tiny tridiagonal matrix.

    Parameters
    ----------
    E : ndarray of shape (n_users, n_features)
        Error matrix of one atom, samples as rows.
    v0 : ndarray of shape (n_features,)
        Starting guess for the right singular vector (the old atom).
    tol : float, default=None
        Relative residual ``‖Eᵀu − σv‖ / σ`` to reach; None means a hundred
        machine epsilons of ``E.dtype``.
    max_restarts : int
        Cap on restarts.

    Returns
    -------
    atom : ndarray of shape (n_features,)
        Unit right singular vector, largest-magnitude entry positive.
    code : ndarray of shape (n_users,)
        ``σ u``: the coefficients of the users on the new atom.
    """
    E = np.ascontiguousarray(E)
    tol = _singular_tol(E.dtype) if tol is None else tol
    v0 = np.asarray(v0, dtype=E.dtype)
    if not np.any(v0):
        v0 = np.ones(E.shape[1], dtype=E.dtype)
    v, code = _lanczos_dense(E, v0, tol, max_restarts)
    return _flip_sign(v, code)


def _lanczos_dense_compiled(E, v0, tol, max_restarts):
    """``(v, σu)`` of a dense ``E`` by the compiled Lanczos iteration."""
    return _lanczos_rows_jit(
        _dense_op(E), v0, tol, _MAX_STEPS, max_restarts, E.shape[0]
    )


def _lanczos_dense_numpy(E, v0, tol, max_restarts):
    """``(v, σu)`` of a dense ``E`` by the Lanczos iteration in NumPy."""
    return _lanczos(
        _rows_product_numpy, (E,), v0, tol, _MAX_STEPS, max_restarts, E.shape[0]
    )


_lanczos_dense = _numba.twins(_lanczos_dense_compiled, _lanczos_dense_numpy)


def rank_one_power_step(E, atom, code):
    """One power step toward the leading pair (approximate K-SVD).

    Rubinstein, Zibulevsky and Elad (2008): ``d ← Eᵀx / ‖Eᵀx‖``, ``x ← E d``.
    """
    new_atom = E.T @ code
    norm = np.linalg.norm(new_atom)
    if norm <= np.finfo(E.dtype).tiny:
        return atom, code
    new_atom /= norm
    return _flip_sign(new_atom, E @ new_atom)


@_numba.jit()
def _finish_pair(atom, code, positive):  # pragma: no cover
    """Sign convention, then the nonnegativity of ``positive`` codes."""
    if atom[np.argmax(np.abs(atom))] < 0:
        atom = -atom
        code = -code
    if positive:
        if code.sum() < 0:
            atom = -atom
            code = -code
        for i in range(code.shape[0]):
            if code[i] < 0:
                code[i] = 0
    return atom, code


@_numba.jit(fastmath=True)
def _power_step_jit(op, atom, code, new_code):  # pragma: no cover
    """Compiled :func:`rank_one_power_step` on the rows operator."""
    R, rows, x, old_atom = op
    n_features = atom.shape[0]
    w = np.zeros(n_features, dtype=atom.dtype)
    for i in range(rows.shape[0]):
        row = R[rows[i]]
        for f in range(n_features):
            w[f] += code[i] * row[f]
    w += np.dot(x, code) * old_atom
    norm = np.sqrt(np.dot(w, w))
    if norm <= np.finfo(atom.dtype).tiny:
        new_code[:] = code
        return atom.copy()
    w /= norm
    atom_w = np.dot(old_atom, w)
    for i in range(rows.shape[0]):
        row = R[rows[i]]
        dot = row[0] - row[0]
        for f in range(n_features):
            dot += row[f] * w[f]
        new_code[i] = dot + x[i] * atom_w
    return w


@_numba.jit()
def _refit_group_jit(
    residual, components, atoms, slots, indptr, users, codes, shared, approx,
    positive, tol, max_steps, max_restarts, new_atoms, new_codes,
):  # pragma: no cover
    """Refit ``atoms`` from the residual snapshot, compiled, without the GIL.

    Writes the new ``atoms[a]`` to ``new_atoms[slots[a]]`` and its new codes to
    ``new_codes[indptr[j]:indptr[j + 1]]`` (the layout of ``codes``). The
    residual rows of users that no other atom of the inner batch has
    (``shared`` false) are corrected at once, while the Lanczos passes have
    just brought them into the cache: no other atom of the batch reads them,
    so the snapshot is unchanged for everyone else.
    """
    for a in range(atoms.shape[0]):
        j = atoms[a]
        start, stop = indptr[j], indptr[j + 1]
        old_atom = components[j]
        op = (residual, users[start:stop], codes[start:stop], old_atom)
        if approx:
            code = np.empty(stop - start, dtype=codes.dtype)
            atom = _power_step_jit(op, old_atom, codes[start:stop], code)
        else:
            atom, code = _lanczos_rows_jit(
                op, old_atom, tol, max_steps, max_restarts, stop - start
            )
        atom, code = _finish_pair(atom, code, positive)
        new_atoms[slots[a]] = atom
        new_codes[start:stop] = code
        for p in range(start, stop):
            if not shared[p]:
                _correct_row(residual[users[p]], codes[p], old_atom, new_codes[p], atom,
                             0, atom.shape[0])


@_numba.jit()
def _correct_row(row, x_old, old_atom, x_new, new_atom, start_col, stop_col):  # pragma: no cover
    """``row += x_old d_old − x_new d_new`` on columns ``start:stop``."""
    for f in range(start_col, stop_col):
        row[f] += x_old * old_atom[f] - x_new * new_atom[f]


@_numba.jit()
def _mark_shared_jit(atoms, indptr, users, counts, shared):  # pragma: no cover
    """``shared[p]``: is user ``users[p]`` also a user of another atom here?

    ``counts`` is a zeroed scratch array with one entry per sample, left
    zeroed again.
    """
    for a in range(atoms.shape[0]):
        j = atoms[a]
        for p in range(indptr[j], indptr[j + 1]):
            counts[users[p]] += 1
    for a in range(atoms.shape[0]):
        j = atoms[a]
        for p in range(indptr[j], indptr[j + 1]):
            shared[p] = counts[users[p]] > 1
    for a in range(atoms.shape[0]):
        j = atoms[a]
        for p in range(indptr[j], indptr[j + 1]):
            counts[users[p]] = 0


def _refit_atom(
    residual, atom, users, code, dict_update, positive, backend, positive_dict=False
):
    """New ``(atom, code)`` of one atom from the residual snapshot (NumPy).

    With ``positive``, the pair is oriented so that the codes are mostly
    positive and negative codes are clipped to zero (the residual correction
    uses the clipped codes, so it stays exact). With ``positive_dict`` the
    singular pair starts the nonnegative rank-1 fit of NN-K-SVD.
    """
    E = residual[users]
    E += np.outer(code, atom)
    if dict_update == "approx":
        atom, code = rank_one_power_step(E, atom, code)
    elif not backend.is_numpy and len(users) >= _WIDE_FACTOR * len(atom):
        atom, code = _wide_singular_pair(E, atom, backend)
    else:
        atom, code = leading_singular_pair(E, atom)
    if positive_dict:
        return nonnegative_rank_one(E, atom, code, positive_code=positive)
    if positive:
        if code.sum() < 0:
            atom, code = -atom, -code
        code = np.maximum(code, 0)
    return atom, code


def _wide_singular_pair(E, atom, backend):
    """Leading pair of a wide ``E`` with ``EᵀE`` formed in the backend.

    The one product whose cost grows with the users, ``EᵀE``, runs on the
    device; Lanczos then works on the n_features² matrix on the host, and
    ``E v`` is one more device product.
    """
    E_dev, normal = _backend.normal_matrix(backend, E)
    tol = _singular_tol(E.dtype)

    def product(op, v, s, w):
        w[:] = op[0] @ v

    v, _ = _lanczos(
        product, (normal,), atom.astype(E.dtype), tol, _MAX_STEPS, _MAX_RESTARTS, 0
    )
    code = _backend.matvec(backend, E_dev, v)
    return _flip_sign(v, code.astype(E.dtype, copy=False))


def _balanced_groups(batch, sizes, n_groups):
    """Split atoms into ``n_groups`` tasks with similar total work.

    Greedy on decreasing number of users; the split only decides which
    thread refits which atom, never the result. Each task is
    ``(slots, atoms)``: the atoms and their positions in ``batch``.
    """
    groups = [[] for _ in range(n_groups)]
    loads = np.zeros(n_groups)
    for slot in np.argsort(-sizes[batch], kind="stable"):
        g = int(np.argmin(loads))
        groups[g].append(slot)
        loads[g] += sizes[batch[slot]] + 1
    return [
        (np.array(g, dtype=np.intp), batch[np.array(g, dtype=np.intp)])
        for g in groups if g
    ]


@_numba.jit()
def _correct_residual_jit(
    residual, atoms, indptr, users, old_codes, new_codes, old_atoms, new_atoms,
    shared, start_col, stop_col,
):  # pragma: no cover
    """``R[users] += x_old d_oldᵀ − x_new d_newᵀ`` on the ``shared`` users.

    Only columns ``start:stop``, atom after atom in the order of ``atoms``:
    threads split the columns, so every entry has one writer and one order.
    """
    for a in range(atoms.shape[0]):
        j = atoms[a]
        for p in range(indptr[j], indptr[j + 1]):
            if shared[p]:
                _correct_row(residual[users[p]], old_codes[p], old_atoms[a],
                             new_codes[p], new_atoms[a], start_col, stop_col)


def _correct_residual_numpy(
    residual, atoms, indptr, users, old_codes, new_codes, old_atoms, new_atoms,
    shared, start_col, stop_col,
):
    cols = slice(start_col, stop_col)
    for a, j in enumerate(atoms):
        span = slice(indptr[j], indptr[j + 1])
        rows = users[span]
        residual[rows, cols] += np.outer(
            old_codes[span], old_atoms[a, cols]
        ) - np.outer(new_codes[span], new_atoms[a, cols])


def update_dictionary(
    residual,
    components,
    codes,
    order,
    *,
    update_batch_size,
    dict_update="ksvd",
    positive=False,
    n_jobs=None,
    backend=None,
    positive_dict=False,
):
    """Refit every used atom, in inner batches, keeping the residual exact.

    Parameters
    ----------
    residual : ndarray of shape (n_samples, n_features)
        ``X - codes @ components``, C-ordered; updated in place.
    components : ndarray of shape (n_components, n_features)
        Atoms; updated in place.
    codes : scipy.sparse.csc_matrix of shape (n_samples, n_components)
        Codes with sorted indices and no explicit zeros; ``codes.data`` is
        updated in place (the support never changes).
    order : ndarray of shape (n_components,)
        Order in which atoms are visited.
    update_batch_size : int
        Atoms refitted together from one residual snapshot (``w``).
    dict_update : {"ksvd", "approx"}
        Leading singular pair to tolerance, or one power step.
    positive : bool
        Keep the codes nonnegative.
    n_jobs : int or None
        Threads refitting the atoms of one inner batch, then correcting the
        residual (each thread a slice of the features). The result does not
        depend on it: every atom is computed alone, and every residual entry
        is corrected by one thread in the order of the batch.
    backend : ArrayBackend, default=None
        Where the products with wide error matrices run; None is NumPy.
    positive_dict : bool, default=False
        Nonnegative atoms: each atom gets the NN-K-SVD update of
        :func:`~sklearn_dbksvd._update_positive.nonnegative_rank_one`.
    """
    backend = _backend.ArrayBackend(np) if backend is None else backend
    indptr, users = codes.indptr, codes.indices
    sizes = np.diff(indptr)
    order = order[sizes[order] > 0]
    compiled = _numba.use_numba()
    tol = _singular_tol(residual.dtype)
    n_features = residual.shape[1]
    # Atoms whose EᵀE goes to the device; the others are refitted on the host.
    on_device = np.zeros(len(sizes), dtype=bool)
    if not backend.is_numpy and dict_update == "ksvd":
        on_device = sizes >= _WIDE_FACTOR * n_features
    if positive_dict:
        # The nonnegative update runs in NumPy, outside the compiled loop.
        on_device[:] = True
    # New codes of the batch, in the layout of ``codes.data``: the correction
    # needs the old and new codes side by side; allocated once per update.
    new_data = np.empty_like(codes.data)
    shared = np.ones(len(codes.data), dtype=bool)
    counts = np.zeros(residual.shape[0], dtype=np.int32)
    # BLAS at one thread even with one worker: the NumPy refits' products
    # (positive_dict, the fallback) then round alike whatever n_jobs.
    with WorkerPool(n_jobs) as pool, threadpool_limits(limits=1, user_api="blas"):
        # Feature slices for the correction, multiples of 16 floats (a cache
        # line) so that threads never write to the same line.
        col_edges = np.linspace(0, n_features // 16, pool.n_workers + 1).astype(int) * 16
        col_edges[-1] = n_features
        col_slices = list(zip(col_edges[:-1], col_edges[1:]))

        def refit(task, new_atoms):
            slots, group = task
            host = ~on_device[group] if compiled else np.zeros(len(group), bool)
            if host.any():
                _refit_group_jit(
                    residual, components, group[host], slots[host], indptr, users,
                    codes.data, shared, dict_update == "approx", positive, tol,
                    _MAX_STEPS, _MAX_RESTARTS, new_atoms, new_data,
                )
            for a in np.flatnonzero(~host):
                j = group[a]
                span = slice(indptr[j], indptr[j + 1])
                new_atoms[slots[a]], new_data[span] = _refit_atom(
                    residual, components[j], users[span], codes.data[span],
                    dict_update, positive, backend, positive_dict,
                )

        correct = _correct_residual_jit if compiled else _correct_residual_numpy
        for start in range(0, len(order), update_batch_size):
            batch = order[start : start + update_batch_size]
            if compiled:
                _mark_shared_jit(batch, indptr, users, counts, shared)
                for j in batch[on_device[batch]]:
                    # Refitted outside the compiled loop: corrected afterwards.
                    shared[indptr[j] : indptr[j + 1]] = True
            old_atoms = components[batch]
            # One group per thread, balanced by users: with four per thread
            # (handed to whichever thread is free) the update took 8 % longer
            # at the paper's size, the calls costing more than the balance
            # gained (1.49 against 1.61 s, mean of 6).
            new_atoms = np.empty_like(old_atoms)
            pool.map(
                lambda task: refit(task, new_atoms),  # noqa: B023 (run at once)
                _balanced_groups(batch, sizes, pool.n_workers),
            )
            pool.map(
                lambda cols: correct(
                    residual, batch, indptr, users, codes.data, new_data,
                    old_atoms, new_atoms, shared, cols[0], cols[1],
                ),
                col_slices,
            )
            components[batch] = new_atoms
        # Each atom's codes are read (as old codes) only by its own refit and
        # correction, so the new ones can wait until every atom is done.
        in_order = np.zeros(len(sizes), dtype=bool)
        in_order[order] = True
        refitted = np.repeat(in_order, sizes)
        codes.data[refitted] = new_data[refitted]
