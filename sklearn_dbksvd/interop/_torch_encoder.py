"""Matching pursuit on the Gram matrix in PyTorch (see :mod:`sklearn_dbksvd.interop`).

The kernels mirror :func:`sklearn_dbksvd._encode._matching_pursuit_gram` and
``_refit_on_support`` operation for operation (same arg-max, same update
``c -= a * G[j]``, same masked least-squares refit), so that codes equal those
of ``transform`` up to rounding, on any torch device.
"""

from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

# Elements of each (rows, n_components) buffer of a chunk of samples (the
# correlations, their absolute values, the gathered Gram rows). On a GPU,
# 2**25 (128 MiB in float32) keeps it busy and fits any GPU; on a CPU, 2**18
# (1 MiB) keeps the buffers in cache, which made encoding 1.7x faster.
_CHUNK_ELEMENTS = {"cpu": 2**18}
_DEFAULT_CHUNK_ELEMENTS = 2**25
# Dtypes too coarse for the pursuit: it runs in float32 instead.
_HALF_DTYPES = (torch.float16, torch.bfloat16)

# SAEBench's custom-SAE config asks for these fields; their values only
# matter to evaluations that the caller configures anyway.
_SAEBENCH_FIELDS = {
    "model_name": None,
    "hook_name": None,
    "hook_layer": None,
    "hook_head_index": None,
    "context_size": None,
    "prepend_bos": True,
    "dataset_path": "",
    "dataset_trust_remote_code": True,
    "seqpos_slice": (None,),
    "training_tokens": -100_000,
    "model_from_pretrained_kwargs": {},
    "apply_b_dec_to_input": False,
    "finetuning_scaling_factor": False,
    "activation_fn_str": "matching_pursuit",
    "activation_fn_kwargs": {},
    "normalize_activations": "none",
    "reshape_activations": "none",
    "sae_lens_training_version": None,
    "neuronpedia_id": None,
}


class _Config(SimpleNamespace):
    """Attribute access as SAEBench reads ``cfg``, item access as SAELens' metadata."""

    def __getitem__(self, key):
        return getattr(self, key)

    def get(self, key, default=None):
        return getattr(self, key, default)

    def to_dict(self):
        return {
            key: value.to_dict() if isinstance(value, _Config) else value
            for key, value in vars(self).items()
        }


def _torch_dtype(dtype):
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).removeprefix("torch.")
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ValueError(f"dtype must be a floating torch dtype; got {dtype!r}.")
    return value


def mp_selections(corr, gram, n_nonzero_coefs, positive, sq_norms=None, tol=None):
    """``n_nonzero_coefs`` matching-pursuit selections; ``corr`` is overwritten.

    As :func:`sklearn_dbksvd._encode._matching_pursuit_gram`: returns the
    ``(n_samples, n_nonzero_coefs)`` atom indices and added coefficients.
    """
    n_samples = corr.shape[0]
    indices = torch.empty(
        (n_samples, n_nonzero_coefs), dtype=torch.long, device=corr.device
    )
    values = torch.empty(
        (n_samples, n_nonzero_coefs), dtype=corr.dtype, device=corr.device
    )
    if tol is not None:
        sq_residual = sq_norms.clone()
        sq_target = tol**2 * sq_norms
    # Buffers reused by every selection: allocating (n, m) temporaries each
    # time costs more than the arithmetic on a CPU.
    gram_rows = torch.empty_like(corr)
    score = corr if positive else torch.empty_like(corr)
    for t in range(n_nonzero_coefs):
        if not positive:
            torch.abs(corr, out=score)
        best = score.argmax(dim=1)
        coef = corr.gather(1, best[:, None]).squeeze(1)
        if positive:
            coef = coef.clamp_min(0)
        if tol is not None:
            coef = coef.masked_fill(sq_residual <= sq_target, 0)
            sq_residual -= coef * coef
        indices[:, t] = best
        values[:, t] = coef
        # c <- c - a * G[j], in place and rounded as the NumPy kernel rounds
        # it (a product, then a difference: no fused multiply-add).
        torch.index_select(gram, 0, best, out=gram_rows)
        gram_rows *= coef[:, None]
        corr -= gram_rows
    return indices, values


