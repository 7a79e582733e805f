"""What the API page lists, section by section.

``conf.py`` renders ``api.rst`` from this list. A name that the installed
package does not have is skipped, so objects still being written elsewhere can
be listed here ahead of time and appear as soon as they exist.

Only names that import with NumPy alone are listed: the documentation build
must not need torch. ``sklearn_dbksvd.interop.MatchingPursuitEncoder`` (a
``torch.nn.Module``) is therefore described in ``interop.rst`` and in the
docstrings of ``to_torch`` and ``load_torch`` instead.
"""

API_REFERENCE = [
    {
        "title": "Estimators",
        "module": "sklearn_dbksvd",
        "description": """
Dictionary learners with the scikit-learn transformer API: ``fit`` learns
``components_``, ``transform`` returns sparse codes, ``score`` is the variance
explained. See :ref:`user_guide`.
""",
        # MatryoshkaDBKSVD: nested groups of atoms (paper section 4.2).
        "names": ["DBKSVDDictionaryLearning", "MatryoshkaDBKSVD"],
    },
    {
        "title": "Sparse coding",
        "module": "sklearn_dbksvd",
        "description": """
The coders of the estimators, usable on their own with any dictionary (see
:ref:`ug_encoding`): matching pursuit and orthogonal matching pursuit
(Batch-OMP), both on the Gram matrix.
""",
        "names": ["sparse_encode_mp", "sparse_encode_omp"],
    },
    {
        "title": "Saving and loading",
        "module": "sklearn_dbksvd",
        "description": """
A fitted estimator as one ``.npz`` file, the one ``dbksvd fit`` writes: atoms,
parameters, fitted state, random generator and provenance. See
:ref:`ug_saving`.
""",
        "names": ["save_dictionary", "load_dictionary"],
    },
    {
        "title": "Metrics",
        "module": "sklearn_dbksvd.metrics",
        "description": """
.. automodule:: sklearn_dbksvd.metrics
   :no-members:
   :no-index:

See :ref:`ug_metrics`.
""",
        "names": [
            "relative_error",
            "variance_explained",
            "coherence",
            "atom_recovery",
        ],
    },
    {
        "title": "Datasets",
        "module": "sklearn_dbksvd.datasets",
        "description": """
Synthetic and bundled data for examples, tests and benchmarks.
""",
        "names": ["make_sparse_dictionary_problem", "load_sample_patches"],
    },
    {
        "title": "Interoperability",
        "module": "sklearn_dbksvd.interop",
        "description": """
Dictionaries as SAELens directories (for SAELens and SAEBench), matching
pursuit as a PyTorch module, and nonnegative split-sign codes. ``save_sae``
and ``load_sae`` need safetensors, ``to_torch`` and ``load_torch`` need torch
(the ``torch`` extra); importing the module needs neither. See
:ref:`interop`.
""",
        "names": [
            "save_sae",
            "load_sae",
            "to_torch",
            "load_torch",
            "to_saebench",
            "run_saebench",
            "split_sign",
            "SplitSign",
        ],
    },
    {
        "title": "Language models",
        "module": "sklearn_dbksvd.lm",
        "description": """
Harvest a layer's activations over text into a directory of shards, read
them back out of core, and evaluate a dictionary spliced into the model with
SAEBench's core metrics. Running a model needs the ``lm`` extra (torch,
transformers); importing the module and reading a harvest need NumPy only.
See :ref:`lm`.
""",
        "names": [
            "load_model",
            "harvest_activations",
            "load_activations",
            "load_tokens",
            "load_documents",
            "read_manifest",
            "harvest_provenance",
            "evaluate_dictionary",
            "format_metrics",
            "ProvenanceWarning",
        ],
    },
    {
        "title": "Dashboard",
        "module": "sklearn_dbksvd.lm",
        "description": """
A static site of what each latent (each sign of an atom) means, built from a
harvest directory: the contexts where it fires, its histogram and its logit
effects. Reading a
harvest needs NumPy only; the logit effects need the model (torch). See
:ref:`dashboard`.
""",
        "names": ["build_dashboard"],
    },
]
