"""Shared base of the DB-KSVD estimators: parameters, fit loop, transform."""

import copy
import functools
import warnings
from numbers import Integral, Real

import numpy as np
import scipy.sparse as sp
from sklearn import get_config
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    _fit_context,
)
from sklearn.decomposition import sparse_encode
from sklearn.utils import check_random_state
from sklearn.utils._array_api import get_namespace
from sklearn.utils._param_validation import (
    Interval,
    InvalidParameterError,
    StrOptions,
)
from sklearn.utils.validation import (
    _check_feature_names,
    _check_feature_names_in,
    _check_n_features,
    _get_feature_names,
    check_array,
    check_is_fitted,
    validate_data,
)

from ._backend import host_dtype, is_device_array, to_namespace_of, to_numpy
from ._data import (
    check_batch,
    check_lazy_array,
    chunk_rows,
    dask_map_encode,
    is_dask_array,
    is_lazy_array,
    iter_row_chunks,
    read_rows,
    stack_codes,
)
from ._encode import _mp_encode, selections_to_csr
from ._fit_loop import (
    FitState,
    batch_scale,
    centred,
    checked_dict_init,
    data_mean,
    fit_step,
    fitted_attributes,
    fitted_mean,
    initial_components,
    initialise,
    plan_fit,
    run_fit,
    scaled,
    unit_atoms,
)
from ._gram_rows import GRAM_MEMORY_CONSTRAINT, CarriedGram, plan_gram
from ._omp import _omp_encode
from ._settings import fit_settings, resolved_n_nonzero_coefs
from ._split_sign import split_feature_names, split_sign
from .metrics import _variance_explained_of_residual

_SKLEARN_CODERS = {"omp", "lasso_lars", "lasso_cd", "lars", "threshold"}
_FLOAT_DTYPES = [np.float64, np.float32]


def _takes_integer(constraints):
    """Whether a parameter's constraints ask for an integer and not a bool."""
    if "boolean" in constraints:
        return False
    return any(
        constraint is Integral
        or (isinstance(constraint, Interval) and constraint.type is Integral)
        for constraint in constraints
    )


def _encode_chunk(estimator, gram, chunk):
    """Codes of one validated chunk of rows with a shared Gram matrix."""
    return estimator._encode(chunk, gram)


def _provenance_of(X):
    """A copy of the ``provenance`` dict of a harvest's activations, else None.

    :func:`sklearn_dbksvd.lm.load_activations` returns rows that carry where
    they come from (model, hook, harvest); other inputs carry nothing.
    """
    provenance = getattr(X, "provenance", None)
    return copy.deepcopy(dict(provenance)) if provenance is not None else None


def _warn_if_more_atoms_than_samples(n_components, n_samples):
    """Warn that a dictionary of at least as many atoms as samples memorises them."""
    if n_components >= n_samples:
        warnings.warn(
            f"n_components={n_components} is at least n_samples={n_samples}: "
            "the atoms can copy the samples, so the fit's variance explained "
            "(near 1.0) says nothing about new data. Use fewer atoms or more "
            "samples, and score held-out data.",
            UserWarning,
            stacklevel=5,  # the caller of fit, past scikit-learn's wrapper
        )


