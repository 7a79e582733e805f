"""Plain reference implementations the tests compare the package with.

Written from the textbook definitions, one sample at a time, with no code of
the package: no Gram matrix, no chunks, no compiled kernels.
"""

import numpy as np


def matching_pursuit(X, atoms, k, *, positive=False, tol=None, refit=False):
    """Codes of the rows of ``X`` by ``k`` greedy selections (Mallat and Zhang).

    Each selection takes the atom most correlated with the residual (the most
    positively correlated with ``positive``; none once no correlation is
    positive) and adds the correlation to its coefficient. With ``tol`` a
    sample stops once ``‖r‖ ≤ tol ‖x‖``; with ``refit`` the coefficients are
    then the least-squares fit on the selected atoms.
    """
    X = np.asarray(X, dtype=np.float64)
    atoms = np.asarray(atoms, dtype=np.float64)
    codes = np.zeros((len(X), len(atoms)))
    for i, x in enumerate(X):
        residual = x.copy()
        for _ in range(k):
            if tol is not None and np.linalg.norm(residual) <= tol * np.linalg.norm(x):
                break
            correlations = atoms @ residual
            if positive:
                j = int(np.argmax(correlations))
                if correlations[j] <= 0:
                    break
            else:
                j = int(np.argmax(np.abs(correlations)))
            codes[i, j] += correlations[j]
            residual -= correlations[j] * atoms[j]
        if refit:
            support = np.flatnonzero(codes[i])
            solution = np.linalg.lstsq(atoms[support].T, x, rcond=None)[0]
            codes[i, support] = solution
    return codes


def split_signs(codes):
    """``[max(c, 0), max(-c, 0)]``: one column per atom and sign."""
    return np.hstack([np.maximum(codes, 0), np.maximum(-codes, 0)])


def relative_error(X, X_hat):
    """Paper Eq. 6: mean over samples of ‖x − x̂‖ / ‖x‖ (0 for a zero sample)."""
    ratios = []
    for x, x_hat in zip(np.asarray(X, float), np.asarray(X_hat, float), strict=True):
        norm = np.sqrt(np.sum(x * x))
        ratios.append(np.sqrt(np.sum((x - x_hat) ** 2)) / norm if norm > 0 else 0.0)
    return float(np.mean(ratios))


def variance_explained(X, X_hat):
    """Paper Eq. 7: 1 − mean over features (of nonzero variance) of var(r)/var(x)."""
    X, X_hat = np.asarray(X, float), np.asarray(X_hat, float)
    ratios = []
    for j in range(X.shape[1]):
        x, r = X[:, j], X[:, j] - X_hat[:, j]
        var_x = np.mean((x - x.mean()) ** 2)
        if var_x > 0:
            ratios.append(np.mean((r - r.mean()) ** 2) / var_x)
    return 1.0 - float(np.mean(ratios))
