"""DBKSVDDictionaryLearning: the Double-Batch K-SVD estimator."""

from sklearn.utils._param_validation import StrOptions

from ._base import _BaseDBKSVD


class DBKSVDDictionaryLearning(_BaseDBKSVD):
    """Sparse dictionary learning by Double-Batch K-SVD (DB-KSVD).

    Finds unit-norm atoms ``components_`` and codes with at most
    ``n_nonzero_coefs`` nonzeros that solve::

        min ‖X − code @ components_‖²_F   s.t. ‖components_[j]‖₂ = 1,
                                              ‖code[i]‖₀ ≤ n_nonzero_coefs

    by alternating matching pursuit on the Gram matrix with K-SVD atom
    updates. Each step works on one batch of samples (outer batching) and
    refits the atoms in inner batches of ``update_batch_size`` from one
    residual snapshot, which is what lets it scale to millions of samples
    with thousands of features. A drop-in replacement for
    :class:`sklearn.decomposition.MiniBatchDictionaryLearning`.

    Parameters
    ----------
    n_components : int, default=None
        Number of atoms ``m``. None means ``n_features``.
    n_nonzero_coefs : int, default=None
        Nonzeros per code during fit (``k``). None means
        ``max(1, n_features // 10)``, capped at ``n_components``. A larger value
        than ``n_components`` raises ``ValueError``.
    alpha : float, default=1.0
        Lasso penalty of the coders "lars" and "cd" during fit (as in
        ``MiniBatchDictionaryLearning``), and of the transform coders when
        ``transform_alpha`` is None. Unused by "mp" and "omp", whose sparsity
        is the budget ``n_nonzero_coefs``.
    max_iter : int, default=10
        Passes over the data (epochs). 0 runs no step: ``components_`` is
        ``dict_init`` as given (not normalised), or the initial dictionary,
        as in ``MiniBatchDictionaryLearning``.
    max_steps : int, default=None
        Cap on the number of steps (one step encodes one batch and updates
        all atoms). The paper runs 40 steps of 2^16 samples.
    batch_size : int or "auto", default="auto"
        Samples per step. "auto" means
        ``min(n_samples, max(4096, 32 * n_features))``; the paper recommends
        10 to 100 times ``n_features``. Batches of one epoch have equal sizes.
    fit_algorithm : {"mp", "omp", "lars", "cd"}, default="mp"
        Sparse coder during fit: matching pursuit on the Gram matrix (fast),
        orthogonal matching pursuit (Batch-OMP on the Gram matrix, see
        :func:`~sklearn_dbksvd.sparse_encode_omp`), or, for compatibility
        with ``MiniBatchDictionaryLearning``, scikit-learn's lasso coders
        (``"lars"``: LARS, ``"cd"``: coordinate descent) with penalty
        ``alpha``, whose supports the K-SVD update then refits. The lasso
        coders are slow (one lasso per sample and step, far slower than
        matching pursuit) and ignore ``n_nonzero_coefs``; their atoms depend
        on the scale of ``X`` relative to ``alpha``.
    dict_update : {"ksvd", "approx"}, default="ksvd"
        "ksvd" refits each atom and its codes with the leading singular pair
        of its error matrix, computed iteratively to tolerance; "approx" takes
        one power step instead (approximate K-SVD).
    update_batch_size : int or "auto", default="auto"
        Atoms refitted together from one residual snapshot (inner batching).
        Part of the algorithm, independent of ``n_jobs``; 1 is exact
        sequential K-SVD. "auto" means 16.
    transform_algorithm : {"mp", "omp", "lasso_lars", "lasso_cd", "lars", \
            "threshold"}, default="mp"
        Coder of :meth:`transform`. "mp" is
        :func:`~sklearn_dbksvd.sparse_encode_mp`, "omp"
        :func:`~sklearn_dbksvd.sparse_encode_omp` (scikit-learn's OMP when
        ``transform_alpha`` is set, which it reads as the squared-error
        target); the others are delegated to
        :func:`sklearn.decomposition.sparse_encode`.
    transform_n_nonzero_coefs : int, default=None
        Nonzeros per code in :meth:`transform` for "mp" and "omp". None means
        the fitted ``n_nonzero_coefs``. A value above ``n_components`` makes
        :meth:`transform` raise ``ValueError``, as ``n_nonzero_coefs`` does
        in :meth:`fit`.
    transform_alpha : float, default=None
        Regularisation of the lasso and threshold coders; with "omp", the
        target squared residual norm, as in scikit-learn. None means
        ``alpha`` for the lasso and threshold coders.
    transform_max_iter : int, default=1000
        Iterations of "lasso_cd" and "lasso_lars".
    sparse_output : bool, default=False
        Whether :meth:`transform` returns the codes as a
        ``scipy.sparse.csr_matrix`` (for "mp" built straight from the
        selections, never as a dense ``(n_samples, n_components)`` array)
        instead of a dense ndarray. At most ``n_nonzero_coefs`` of the
        ``n_components`` entries of a code are nonzero, so CSR saves memory
        when ``n_components`` is large.
    positive_code : bool, default=False
        Nonnegative codes: matching pursuit only takes positive correlations,
        OMP keeps its least-squares coefficients nonnegative (active set), and
        the atom update keeps codes nonnegative.
    positive_dict : bool, default=False
        Nonnegative atoms. The K-SVD update of an atom becomes the
        nonnegative rank-1 update of NN-K-SVD (alternating projected updates
        of the atom and its codes, from the singular pair); initial and
        replacement atoms are projected on the nonnegative orthant. Combines
        with ``positive_code``. These atom updates run in NumPy, outside the
        compiled loop.
    split_sign : bool, default=False
        :meth:`transform` returns ``[max(code, 0), max(-code, 0)]``:
        ``2 * n_components`` nonnegative columns, named ``<atom>_pos`` then
        ``<atom>_neg`` by :meth:`get_feature_names_out`.
        :meth:`inverse_transform` accepts either form.
    with_mean : bool, default=False
        Centre the data: learn the mean of the training samples
        (``mean_``), fit the atoms to the centred samples, code ``X - mean_``
        in :meth:`transform` and add ``mean_`` back in
        :meth:`inverse_transform` (an SAE's decoder bias ``b_dec``). The mean
        is not counted among the ``n_nonzero_coefs``. False, as
        :class:`~sklearn.decomposition.MiniBatchDictionaryLearning`, codes
        the raw data.
    mp_tol : float, default=None
        Matching pursuit (fit and transform) stops selecting for a sample once
        its relative residual ``‖x − code @ D‖ / ‖x‖`` is at most ``mp_tol``, as
        the reference implementation's ``rtol``. None always makes
        ``n_nonzero_coefs`` selections.
    mp_refit : bool, default=False
        Matching pursuit (fit and transform) replaces its coefficients by the
        least-squares fit on the selected atoms. Not with ``positive_code``.
    dict_init : array-like of shape (n_components, n_features), default=None
        Initial atoms (normalised on use); overrides ``init``.
    code_init : array-like or sparse matrix of shape (n_samples, \
            n_components), default=None
        Known structure of the codes (paper section 5.4), row ``i`` for the
        sample ``X[i]`` given to :meth:`fit`. Its nonzeros are the known
        support: sample ``i`` uses atom ``j``. Rows may be partly or entirely
        zero (unknown), and its values are initial coefficients (1 for a
        known adjacency, as in the paper). Before the first step, the initial
        atoms (``dict_init`` or ``init``) get one K-SVD update with
        ``code_init`` as the codes, on the samples with a known support (at
        most ``batch_size`` of them, drawn at random when there are more):
        every atom with known users is refitted to them, the others keep
        their initial value. Fitting then alternates as usual; the support
        is not imposed on later steps. Ignored by :meth:`partial_fit`.
    init : {"auto", "uniform", "samples"}, default="auto"
        "uniform": U(−1/2, 1/2) entries, rows normalised (the paper's);
        "samples": normalised random samples of the first batch. "auto" is
        "samples", which converged faster in ``benchmarks/``.
    shuffle : bool, default=True
        Shuffle the samples before making the batches of each epoch.
    tol : float, default=1e-3
        Early stopping: a step improves when it lowers the smoothed batch
        relative error by more than this fraction.
    max_no_improvement : int, default=10
        Stop after this many steps in a row without improvement. None
        disables early stopping.
    replace_min_usage : float, default=0.02
        After each step, atoms used by fewer samples than this fraction of the
        mean usage ``batch_size * k / m`` are replaced by the normalised
        residuals of the worst-fitted samples (unused atoms always are). 0
        replaces unused atoms only.
    replace_coherence : float, default=0.95
        Of two atoms with ``|cos| >`` this, the less used one is replaced. 1
        disables. On the paper's toy problem (d=256, m=1024, k=20) 0.99 let 36
        near-duplicate pairs survive and recovered 96.6 % of the atoms; 0.95
        recovered 99.9 % (``benchmarks/RESULTS.md``).
    replace_until : float, default=0.8
        Fraction of the planned steps of :meth:`fit` during which atoms are
        replaced, so that the last steps can settle. 0 disables replacement.
        :meth:`partial_fit` takes ``max_steps`` as its plan, and replaces at
        every call without it. Batches in which atoms average fewer than one
        user never replace (too small to tell a dead atom).
    backend : {"numpy", "cupy"}, default="numpy"
        Where the products that grow with the batch run during fit: the
        correlations ``X @ components_.T``, the Gram matrix, the residual and
        ``EᵀE`` of atoms with more users than features. "cupy" streams each
        batch to the GPU block by block and needs CuPy (``pip install
        'sklearn-dbksvd[gpu]'``); matching pursuit and the small solves stay on
        the host. With "numpy", arrays already on a device (torch, CuPy, ...
        passed with scikit-learn's ``array_api_dispatch``) are used there.
    n_jobs : int, default=None
        Threads for matching pursuit and for the atoms of an inner batch.
        Results do not depend on it.
    gram_memory : "auto", float or None, default="auto"
        Bytes of Gram matrix rows that matching pursuit, Batch-OMP and the
        coherence check may hold (fit and transform). The whole
        ``(n_components, n_components)`` matrix is used when it fits; past
        that (65,536 float32 atoms take 17.2 GB), the rows of the most used
        atoms are cached and the others computed per block of samples as they
        are selected, and near-duplicates are searched a block of rows at a
        time. The codes are the same to float32 rounding, only slower. "auto"
        is a quarter of the memory available when the call starts; None
        always holds the whole matrix.
    random_state : int, RandomState instance or None, default=None
        Seeds the initial dictionary, the shuffling and the order of atom
        updates.
    verbose : bool or int, default=False
        Show a progress bar (tqdm, if installed) with the step, relative error
        and variance explained.
    callback : callable, default=None
        Called after every step with a dict of the step's metrics (the
        record appended to ``history_``); returning True stops the fit.

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features)
        The atoms, unit norm, in the dtype of the training data.
    mean_ : ndarray of shape (n_features,)
        Mean subtracted before coding and added back by
        :meth:`inverse_transform`; zeros with ``with_mean=False`` (always
        set after fit). With out-of-core data it costs one more pass; after
        :meth:`partial_fit` it is the mean of the first batch.
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Names of features seen during fit, when ``X`` has string column names.
    n_iter_ : int
        Epochs started.
    n_steps_ : int
        DB-KSVD steps run.
    n_samples_seen_ : int
        Samples processed by the steps (with repetition over epochs).
    history_ : list of dict
        One record per step: ``step``, ``relative_error`` (paper Eq. 6),
        ``variance_explained`` (Eq. 7), both of the batch after the atom
        update, ``n_replaced``, ``seconds`` and ``n_samples_seen``.
    provenance_ : dict or None
        Where the training rows come from, copied from the rows of a harvest
        (:func:`sklearn_dbksvd.lm.load_activations`): ``model_name``,
        ``model_fingerprint``, ``module``, ``hook_name``, ``layer``,
        ``context_size``, ``prepend_bos``, ``dtype`` and ``harvest``
        (``path``, ``fingerprint``, ``n_rows``). None for other data. A
        :meth:`partial_fit` batch without provenance keeps the one recorded.

    See Also
    --------
    sklearn.decomposition.MiniBatchDictionaryLearning : Online dictionary
        learning with an l1 penalty.
    sparse_encode_mp : The matching-pursuit coder.

    Notes
    -----
    **Out-of-core data.** :meth:`fit` accepts ``np.memmap`` arrays, h5py
    datasets, zarr arrays and dask arrays and reads them one batch at a time;
    each batch is validated (NaN, infinity, complex values) as it is read, and
    float32 or float64 data keeps its dtype. The sampling of batches depends
    on how cheaply rows can be read:

    - in-memory and memory-mapped arrays: every epoch is a new random
      permutation of the rows cut into batches, so a memory-mapped file gives
      exactly the dictionary of the same array in memory;
    - h5py, zarr and dask arrays, whose rows live in compressed or computed
      chunks: the rows are cut into ``16 * n_batches`` contiguous blocks of
      nearly equal size, and every epoch takes the blocks in a new random
      order, 16 blocks per batch. Each sample is still seen once per epoch,
      but samples of one block always share a batch, so data stored sorted
      (by source, by time) is mixed at block granularity only.

    :meth:`partial_fit` uses the array it is given as one batch and reads it
    whole. :meth:`transform` encodes memory-mapped and chunked arrays in
    chunks of rows, and a dask array lazily with ``map_blocks``, returning a
    dask array: on a ``dask.distributed`` cluster the fitted estimator is
    sent to the workers once and each block is encoded where it lives. With
    ``sparse_output=True`` the codes are never dense.

    References
    ----------
    R. Valentin, S. M. Katz, V. Vanhoucke, M. J. Kochenderfer, "DB-KSVD:
    Scalable Alternating Optimization for Disentangling High-Dimensional
    Embedding Spaces", 2025.

    M. Aharon, M. Elad, A. Bruckstein, "K-SVD: An Algorithm for Designing
    Overcomplete Dictionaries for Sparse Representation", IEEE Trans. Signal
    Processing 54(11), 2006.

    Examples
    --------
    >>> from sklearn_dbksvd import DBKSVDDictionaryLearning
    >>> from sklearn_dbksvd.datasets import make_sparse_dictionary_problem
    >>> X, _, _ = make_sparse_dictionary_problem(2000, 16, 32, 3, random_state=0)
    >>> model = DBKSVDDictionaryLearning(32, n_nonzero_coefs=3, random_state=0)
    >>> code = model.fit_transform(X)
    >>> code.shape, int((code != 0).sum(axis=1).max())
    ((2000, 32), 3)
    """

    _parameter_constraints: dict = {
        **_BaseDBKSVD._parameter_constraints,
        "backend": [StrOptions({"numpy", "cupy"})],
    }

    def __init__(
        self,
        n_components=None,
        *,
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
        backend="numpy",
        n_jobs=None,
        gram_memory="auto",
        random_state=None,
        verbose=False,
        callback=None,
    ):
        self.n_components = n_components
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
        self.backend = backend
        self.n_jobs = n_jobs
        self.gram_memory = gram_memory
        self.random_state = random_state
        self.verbose = verbose
        self.callback = callback
