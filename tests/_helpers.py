"""Small problems and step settings shared by the kernel tests."""

import dataclasses

import numpy as np

from sklearn_dbksvd._settings import StepSettings
from sklearn_dbksvd.datasets import make_sparse_dictionary_problem


def planted(n_samples=300, n_features=12, n_components=20, k=3, seed=0):
    """A noisy planted problem and a random unit-norm starting dictionary."""
    X, _, _ = make_sparse_dictionary_problem(
        n_samples, n_features, n_components, k, noise=0.05, random_state=seed
    )
    rng = np.random.RandomState(seed + 1)
    start = rng.randn(n_components, n_features)
    start /= np.linalg.norm(start, axis=1, keepdims=True)
    return X, start


def step_settings(**overrides):
    """Arguments of ``dbksvd_step`` after the batch and the atoms, as keywords.

    ``settings`` (a ``StepSettings``: small inner batches, ``k=3``), a
    ``random_state`` and ``replace=True``; ``overrides`` name fields of
    ``StepSettings`` (``positive`` for ``positive_code``) or other arguments
    of the step (``replace``, ``random_state``, ``gram``, ``return_gram``,
    ``residual_out``, ``codes``). A fresh generator each call, so two steps
    with the same settings draw the same order of atom updates.
    """
    fields = {field.name for field in dataclasses.fields(StepSettings)}
    settings = dict(
        n_nonzero_coefs=3,
        fit_algorithm="mp",
        dict_update="ksvd",
        update_batch_size=4,
        positive_code=False,
        replace_min_usage=0.02,
        replace_coherence=0.99,
        n_jobs=None,
    )
    call = dict(replace=True, random_state=np.random.RandomState(7))
    for name, value in overrides.items():
        name = "positive_code" if name == "positive" else name
        (settings if name in fields else call)[name] = value
    return {"settings": StepSettings(**settings), **call}
