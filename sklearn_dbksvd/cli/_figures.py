"""``dbksvd report``: convergence, coherence, atom usage and atom images."""

import base64
import html
import io
import math

import numpy as np
import scipy.sparse as sp

from .._data import check_batch, read_rows

# Pairs of atoms compared at once for the per-atom coherence: 1024 rows of
# the (m, m) overlap matrix, never all of it (2 GiB at m = 16384).
_COHERENCE_BLOCK = 1024

# Atoms drawn in the grid: 8 x 8 images stay readable in one panel.
_GRID_ATOMS = 64


def per_atom_coherence(components):
    """Largest ``|cos|`` of each atom with another atom, block by block."""
    atoms = components / np.linalg.norm(components, axis=1, keepdims=True)
    coherence = np.empty(len(atoms), dtype=atoms.dtype)
    for start in range(0, len(atoms), _COHERENCE_BLOCK):
        block = np.abs(atoms[start : start + _COHERENCE_BLOCK] @ atoms.T)
        # An atom is not its own neighbour.
        block[np.arange(len(block)), np.arange(start, start + len(block))] = 0
        coherence[start : start + len(block)] = block.max(axis=1)
    return np.minimum(coherence, 1.0)


def sample_rows(X, max_samples):
    """At most ``max_samples`` rows of ``X`` from 16 evenly spaced blocks.

    Spread over the whole input, so data stored in order (by source, by time)
    is represented, and read as a few sequential blocks.
    """
    n_samples = X.shape[0]
    if n_samples <= max_samples:
        return [slice(0, n_samples)]
    n_blocks = min(16, max_samples)
    block = max_samples // n_blocks
    starts = np.linspace(0, n_samples - block, n_blocks).astype(int)
    return [slice(int(start), int(start) + block) for start in starts]


def atom_usage(model, X, max_samples):
    """Number of sampled codes using each atom, and the number of samples.

    With ``split_sign`` an atom is used by a sample whose code takes it with
    either sign (the codes' columns ``i`` and ``m + i``).
    """
    rows = sample_rows(X, max_samples)
    sample = check_batch(read_rows(X, rows), rows)
    n_components = model.components_.shape[0]
    usage = np.zeros(n_components, dtype=np.int64)
    for _, code in model.iter_transform(sample):
        if sp.issparse(code):
            used = np.bincount(code.indices, minlength=code.shape[1])
        else:
            used = np.count_nonzero(code, axis=0)
        # A code takes an atom with one sign at most: the halves add up.
        usage += used.reshape(-1, n_components).sum(axis=0)
    return usage, len(sample)


def _atom_mosaic(components, order):
    """Atoms as square images tiled in a grid, separated by a blank line."""
    side = math.isqrt(components.shape[1])
    shown = order[:_GRID_ATOMS]
    columns = math.ceil(math.sqrt(len(shown)))
    rows = math.ceil(len(shown) / columns)
    mosaic = np.full((rows * (side + 1) + 1, columns * (side + 1) + 1), np.nan)
    for n, atom in enumerate(shown):
        image = components[atom].reshape(side, side)
        # Each atom on its own scale: atoms are directions, not intensities.
        image = image / (np.abs(image).max() or 1.0)
        r, c = divmod(n, columns)
        mosaic[
            1 + r * (side + 1) : 1 + r * (side + 1) + side,
            1 + c * (side + 1) : 1 + c * (side + 1) + side,
        ] = image
    return mosaic


def make_figure(model, usage=None, n_used_samples=None):
    """The report figure and a dict of its summary numbers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    components = model.components_
    n_components, n_features = components.shape
    history = getattr(model, "history_", [])
    coherence = per_atom_coherence(components) if n_components > 1 else np.zeros(1)
    square = math.isqrt(n_features) ** 2 == n_features and n_features > 1
    summary = {
        "atoms": n_components,
        "features": n_features,
        "steps": len(history),
        "mutual coherence": f"{coherence.max():.4f}",
        "atoms with coherence > 0.9": int((coherence > 0.9).sum()),
    }
    if history:
        summary["final relative error"] = f"{history[-1]['relative_error']:.4f}"
        summary["final variance explained"] = f"{history[-1]['variance_explained']:.4f}"

    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    axes = axes.ravel()
    ax = axes[0]
    if history:
        steps = [record["step"] + 1 for record in history]
        ax.plot(steps, [r["relative_error"] for r in history], label="relative error")
        ax.plot(
            steps,
            [r["variance_explained"] for r in history],
            label="variance explained",
        )
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(0, 1)
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no fit history", ha="center", va="center")
    ax.set_title("Convergence (batch after the atom update)")

    ax = axes[1]
    ax.hist(coherence, bins=50, range=(0, 1), color="tab:purple")
    ax.set_xlabel(r"max$_{j\neq i}$ |cos(d$_i$, d$_j$)|")
    ax.set_ylabel("atoms")
    ax.set_title(f"Per-atom coherence (mutual {coherence.max():.3f})")

    ax = axes[2]
    if usage is None:
        ax.text(0.5, 0.5, "give INPUT to see atom usage", ha="center", va="center")
        ax.set_axis_off()
    else:
        dead = int((usage == 0).sum())
        summary["samples encoded for usage"] = n_used_samples
        summary["dead atoms"] = dead
        ax.hist(usage, bins=50, color="tab:green")
        ax.set_xlabel(f"samples using the atom (of {n_used_samples})")
        ax.set_ylabel("atoms")
        ax.set_title(f"Atom usage: {dead} dead atom(s) of {n_components}")

    ax = axes[3]
    if square:
        order = (
            np.argsort(-usage, kind="stable")
            if usage is not None
            else np.arange(n_components)
        )
        ax.imshow(_atom_mosaic(components, order), cmap="RdBu_r", vmin=-1, vmax=1)
        shown = min(_GRID_ATOMS, n_components)
        which = "most used" if usage is not None else "first"
        ax.set_title(f"{which} {shown} atoms")
    ax.set_axis_off()
    fig.suptitle(f"DB-KSVD dictionary: {n_components} atoms x {n_features} features")
    fig.tight_layout()
    return fig, summary


def render(fig, summary, fmt):
    """The report as PNG bytes or as an HTML page with the PNG inline."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    png = buffer.getvalue()
    if fmt == "png":
        return png
    rows = "".join(
        f"<tr><th>{html.escape(str(key))}</th><td>{html.escape(str(value))}</td></tr>"
        for key, value in summary.items()
    )
    image = base64.b64encode(png).decode("ascii")
    page = (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        "<title>DB-KSVD dictionary report</title></head><body>"
        "<h1>DB-KSVD dictionary report</h1>"
        f"<table>{rows}</table>"
        f"<img alt='report' src='data:image/png;base64,{image}'>"
        "</body></html>\n"
    )
    return page.encode("utf-8")
