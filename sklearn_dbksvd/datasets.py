"""Data for examples, tests and benchmarks."""

from numbers import Integral, Real

import numpy as np
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, validate_params

__all__ = ["load_sample_patches", "make_sparse_dictionary_problem", "uniform_atoms"]


def uniform_atoms(n_components, n_features, random_state, dtype=np.float64):
    """Atoms with U(−1/2, 1/2) entries, rows normalised (DB-KSVD paper, A.1)."""
    atoms = random_state.uniform(-0.5, 0.5, size=(n_components, n_features))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    return atoms.astype(dtype, copy=False)


@validate_params(
    {
        "n_samples": [Interval(Integral, 1, None, closed="left")],
        "n_features": [Interval(Integral, 1, None, closed="left")],
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "n_nonzero_coefs": [Interval(Integral, 1, None, closed="left")],
        "coef_range": [tuple],
        "noise": [Interval(Real, 0, None, closed="left")],
        "dtype": "no_validation",
        "random_state": ["random_state"],
    },
    prefer_skip_nested_validation=True,
)
def make_sparse_dictionary_problem(
    n_samples=2**14,
    n_features=256,
    n_components=1024,
    n_nonzero_coefs=20,
    *,
    coef_range=(1.0, 2.0),
    noise=0.0,
    dtype=np.float64,
    random_state=None,
):
    """Planted sparse dictionary problem of the DB-KSVD paper (appendix A.2).

    ``X = code @ dictionary + noise``: the dictionary has U(−1/2, 1/2) entries
    with unit-norm rows; each code has exactly ``n_nonzero_coefs`` nonzeros on
    distinct random atoms, with values drawn from U(``coef_range``). The
    defaults are the paper's sizes (d=256, m=1024, n=2^14, k=20).

    Parameters
    ----------
    n_samples : int, default=16384
    n_features : int, default=256
    n_components : int, default=1024
    n_nonzero_coefs : int, default=20
        Must not exceed ``n_components``.
    coef_range : tuple of two floats, default=(1.0, 2.0)
        Range of the uniform nonzero coefficients.
    noise : float, default=0.0
        Standard deviation of Gaussian noise added to ``X``.
    dtype : {np.float64, np.float32}, default=np.float64
    random_state : int, RandomState instance or None, default=None

    Returns
    -------
    X : ndarray of shape (n_samples, n_features)
        The samples.
    dictionary : ndarray of shape (n_components, n_features)
        The planted atoms.
    code : ndarray of shape (n_samples, n_components)
        The planted codes.

    Examples
    --------
    >>> from sklearn_dbksvd.datasets import make_sparse_dictionary_problem
    >>> X, dictionary, code = make_sparse_dictionary_problem(
    ...     100, 16, 32, 3, random_state=0)
    >>> X.shape, dictionary.shape, (code != 0).sum(axis=1).max()
    ((100, 16), (32, 16), np.int64(3))
    """
    if n_nonzero_coefs > n_components:
        raise ValueError(
            f"n_nonzero_coefs={n_nonzero_coefs} exceeds "
            f"n_components={n_components}."
        )
    if len(coef_range) != 2 or coef_range[0] > coef_range[1]:
        raise ValueError(f"coef_range must be (low, high); got {coef_range!r}.")
    rng = check_random_state(random_state)
    dictionary = uniform_atoms(n_components, n_features, rng)
    # Distinct atoms per sample: the k smallest of m uniform keys.
    keys = rng.random_sample((n_samples, n_components))
    support = np.argpartition(keys, n_nonzero_coefs - 1, axis=1)[:, :n_nonzero_coefs]
    code = np.zeros((n_samples, n_components))
    rows = np.arange(n_samples)[:, None]
    code[rows, support] = rng.uniform(*coef_range, size=support.shape)
    X = code @ dictionary
    if noise:
        X += noise * rng.standard_normal(X.shape)
    return X.astype(dtype), dictionary.astype(dtype), code.astype(dtype)


@validate_params(
    {
        "patch_size": [tuple],
        "max_patches": [Interval(Integral, 1, None, closed="left"), None],
        "image": [str],
        "random_state": ["random_state"],
    },
    prefer_skip_nested_validation=True,
)
def load_sample_patches(
    patch_size=(8, 8), max_patches=20000, *, image="china.jpg", random_state=None
):
    """Grey-level patches of one of scikit-learn's bundled sample images.

    Each patch is centred (its mean removed) and the whole set scaled to unit
    standard deviation, the usual preprocessing for patch dictionaries.
    Needs Pillow (installed with the ``cli`` extra).

    Parameters
    ----------
    patch_size : tuple of two ints, default=(8, 8)
    max_patches : int or None, default=20000
        Number of random patches; None takes all.
    image : {"china.jpg", "flower.jpg"}, default="china.jpg"
    random_state : int, RandomState instance or None, default=None

    Returns
    -------
    ndarray of shape (n_patches, patch_size[0] * patch_size[1])
    """
    from sklearn.datasets import load_sample_image
    from sklearn.feature_extraction.image import extract_patches_2d

    picture = load_sample_image(image).astype(np.float64).mean(axis=2) / 255.0
    patches = extract_patches_2d(
        picture, patch_size, max_patches=max_patches, random_state=random_state
    )
    patches = patches.reshape(len(patches), -1)
    patches -= patches.mean(axis=1, keepdims=True)
    patches /= patches.std()
    return patches
