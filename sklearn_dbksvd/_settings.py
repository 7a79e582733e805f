"""The settings of a fit, resolved once from the parameters and the data shape.

:func:`fit_settings` reads an estimator's public parameters, resolves the
data-dependent defaults (``n_components``, ``n_nonzero_coefs``,
``batch_size``, ``update_batch_size``, the Matryoshka levels) and cross-checks
them. The fit loop (:mod:`._fit_loop`), the steps (:func:`._step.dbksvd_step`,
:func:`._step_matryoshka.matryoshka_step`) and the initial atoms
(:mod:`._initial_atoms`) take the result and nothing else of the estimator:
this is the whole protocol between an estimator and its fit.
"""

from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class StepSettings:
    """What one DB-KSVD step depends on besides the batch, the atoms and the generator.

    Attributes
    ----------
    n_nonzero_coefs : int
        Nonzeros per code (``k``); shared by the levels of a Matryoshka step.
    n_components : int, default=None
        Atoms ``m`` (None when not known: the steps take it from the atoms).
    fit_algorithm : {"mp", "omp", "lars", "cd"}
        Sparse coder ("lars" and "cd": scikit-learn's lasso coders).
    dict_update : {"ksvd", "approx"}
        Leading singular pair to tolerance, or one power step.
    update_batch_size : int
        Atoms refitted from one residual snapshot (``w``).
    positive_code, positive_dict : bool
        Nonnegative codes; nonnegative atoms (NN-K-SVD).
    replace_min_usage, replace_coherence : float
        Atoms used by fewer than ``replace_min_usage`` times the mean usage
        ``n_samples * k / m`` are replaced, and the less used of two atoms
        with ``|cos| > replace_coherence``.
    mp_tol : float or None
        Relative residual at which matching pursuit stops.
    mp_refit : bool
        Least-squares refit of matching pursuit's coefficients.
    alpha : float
        Penalty of the lasso coders, for a batch at its own scale (see
        :meth:`scaled`).
    max_iter : int
        Iterations of the lasso coders.
    n_jobs : int or None
        Threads.
    backend : str
        Where the products that grow with the batch run ("numpy", "cupy").
    gram_memory : "auto", float or None
        Bytes of Gram rows a step may hold (see :mod:`._gram_rows`).
    levels : tuple of (slice, int) or None
        Matryoshka levels (atoms, share of ``k``) from
        :func:`._step_matryoshka.nested_levels`; None for a plain step.
    """

    n_nonzero_coefs: int
    n_components: int = None
    fit_algorithm: str = "mp"
    dict_update: str = "ksvd"
    update_batch_size: int = 16
    positive_code: bool = False
    positive_dict: bool = False
    replace_min_usage: float = 0.02
    replace_coherence: float = 0.95
    mp_tol: float = None
    mp_refit: bool = False
    alpha: float = 1.0
    max_iter: int = 1000
    n_jobs: int = None
    backend: str = "numpy"
    gram_memory: object = "auto"
    levels: tuple = None

    def scaled(self, scale):
        """These settings for a batch multiplied by ``scale``: ``alpha`` scales too."""
        return self if scale == 1.0 else replace(self, alpha=self.alpha * scale)


@dataclass(frozen=True)
class FitSettings:
    """What a whole fit depends on: the step's settings and those of the loop.

    Attributes
    ----------
    step : StepSettings
        Settings of every step.
    batch_size : int
        Samples per step (at most ``n_samples``).
    max_iter : int
        Epochs.
    max_steps : int or None
        Cap on the number of steps.
    shuffle : bool
        Shuffle the rows each epoch.
    tol : float
        Early stopping on the smoothed relative error.
    max_no_improvement : int or None
        Steps without improvement before stopping.
    replace_until : float
        Fraction of the planned steps that replace atoms.
    with_mean : bool
        Centre the data.
    init : {"auto", "uniform", "samples"}
        Initial atoms when ``dict_init`` is None.
    dict_init : array-like or None
        Initial atoms (its shape is checked).
    verbose : bool or int
        Progress display.
    callback : callable or None
        Called after every step with its record.
    """

    step: StepSettings
    batch_size: int
    max_iter: int = 10
    max_steps: int = None
    shuffle: bool = True
    tol: float = 1e-3
    max_no_improvement: int = 10
    replace_until: float = 0.8
    with_mean: bool = False
    init: str = "auto"
    dict_init: object = None
    verbose: object = False
    callback: object = None

    @property
    def n_components(self):
        return self.step.n_components

    @property
    def n_nonzero_coefs(self):
        return self.step.n_nonzero_coefs


def resolved_n_components(n_components, n_features):
    """``n_components``, None meaning ``n_features``."""
    return n_features if n_components is None else n_components


