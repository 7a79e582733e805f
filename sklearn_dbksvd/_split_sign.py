"""Nonnegative split-sign codes, for tools that expect nonnegative latents.

Public through :mod:`sklearn_dbksvd.interop`.
"""

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import (
    _check_feature_names_in,
    check_array,
    check_is_fitted,
    validate_data,
)


def split_sign(code):
    """Nonnegative split-sign form ``[max(code, 0), max(-code, 0)]`` of codes.

    The columns of the positive parts come first, then those of the negative
    parts, as in scikit-learn's ``SparseCoder(split_sign=True)``; with the
    dictionary ``[D; -D]`` the reconstruction is unchanged. The dtype is kept.

    Parameters
    ----------
    code : ndarray or sparse matrix of shape (n_samples, n_components)
        Signed codes.

    Returns
    -------
    split_code : ndarray or scipy.sparse.csr_matrix of shape (n_samples, \
            2 * n_components)
        CSR when ``code`` is sparse.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_dbksvd.interop import split_sign
    >>> split_sign(np.array([[1.5, 0.0, -2.0]]))
    array([[1.5, 0. , 0. , 0. , 0. , 2. ]])
    """
    if sp.issparse(code):
        code = sp.csr_matrix(code)
        return sp.hstack([code.maximum(0), (-code).maximum(0)], format="csr")
    code = np.asarray(code)
    positive = np.maximum(code, 0)
    # positive - code is exactly max(-code, 0), without negative zeros.
    return np.concatenate([positive, positive - code], axis=1)


def split_feature_names(names):
    """Names of split columns: ``f_pos`` for each name ``f``, then ``f_neg``."""
    return [f"{name}_pos" for name in names] + [f"{name}_neg" for name in names]


class SplitSign(TransformerMixin, BaseEstimator):
    """Split signed codes into nonnegative parts: ``[max(c, 0), max(-c, 0)]``.

    A stateless transformer to put after a DB-KSVD estimator in a pipeline
    when a downstream tool expects nonnegative latents. It doubles the number
    of features, and :meth:`get_feature_names_out` and ``set_output`` agree
    with that: input feature ``f`` gives ``f_pos`` (first half) and ``f_neg``
    (second half). Dense float32 stays float32; sparse input gives CSR.

    Attributes
    ----------
    n_features_in_ : int
        Number of code columns seen during :meth:`fit`.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Names of the code columns, when the input has string column names.

    See Also
    --------
    split_sign : The same as a function.
    sklearn.decomposition.SparseCoder : Its ``split_sign=True`` has these
        semantics.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_dbksvd.interop import SplitSign
    >>> splitter = SplitSign().fit(np.zeros((1, 2)))
    >>> splitter.transform(np.array([[0.5, -1.0]]))
    array([[0.5, 0. , 0. , 1. ]])
    >>> splitter.get_feature_names_out().tolist()
    ['x0_pos', 'x1_pos', 'x0_neg', 'x1_neg']
    >>> splitter.inverse_transform(splitter.transform(np.array([[0.5, -1.0]])))
    array([[ 0.5, -1. ]])
    """

    def fit(self, X, y=None):
        """Record the number (and names) of the code columns.

        Parameters
        ----------
        X : array-like or sparse matrix of shape (n_samples, n_components)
            Codes.
        y : Ignored
            Not used, present for API consistency by convention.

        Returns
        -------
        self : object
        """
        validate_data(self, X, accept_sparse=("csr", "csc", "coo"), reset=True)
        return self

    def transform(self, X):
        """Split each code column into its positive and negative parts.

        Parameters
        ----------
        X : array-like or sparse matrix of shape (n_samples, n_components)
            Codes.

        Returns
        -------
        X_split : ndarray or scipy.sparse.csr_matrix of shape \
                (n_samples, 2 * n_components)
        """
        check_is_fitted(self)
        X = validate_data(
            self,
            X,
            accept_sparse=("csr", "csc", "coo"),
            dtype=[np.float64, np.float32],
            reset=False,
        )
        return split_sign(X)

    def inverse_transform(self, X):
        """Signed codes from split codes: first half minus second half.

        Parameters
        ----------
        X : array-like or sparse matrix of shape (n_samples, 2 * n_components)
            Split codes.

        Returns
        -------
        X_signed : ndarray or scipy.sparse.csr_matrix of shape \
                (n_samples, n_components)
        """
        check_is_fitted(self)
        X = _check_split(X, 2 * self.n_features_in_)
        m = self.n_features_in_
        signed = X[:, :m] - X[:, m:]
        return sp.csr_matrix(signed) if sp.issparse(signed) else np.asarray(signed)

    def get_feature_names_out(self, input_features=None):
        """Names of the split columns: ``f_pos`` for each ``f``, then ``f_neg``.

        Parameters
        ----------
        input_features : array-like of str, default=None
            Names of the code columns; None means ``feature_names_in_`` or
            ``x0, x1, ...``.

        Returns
        -------
        feature_names_out : ndarray of str objects of shape \
                (2 * `n_features_in_`,)
        """
        check_is_fitted(self, "n_features_in_")
        names = _check_feature_names_in(self, input_features)
        return np.asarray(split_feature_names(names), dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.requires_fit = True
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags


def _check_split(X, n_columns):
    """Split codes as float CSR or ndarray, with ``n_columns`` columns."""
    X = check_array(
        X, accept_sparse=("csr", "csc", "coo"), dtype=[np.float64, np.float32]
    )
    if X.shape[1] != n_columns:
        raise ValueError(
            f"X has {X.shape[1]} columns; split codes of this transformer have "
            f"{n_columns} (twice the codes it was fitted on)."
        )
    return X
