"""Dask arrays: fit batch by batch, transform block-wise on a LocalCluster."""

import numpy as np
import pytest
import scipy.sparse as sp
from numpy.testing import assert_allclose

from sklearn_dbksvd import DBKSVDDictionaryLearning
from sklearn_dbksvd.datasets import make_sparse_dictionary_problem

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("dask.distributed")

PARAMS = dict(
    n_components=24, n_nonzero_coefs=3, batch_size=200, max_iter=2, random_state=0
)


@pytest.fixture(scope="module")
def X():
    X, _, _ = make_sparse_dictionary_problem(
        1000, 12, 24, 3, dtype=np.float32, random_state=0
    )
    return X


@pytest.fixture(scope="module")
def client():
    # Threads in this process: the cheapest real cluster (scheduler, workers,
    # serialisation of the tasks), with no dashboard to start.
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def model(X):
    return DBKSVDDictionaryLearning(**PARAMS).fit(X)


def test_transform_on_local_cluster_equals_in_memory(X, model, client):
    # Chunked along both axes: transform must regroup the features.
    X_dask = da.from_array(X, chunks=(130, 5))
    codes = model.transform(X_dask)
    assert isinstance(codes, da.Array)
    assert codes.shape == (1000, 24) and codes.dtype == np.float32
    assert codes.chunks[0] == X_dask.chunks[0]
    # Chunks and the whole array round differently in float32 BLAS products.
    assert_allclose(client.compute(codes).result(), model.transform(X), atol=1e-5)


def test_sparse_transform_on_local_cluster(X, model, client):
    sparse_model = DBKSVDDictionaryLearning(**PARAMS, sparse_output=True).fit(X)
    codes = sparse_model.transform(da.from_array(X, chunks=(250, 12)))
    result = client.compute(codes).result()
    assert sp.issparse(result) and result.shape == (1000, 24)
    assert_allclose(result.toarray(), model.transform(X), atol=1e-5)


def test_fit_on_dask_array_reads_blocks(X, client):
    fitted = DBKSVDDictionaryLearning(**PARAMS).fit(da.from_array(X, chunks=(100, 12)))
    assert fitted.components_.dtype == np.float32
    assert fitted.n_features_in_ == 12
    assert fitted.score(X) > DBKSVDDictionaryLearning(**PARAMS).fit(X).score(X) - 0.05


def test_dask_errors(X, model):
    with pytest.raises(ValueError, match="features"):
        model.transform(da.from_array(X[:, :5]))
    bad = da.from_array(X.copy(), chunks=(100, 12))
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        DBKSVDDictionaryLearning(**PARAMS).fit(bad)
    unknown = da.from_array(X, chunks=(100, 12))
    unknown = unknown[unknown[:, 0] > -np.inf]
    with pytest.raises(ValueError, match="unknown chunk sizes"):
        DBKSVDDictionaryLearning(**PARAMS).fit(unknown)