def refit_on_support(indices, values, corr0, gram):
    """Least-squares coefficients on each sample's selected atoms.

    As :func:`sklearn_dbksvd._encode._refit_on_support`: repeated atoms and
    selections that added zero are masked out (identity row, zero right-hand
    side), and a pseudo-inverse keeps dependent supports finite.
    """
    n_selections = indices.shape[1]
    order = torch.argsort(indices, dim=1, stable=True)
    indices = indices.gather(1, order)
    values = values.gather(1, order)
    start = torch.ones_like(indices, dtype=torch.bool)
    start[:, 1:] = indices[:, 1:] != indices[:, :-1]
    group = start.long().cumsum(dim=1) - 1
    net = torch.zeros_like(values).scatter_add_(1, group, values)
    active = start & (net.gather(1, group) != 0)
    pair = active[:, :, None] & active[:, None, :]
    system = torch.where(pair, gram[indices[:, :, None], indices[:, None, :]], 0)
    eye = torch.eye(n_selections, dtype=torch.bool, device=indices.device)
    system = torch.where(eye & ~active[:, :, None], 1, system)
    rhs = torch.where(active, corr0.gather(1, indices), 0)
    coefs = (torch.linalg.pinv(system) @ rhs[:, :, None]).squeeze(2)
    return indices, torch.where(active, coefs, 0)


def mp_codes(x, atoms, gram, n_nonzero_coefs, positive, tol, refit):
    """Dense matching-pursuit codes ``(n_samples, n_atoms)`` of the rows of ``x``."""
    corr = x @ atoms.T
    corr0 = corr.clone() if refit else None
    sq_norms = (x * x).sum(dim=1) if tol is not None else None
    indices, values = mp_selections(
        corr, gram, n_nonzero_coefs, positive, sq_norms, tol
    )
    if refit:
        indices, values = refit_on_support(indices, values, corr0, gram)
    codes = torch.zeros((x.shape[0], atoms.shape[0]), dtype=x.dtype, device=x.device)
    # Repeated selections of an atom accumulate, as in the sparse code.
    return codes.scatter_add_(1, indices, values)


def nested_codes(x, atoms, gram, levels, positive, tol, refit):
    """Codes level by level, each on the residual of the levels before it.

    As ``MatryoshkaDBKSVD.transform`` with ``transform_mode="nested"``,
    including its ``mp_tol`` rule: a sample whose residual already meets the
    tolerance relative to ``‖x‖`` gets no further nonzeros.
    """
    codes = torch.zeros((x.shape[0], atoms.shape[0]), dtype=x.dtype, device=x.device)
    residual = x
    if tol is not None:
        sq_target = tol**2 * (x * x).sum(dim=1)
    for start, stop, share in levels:
        group = atoms[start:stop]
        level_input = residual
        if tol is not None:
            done = (residual * residual).sum(dim=1) <= sq_target
            level_input = torch.where(done[:, None], 0, residual)
        block = mp_codes(
            level_input,
            group,
            gram[start:stop, start:stop],
            min(share, stop - start),
            positive,
            tol,
            refit,
        )
        codes[:, start:stop] = block
        residual = residual - block @ group
    return codes


