"""Interoperability with the sparse-autoencoder ecosystem (SAELens, SAEBench).

Interpretability researchers evaluate dictionaries with SAEBench and load them
with SAELens. A DB-KSVD dictionary is a linear decoder like the decoder of a
sparse autoencoder (SAE); only its encoder differs: matching pursuit instead
of one linear map and an activation. This module writes a fitted estimator in
SAELens' directory layout, reads it back, and runs the same matching pursuit
as :meth:`~sklearn_dbksvd.DBKSVDDictionaryLearning.transform` in PyTorch, on
any torch device.

It needs the optional extra ``pip install sklearn-dbksvd[torch]``:
``safetensors`` for :func:`save_sae` and :func:`load_sae` (which work without
torch), and ``torch`` for :func:`to_torch`, :func:`load_torch` and
:class:`MatchingPursuitEncoder`. ``import sklearn_dbksvd`` imports neither, and
``import sklearn_dbksvd.interop`` imports them only when a function needs them.

Signed codes and split sign
---------------------------
Matching pursuit selects atoms by the largest ``|correlation|``, so codes
may be negative unless the estimator has ``positive_code=True``. Tools made
for SAEs expect nonnegative latents (SAEBench counts a latent as active
when it is ``> 0``). The split-sign form, as scikit-learn's
``SparseCoder(split_sign=True)`` defines it, turns a code ``c`` of ``m``
entries into ``[max(c, 0), max(-c, 0)]`` of ``2 m`` nonnegative entries, and
the dictionary ``D`` into ``[D; -D]``, so that the reconstruction is
unchanged. It is the ``split_sign`` option of :func:`save_sae` (``d_sae`` is
then ``2 m``) and of :func:`to_torch`, the function :func:`split_sign` and
the transformer :class:`SplitSign`, whose ``get_feature_names_out`` and
``set_output`` count ``2 m`` outputs (scikit-learn 1.9's ``SparseCoder``
names only ``m`` of them and then fails with ``set_output(transform="pandas")``,
scikit-learn issue #34768).

See Also
--------
save_sae : Write a fitted estimator as an SAELens directory.
load_sae : Rebuild the estimator from such a directory.
to_torch : Matching pursuit of a fitted estimator as a ``torch.nn.Module``.
load_torch : The same module, straight from a directory.
to_saebench : The same module as an SAE for SAEBench's evaluations.
run_saebench : SAEBench's own evaluations of a fitted estimator.
SplitSign : Nonnegative split-sign codes in a scikit-learn pipeline.

Examples
--------
Fit, save, load, and get the same codes:

>>> import os, tempfile
>>> import numpy as np
>>> from sklearn_dbksvd import DBKSVDDictionaryLearning
>>> from sklearn_dbksvd.interop import load_sae, save_sae
>>> X = np.random.RandomState(0).randn(400, 16).astype(np.float32)
>>> model = DBKSVDDictionaryLearning(
...     n_components=32, n_nonzero_coefs=3, max_iter=2, random_state=0
... ).fit(X)
>>> with tempfile.TemporaryDirectory() as tmp:
...     path = save_sae(
...         model,
...         os.path.join(tmp, "layer8"),
...         hook_name="blocks.8.hook_resid_post",
...         model_name="pythia-70m-deduped",
...     )
...     files = sorted(os.listdir(path))
...     loaded = load_sae(path)
>>> files
['cfg.json', 'sae_weights.safetensors']
>>> type(loaded).__name__, loaded.components_.shape, loaded.components_.dtype
('DBKSVDDictionaryLearning', (32, 16), dtype('float32'))
>>> np.array_equal(loaded.transform(X), model.transform(X))
True

Nonnegative split-sign codes in a pipeline, with consistent feature names:

>>> from sklearn.pipeline import make_pipeline
>>> from sklearn_dbksvd.interop import SplitSign
>>> pipe = make_pipeline(model, SplitSign()).fit(X)
>>> codes = pipe.transform(X)
>>> codes.shape, bool(codes.min() >= 0)
((400, 64), True)
>>> pipe.get_feature_names_out()[[0, 32]].tolist()
['dbksvddictionarylearning0_pos', 'dbksvddictionarylearning0_neg']

In PyTorch (see :func:`to_torch`), on a GPU where there is one::

    encoder = to_torch(model, device="cuda")
    latents = encoder.encode(activations)      # [..., d_in] -> [..., d_sae]
    reconstruction = encoder(activations)      # decode(encode(x))
"""
from .._split_sign import SplitSign, split_sign
from ._common import load_torch_encoder
from .pytorch import load_torch, to_torch
from .saebench import run_saebench, to_saebench
from .saelens import load_sae, save_sae

__all__ = [
    "MatchingPursuitEncoder",  # noqa: F822 (module __getattr__: needs torch)
    "SplitSign",
    "load_sae",
    "load_torch",
    "run_saebench",
    "save_sae",
    "split_sign",
    "to_saebench",
    "to_torch",
]


def __getattr__(name):
    # MatchingPursuitEncoder subclasses torch.nn.Module: importing it here
    # would import torch with this module.
    if name == "MatchingPursuitEncoder":
        try:
            return load_torch_encoder().MatchingPursuitEncoder
        except ImportError as error:
            # AttributeError, so that hasattr() says False without torch.
            raise AttributeError(f"MatchingPursuitEncoder: {error}") from error
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