def resolved_n_nonzero_coefs(n_nonzero_coefs, n_features, n_components):
    """``n_nonzero_coefs``; None means ``max(1, n_features // 10)`` capped at ``m``.

    Raises ValueError when it exceeds ``n_components``.
    """
    if n_nonzero_coefs is None:
        # scikit-learn's OMP default, capped so that it is always valid.
        return min(max(1, n_features // 10), n_components)
    if n_nonzero_coefs > n_components:
        raise ValueError(
            f"n_nonzero_coefs={n_nonzero_coefs} exceeds "
            f"n_components={n_components}: a code cannot use more atoms "
            "than the dictionary has."
        )
    return n_nonzero_coefs


def resolved_batch_size(batch_size, n_samples, n_features):
    """Samples per step; "auto" means ``min(n_samples, max(4096, 32 * n_features))``."""
    if batch_size == "auto":
        # The paper wants 10-100x n_features samples per step.
        return min(n_samples, max(4096, 32 * n_features))
    return min(batch_size, n_samples)


def resolved_update_batch_size(update_batch_size, n_components):
    """Atoms per inner batch; "auto" means 16 (at most ``n_components``)."""
    if update_batch_size == "auto":
        # Part of the algorithm, not of the machine: 16 atoms from one
        # snapshot barely changes convergence (paper 4.1) and gives
        # threads enough independent work.
        return min(16, n_components)
    return update_batch_size


def fit_settings(estimator, n_samples, n_features):
    """Resolve and cross-check the fit settings of ``estimator`` for data of this shape.

    Reads the estimator's public parameters only (``get_params``). An
    estimator with a ``group_sizes`` parameter (Matryoshka) gets nested
    levels in its step settings.

    Parameters
    ----------
    estimator : DBKSVDDictionaryLearning or MatryoshkaDBKSVD
        Its parameters, validated.
    n_samples, n_features : int
        Shape of the training data (``n_samples`` only sizes the batch).

    Returns
    -------
    FitSettings

    Raises
    ------
    ValueError
        ``n_nonzero_coefs`` above ``n_components``, ``mp_refit`` with
        ``positive_code``, a ``dict_init`` of another shape, invalid
        ``group_sizes``, or ``transform_mode="nested"`` with a coder other
        than "mp" or "omp".
    """
    params = estimator.get_params(deep=False)
    n_components = resolved_n_components(params["n_components"], n_features)
    k = resolved_n_nonzero_coefs(params["n_nonzero_coefs"], n_features, n_components)
    if params["mp_refit"] and params["positive_code"]:
        raise ValueError(
            "mp_refit=True cannot keep codes nonnegative; use "
            "positive_code=False or mp_refit=False."
        )
    if params["dict_init"] is not None:
        shape = np.shape(params["dict_init"])
        if shape != (n_components, n_features):
            raise ValueError(
                f"dict_init has shape {shape}; expected (n_components, "
                f"n_features) = ({n_components}, {n_features})."
            )
    levels = None
    if "group_sizes" in params:
        from ._step_matryoshka import check_group_sizes, nested_levels

        sizes = check_group_sizes(params["group_sizes"], n_components)
        levels = tuple(nested_levels(sizes, k))
        if params.get("transform_mode") == "nested" and params[
            "transform_algorithm"
        ] not in ("mp", "omp"):
            raise ValueError(
                "transform_mode='nested' shares transform_n_nonzero_coefs "
                "among the groups, so it needs transform_algorithm 'mp' or "
                f"'omp'; got {params['transform_algorithm']!r}."
            )
    step = StepSettings(
        n_components=n_components,
        n_nonzero_coefs=k,
        fit_algorithm=params["fit_algorithm"],
        dict_update=params["dict_update"],
        update_batch_size=resolved_update_batch_size(
            params["update_batch_size"], n_components
        ),
        positive_code=params["positive_code"],
        positive_dict=params["positive_dict"],
        replace_min_usage=params["replace_min_usage"],
        replace_coherence=params["replace_coherence"],
        mp_tol=params["mp_tol"],
        mp_refit=params["mp_refit"],
        alpha=params["alpha"],
        max_iter=params["transform_max_iter"],
        n_jobs=params["n_jobs"],
        backend=params.get("backend", "numpy"),
        gram_memory=params.get("gram_memory", "auto"),
        levels=levels,
    )
    return FitSettings(
        step=step,
        batch_size=resolved_batch_size(params["batch_size"], n_samples, n_features),
        max_iter=params["max_iter"],
        max_steps=params["max_steps"],
        shuffle=params["shuffle"],
        tol=params["tol"],
        max_no_improvement=params["max_no_improvement"],
        replace_until=params["replace_until"],
        with_mean=params.get("with_mean", False),
        init=params["init"],
        dict_init=params["dict_init"],
        verbose=params["verbose"],
        callback=params["callback"],
    )