class _BaseDBKSVD(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Fit loop, sparse coding and scoring shared by the DB-KSVD estimators.

    A fit resolves the parameters once, for the data's shape, into a
    :class:`~._settings.FitSettings` (:func:`~._settings.fit_settings`, which
    reads the public parameters only); the fit loop, the steps and the
    initial atoms take that object and nothing else of the estimator (see
    :mod:`._fit_loop`). A Matryoshka estimator differs only in its settings
    (nested ``levels``) and in how it transforms.
    """

    _parameter_constraints: dict = {
        "n_components": [Interval(Integral, 1, None, closed="left"), None],
        "n_nonzero_coefs": [Interval(Integral, 1, None, closed="left"), None],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "max_iter": [Interval(Integral, 0, None, closed="left")],
        "max_steps": [Interval(Integral, 1, None, closed="left"), None],
        "batch_size": [
            Interval(Integral, 1, None, closed="left"),
            StrOptions({"auto"}),
        ],
        "fit_algorithm": [StrOptions({"mp", "omp", "lars", "cd"})],
        "dict_update": [StrOptions({"ksvd", "approx"})],
        "update_batch_size": [
            Interval(Integral, 1, None, closed="left"),
            StrOptions({"auto"}),
        ],
        "transform_algorithm": [StrOptions({"mp"} | _SKLEARN_CODERS)],
        "transform_n_nonzero_coefs": [Interval(Integral, 1, None, closed="left"), None],
        "transform_alpha": [Interval(Real, 0, None, closed="left"), None],
        "transform_max_iter": [Interval(Integral, 0, None, closed="left")],
        "positive_code": ["boolean"],
        "positive_dict": ["boolean"],
        "split_sign": ["boolean"],
        "with_mean": ["boolean"],
        "sparse_output": ["boolean"],
        "mp_tol": [Interval(Real, 0, 1, closed="both"), None],
        "mp_refit": ["boolean"],
        "dict_init": ["array-like", None],
        "code_init": ["array-like", "sparse matrix", None],
        "init": [StrOptions({"auto", "uniform", "samples"})],
        "shuffle": ["boolean"],
        "tol": [Interval(Real, 0, None, closed="left")],
        "max_no_improvement": [Interval(Integral, 1, None, closed="left"), None],
        "replace_min_usage": [Interval(Real, 0, None, closed="left")],
        "replace_coherence": [Interval(Real, 0, 1, closed="both")],
        "replace_until": [Interval(Real, 0, 1, closed="both")],
        "n_jobs": [Integral, None],
        "gram_memory": GRAM_MEMORY_CONSTRAINT,
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "callback": [callable, None],
    }

    def _validate_params(self):
        """scikit-learn's parameter validation; bools are not integers here.

        Python counts ``True`` as the integer 1, so ``n_nonzero_coefs=True``
        would pass ``Interval(Integral, ...)`` and fail late, or mean one.
        """
        for name, constraints in self._parameter_constraints.items():
            value = getattr(self, name, None)
            if isinstance(value, bool | np.bool_) and _takes_integer(constraints):
                raise InvalidParameterError(
                    f"The {name!r} parameter of {type(self).__name__} must be "
                    f"an integer, not a bool; got {value!r}."
                )
        super()._validate_params()

    def _check_code_init(self, n_samples, n_components):
        """``code_init`` as CSR, one row per sample given to fit."""
        if self.code_init is None:
            return None
        code_init = check_array(
            self.code_init,
            accept_sparse=("csr", "csc", "coo"),
            dtype=_FLOAT_DTYPES,
            input_name="code_init",
        )
        if code_init.shape != (n_samples, n_components):
            raise ValueError(
                f"code_init has shape {code_init.shape}; expected (n_samples, "
                f"n_components) = ({n_samples}, {n_components}): one row per "
                "sample given to fit, one column per atom."
            )
        return sp.csr_matrix(code_init)

    # ------------------------------------------------------------------
    # Fitting
    # ------------------------------------------------------------------
    def _validate_fit_data(self, X, first, keep_lazy=False):
        """Validate training data without touching the estimator.

        With ``keep_lazy`` a lazy array (see ``_data.is_lazy_array``) is
        returned as is, its metadata checked and its values left to be
        validated batch by batch; otherwise it is read whole (one batch).

        Parameters
        ----------
        X : array-like or lazy array of shape (n_samples, n_features)
            Training data.
        first : bool
            Whether ``X`` starts a new fit (``fit``, first ``partial_fit``):
            its features are then recorded once the call has succeeded (see
            ``_set_fit_input``); otherwise they are checked against those
            seen.

        Returns
        -------
        X : array or lazy array
            Validated data.
        fit_input : dict
            What :meth:`_set_fit_input` records when the call succeeds:
            ``provenance_`` (a copy of the ``provenance`` of a harvest's
            rows, else None) and, with ``first``, ``n_features_in_`` and
            ``feature_names_in_`` (None without names).
        """
        fit_input = {"provenance_": _provenance_of(X)}
        names = _get_feature_names(X) if first else None
        if is_lazy_array(X):
            check_lazy_array(X)
            if not first:
                _check_n_features(self, X, reset=False)
                _check_feature_names(self, X, reset=False)
            if not keep_lazy:
                rows = [slice(0, X.shape[0])]
                X = check_batch(read_rows(X, rows), rows)
        else:
            X = self._validate_data_where_it_lives(X, reset=False, check=not first)
        if first:
            fit_input.update(n_features_in_=int(X.shape[1]), feature_names_in_=names)
        return X, fit_input

    def _set_fit_input(self, fit_input):
        """Record what ``_validate_fit_data`` found, once the call has succeeded.

        A new fit records its features and provenance; a later
        ``partial_fit`` keeps the provenance unless its batch carries one.
        """
        if "n_features_in_" in fit_input:
            self.n_features_in_ = fit_input["n_features_in_"]
            if fit_input["feature_names_in_"] is not None:
                self.feature_names_in_ = fit_input["feature_names_in_"]
            elif hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
            self.provenance_ = fit_input["provenance_"]
        elif fit_input["provenance_"] is not None:
            self.provenance_ = fit_input["provenance_"]

    def _validate_data_where_it_lives(self, X, reset, check=True):
        """``validate_data``, keeping device arrays on their device.

        With scikit-learn's ``array_api_dispatch`` on, torch, CuPy or other
        array-API inputs are validated in their own namespace and stay where
        they are; the sample-dependent products then run there. Otherwise
        everything becomes a NumPy array, as in scikit-learn. With
        ``check=False`` the features are not compared with those of the fit
        (a new fit records them when it succeeds) and nothing is set.
        """
        if get_config()["array_api_dispatch"] and is_device_array(X):
            xp, _ = get_namespace(X)
            dtype = [xp.float64, xp.float32]
        else:
            dtype = _FLOAT_DTYPES
        if not check:
            return check_array(X, dtype=dtype, estimator=self, input_name="X")
        return validate_data(self, X, dtype=dtype, reset=reset)

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Learn the dictionary from ``X``.

        Runs DB-KSVD steps on shuffled batches of ``batch_size`` samples for
        ``max_iter`` epochs, at most ``max_steps`` steps, or until early
        stopping. With ``max_iter=0`` no step runs: ``components_`` is
        ``dict_init`` as given (not normalised, as in scikit-learn), or the
        initial dictionary.

        Each batch whose largest entry is outside ``[2**-20, 2**20]`` is
        multiplied by a power of two for the step (``alpha`` with it), so
        that data at any scale gives the same atoms without overflow; ``X``
        itself is never modified.

        With ``shuffle=False`` and ``max_no_improvement=None``, ``fit`` is
        the sequence of :meth:`partial_fit` calls on its batches (see there).

        A fit that fails leaves the estimator exactly as it was (unfitted, or
        with its previous fit): everything is validated and computed first,
        and the fitted attributes are set at the end. Sizes whose atoms and
        Gram matrix would not fit in this machine's memory are refused with
        a ``ValueError`` naming the estimate, before anything that large is
        allocated. With at least as many atoms as samples a ``UserWarning``
        says that the atoms can copy the samples (the fit's variance
        explained then says nothing about new data). Rows of a harvest
        (:func:`sklearn_dbksvd.lm.load_activations`) leave their provenance
        in ``provenance_``.

        Out-of-core data is read one batch at a time and validated as it is
        read (so NaN in a part never read raises nothing), never loaded
        whole. ``np.memmap`` data is batched exactly like the same array in
        memory (a fresh shuffle of the rows each epoch, same result); h5py
        datasets, zarr arrays and dask arrays are cut into
        ``16 * n_batches`` contiguous blocks of rows, and each epoch takes
        them in a new random order, 16 blocks per batch, so that each read
        is sequential.

        Parameters
        ----------
        X : array-like, np.memmap, h5py.Dataset, zarr.Array or \
                dask.array.Array of shape (n_samples, n_features)
            Training data.
        y : Ignored
            Not used, present for API consistency by convention.

        Returns
        -------
        self : object
            Fitted estimator.
        """
        return self._fit_from_state(X)

    @_fit_context(prefer_skip_nested_validation=True)
    def fit_from_state(self, X, state=None, *, on_step=None, verbose=None):
        """:meth:`fit`, continued from a saved state of the same fit.

        The protocol of checkpointed fits (``dbksvd fit --checkpoint``):
        ``state`` is the :class:`~sklearn_dbksvd._fit_loop.FitState` that
        ``on_step`` was handed after some step of an earlier call with the
        same parameters and data, so that the fit goes on from there and
        ends with exactly the dictionary of an uninterrupted :meth:`fit`.

        Parameters
        ----------
        X : array-like or lazy array of shape (n_samples, n_features)
            Training data, as for :meth:`fit`.
        state : FitState, default=None
            Where to continue; None starts afresh (this is :meth:`fit`).
        on_step : callable, default=None
            Called with the state after every step (to save it).
        verbose : bool, default=None
            Progress display; None means ``verbose``.

        Returns
        -------
        self : object
            Fitted estimator.
        """
        return self._fit_from_state(X, state, on_step=on_step, verbose=verbose)

    def _fit_from_state(self, X, state=None, *, on_step=None, verbose=None):
        # Everything is validated and computed into locals; the fitted state
        # is set at the end, so a failed fit leaves the estimator as it was.
        X, fit_input = self._validate_fit_data(X, first=True, keep_lazy=True)
        settings = fit_settings(self, *X.shape)
        plan = plan_fit(settings, X)
        dtype = host_dtype(X) if not is_lazy_array(X) else check_lazy_array(X)
        code_init = self._check_code_init(X.shape[0], plan.n_components)
        if state is None:
            state = FitState(check_random_state(self.random_state))
        if state.components is None and plan.n_steps == 0:
            if self.dict_init is not None:
                # As MiniBatchDictionaryLearning: the initial dictionary as given.
                state.components = checked_dict_init(self.dict_init, dtype)
            else:
                initialise(settings, X, plan, state, code_init=code_init)
        run_fit(
            settings, X, plan, state, code_init=code_init, on_step=on_step,
            verbose=verbose,
        )
        # Once the fit has run: a fit refused for its size warns of nothing.
        _warn_if_more_atoms_than_samples(plan.n_components, X.shape[0])
        self._set_fitted(fitted_attributes(plan, state))
        self._set_fit_input(fit_input)
        return self

    def _set_fitted(self, attributes):
        """Set the fitted attributes a fit left (``_fit_loop.fitted_attributes``)."""
        attributes = dict(attributes)
        self._random_state = attributes.pop("random_state")
        self._atom_usage = attributes.pop("atom_usage")
        for name, value in attributes.items():
            setattr(self, name, value)

    def _partial_fit_replaces(self, step):
        """Whether step ``step`` of :meth:`partial_fit` replaces atoms.

        :meth:`fit` replaces during the first ``replace_until`` of its
        planned steps; :meth:`partial_fit` takes ``max_steps`` as the plan
        (no plan without it: it replaces whenever ``replace_until > 0``).
        """
        if self.max_steps is None:
            return self.replace_until > 0
        return step < self.replace_until * self.max_steps

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y=None):
        """Run one DB-KSVD step on ``X`` as one batch (outer batching).

        The first call initialises the dictionary from ``X`` (or
        ``dict_init``). A call that fails leaves the fitted state unchanged.

        Between calls the estimator carries what the next step depends on:
        the random generator (``random_state`` seeds it at the first call;
        it then draws the order of atom updates of every step), the step
        counter ``n_steps_`` and, through it, the replacement schedule: step
        ``n_steps_`` replaces atoms if ``n_steps_ < replace_until *
        max_steps``, or, without ``max_steps``, whenever
        ``replace_until > 0``. So ``fit`` with ``shuffle=False`` and
        ``max_no_improvement=None`` gives the same atoms as ``partial_fit``
        called on its batches in order (``np.array_split(X, n_batches)``,
        once per epoch) when both replace at the same steps: with
        ``replace_until`` 0 or 1, or with ``max_steps`` equal to the number
        of steps of the fit. ``max_iter`` is ignored, as in scikit-learn.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The batch.
        y : Ignored
            Not used, present for API consistency by convention.

        Returns
        -------
        self : object
            Updated estimator.
        """
        first_call = not hasattr(self, "components_")
        if not first_call:
            # scikit-learn validates parameters at the first call only; a
            # step costs far more than checking them again.
            self._validate_params()
        X, fit_input = self._validate_fit_data(X, first=first_call)
        settings = fit_settings(self, *X.shape)
        step = getattr(self, "n_steps_", 0)
        # The mean is that of the first batch, kept for the later ones.
        if first_call:
            mean = data_mean(X) if self.with_mean else None
        else:
            mean = getattr(self, "mean_", None)
        # A zero mean (no centring) subtracts nothing: no copy of the batch.
        X = centred(X, mean if mean is not None and np.any(mean) else None)
        scale = batch_scale(X)
        X = scaled(X, scale)
        if first_call:
            random_state = check_random_state(self.random_state)
            components = initial_components(X, settings, random_state)
        else:
            random_state = self._random_state
            components = self.components_
            if step == 0:  # after fit(max_iter=0): dict_init as given
                components = unit_atoms(
                    components.astype(X.dtype, copy=True), settings.step, random_state
                )
        # The step may draw random numbers: work on a copy of the generator so
        # that a failed step leaves the fitted state untouched.
        step_state = np.random.RandomState()
        step_state.set_state(random_state.get_state())
        # The Gram matrix (or cache hint) the last call left, if it belongs
        # to these very atoms; never pickled (see ``CarriedGram``).
        carried = getattr(self, "_carried_gram", None) or CarriedGram()
        components, info, gram = fit_step(
            X, components, settings.step, random_state=step_state,
            replace=self._partial_fit_replaces(step), scale=scale,
            gram=carried.for_atoms(components),
        )
        info = {
            "step": step,
            **info,
            "n_samples_seen": getattr(self, "n_samples_seen_", 0) + X.shape[0],
        }
        if self.callback is not None:
            self.callback(info)
        self.components_ = components
        self._carried_gram = CarriedGram(components, gram)
        if gram is not None and hasattr(gram, "usage"):
            self._atom_usage = gram.usage
        self.mean_ = fitted_mean(mean, components)
        self._random_state = step_state
        self.n_steps_ = step + 1
        self.n_iter_ = getattr(self, "n_iter_", 0)
        self.n_samples_seen_ = info["n_samples_seen"]
        self.history_ = [*getattr(self, "history_", []), info]
        self._set_fit_input(fit_input)
        return self

    # ------------------------------------------------------------------
    # Coding
    # ------------------------------------------------------------------
    def _transform_n_nonzero_coefs(self):
        """Nonzeros per code in transform; more than the atoms is refused."""
        n_components = self.components_.shape[0]
        if self.transform_n_nonzero_coefs is None:
            return resolved_n_nonzero_coefs(
                self.n_nonzero_coefs, self.n_features_in_, n_components
            )
        if isinstance(self.transform_n_nonzero_coefs, bool | np.bool_):
            # Set after fit (as dbksvd encode -k does), so not validated there.
            raise InvalidParameterError(
                "The 'transform_n_nonzero_coefs' parameter of "
                f"{type(self).__name__} must be an integer, not a bool; got "
                f"{self.transform_n_nonzero_coefs!r}."
            )
        if self.transform_n_nonzero_coefs > n_components:
            raise ValueError(
                f"transform_n_nonzero_coefs={self.transform_n_nonzero_coefs} "
                f"exceeds n_components={n_components}: a code cannot use more "
                "atoms than the dictionary has."
            )
        return self.transform_n_nonzero_coefs

    def transform(self, X):
        """Sparse codes of ``X`` on the learned dictionary.

        Parameters
        ----------
        X : array-like, np.memmap, h5py.Dataset, zarr.Array or \
                dask.array.Array of shape (n_samples, n_features)
            Data. Memory-mapped and chunked stores are read and encoded in
            chunks of rows; a dask array is encoded lazily, block by block.

        Returns
        -------
        code : ndarray or scipy.sparse.csr_matrix of shape (n_samples, \
                n_components), or dask.array.Array
            Codes, in the dtype of ``X`` (float64 for non-float ``X``); CSR
            when ``sparse_output=True``. For a dask array, a dask array
            chunked along samples like ``X``, whose chunks are CSR when
            ``sparse_output=True``; it runs where ``X`` is computed, e.g. on a
            ``dask.distributed`` cluster.
        """
        check_is_fitted(self)
        self._transform_n_nonzero_coefs()  # refused before reading X
        if is_lazy_array(X):
            dtype = check_lazy_array(X)
            _check_n_features(self, X, reset=False)
            _check_feature_names(self, X, reset=False)
            if is_dask_array(X):
                return dask_map_encode(
                    self._chunk_encoder(dtype), X, self._n_features_out, dtype,
                    self.sparse_output,
                )
            parts = [code for _, code in self._iter_codes(X, dtype)]
            return stack_codes(parts, self._n_features_out, dtype, self.sparse_output)
        X = self._validate_data_where_it_lives(X, reset=False)
        if is_device_array(X):
            # Matching pursuit runs on the host; codes go back to X's device.
            code = self._encode(X)
            return code if sp.issparse(code) else to_namespace_of(X, code)
        return self._encode(X)

    def iter_transform(self, X, *, chunk_size=None):
        """Codes of ``X`` chunk by chunk, the Gram matrix computed once.

        The one streaming encode: ``transform`` of a memory-mapped or chunked
        input, ``dbksvd encode``, the report and the dashboard read their
        codes from here (``evaluate_dictionary``, whose contexts are in
        memory, through ``transform``, which codes alike). Centring,
        the scale of the data, ``positive_code`` and ``split_sign`` are
        handled as in :meth:`transform`, whose codes of the whole of ``X``
        are the chunks' codes stacked.

        Parameters
        ----------
        X : array-like, np.memmap, h5py.Dataset, zarr.Array, the rows of a \
                harvest (:func:`sklearn_dbksvd.lm.load_activations`) or an \
                array-API device array of shape (n_samples, n_features)
            Data, read ``chunk_size`` rows at a time. A device array is
            encoded on the host, and its codes are NumPy arrays.
        chunk_size : int, default=None
            Rows per chunk; None keeps each chunk's data and codes within a
            few hundred megabytes.

        Yields
        ------
        rows : slice
            The rows of ``X`` that the chunk covers.
        code : ndarray or scipy.sparse.csr_matrix of shape (n_rows, \
                n_features_out)
            Their codes, as ``transform`` returns them (CSR when
            ``sparse_output=True``; ``2 * n_components`` columns, split into
            signs, with ``split_sign``).

        Raises
        ------
        ValueError
            At the first chunk asked for, when ``X`` does not match the
            fitted dictionary or ``transform_n_nonzero_coefs`` exceeds
            ``n_components``.
        """
        check_is_fitted(self)
        if chunk_size is not None and (
            isinstance(chunk_size, bool)
            or not isinstance(chunk_size, Integral)
            or chunk_size < 1
        ):
            raise ValueError(
                f"chunk_size must be a positive integer; got {chunk_size!r}."
            )
        self._transform_n_nonzero_coefs()
        if is_lazy_array(X):
            dtype = check_lazy_array(X)
            _check_n_features(self, X, reset=False)
            _check_feature_names(self, X, reset=False)
        else:
            # Features and names checked here, on X as the user gave it.
            X = to_numpy(self._validate_data_where_it_lives(X, reset=False))
            dtype = X.dtype
        yield from self._iter_codes(X, dtype, chunk_size)

    def _iter_codes(self, X, dtype, chunk_size=None):
        """``(rows, codes)`` of ``X`` chunk by chunk, one Gram matrix for all."""
        if chunk_size is None:
            n_components = self.components_.shape[0]
            chunk_size = chunk_rows(X.shape[1], n_components, dtype.itemsize)
        encode = self._chunk_encoder(dtype)
        for rows, chunk in iter_row_chunks(X, chunk_size):
            yield rows, encode(chunk)

    def _chunk_encoder(self, dtype):
        """A function from a chunk of rows of ``dtype`` to its codes.

        It holds one Gram matrix for all the chunks (it costs as much as
        encoding a few thousand samples) and can be pickled to the workers
        of a dask cluster. The one way codes are made out of chunks.
        """
        return functools.partial(_encode_chunk, self, self._transform_gram(dtype))

    def _transform_gram(self, dtype):
        """``D Dᵀ`` in ``dtype`` when the transform coder uses it, else None.

        Past ``gram_memory``, rows of it (``_gram_rows.GramRows``), the
        cache ranked by the atoms' usage in the last step of the fit.
        """
        if not self._gram_coder():
            return None
        components = self.components_.astype(dtype, copy=False)
        return plan_gram(
            components, getattr(self, "gram_memory", "auto"), n_jobs=self.n_jobs,
            usage=getattr(self, "_atom_usage", None),
            min_table_rows=self._transform_n_nonzero_coefs(),
        )

    def _gram_coder(self):
        """Whether transform codes from the Gram matrix (MP, or Batch-OMP).

        "omp" with ``transform_alpha`` set keeps scikit-learn's meaning (a
        squared-error target) and its coder, as in MiniBatchDictionaryLearning.
        """
        return self.transform_algorithm == "mp" or (
            self.transform_algorithm == "omp" and self.transform_alpha is None
        )

    def _encode(self, X, gram=None):
        """Codes of validated ``X``, dense or CSR as ``sparse_output`` says.

        Data far from unit scale is encoded times a power of two (see
        ``_fit_loop.batch_scale``) and its codes divided back, so that no
        coder overflows; split into signs with ``split_sign``.

        Parameters
        ----------
        X : ndarray of shape (n_samples, n_features)
            Validated data, float32 or float64.
        gram : ndarray of shape (n_components, n_components), default=None
            Precomputed ``D Dᵀ`` in the dtype of ``X``, reused across chunks.
        """
        X = self._centre(X)
        scale = batch_scale(X)
        code = self._encode_scaled(scaled(X, scale), gram, scale)
        if scale != 1.0:
            if sp.issparse(code):
                code.data /= scale
            else:
                code /= scale
        return split_sign(code) if self.split_sign else code

    def _centre(self, X):
        """``X - mean_`` (a new array), or ``X`` itself when the mean is zero."""
        mean = getattr(self, "mean_", None)
        if mean is None or not np.any(mean):
            return X
        return centred(X, mean)

    def _transform_alpha(self):
        return self.alpha if self.transform_alpha is None else self.transform_alpha

    def _encode_scaled(self, X, gram, scale):
        """Codes of ``X`` (already times ``scale``); penalties scale alike.

        The lasso and threshold penalties scale with ``X``; OMP's
        ``transform_alpha`` is a squared error, so it scales with its square.
        """
        components = self.components_.astype(host_dtype(X), copy=False)
        k = self._transform_n_nonzero_coefs()
        if self._gram_coder():
            if self.transform_algorithm == "mp":
                indices, values = _mp_encode(
                    X,
                    components,
                    k,
                    gram=gram,
                    positive=self.positive_code,
                    tol=self.mp_tol,
                    refit=self.mp_refit,
                    n_jobs=self.n_jobs,
                    gram_memory=getattr(self, "gram_memory", "auto"),
                )
            else:
                indices, values = _omp_encode(
                    X, components, k, gram=gram, positive=self.positive_code,
                    n_jobs=self.n_jobs,
                    gram_memory=getattr(self, "gram_memory", "auto"),
                )
            # Built from the selections: no dense (n_samples, n_components)
            # array unless dense output is asked for.
            code = selections_to_csr(indices, values, len(components))
            return code if self.sparse_output else code.toarray()
        code = sparse_encode(
            X,
            components,
            algorithm=self.transform_algorithm,
            n_nonzero_coefs=k,
            alpha=self._transform_alpha()
            * (scale**2 if self.transform_algorithm == "omp" else scale),
            max_iter=self.transform_max_iter,
            n_jobs=self.n_jobs,
            positive=self.positive_code,
        )
        # scikit-learn's coders may return float64 for float32 input.
        code = code.astype(host_dtype(X), copy=False)
        if self.positive_code:
            # LARS with positive=True can end a path at -1e-17.
            np.maximum(code, 0, out=code)
        return sp.csr_matrix(code) if self.sparse_output else code

    def inverse_transform(self, X):
        """Reconstruct data from codes: ``X @ components_ + mean_``.

        Parameters
        ----------
        X : array-like or sparse matrix of shape (n_samples, n_components)
            Codes; with ``split_sign``, also the split codes of shape
            (n_samples, 2 * n_components) that :meth:`transform` returns.

        Returns
        -------
        X_original : ndarray of shape (n_samples, n_features)
        """
        check_is_fitted(self)
        X = check_array(X, dtype=_FLOAT_DTYPES, accept_sparse=("csr", "csc"))
        n_components = self.components_.shape[0]
        if self.split_sign and X.shape[1] == 2 * n_components:
            X = X[:, :n_components] - X[:, n_components:]
        if X.shape[1] != n_components:
            raise ValueError(
                f"The codes have {X.shape[1]} columns but the dictionary has "
                f"{n_components} atoms."
            )
        X_original = np.asarray(X @ self.components_.astype(X.dtype, copy=False))
        mean = getattr(self, "mean_", None)
        if mean is not None and np.any(mean):
            X_original += mean.astype(X_original.dtype, copy=False)
        return X_original

    def score(self, X, y=None):
        """Variance of ``X`` explained by its sparse codes (paper Eq. 7).

        Higher is better, so ``GridSearchCV`` can use it without a scorer.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Data.
        y : Ignored
            Not used, present for API consistency by convention.

        Returns
        -------
        score : float
        """
        check_is_fitted(self)
        self._transform_n_nonzero_coefs()
        # Validated once, as given (a DataFrame keeps its feature names).
        X = to_numpy(self._validate_data_where_it_lives(X, reset=False))
        residual = X - self.inverse_transform(self._encode(X))
        return _variance_explained_of_residual(X, residual)

    @property
    def _n_features_out(self):
        n_components = self.components_.shape[0]
        return 2 * n_components if self.split_sign else n_components

    def get_feature_names_out(self, input_features=None):
        """Names of the code columns: the lowercased class name and atom index.

        With ``split_sign``, ``<name>_pos`` for every atom, then ``<name>_neg``
        (as :class:`~sklearn_dbksvd.interop.SplitSign`).

        Parameters
        ----------
        input_features : array-like of str or None, default=None
            Only checked against the names seen in :meth:`fit`.

        Returns
        -------
        feature_names_out : ndarray of str objects
        """
        check_is_fitted(self, "_n_features_out")
        _check_feature_names_in(self, input_features, generate_names=False)
        prefix = self.__class__.__name__.lower()
        names = [f"{prefix}{i}" for i in range(self.components_.shape[0])]
        if self.split_sign:
            names = split_feature_names(names)
        return np.asarray(names, dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags
