"""From a language model to a dictionary: harvest, evaluate (extra ``[lm]``).

- :func:`harvest_activations` writes the residual stream of one layer of a
  causal language model over texts to a directory of ``.npy`` shards, with
  the token, document and position of every row
  (:mod:`sklearn_dbksvd.lm.harvest` describes the files);
  :func:`load_activations` gives them to ``fit`` out of core, and
  :func:`load_tokens` and :func:`load_documents` map rows back to their
  tokens in context; :func:`harvest_provenance` says where the rows come
  from (model and its weights' fingerprint, layer, hook, context), which a
  dictionary fitted on them records as ``provenance_``.
- :func:`evaluate_dictionary` splices the dictionary's reconstruction into
  the model and reports SAEBench's core metrics (CE loss score, KL div
  score, explained variance, L0, dead and dense atoms).
- :func:`load_model` loads a Hugging Face causal LM and its tokenizer from a
  directory, the local cache or a ``.gguf`` file.

Running a model needs ``pip install sklearn-dbksvd[lm]`` (torch,
transformers, safetensors). ``import sklearn_dbksvd.lm`` imports none of
them, and reading a harvest needs NumPy only.
"""

import importlib

_LAZY = {
    "harvest_activations": "harvest",
    "evaluate_dictionary": "evaluate",
    "format_metrics": "evaluate",
    "load_model": "_model",
    "find_module": "_model",
    "load_activations": "_store",
    "load_tokens": "_store",
    "load_documents": "_store",
    "read_manifest": "_store",
    "harvest_provenance": "_store",
    "is_harvest": "_store",
    "TOKEN_DTYPE": "_store",
    "build_dashboard": "dashboard",
    "ProvenanceWarning": "_provenance",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
