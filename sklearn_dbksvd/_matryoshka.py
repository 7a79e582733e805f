"""MatryoshkaDBKSVD: DB-KSVD with nested groups of atoms (paper section 4.2).

The atoms are split into groups of doubling size. Group 1 is encoded and
refitted on the batch, group 2 on the residual group 1 leaves after its
update, and so on, each group with its own share of the ``k`` nonzeros. The
first groups must then explain as much as they can alone and later groups
what is left; the paper (section 5.3) finds the dictionaries less coherent,
and so does ``benchmarks/paper_toy.py`` on the planted problem.

The step itself is :func:`~._step_matryoshka.matryoshka_step`, beside
:func:`~._step.dbksvd_step`; a fit differs from the plain estimator's only in
its settings (nested ``levels``, see :func:`~._settings.fit_settings`).
"""

from sklearn.utils._param_validation import StrOptions
from sklearn.utils.validation import check_is_fitted

from ._backend import to_numpy
from ._base import _BaseDBKSVD
from ._settings import StepSettings
from ._step_matryoshka import check_group_sizes, nested_levels, nested_pass


class MatryoshkaDBKSVD(_BaseDBKSVD):
    """Double-Batch K-SVD with Matryoshka (nested) groups of atoms.

    Learns the same model as :class:`DBKSVDDictionaryLearning`::

        min ‖X − code @ components_‖²_F   s.t. ‖components_[j]‖₂ = 1,
                                              ‖code[i]‖₀ ≤ n_nonzero_coefs

    with the atoms split into groups ``D⁽¹⁾, D⁽²⁾, ...`` of doubling size
    (DB-KSVD paper, section 4.2, after Bussmann et al.'s Matryoshka SAEs).
    Each group owns an equal share of the ``k`` nonzeros. A step encodes
    group 1 on the batch with its share and refits it (K-SVD), then encodes
    and refits group 2 on the residual ``E⁽¹⁾ = X − code⁽¹⁾ D⁽¹⁾`` left after
    that update, and so on: every group's update uses its own codes on its own
    residual. The first groups must explain the data alone, which orders the
    atoms from coarse to fine and, in the paper, makes the dictionary less
    coherent. At evaluation, one encoding with the whole dictionary suffices
    (``transform_mode="full"``, the paper's); ``"nested"`` encodes group by
    group as in training.

    Parameters
    ----------
    n_components : int, default=None
        Number of atoms ``m``. None means ``n_features``.
    group_sizes : sequence of int, default=None
        Atoms per group, in nesting order; positive ints summing to
        ``n_components``. None means doubling groups: the first has
        ``max(1, n_components // 16)`` atoms, each next one as many as all
        before it (``g, g, 2g, 4g, ...``) while it fits, and the last group
        absorbs the remainder (4096 → 256, 256, 512, 1024, 2048, the paper's
        groups; 1000 → 62, 62, 124, 248, 504). The paper's 16384-atom run used
        seven groups starting at 256; pass them explicitly to reproduce it.
    transform_mode : {"full", "nested"}, default="full"
        How :meth:`transform` encodes with "mp" or "omp". "full": one encoding
        with the whole dictionary and ``transform_n_nonzero_coefs`` nonzeros
        (paper 4.2). "nested": group by group on the residual, each group with
        its share of ``transform_n_nonzero_coefs``, as in training; then the
        codes of the first ``g`` groups alone give exactly their nested
        reconstruction. "nested" needs ``transform_algorithm`` "mp" or "omp".
    backend : {"numpy", "cupy"}, default="numpy"
        Where the products that grow with the batch run during fit, level by
        level, as in :class:`DBKSVDDictionaryLearning`. The batch itself is
        held on the host.
    n_nonzero_coefs : int, default=None
        Nonzeros per code during fit (``k``), shared by the groups: each gets
        ``k // n_groups`` and the first ``k % n_groups`` groups one more (the
        coarse groups explain the most), so the total is exactly ``k``. When
        ``k < n_groups`` the groups after the ``k``-th would get none; they are
        merged into the ``k``-th group (one level, one nonzero, encoded and
        refitted together) so that every atom is still learned. None means
        ``max(1, n_features // 10)``, capped at ``n_components``.
    alpha : float, default=1.0
        Lasso penalty of the fit coders "lars" and "cd", and of the transform
        coders when ``transform_alpha`` is None.
    max_iter : int, default=10
        Passes over the data (epochs); 0 keeps ``dict_init`` as given.
    max_steps : int, default=None
        Cap on the number of steps.
    batch_size : int or "auto", default="auto"
        Samples per step; "auto" means
        ``min(n_samples, max(4096, 32 * n_features))``.
    fit_algorithm : {"mp", "omp", "lars", "cd"}, default="mp"
        Sparse coder of each group during fit; "lars" and "cd" are
        scikit-learn's (slow) lasso coders with penalty ``alpha``, as in
        :class:`DBKSVDDictionaryLearning`.
    dict_update : {"ksvd", "approx"}, default="ksvd"
        Leading singular pair to tolerance, or one power step.
    update_batch_size : int or "auto", default="auto"
        Atoms of a group refitted together from one residual snapshot; "auto"
        means 16.
    transform_algorithm : {"mp", "omp", "lasso_lars", "lasso_cd", "lars", \
            "threshold"}, default="mp"
        Coder of :meth:`transform`.
    transform_n_nonzero_coefs : int, default=None
        Nonzeros per code in :meth:`transform`; None means ``k``. A value
        above ``n_components`` makes :meth:`transform` raise ``ValueError``.
    transform_alpha : float, default=None
        Regularisation of the lasso and threshold coders; None means
        ``alpha``.
    transform_max_iter : int, default=1000
        Iterations of "lasso_cd" and "lasso_lars".
    sparse_output : bool, default=False
        Whether :meth:`transform` returns a ``scipy.sparse.csr_matrix``.
    positive_code : bool, default=False
        Nonnegative codes.
    positive_dict : bool, default=False
        Nonnegative atoms (NN-K-SVD updates), as in
        :class:`DBKSVDDictionaryLearning`.
    split_sign : bool, default=False
        :meth:`transform` returns ``[max(code, 0), max(-code, 0)]``.
    with_mean : bool, default=False
        Centre the data (``mean_``), as in :class:`DBKSVDDictionaryLearning`.
    mp_tol : float, default=None
        Matching pursuit stops adding nonzeros to a sample once its relative
        residual ``‖x − code @ D‖ / ‖x‖`` is at most ``mp_tol``: later groups
        skip such a sample. Within a group, the coder stops at ``mp_tol``
        times the norm of the residual it is given, so it may use a few more
        nonzeros than the single-encoding rule would, never more than the
        group's share. None always uses the whole share.
    mp_refit : bool, default=False
        Least-squares refit of each group's coefficients on its support. Not
        with ``positive_code``.
    dict_init : array-like of shape (n_components, n_features), default=None
        Initial atoms (normalised on use); overrides ``init``.
    code_init : array-like or sparse matrix of shape (n_samples, \
            n_components), default=None
        Known support of the codes of the samples given to :meth:`fit`
        (paper 5.4), as in :class:`DBKSVDDictionaryLearning`; the initial
        K-SVD update on it runs group by group on the residual.
    init : {"auto", "uniform", "samples"}, default="auto"
        Initial atoms when ``dict_init`` is None.
    shuffle : bool, default=True
        Shuffle the samples each epoch.
    tol : float, default=1e-3
        Early stopping on the smoothed batch relative error.
    max_no_improvement : int, default=10
        Steps without improvement before stopping; None disables.
    replace_min_usage : float, default=0.02
        Atoms of a group used by fewer samples than this fraction of the
        group's mean usage ``batch_size * share / group_size`` are replaced.
    replace_coherence : float, default=0.95
        Of two atoms of one group with ``|cos| >`` this, the less used one is
        replaced.
    replace_until : float, default=0.8
        Fraction of the planned steps of :meth:`fit` during which atoms are
        replaced (of ``max_steps`` in :meth:`partial_fit`, which without it
        replaces at every call).
    n_jobs : int, default=None
        Threads; results do not depend on it.
    gram_memory : "auto", float or None, default="auto"
        Bytes of Gram matrix rows that :meth:`transform` may hold, as in
        :class:`DBKSVDDictionaryLearning` (the levels of a fit hold the Gram
        matrices of their own groups).
    random_state : int, RandomState instance or None, default=None
        Seeds the initial dictionary, the shuffling and the update order.
    verbose : bool or int, default=False
        Show a progress bar.
    callback : callable, default=None
        Called after every step with its record of ``history_``; returning
        True stops the fit.

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features)
        The atoms, unit norm, group after group.
    mean_ : ndarray of shape (n_features,)
        Mean subtracted before coding and added back by
        :meth:`inverse_transform`; zeros with ``with_mean=False`` (always
        set after fit). With out-of-core data it costs one more pass; after
        :meth:`partial_fit` it is the mean of the first batch.
    group_sizes_ : tuple of int
        The resolved group sizes.
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Names of features seen during fit, when ``X`` has string column names.
    n_iter_ : int
        Epochs started.
    n_steps_ : int
        Steps run.
    n_samples_seen_ : int
        Samples processed by the steps.
    history_ : list of dict
        One record per step: ``relative_error`` and ``variance_explained`` of
        the residual left by the last group against the batch,
        ``n_replaced`` (all groups), ``seconds``, ``n_samples_seen``.
    provenance_ : dict or None
        Where the training rows come from, copied from the rows of a harvest
        (:func:`sklearn_dbksvd.lm.load_activations`): ``model_name``,
        ``model_fingerprint``, ``module``, ``hook_name``, ``layer``,
        ``context_size``, ``prepend_bos``, ``dtype`` and ``harvest``
        (``path``, ``fingerprint``, ``n_rows``). None for other data. A
        :meth:`partial_fit` batch without provenance keeps the one recorded.

    See Also
    --------
    DBKSVDDictionaryLearning : The same without groups.

    References
    ----------
    R. Valentin, S. M. Katz, V. Vanhoucke, M. J. Kochenderfer, "DB-KSVD:
    Scalable Alternating Optimization for Disentangling High-Dimensional
    Embedding Spaces", 2025, section 4.2.

    B. Bussmann, N. Nabeshima, A. Karvonen, N. Nanda, "Learning
    Multi-Level Features with Matryoshka Sparse Autoencoders", 2025.

    Examples
    --------
    >>> from sklearn_dbksvd import MatryoshkaDBKSVD
    >>> from sklearn_dbksvd.datasets import make_sparse_dictionary_problem
    >>> X, _, _ = make_sparse_dictionary_problem(2000, 16, 32, 4, random_state=0)
    >>> model = MatryoshkaDBKSVD(32, n_nonzero_coefs=4, random_state=0).fit(X)
    >>> model.group_sizes_
    (2, 2, 4, 8, 16)
    >>> code = model.transform(X)
    >>> code.shape, bool((code != 0).sum(axis=1).max() <= 4)
    ((2000, 32), True)
    """

    _parameter_constraints: dict = {
        **_BaseDBKSVD._parameter_constraints,
        "group_sizes": ["array-like", None],
        "transform_mode": [StrOptions({"full", "nested"})],
        "backend": [StrOptions({"numpy", "cupy"})],
    }

    def __init__(
        self,
        n_components=None,
        *,
        group_sizes=None,
        transform_mode="full",
        backend="numpy",
        n_nonzero_coefs=None,
        alpha=1.0,
        max_iter=10,
        max_steps=None,
        batch_size="auto",
        fit_algorithm="mp",
        dict_update="ksvd",
        update_batch_size="auto",
        transform_algorithm="mp",
        transform_n_nonzero_coefs=None,
        transform_alpha=None,
        transform_max_iter=1000,
        sparse_output=False,
        positive_code=False,
        positive_dict=False,
        split_sign=False,
        with_mean=False,
        mp_tol=None,
        mp_refit=False,
        dict_init=None,
        code_init=None,
        init="auto",
        shuffle=True,
        tol=1e-3,
        max_no_improvement=10,
        replace_min_usage=0.02,
        replace_coherence=0.95,
        replace_until=0.8,
        n_jobs=None,
        gram_memory="auto",
        random_state=None,
        verbose=False,
        callback=None,
    ):
        self.n_components = n_components
        self.group_sizes = group_sizes
        self.transform_mode = transform_mode
        self.backend = backend
        self.n_nonzero_coefs = n_nonzero_coefs
        self.alpha = alpha
        self.max_iter = max_iter
        self.max_steps = max_steps
        self.batch_size = batch_size
        self.fit_algorithm = fit_algorithm
        self.dict_update = dict_update
        self.update_batch_size = update_batch_size
        self.transform_algorithm = transform_algorithm
        self.transform_n_nonzero_coefs = transform_n_nonzero_coefs
        self.transform_alpha = transform_alpha
        self.transform_max_iter = transform_max_iter
        self.sparse_output = sparse_output
        self.positive_code = positive_code
        self.positive_dict = positive_dict
        self.split_sign = split_sign
        self.with_mean = with_mean
        self.mp_tol = mp_tol
        self.mp_refit = mp_refit
        self.dict_init = dict_init
        self.code_init = code_init
        self.init = init
        self.shuffle = shuffle
        self.tol = tol
        self.max_no_improvement = max_no_improvement
        self.replace_min_usage = replace_min_usage
        self.replace_coherence = replace_coherence
        self.replace_until = replace_until
        self.n_jobs = n_jobs
        self.gram_memory = gram_memory
        self.random_state = random_state
        self.verbose = verbose
        self.callback = callback

    @property
    def group_sizes_(self):
        """The resolved group sizes (tuple of int)."""
        check_is_fitted(self, "components_")
        return check_group_sizes(self.group_sizes, self.components_.shape[0])

    def _levels(self, n_components, n_nonzero_coefs):
        sizes = check_group_sizes(self.group_sizes, n_components)
        return nested_levels(sizes, n_nonzero_coefs)

    def _transform_gram(self, dtype):
        if self.transform_mode == "nested":
            return None  # each group needs its own Gram matrix
        return super()._transform_gram(dtype)

    def _encode_scaled(self, X, gram, scale):
        if self.transform_mode == "full":
            return super()._encode_scaled(X, gram, scale)
        X = to_numpy(X)  # the nested pass runs on the host
        components = self.components_.astype(X.dtype, copy=False)
        levels = self._levels(len(components), self._transform_n_nonzero_coefs())
        # The transform coder on each level: the step's settings, encoding only.
        settings = StepSettings(
            n_nonzero_coefs=self._transform_n_nonzero_coefs(),
            n_components=len(components),
            fit_algorithm=self.transform_algorithm,
            positive_code=self.positive_code,
            mp_tol=self.mp_tol,
            mp_refit=self.mp_refit,
            n_jobs=self.n_jobs,
            levels=tuple(levels),
        )
        _, codes, _ = nested_pass(X, components, settings)
        return codes if self.sparse_output else codes.toarray()