class MatchingPursuitEncoder(nn.Module):
    """A DB-KSVD dictionary as an SAE-like module encoding by matching pursuit.

    :meth:`encode` runs ``n_nonzero_coefs`` matching-pursuit selections per
    sample on the Gram matrix of the atoms, as the estimators' ``transform``
    does: pick the atom of largest ``|correlation|`` (largest positive one
    with ``positive``), add the correlation to its coefficient, update the
    correlations with a row of the Gram matrix. :meth:`decode` is the linear
    decoder ``codes @ W_dec + b_dec`` and :meth:`forward` their composition,
    the reconstruction, as for a sparse autoencoder. Inputs are ``[..., d_in]``
    tensors; they are moved to the module's device and dtype.

    Build it with :func:`sklearn_dbksvd.interop.to_torch` or
    :func:`sklearn_dbksvd.interop.load_torch`.

    Parameters
    ----------
    components : array-like or torch.Tensor of shape (n_components, d_in)
        The atoms (unit-norm rows).
    n_nonzero_coefs : int
        Selections per sample, ``k``.
    positive : bool, default=False
        Nonnegative codes.
    tol : float, default=None
        Stop a sample's selections once ``‖r‖ ≤ tol ‖x‖``.
    refit : bool, default=False
        Least-squares coefficients on the selected atoms.
    levels : list of (start, stop, k), default=None
        Encode the atom ranges one after another, each on the residual of
        those before, with its own share of the nonzeros (a nested
        ``MatryoshkaDBKSVD``). None encodes with all atoms at once.
    split_sign : bool, default=False
        Output ``[max(c, 0), max(-c, 0)]``; ``d_sae`` is then ``2 *
        n_components`` and ``W_dec`` is ``[D; -D]``.
    config : dict, default=None
        Extra fields of :attr:`cfg` (``hook_name``, ``model_name``, ...).
    device : str or torch.device, default=None
        None means the CPU.
    dtype : torch.dtype or str, default=None
        None means the dtype of ``components`` (float32 when it is not a float
        tensor or array).

    Attributes
    ----------
    W_dec : torch.nn.Parameter of shape (d_sae, d_in)
        Decoder: the atoms, or ``[D; -D]`` with ``split_sign``.
    W_enc : torch.nn.Parameter of shape (d_in, d_sae)
        ``W_dec.T``, for tools that read an encoder matrix; :meth:`encode`
        does not use it.
    b_enc : torch.nn.Parameter of shape (d_sae,)
        Zeros; not used by :meth:`encode`.
    b_dec : torch.nn.Parameter of shape (d_in,)
        Subtracted before encoding and added after decoding (zero for the
        DB-KSVD estimators, which do not centre the data).
    cfg : namespace
        ``d_in``, ``d_sae``, ``k``, ``dtype``, ``device``, ``architecture``
        (``"matching_pursuit"``), ``split_sign``, the fields SAEBench asks of
        a custom SAE (``model_name``, ``hook_name``, ``hook_layer``, ...) and
        ``metadata``.

    Notes
    -----
    The parameters do not require gradients: the selections are arg-maxes.
    The Gram matrix ``W Wᵀ`` of the atoms is computed once per device, dtype
    and change of ``W_dec`` (``n_components²`` entries: 1 GiB in float32 at
    16384 atoms). Samples are encoded in chunks of ``2**25 / n_components``
    rows on a GPU (``2**18 / n_components`` on the CPU, to stay in cache).

    Half precision: a module cast to float16 or bfloat16 (``.to(dtype=...)``,
    as SAEBench casts every SAE to the language model's dtype) keeps a copy
    of ``W_dec`` and ``b_dec`` as they were before the cast, and
    :meth:`encode` and :meth:`decode` compute with it in float32: inputs are
    cast up, outputs cast back to the module's dtype. The codes then select
    the atoms that ``transform`` selects, with values rounded once, at the
    end (a pursuit in bfloat16 selected other atoms for 4 % of the tokens of
    a language model). Built directly in half precision (``dtype=``), the
    module has only the rounded weights. On a CPU the estimator's
    ``transform`` is faster (NumPy's arg-max is vectorised, torch's CPU one is
    not): this module is meant for GPUs and torch pipelines. On NVIDIA GPUs,
    ``torch.set_float32_matmul_precision("high")`` (TF32, set by some
    frameworks) makes float32 correlations less precise than ``transform``'s,
    which can change which atom wins a near tie.
    """

    def __init__(
        self,
        components,
        n_nonzero_coefs,
        *,
        positive=False,
        tol=None,
        refit=False,
        levels=None,
        split_sign=False,
        config=None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if torch.is_tensor(components):
            atoms = components.detach()
        else:
            # A copy: arrays read from files may be read-only, which torch warns of.
            atoms = torch.from_numpy(np.array(components))
        if atoms.ndim != 2:
            raise ValueError(f"components must be 2D; got shape {tuple(atoms.shape)}.")
        dtype = _torch_dtype(dtype)
        if dtype is None:
            dtype = atoms.dtype if atoms.is_floating_point() else torch.float32
        if int(n_nonzero_coefs) < 1:
            raise ValueError(f"n_nonzero_coefs must be >= 1; got {n_nonzero_coefs}.")
        if refit and positive:
            raise ValueError(
                "refit=True cannot keep codes nonnegative (positive=True)."
            )
        if tol is not None and not 0 <= tol <= 1:
            raise ValueError(f"tol must be in [0, 1]; got {tol}.")
        n_components, d_in = atoms.shape
        if levels is not None:
            levels = [tuple(int(v) for v in level) for level in levels]
            bounds = [0] + [stop for _, stop, _ in levels]
            if [start for start, _, _ in levels] != bounds[:-1] or bounds[
                -1
            ] != n_components:
                raise ValueError(
                    f"levels {levels} do not cover the {n_components} atoms."
                )
        self.n_components = n_components
        self.n_nonzero_coefs = int(n_nonzero_coefs)
        self.positive = bool(positive)
        self.tol = None if tol is None else float(tol)
        self.refit = bool(refit)
        self.levels = levels
        self.split_sign = bool(split_sign)

        decoder = torch.cat([atoms, -atoms]) if split_sign else atoms
        decoder = decoder.to(device=device, dtype=dtype)
        d_sae = decoder.shape[0]
        self.W_dec = nn.Parameter(decoder.contiguous(), requires_grad=False)
        self.W_enc = nn.Parameter(decoder.T.contiguous(), requires_grad=False)
        self.b_enc = nn.Parameter(decoder.new_zeros(d_sae), requires_grad=False)
        self.b_dec = nn.Parameter(decoder.new_zeros(d_in), requires_grad=False)

        fields = {**_SAEBENCH_FIELDS, **(config or {})}
        metadata = fields.pop("metadata", None) or {
            key: fields[key]
            for key in ("model_name", "hook_name", "hook_layer", "hook_head_index")
        }
        fields.update(
            d_in=d_in,
            d_sae=d_sae,
            k=self.n_nonzero_coefs,
            architecture="matching_pursuit",
            activation_fn="matching_pursuit",
            activation_fn_str="matching_pursuit",
            activation_fn_kwargs={"k": self.n_nonzero_coefs},
            split_sign=self.split_sign,
            metadata=_Config(**metadata),
        )
        self.cfg = _Config(**fields)
        self._gram_cache = (None, None)
        # (W_dec, b_dec) as they were before a cast to half precision: the
        # pursuit and the decoder keep using them, on the module's device.
        self._precise = None
        self._sync_config()

    # -- SAE-style attributes ------------------------------------------
    @property
    def dtype(self):
        """Dtype of the parameters (and of the codes)."""
        return self.W_dec.dtype

    @property
    def device(self):
        """Device of the parameters."""
        return self.W_dec.device

    @property
    def k(self):
        """Nonzeros per code (selections per sample)."""
        return self.n_nonzero_coefs

    def _sync_config(self):
        self.cfg.dtype = str(self.W_dec.dtype).removeprefix("torch.")
        self.cfg.device = str(self.W_dec.device)

    def _apply(self, fn, *args, **kwargs):
        # .to(), .cuda(), .double() ... : keep cfg.dtype and cfg.device true,
        # and keep the full-precision weights when cast to half precision.
        before = self._precise
        if self.W_dec.dtype not in _HALF_DTYPES:
            before = (self.W_dec.detach(), self.b_dec.detach())
        result = super()._apply(fn, *args, **kwargs)
        if self.W_dec.dtype in _HALF_DTYPES and before is not None:
            device = self.W_dec.device
            self._precise = tuple(tensor.to(device) for tensor in before)
        else:
            self._precise = None
        self._gram_cache = (None, None)
        self._sync_config()
        return result

    def extra_repr(self):
        return (
            f"d_in={self.cfg.d_in}, d_sae={self.cfg.d_sae}, k={self.n_nonzero_coefs}, "
            f"positive={self.positive}, split_sign={self.split_sign}"
        )

    # -- encoding ------------------------------------------------------
    def _compute_dtype(self):
        # Half precision loses the small correlations matching pursuit needs.
        dtype = self.W_dec.dtype
        return torch.float32 if dtype in _HALF_DTYPES else dtype

    def _weights(self):
        """``(W_dec, b_dec)`` in the precision of the pursuit.

        After a cast to half precision, the weights as they were before it
        (float32 or float64), so that the codes do not depend on the cast.
        """
        if self._precise is not None:
            return self._precise
        return self.W_dec, self.b_dec

    def _atoms(self):
        return self._weights()[0][: self.n_components].to(self._compute_dtype())

    def _gram(self):
        """``D Dᵀ`` of the atoms, recomputed when ``W_dec`` changes."""
        W = self._weights()[0]
        key = (W.data_ptr(), W._version, W.dtype, W.device)
        cached_key, gram = self._gram_cache
        if cached_key != key:
            atoms = self._atoms()
            gram = atoms @ atoms.T
            self._gram_cache = (key, gram)
        return gram

    @torch.no_grad()
    def encode(self, x):
        """Sparse codes of ``x`` by matching pursuit.

        Parameters
        ----------
        x : torch.Tensor of shape (..., d_in)
            Activations.

        Returns
        -------
        codes : torch.Tensor of shape (..., d_sae)
            At most ``k`` nonzeros per code (per half with ``split_sign``),
            on the module's device, in its dtype. Signed unless ``positive``
            or ``split_sign``.
        """
        d_in = self.cfg.d_in
        if x.shape[-1] != d_in:
            raise ValueError(
                f"x has {x.shape[-1]} features in its last dimension; expected {d_in}."
            )
        batch_shape = x.shape[:-1]
        compute = self._compute_dtype()
        flat = x.reshape(-1, d_in).to(device=self.device, dtype=compute)
        flat = flat - self._weights()[1].to(compute)
        atoms, gram = self._atoms(), self._gram()
        elements = _CHUNK_ELEMENTS.get(self.device.type, _DEFAULT_CHUNK_ELEMENTS)
        rows = max(1, elements // max(1, self.n_components))
        parts = []
        for start in range(0, flat.shape[0], rows):
            chunk = flat[start : start + rows]
            if self.levels is None:
                codes = mp_codes(
                    chunk,
                    atoms,
                    gram,
                    self.n_nonzero_coefs,
                    self.positive,
                    self.tol,
                    self.refit,
                )
            else:
                codes = nested_codes(
                    chunk, atoms, gram, self.levels, self.positive, self.tol, self.refit
                )
            if self.split_sign:
                positive = codes.clamp_min(0)
                codes = torch.cat([positive, positive - codes], dim=1)
            parts.append(codes)
        if parts:
            codes = torch.cat(parts)
        else:
            codes = flat.new_zeros((0, self.cfg.d_sae))
        return codes.to(self.dtype).reshape(*batch_shape, self.cfg.d_sae)

    def decode(self, feature_acts):
        """Reconstruction ``feature_acts @ W_dec + b_dec``.

        In float32 at least (with the weights from before a cast to half
        precision), returned in the module's dtype.

        Parameters
        ----------
        feature_acts : torch.Tensor of shape (..., d_sae)
            Codes.

        Returns
        -------
        x_hat : torch.Tensor of shape (..., d_in)
        """
        compute = self._compute_dtype()
        W, b = self._weights()
        feature_acts = feature_acts.to(device=self.device, dtype=compute)
        x_hat = feature_acts @ W.to(compute) + b.to(compute)
        return x_hat.to(self.dtype)

    def forward(self, x):
        """Reconstruction of ``x``: ``decode(encode(x))``.

        Parameters
        ----------
        x : torch.Tensor of shape (..., d_in)
            Activations.

        Returns
        -------
        x_hat : torch.Tensor of shape (..., d_in)
        """
        return self.decode(self.encode(x))
