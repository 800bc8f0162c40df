"""Temporal Fisher information of an SNN (Eq. 3-7 of Kim et al.).

For every horizon t = 1..T the SNN's prediction is the mean of its first t per-timestep
outputs (Eq. 4, `spiketide.losses.horizon_logits`), and

    I_t = (1/N) sum_n || grad_theta log f_theta(y_n | x_n, <=t) ||^2          (Eq. 6)

over all trainable parameters theta; the information centroid is
IC = sum_t t I_t / sum_t I_t (Eq. 7).

How it is computed (`temporal_fisher`):

* ONE forward pass per batch gives all T horizons. Forward hooks record the inputs and
  outputs of every parameterised `nn.Linear`, `nn.Conv1d/2d`, `nn.BatchNorm1d/2d/3d`
  (eval mode, running statistics), `nn.LayerNorm` and `nn.GroupNorm` call.
* Per horizon, one backward pass (`retain_graph`) that asks autograd only for the gradients
  of the lowest recorded outputs (for a built-in model: the stem convolution's). Autograd
  computes every other recorded output's gradient on the way and hands it to a tensor hook,
  which turns it into per-sample squared norms at once, so the output gradients are never
  all alive together, and no weight gradients are computed (those are half of a normal
  backward). A convolution on a time-major folded batch runs its backward only on the rows
  of timesteps up to the horizon (the later rows' gradient is exactly zero in a causal SNN;
  `_TailSkipConv`).
* Per-sample weight gradients are rebuilt from (input, grad_output) pairs: for convolutions
  by a strided im2col view (`as_strided`; on CPU much faster than `F.unfold`, and faster than
  the grouped-convolution trick on the larger layers) and one batched matmul per call, or,
  when cheaper, by the Gram identity ||sum_m g_m u_m^T||^2 = sum_{m,m'} (g_m.g_m')(u_m.u_m'),
  whose input half is computed once for all T horizons. Row blocks (timesteps) with an
  all-zero output gradient are skipped. Rows are mapped to samples for the layouts an SNN
  uses: a batch [B, ...] (a module called once per timestep, snnTorch style; the calls are
  accumulated before squaring), the time-major folded batch [T*B, ...] (sample = row % B),
  [T, B, ...] for Linear/LayerNorm and [T, B, C, H, W] for conv/BN wrappers that fold
  internally. Work is done in slices of samples so no temporary exceeds ~256 MB, and
  horizon-independent tensors are cached within a budget (1 GB on CPU).
* Safety net: on the first batch (and whenever the call structure or batch size changes)
  the last horizon's loss is weighted per sample with random weights w_n, and the
  per-sample gradients divided by w_n and summed are compared with the autograd gradient
  of the unweighted loss. That catches missed modules, unusual weight sharing and wrong
  row-to-sample layouts (an ambiguous one, e.g. [T, B, F] with T == B, is retried with the
  other reading). If it fails, or if a trainable parameter lives in a module without a
  per-sample rule, an exact per-sample loop is used instead (one forward per sample, one
  backward per horizon) and a single warning says why.

Estimators: "empirical" (Eq. 6, dataset labels), "true" (Eq. 5, labels drawn from the
model's own predictive distribution per horizon) and "batch" (the authors' public code;
see `temporal_fisher`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spiketide.errors import ConfigError, ModelOutputError
from spiketide.losses import check_logits, horizon_logits

__all__ = ["ESTIMATORS", "FisherProfile", "FisherTracker", "temporal_fisher", "brute_force_fisher",
           "information_centroid"]

ESTIMATORS = ("empirical", "true", "batch")

_CHUNK_BYTES = 256 * 2**20  # largest temporary per module and slice of samples
_CACHE_BYTES = 2**30  # horizon-independent tensors (im2col views, input Grams) kept across the T backwards
_FORCE_MODE: str | None = None  # tests: "gram" or "materialize" for every linear/conv module
_TAIL_SKIP = True  # convolutions' backward only on rows before the horizon (see _TailSkipConv)
_CHECK_SEED = 0x5EED  # the safety net's per-sample weights (a private generator: the global RNG is untouched)


# ---------------------------------------------------------------------------------------------
# Result type and Eq. 7


def information_centroid(trace: Tensor | Sequence[float]) -> float:
    """Eq. 7: IC = sum_t t I_t / sum_t I_t with t = 1..T; nan if the trace sums to zero."""
    tr = torch.as_tensor(trace, dtype=torch.float64).detach().cpu().flatten()
    if tr.numel() == 0:
        raise ConfigError("information_centroid needs a non-empty trace I_1..I_T")
    total = tr.sum()
    if not torch.isfinite(total) or total == 0:
        return float("nan")
    t = torch.arange(1, tr.numel() + 1, dtype=torch.float64)
    return float((t * tr).sum() / total)


def _floats(x: Tensor) -> list[float | None]:
    return [None if not math.isfinite(v) else float(v) for v in x.detach().cpu().double().tolist()]


def _tensor(v: Sequence[float | None]) -> Tensor:
    return torch.tensor([float("nan") if a is None else float(a) for a in v], dtype=torch.float64)


@dataclass
class FisherProfile:
    """Temporal Fisher information of a model on a data set.

    trace: I_1..I_T, tensor [T] (float64). stderr: standard error of each I_t over the samples
    ("batch": over the minibatches), nan when only one was used. centroid: Eq. 7.
    per_layer: {block or module name: tensor [T]} whose parts sum to `trace`, or None.
    """

    trace: Tensor
    stderr: Tensor
    centroid: float
    per_layer: dict[str, Tensor] | None
    estimator: str
    num_samples: int

    @property
    def timesteps(self) -> int:
        return int(self.trace.numel())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (nan -> None); `per_layer` only when it was measured."""
        d: dict[str, Any] = {
            "trace": _floats(self.trace),
            "stderr": _floats(self.stderr),
            "centroid": None if not math.isfinite(self.centroid) else float(self.centroid),
            "estimator": self.estimator,
            "num_samples": int(self.num_samples),
        }
        if self.per_layer is not None:
            d["per_layer"] = {k: _floats(v) for k, v in self.per_layer.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FisherProfile:
        trace = _tensor(d["trace"])
        stderr = _tensor(d.get("stderr") or [None] * len(trace))
        c = d.get("centroid")
        per = d.get("per_layer")
        return cls(
            trace=trace,
            stderr=stderr,
            centroid=float(c) if c is not None else (information_centroid(trace) if trace.numel() else float("nan")),
            per_layer=None if per is None else {k: _tensor(v) for k, v in per.items()},
            estimator=str(d.get("estimator", "empirical")),
            num_samples=int(d.get("num_samples", 0)),
        )


# ---------------------------------------------------------------------------------------------
# Labels for the "true" estimator (Eq. 5)


def _labels_from_uniforms(hlogits: Tensor, u: Tensor) -> Tensor:
    """Inverse-CDF draw: horizon logits [T, N, C] and uniforms [T, N] in [0, 1) -> labels [T, N] (int64)."""
    p = torch.softmax(hlogits.detach().double(), dim=-1)
    c = p.cumsum(-1)
    lab = (c <= u.to(device=c.device, dtype=c.dtype).unsqueeze(-1)).sum(-1)
    return lab.clamp_max(hlogits.shape[-1] - 1).long()


def _sample_true_labels(hlogits: Tensor, generator: torch.Generator) -> Tensor:
    """One Monte-Carlo label per sample and horizon from softmax(hlogits) [T, N, C] -> [T, N].

    Draws the uniforms `torch.rand((T, N), generator=generator, dtype=float64)`; with
    `torch.Generator().manual_seed(seed)` and the horizon logits of the whole data set this
    reproduces exactly the labels `temporal_fisher(..., estimator="true", seed=seed)` uses.
    """
    T, N = hlogits.shape[:2]
    u = torch.rand((T, N), generator=generator, dtype=torch.float64)
    return _labels_from_uniforms(hlogits, u)


# ---------------------------------------------------------------------------------------------
# Argument handling, parameter groups, and the measurement context


def _prepare_data(inputs: Any, targets: Any) -> tuple[Tensor, Tensor]:
    if not isinstance(inputs, Tensor):
        raise ConfigError(f"inputs must be a tensor [N, ...], got {type(inputs).__name__}")
    if not isinstance(targets, Tensor):
        targets = torch.as_tensor(targets)
    if inputs.dim() < 1 or inputs.shape[0] == 0:
        raise ConfigError(f"inputs is empty (shape {tuple(inputs.shape)}); Fisher information needs a sample or more")
    if targets.dim() != 1:
        raise ConfigError(f"targets must be a 1-D tensor of class indices [N], got shape {tuple(targets.shape)}")
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise ConfigError(f"targets must be integer class indices (int64), got dtype {targets.dtype}")
    if len(inputs) != len(targets):
        raise ConfigError(f"len(inputs) = {len(inputs)} but len(targets) = {len(targets)}; they must match")
    return inputs, targets.long()


def _to_model(xb: Tensor, device: torch.device, dtype: torch.dtype) -> Tensor:
    """A batch of inputs in the model's dtype on its device (uint8 pixels are divided by 255)."""
    scale = xb.dtype == torch.uint8
    xb = xb.to(device=device, dtype=dtype)
    if scale:
        xb = xb / 255.0
    return xb.clone() if xb.is_inference() else xb


def _check_targets(targets: Tensor, C: int) -> None:
    lo, hi = int(targets.min()), int(targets.max())
    if lo < 0 or hi >= C:
        bad = targets[(targets < 0) | (targets >= C)]
        raise ConfigError(
            f"targets must lie in [0, {C}) for a model with {C} classes; found {bad.numel()} out of range "
            f"(e.g. {int(bad[0])}). Check the label encoding or num_classes."
        )


def _param_groups(model: nn.Module, names: list[str]) -> tuple[list[str], list[int]]:
    """Group names and, per parameter, its group index: blocks of `model.block_names` (first dotted
    prefix that matches, else "other"), otherwise the name of the module owning the parameter."""
    blocks = [str(b) for b in getattr(model, "block_names", ()) or ()]
    groups: list[str] = []
    index: dict[str, int] = {}
    gidx = []

    def gid(g: str) -> int:
        if g not in index:
            index[g] = len(groups)
            groups.append(g)
        return index[g]

    if blocks:
        for b in blocks:
            gid(b)
    for n in names:
        if blocks:
            g = next((b for b in blocks if n == b or n.startswith(b + ".")), "other")
        else:
            g = n.rsplit(".", 1)[0] if "." in n else "<root>"
        gidx.append(gid(g))
    return groups, gidx


class _Measurement:
    """Eval mode for the measurement (BN running statistics, no dropout); on exit every submodule's
    train/eval mode, every parameter's .grad and requires_grad, and the model's device are restored."""

    def __init__(self, model: nn.Module, device: torch.device | str | None):
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.device = None if device is None else torch.device(device)

    def __enter__(self) -> _Measurement:
        m = self.model
        self.modes = [(mod, mod.training) for mod in m.modules()]
        allp = list(m.parameters())
        self.grads = [(p, p.grad) for p in allp]
        self.req = [(p, p.requires_grad) for p in allp]
        named = [(n, p) for n, p in m.named_parameters() if p.requires_grad]
        if not named:
            raise ConfigError("the model has no trainable parameters (requires_grad=True); nothing to measure")
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.orig_device = self.params[0].device
        self.moved = self.device is not None and self.device != self.orig_device
        if self.moved:
            m.to(self.device)
        self.dev = self.params[0].device
        self.dtype = self.params[0].dtype if self.params[0].is_floating_point() else torch.get_default_dtype()
        m.eval()
        return self

    def __exit__(self, *exc) -> None:
        if self.moved:
            self.model.to(self.orig_device)
        for mod, mode in self.modes:
            mod.training = mode
        for p, rg in self.req:
            p.requires_grad_(rg)
        for p, g in self.grads:
            p.grad = g


def _forward(model: nn.Module, xb: Tensor, B: int, C: int | None = None) -> Tensor:
    out = model(xb)
    return check_logits(out, B, C)


def _check_stateless(model: nn.Module, xb: Tensor, ref: Tensor, out: Tensor) -> None:
    """`ref` is a no-grad forward of xb made before `out`; a model that keeps state between calls
    (e.g. neuron membranes not reset inside forward) gives a different answer the second time."""
    out = out.detach()
    if ref.shape == out.shape and torch.allclose(out, ref, rtol=1e-5, atol=1e-6 * (float(ref.abs().max()) + 1e-30)):
        return
    with torch.no_grad():
        ref2 = model(xb)
    if isinstance(ref2, Tensor) and ref2.shape == ref.shape and torch.allclose(
        ref2, ref, rtol=1e-6, atol=1e-7 * (float(ref.abs().max()) + 1e-30)
    ):
        return  # no-grad calls agree: the difference was float rounding between grad and no-grad kernels
    raise ModelOutputError(
        "the model gave different outputs for the same batch on consecutive calls: it keeps state between calls "
        "(or is random). The model must reset its neuron state (membrane potentials) inside forward, e.g. "
        "snnTorch `mem = lif.init_leaky()` / SpikingJelly `functional.reset_net(net)` at the start of forward, "
        "and must not draw random numbers (encode stochastic inputs before calling temporal_fisher)."
    )


def _progress(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=None if enabled else True, desc=desc, unit="batch", leave=False)


# ---------------------------------------------------------------------------------------------
# Per-sample gradients from hooks


def _cache_budget(device: torch.device) -> int:
    """Bytes of horizon-independent tensors kept across the T backward passes of a batch."""
    if device.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(device)
            return int(min(16 * 2**30, max(_CACHE_BYTES, free // 4)))
        except Exception:  # pragma: no cover - driver query failed
            return _CACHE_BYTES
    return _CACHE_BYTES


def _kind(m: nn.Module) -> str | None:
    if isinstance(m, nn.Linear):
        return "linear"
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        return "conv"
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return "bn" if m.track_running_stats and m.running_mean is not None and m.running_var is not None else None
    if isinstance(m, nn.LayerNorm):
        return "ln"
    if isinstance(m, nn.GroupNorm):
        return "gn"
    return None


class _LayoutError(Exception):
    pass


class _Call:
    """One recorded module call, canonicalised: rows of samples for one batch of size B."""

    __slots__ = ("x", "y", "yorig", "layout", "k", "M", "nblk", "cands", "xver", "yver")


class _Site:
    """A supported module with trainable parameters and its calls during one forward."""

    def __init__(self, name: str, module: nn.Module, kind: str, pidx: dict[str, int]):
        self.name, self.module, self.kind, self.pidx = name, module, kind, pidx
        self.raw: list[tuple[Any, Any]] = []
        self.calls: list[_Call] = []

    # layout -------------------------------------------------------------------------------
    def _nfeat(self) -> int:
        return 1 if self.kind == "linear" else len(self.module.normalized_shape)

    def candidates(self, x: Tensor, y: Tensor, B: int) -> list[tuple]:
        """Possible row-to-sample layouts of one call, most likely first."""
        if not isinstance(x, Tensor) or not isinstance(y, Tensor):
            return []
        if self.kind in ("linear", "ln"):
            nf = self._nfeat()
            lead = tuple(x.shape[: x.dim() - nf])
            if not lead or tuple(y.shape[: y.dim() - (1 if self.kind == "linear" else nf)]) != lead:
                return []
            c: list[tuple] = []
            if lead[0] == B:
                c.append(("b0",))
            if len(lead) >= 2 and lead[1] == B:
                c.append(("b1",))
            if lead[0] % B == 0 and lead[0] != B:
                c.append(("fold", lead[0] // B))
            return c
        m = self.module
        if self.kind == "conv":
            dims = (3,) if isinstance(m, nn.Conv1d) else (4,)
        elif self.kind == "bn":
            dims = (2, 3) if isinstance(m, nn.BatchNorm1d) else ((4,) if isinstance(m, nn.BatchNorm2d) else (5,))
        else:  # gn
            dims = tuple(range(2, 6))
        c = []
        if x.dim() in dims and y.dim() == x.dim() and x.shape[0] == y.shape[0] and x.shape[0] % B == 0:
            c.append(("fold", x.shape[0] // B))
        elif self.kind != "gn" and x.dim() == max(dims) + 1 and x.shape[1] == B and y.dim() == x.dim() \
                and y.shape[:2] == x.shape[:2]:
            c.append(("tb", x.shape[0]))
        return c

    def canonicalise(self, B: int, choice: dict, key_prefix: int) -> None:
        """Turn the recorded calls into `_Call`s; raises _LayoutError when a call has no known layout."""
        self.calls = []
        for ci, (x, y, xver, yver) in enumerate(self.raw):
            if not isinstance(x, Tensor) or not isinstance(y, Tensor):
                raise _LayoutError(f"{self.name}: call without a tensor input/output")
            cands = self.candidates(x, y, B)
            if not cands:
                raise _LayoutError(f"{self.name} ({type(self.module).__name__}) was called with input shape "
                                   f"{tuple(x.shape)}, which is not a known per-sample layout for batch size {B}")
            want = choice.get((key_prefix, ci))
            lay = want if want in cands else cands[0]
            c = _Call()
            c.cands, c.layout, c.yorig = cands, lay, y
            c.xver, c.yver = xver, yver
            if lay[0] == "tb":
                c.x, c.y, c.k = x.flatten(0, 1), y.flatten(0, 1), lay[1]
            else:
                c.x, c.y = x, y
                c.k = lay[1] if lay[0] == "fold" else None
            if self.kind in ("linear", "ln"):
                nf = self._nfeat()
                feat = math.prod(x.shape[x.dim() - nf:])
                c.M = x.numel() // (B * max(feat, 1))
            elif self.kind == "conv":
                c.M = c.k * math.prod(c.y.shape[2:])
            else:
                c.M = c.k
            # rows come in `nblk` leading blocks (timesteps for time-major layouts); trailing blocks whose
            # output gradient is exactly zero (timesteps after the horizon) are skipped
            c.nblk = 1 if lay[0] == "b0" else (x.shape[0] if lay[0] == "b1" else c.k)
            self.calls.append(c)

    # helpers ------------------------------------------------------------------------------
    @staticmethod
    def _rows(z: Tensor, lay: tuple, B: int, s: int, e: int, nf: int, kk: int | None = None) -> Tensor:
        """Linear/LayerNorm layout -> [e-s, M, *feat] rows of samples s..e-1 (first kk row blocks)."""
        feat = z.shape[z.dim() - nf:]
        if lay[0] == "b0":
            r = z.reshape(B, -1, *feat)[s:e]
        elif lay[0] == "b1":
            r = z[:kk, s:e].transpose(0, 1)
        else:
            r = z.reshape(lay[1], B, -1, *feat)[:kk, s:e].transpose(0, 1)
        return r.reshape(e - s, -1, *feat)

    @staticmethod
    def _used_blocks(c: _Call, go: Tensor | None, B: int, s: int, e: int) -> int:
        """Number of leading row blocks up to the last one with a non-zero output gradient."""
        if go is None:
            return 0
        if c.nblk == 1:
            return 1
        if c.layout[0] == "fold":
            v = go.reshape(c.nblk, B, -1)
        else:
            v = go.reshape(go.shape[0], B, -1)
        v = v[:, s:e]
        if v.device.type != "cpu":  # one reduction and one synchronisation
            nz = torch.nonzero(v.reshape(c.nblk, -1).ne(0).any(1)).flatten().tolist()
            return nz[-1] + 1 if nz else 0
        for j in range(c.nblk - 1, -1, -1):  # scan back from the last block: reads only the zero tail
            if bool(v[j].any()):
                return j + 1
        return 0

    def _conv_U(self, c: _Call, B: int, s: int, e: int, kk: int | None = None) -> Tensor:
        """Strided im2col of samples s..e-1, first kk row blocks: [b, C*kh*kw, kk*Ho*Wo]
        (rows ordered (row block, position))."""
        m, x, k, b = self.module, c.x, c.k, e - s
        kk = k if kk is None else kk
        xs = x.reshape(k, B, *x.shape[1:])[:kk, s:e].transpose(0, 1).reshape(b * kk, *x.shape[1:])
        pads = list(m._reversed_padding_repeated_twice)
        if any(pads):
            xs = F.pad(xs, pads, mode="constant" if m.padding_mode == "zeros" else m.padding_mode)
        else:
            xs = xs.contiguous()
        if xs.dim() == 3:  # Conv1d as a 2-D conv of height 1
            xs = xs.unsqueeze(2)
            (kh, kw), (sh, sw), (dh, dw) = (1, m.kernel_size[0]), (1, m.stride[0]), (1, m.dilation[0])
        else:
            (kh, kw), (sh, sw), (dh, dw) = m.kernel_size, m.stride, m.dilation
        C, Hp, Wp = xs.shape[1:]
        Ho, Wo = (Hp - dh * (kh - 1) - 1) // sh + 1, (Wp - dw * (kw - 1) - 1) // sw + 1
        if Ho * Wo * k != c.M:
            raise _LayoutError(f"{self.name}: output size does not match the convolution geometry")
        xs = xs.view(b, kk, C, Hp, Wp)
        st = xs.stride()
        v = xs.as_strided((b, C, kh, kw, kk, Ho, Wo),
                          (st[0], st[2], st[3] * dh, st[4] * dw, st[1], st[3] * sh, st[4] * sw), xs.storage_offset())
        return v.reshape(b, C * kh * kw, kk * Ho * Wo)

    def _U(self, c: _Call, B: int, s: int, e: int, kk: int | None = None) -> Tensor:
        """Inputs of the first kk row blocks as [b, K, M'] (feature-major) for linear and conv."""
        dt = self.module.weight.dtype  # (autocast: compute in the parameters' precision)
        if self.kind == "linear":
            return self._rows(c.x, c.layout, B, s, e, 1, kk).to(dt).transpose(1, 2)
        return self._conv_U(c, B, s, e, kk).to(dt)

    def _G(self, c: _Call, go: Tensor, B: int, s: int, e: int, kk: int) -> Tensor:
        """Output gradients of the first kk row blocks as [b, O, M'] for linear and conv."""
        dt = self.module.weight.dtype
        if self.kind == "linear":
            return self._rows(go, c.layout, B, s, e, 1, kk).to(dt).transpose(1, 2)
        if c.layout[0] == "tb":
            go = go.flatten(0, 1)
        O = go.shape[1]
        return go.reshape(c.k, B, O, -1)[:kk, s:e].permute(1, 2, 0, 3).reshape(e - s, O, -1).to(dt)

    # planning -----------------------------------------------------------------------------
    def plan(self, B: int, T: int, elem: int) -> None:
        """Costs of the per-sample rules for this batch; `decide` picks one once the cache budget is shared out."""
        m = self.module
        self.cache: dict[Any, Any] = {}
        self.cache_ok = False
        self.gram = False
        if self.kind in ("linear", "conv"):
            w = m.weight
            self.O = w.shape[0]
            self.K = w[0].numel() if self.kind == "conv" else w.shape[1]
            self.groups = getattr(m, "groups", 1)
            Ktot = self.K * self.groups
            Mtot = sum(c.M for c in self.calls)
            self.Mtot, self.Mmax = Mtot, max((c.M for c in self.calls), default=1)
            # multiply-adds for all T horizons (upper bounds: trailing zero blocks are skipped)
            self.cost_mat = T * Mtot * self.O * Ktot
            self.cost_gram_cached = Mtot * Mtot * (Ktot + T * self.O)
            self.cost_gram = T * Mtot * Mtot * (Ktot + self.O)
            self.cache_bytes = B * Mtot * Mtot * elem  # Gram mode: the input Gram matrices
            self.u_bytes = B * Ktot * Mtot * elem  # materialised mode: the im2col inputs
        elif self.kind == "ln":
            self.cache_bytes = self.u_bytes = 0  # recomputed per horizon (one row per sample and block)
        else:
            self.cache_bytes = self.u_bytes = sum(c.x.numel() * elem for c in self.calls)  # normalised inputs

    def wants_gram(self) -> bool:
        if self.kind not in ("linear", "conv") or self.groups != 1:
            return False
        if _FORCE_MODE is not None:
            return _FORCE_MODE == "gram"
        return self.cost_gram_cached < self.cost_mat

    def decide(self, B: int, elem: int, budget: list[int], gram_pass: bool) -> None:
        """Pass 1 (gram_pass): Gram candidates claim their cache, which saves the most work per byte.
        Pass 2: everything else is decided; the rest of the budget caches im2col / normalised inputs."""
        if gram_pass:
            if self.wants_gram() and self.cache_bytes <= budget[0]:
                budget[0] -= self.cache_bytes
                self.gram = self.cache_ok = True
            return
        if self.kind in ("linear", "conv") and not self.gram:
            if self.wants_gram():  # no room for its cache: Gram only if it still wins when recomputed
                self.gram = _FORCE_MODE == "gram" or self.cost_gram < self.cost_mat
        if not self.cache_ok and not self.gram and self.u_bytes <= budget[0]:
            budget[0] -= self.u_bytes
            self.cache_ok = True
        if self.kind in ("linear", "conv"):
            Ktot = self.K * self.groups
            per = max(Ktot * self.Mmax, self.O * self.Mmax)
            per += 2 * self.Mtot * self.Mtot if self.gram else self.O * Ktot
        else:
            per = 3 * sum(c.x.numel() for c in self.calls) // B + 1
        b = max(1, min(B, _CHUNK_BYTES // (max(per, 1) * elem)))
        self.chunks = [(s, min(B, s + b)) for s in range(0, B, b)]

    # per-sample squared norms ---------------------------------------------------------------
    def compute(self, gos: list[Tensor | None], B: int, ci: int, s: int, e: int,
                winv: Tensor | None) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Per-sample squared gradient norms {attr: [b]} for samples s..e-1 (chunk `ci`), and, when
        `winv` (1/w per sample) is given, the sums sum_n grad_n / w_n {attr: tensor like the parameter}."""
        if self.kind in ("linear", "conv"):
            return self._compute_matrix(gos, B, ci, s, e, winv)
        return self._compute_norm(gos, B, ci, s, e, winv)

    def _zeros(self, b: int, winv: Tensor | None, attrs) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        m = self.module
        sq = {a: torch.zeros(b, dtype=torch.float64, device=getattr(m, a).device) for a in attrs}
        sums = {a: torch.zeros_like(getattr(m, a)) for a in attrs} if winv is not None else {}
        return sq, sums

    def _compute_matrix(self, gos, B, ci, s, e, winv):
        m, b = self.module, e - s
        sq: dict[str, Tensor] = {}
        sums: dict[str, Tensor] = {}
        multi = self.gram and len(self.calls) > 1  # concatenated Gram rows: keep all blocks
        kks = [(c.nblk if go is not None else 0) if multi else self._used_blocks(c, go, B, s, e)
               for c, go in zip(self.calls, gos)]
        Gs = [self._G(c, go, B, s, e, kk) if kk else None for c, go, kk in zip(self.calls, gos, kks)]
        ref = next((g for g in Gs if g is not None), None)
        if ref is None:  # no call of this module reaches this horizon's loss
            return self._zeros(b, winv, self.pidx)
        if "bias" in self.pidx:
            bg = sum(g.sum(2) for g in Gs if g is not None)
            sq["bias"] = bg.double().pow(2).sum(1)
            if winv is not None:
                sums["bias"] = (bg * winv[:, None]).sum(0)
        if "weight" not in self.pidx:
            return sq, sums
        if self.gram:
            if multi:
                Gs = [g if g is not None else torch.zeros(b, self.O, c.M, dtype=ref.dtype, device=ref.device)
                      for c, g in zip(self.calls, Gs)]
                Gcat = torch.cat(Gs, 2)
            else:
                Gcat = Gs[0]
            Mu = Gcat.shape[2]  # single call: only the rows of the used blocks

            def inputs() -> Tensor:
                if multi:
                    return torch.cat([self._U(c, B, s, e) for c in self.calls], 2)
                return self._U(self.calls[0], B, s, e, None if self.cache_ok else kks[0])

            Ucat = None
            XG = self.cache.get(ci)
            if XG is None:
                Ucat = inputs()
                XG = torch.bmm(Ucat.transpose(1, 2), Ucat)
                if self.cache_ok:
                    self.cache[ci] = XG
            GG = torch.bmm(Gcat.transpose(1, 2), Gcat)
            sq["weight"] = (XG[:, :Mu, :Mu] * GG).sum((1, 2)).double()
            if winv is not None:
                Ucat = (inputs() if Ucat is None else Ucat)[:, :, :Mu]
                sums["weight"] = torch.einsum("bom,bkm->ok", Gcat * winv[:, None, None], Ucat).reshape(m.weight.shape)
            return sq, sums
        if self.cache_ok:
            Us = self.cache.get(ci)
            if Us is None:
                Us = self.cache[ci] = [self._U(c, B, s, e) for c in self.calls]
        else:  # build only the row blocks this horizon uses
            Us = [self._U(c, B, s, e, kk) if kk else None for c, kk in zip(self.calls, kks)]
        g_ = self.groups
        acc = None
        for U, G in zip(Us, Gs):
            if G is None:
                continue
            U = U[:, :, : G.shape[-1]]  # rows of the used blocks
            if g_ > 1:
                U = U.reshape(b * g_, self.K, U.shape[-1])
                G = G.reshape(b * g_, self.O // g_, G.shape[-1])
            part = torch.bmm(G, U.transpose(1, 2))
            acc = part if acc is None else acc.add_(part)
        acc = acc.reshape(b, -1)
        sq["weight"] = acc.double().pow(2).sum(1)
        if winv is not None:
            sums["weight"] = (acc * winv[:, None]).sum(0).reshape(m.weight.shape)
        return sq, sums

    def _pdtype(self) -> torch.dtype:
        p = getattr(self.module, "weight", None)
        return p.dtype if p is not None else self.module.bias.dtype

    def _xhat(self, c: _Call, key: tuple, B: int, s: int, e: int, kk: int) -> Tensor:
        """Normalised BN/GN input of samples s..e-1 as [kk, b, C, S] (cached across horizons if planned)."""
        hit = self.cache.get(key)
        if hit is not None:
            return hit[:kk]
        m, k = self.module, c.k
        n = k if self.cache_ok else kk
        x = c.x.reshape(k, B, c.x.shape[1], -1)[:n, s:e].to(self._pdtype())
        if self.kind == "bn":
            inv = torch.rsqrt(m.running_var.to(x.dtype) + m.eps).view(1, 1, -1, 1)
            xh = (x - m.running_mean.to(x.dtype).view(1, 1, -1, 1)) * inv
        else:  # gn: per (row, group) statistics
            xr = c.x.reshape(k, B, *c.x.shape[1:])[:n, s:e].to(x.dtype)
            xh = F.group_norm(xr.reshape(n * (e - s), *xr.shape[2:]), m.num_groups, None, None, m.eps)
            xh = xh.reshape(n, e - s, c.x.shape[1], -1)
        if self.cache_ok:
            self.cache[key] = xh
        return xh[:kk]

    def _compute_norm(self, gos, B, ci, s, e, winv):
        m, b = self.module, e - s
        wg = bg = None
        for cn, (c, go) in enumerate(zip(self.calls, gos)):
            kk = self._used_blocks(c, go, B, s, e)
            if kk == 0:
                continue
            if self.kind == "ln":
                nf = self._nfeat()
                X = self._rows(c.x, c.layout, B, s, e, nf, kk).to(self._pdtype())
                G = self._rows(go, c.layout, B, s, e, nf, kk).to(self._pdtype())
                if "weight" in self.pidx:
                    xh = F.layer_norm(X, m.normalized_shape, None, None, m.eps)
                    w_ = (G * xh).sum(1)
                    wg = w_ if wg is None else wg + w_
                if "bias" in self.pidx:
                    b_ = G.sum(1)
                    bg = b_ if bg is None else bg + b_
                continue
            g = go.flatten(0, 1) if c.layout[0] == "tb" else go
            C = g.shape[1]
            g = g.reshape(c.k, B, C, -1)[:kk, s:e].to(self._pdtype())  # [kk, b, C, S]
            if "weight" in self.pidx:
                xh = self._xhat(c, (ci, cn), B, s, e, kk)  # horizon-independent
                # per (row, channel) dot products over positions as one batched matmul (no product temporary)
                dots = torch.bmm(g.reshape(-1, 1, g.shape[-1]), xh.reshape(-1, xh.shape[-1], 1))
                w_ = dots.view(kk, b, C).sum(0)
                wg = w_ if wg is None else wg + w_
            if "bias" in self.pidx:
                b_ = g.sum(-1).sum(0)
                bg = b_ if bg is None else bg + b_
        sq: dict[str, Tensor] = {}
        sums: dict[str, Tensor] = {}
        for a, v in (("weight", wg), ("bias", bg)):
            if a not in self.pidx:
                continue
            p = getattr(m, a)
            if v is None:
                sq[a] = torch.zeros(b, dtype=torch.float64, device=p.device)
                if winv is not None:
                    sums[a] = torch.zeros_like(p)
                continue
            v = v.reshape(b, -1)
            sq[a] = v.double().pow(2).sum(1)
            if winv is not None:
                sums[a] = (v * winv[:, None]).sum(0).reshape(p.shape)
        return sq, sums


def _tail_rows(go: Tensor, k: int, B: int) -> int:
    """Rows 0 .. kk*B-1 of a time-major [k*B, ...] gradient hold all its non-zero row blocks."""
    v = go.reshape(k, B, -1)
    if v.device.type != "cpu":
        nz = torch.nonzero(v.ne(0).flatten(1).any(1)).flatten().tolist()
        return (nz[-1] + 1) * B if nz else 0
    for j in range(k - 1, -1, -1):
        if bool(v[j].any()):
            return (j + 1) * B
    return 0


class _TailSkipConv(torch.autograd.Function):
    """Autograd node of a convolution on a time-major folded batch [k*B, ...] during the measurement.

    Its backward is the convolution's own (aten.convolution_backward with the module's arguments),
    run only on the leading rows whose output gradient is not all zero: for horizon t, the rows of
    timesteps after t carry zero gradient, and a convolution's rows are independent, so their input
    gradient is exactly zero. For a causal SNN this saves about (T-1)/(2T) of the convolutions'
    backward work over the T horizons. Weight and bias gradients are computed only while
    `state["params"]` is set (the safety net's reference pass): the horizon passes ask autograd
    for output gradients alone, and a Python node cannot see that by itself."""

    @staticmethod
    def forward(ctx, x, weight, bias, y, geometry, k, B, state):
        ctx.save_for_backward(x, weight)
        ctx.geometry, ctx.k, ctx.B, ctx.has_bias, ctx.state = geometry, k, B, bias is not None, state
        return y.clone()  # a fresh tensor (not a view): later in-place use stays legal and is detected

    @staticmethod
    def backward(ctx, go):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        need_w, need_b = need_w and ctx.state["params"], need_b and ctx.state["params"]
        rows = _tail_rows(go, ctx.k, ctx.B)
        if rows == 0:
            return (torch.zeros_like(x) if need_x else None, torch.zeros_like(weight) if need_w else None,
                    go.new_zeros(go.shape[1]) if need_b else None, None, None, None, None, None)
        stride, padding, dilation, groups = ctx.geometry
        gx, gw, gb = torch.ops.aten.convolution_backward(
            go[:rows], x[:rows], weight, [weight.shape[0]] if ctx.has_bias else None, stride, padding, dilation,
            False, [0] * len(stride), groups, [need_x, need_w, need_b and ctx.has_bias])
        if need_x and rows < x.shape[0]:
            full = torch.zeros_like(x)
            full[:rows] = gx
            gx = full
        return gx if need_x else None, gw if need_w else None, gb if need_b else None, None, None, None, None, None


def _maybe_tail_skip(m: nn.Module, x: Any, y: Any, B: int, state: dict) -> Tensor | None:
    """`y` rebuilt on a _TailSkipConv node when the call is a plain zero-padded convolution of a
    time-major folded batch with more than one row block; None otherwise."""
    if not (isinstance(x, Tensor) and isinstance(y, Tensor) and torch.is_grad_enabled()):
        return None
    if m.padding_mode != "zeros" or isinstance(m.padding, str) or x.dim() != (3 if isinstance(m, nn.Conv1d) else 4):
        return None
    if x.shape[0] != y.shape[0] or x.shape[0] % B or x.shape[0] == B or not y.requires_grad:
        return None
    w, b = m.weight, m.bias
    if x.dtype != w.dtype or y.dtype != w.dtype or (b is not None and b.dtype != w.dtype):
        return None
    geometry = (list(m.stride), list(m.padding), list(m.dilation), m.groups)
    return _TailSkipConv.apply(x, w, b, y.detach(), geometry, x.shape[0] // B, B, state)


class _HookEngine:
    """Per-sample squared gradient norms for all T horizons of a batch from one forward pass."""

    def __init__(self, model: nn.Module, params: list[Tensor], gidx: list[int], ngroups: int):
        self.model, self.params, self.gidx, self.ngroups = model, params, gidx, ngroups
        pid = {id(p): i for i, p in enumerate(params)}
        self.sites: list[_Site] = []
        self.problems: list[str] = []
        owner: dict[int, str] = {}
        for name, mod in model.named_modules():
            direct = [(a, p) for a, p in mod.named_parameters(recurse=False) if p.requires_grad]
            if not direct:
                continue
            label = f"{name or '<root>'} ({type(mod).__name__})"
            kind = _kind(mod)
            if kind is None or any(a not in ("weight", "bias") for a, _ in direct):
                why = "BatchNorm without running statistics" if isinstance(mod, nn.modules.batchnorm._BatchNorm) \
                    else "no per-sample gradient rule for this module type"
                self.problems.append(f"{label} has trainable parameters [{', '.join(a for a, _ in direct)}]: {why}")
                continue
            pidx = {}
            for a, p in direct:
                i = pid[id(p)]
                if i in owner:
                    self.problems.append(f"parameter {a} of {label} is shared with {owner[i]}")
                owner[i] = label
                pidx[a] = i
            self.sites.append(_Site(name or "<root>", mod, kind, pidx))
        self.capturing = False
        self.tail_skip = _TAIL_SKIP
        self.grad_state = {"params": False}  # read by _TailSkipConv.backward
        self.B = 0
        self.handles: list[Any] = []
        self.choice: dict[tuple[int, int], tuple] = {}
        self.checked_sig: Any = None

    def __enter__(self) -> _HookEngine:
        for site in self.sites:
            self.handles.append(site.module.register_forward_hook(self._hook(site), with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
        for site in self.sites:
            site.raw, site.calls = [], []

    def _hook(self, site: _Site):
        def fn(mod, args, kwargs, out):
            if not self.capturing:
                return None
            x = args[0] if args else kwargs.get("input", next(iter(kwargs.values()), None))
            if site.kind == "conv" and self.tail_skip:
                rebuilt = _maybe_tail_skip(mod, x, out, self.B, self.grad_state)
                out = out if rebuilt is None else rebuilt
            site.raw.append((x, out, getattr(x, "_version", None), getattr(out, "_version", None)))
            return out
        return fn

    def run(self, xb: Tensor, labels_fn, C: int | None, check_rng: torch.Generator):
        """Returns (sq [G, B, T] float64 per-sample squared norms per group, out.detach()) or
        (None, reason, out) when the safety net says the hook path does not apply."""
        B = self.B = xb.shape[0]
        for site in self.sites:
            site.raw = []
        self.capturing = True
        try:
            out = _forward(self.model, xb, B, C)
        finally:
            self.capturing = False
        T = out.shape[0]
        h = horizon_logits(out)
        labels = labels_fn(h.detach())  # [T, B]
        lp = torch.log_softmax(h, -1).gather(2, labels.unsqueeze(2)).squeeze(2)  # [T, B] log f(y | x_<=t)
        sig = (B, tuple(tuple(tuple(r[0].shape) if isinstance(r[0], Tensor) else None for r in s.raw)
                        for s in self.sites))
        check = sig != self.checked_sig
        try:
            for attempt in range(2):
                try:
                    sq, reason = self._measure(out, lp, B, T, check, check_rng)
                except _LayoutError as exc:
                    return None, str(exc), out.detach()
                except Exception as exc:  # e.g. mixed dtypes or out of memory: the per-sample loop still works
                    return None, f"per-sample gradients from hooks failed ({type(exc).__name__}: {exc})", out.detach()
                if sq is not None:
                    if check:
                        self.checked_sig = sig
                        for si, site in enumerate(self.sites):
                            for ci, c in enumerate(site.calls):
                                self.choice[(si, ci)] = c.layout
                    return sq, None, out.detach()
                # the check failed: retry once with the other reading of ambiguous layouts ([T, B, F] with T == B)
                amb = [(si, ci, c) for si, site in enumerate(self.sites) for ci, c in enumerate(site.calls)
                       if len(c.cands) > 1]
                if not amb:
                    break
                for si, ci, c in amb:
                    self.choice[(si, ci)] = c.cands[(c.cands.index(c.layout) + 1) % len(c.cands)]
            return None, reason, out.detach()
        finally:
            for site in self.sites:
                site.cache, site.calls, site.raw = {}, [], []

    @staticmethod
    def _lowest(root: Any, nodes: list[Any]) -> list[int]:
        """Indices of the targets (by grad_fn node) below which no other target lies in the graph under
        `root`. Asking autograd for just these gradients makes it compute every target's gradient on
        the way (each arrives at its tensor hook), without holding them all at once."""
        tset = set(n for n in nodes if n is not None)
        below: dict[Any, bool] = {}
        stack = [(root, False)] if root is not None else []
        seen = set()
        while stack:
            node, done = stack.pop()
            if done:
                below[node] = any(ch is not None and (ch in tset or below.get(ch, False))
                                  for ch, _ in node.next_functions)
                continue
            if node in seen:
                continue
            seen.add(node)
            stack.append((node, True))
            for ch, _ in node.next_functions:
                if ch is not None and ch not in seen:
                    stack.append((ch, False))
        return [i for i, n in enumerate(nodes) if not below.get(n, False)]

    def _measure(self, out: Tensor, lp: Tensor, B: int, T: int, check: bool, rng: torch.Generator):
        dev = out.device
        elem = out.element_size()
        for si, site in enumerate(self.sites):
            site.canonicalise(B, self.choice, si)
            site.plan(B, T, elem)
        budget = [_cache_budget(dev)]
        for site in sorted(self.sites, key=lambda z: -getattr(z, "K", 0)):  # Gram caches first, widest inputs first
            site.decide(B, elem, budget, gram_pass=True)
        for site in self.sites:
            site.decide(B, elem, budget, gram_pass=False)
            for c in site.calls:
                if (c.xver is not None and c.x._version != c.xver) or c.yorig._version != c.yver:
                    raise _LayoutError(f"{site.name}: its input or output was modified in place after the call")
        targets = [(si, ci, c.yorig) for si, site in enumerate(self.sites) for ci, c in enumerate(site.calls)
                   if c.yorig.requires_grad]
        low = self._lowest(out.grad_fn, [y.grad_fn for _, _, y in targets])
        lowset = set(low)
        sq = torch.zeros(self.ngroups, B, T, dtype=torch.float64, device=dev)
        w = None
        if check:  # per-sample weights in [0.5, 1.5) for the last horizon of a check batch
            w = torch.rand(B, generator=rng, dtype=torch.float64).add_(0.5).to(device=dev, dtype=lp.dtype)
        sums: dict[int, Tensor] = {}
        st: dict[str, Any] = {"active": False}

        def process(si: int, gos: list[Tensor | None]) -> None:
            site = self.sites[si]
            winv = st["winv"]
            for ci, (s, e) in enumerate(site.chunks):
                q, sm = site.compute(gos, B, ci, s, e, None if winv is None else winv[s:e])
                for a, v in q.items():
                    sq[self.gidx[site.pidx[a]], s:e, st["t"]] += v
                for a, v in sm.items():
                    i = site.pidx[a]
                    sums[i] = v if i not in sums else sums[i] + v

        def deliver(si: int, ci: int, g: Tensor | None) -> None:
            if g is None:
                return
            n = len(self.sites[si].calls)
            if n == 1:
                process(si, [g])
            else:  # a module called several times: its per-sample gradient sums all calls first
                st["pending"].setdefault(si, [None] * n)[ci] = g

        def make_hook(si: int, ci: int):
            def hook(g: Tensor) -> None:
                if st["active"] and st["error"] is None:
                    try:
                        with torch.no_grad():
                            deliver(si, ci, g)
                    except Exception as exc:  # re-raised after the backward pass
                        st["error"] = exc
            return hook

        handles = [y.register_hook(make_hook(si, ci)) for k, (si, ci, y) in enumerate(targets) if k not in lowset]
        req = [targets[k] for k in low]
        try:
            for t in range(T):
                last = t == T - 1
                weighted = check and last
                loss = (lp[t] * w).sum() if weighted else lp[t].sum()
                st.update(active=True, t=t, winv=(1.0 / w) if weighted else None, pending={}, error=None)
                gs = torch.autograd.grad(loss, [y for _, _, y in req], retain_graph=(not last) or check,
                                         allow_unused=True) if req else []
                st["active"] = False
                if st["error"] is not None:
                    raise st["error"]
                with torch.no_grad():
                    for (si, ci, _), g in zip(req, gs):
                        deliver(si, ci, g)
                    del gs
                    for si, gos in st["pending"].items():
                        process(si, gos)
                st["pending"] = {}
        finally:
            st["active"] = False
            for h in handles:
                h.remove()
        if check:
            sq[:, :, T - 1] /= w.double().pow(2)
            # retain: a failed check may be retried on the same graph with another reading of ambiguous layouts
            self.grad_state["params"] = True
            try:
                ref = torch.autograd.grad(lp[T - 1].sum(), self.params, retain_graph=True, allow_unused=True)
            finally:
                self.grad_state["params"] = False
            # float rounding only; a wrong layout or a missed use is off by O(0.1) or more (random weights)
            tol = 1e-8 if lp.dtype == torch.float64 else (1e-2 if dev.type == "cuda" else 2e-3)
            norms = [0.0 if g is None else float(g.double().norm()) for g in ref]
            total = math.sqrt(sum(n * n for n in norms))
            for i, g in enumerate(ref):
                mine = sums.get(i)
                g = torch.zeros_like(self.params[i]) if g is None else g
                mine = torch.zeros_like(g) if mine is None else mine
                err = float((mine.double() - g.double()).norm())
                if err > tol * max(norms[i], 1e-4 * total) + 1e-300:
                    site = next(s for s in self.sites if i in s.pidx.values())
                    return None, (f"per-sample gradients of {site.name} ({type(site.module).__name__}) do not add up "
                                  f"to the autograd gradient (relative error {err / max(norms[i], 1e-300):.2e}); "
                                  "the module may share weights in an unusual way or use an unknown batch layout")
        return sq, None


# ---------------------------------------------------------------------------------------------
# Exact per-sample loops


def _per_sample_loop(model: nn.Module, xb: Tensor, labels_fn_n, params: list[Tensor], gidx: list[int],
                     ngroups: int, C: int | None) -> Tensor:
    """Exact fallback: one forward per sample, one backward per horizon -> [G, B, T] float64."""
    B = xb.shape[0]
    res = None
    gi = torch.tensor(gidx, device=xb.device)
    for n in range(B):
        out = _forward(model, xb[n:n + 1], 1, C)
        T = out.shape[0]
        if res is None:
            res = torch.zeros(ngroups, B, T, dtype=torch.float64, device=xb.device)
        h = horizon_logits(out)
        lab = labels_fn_n(h.detach(), n)  # [T]
        lp = torch.log_softmax(h[:, 0], -1)
        for t in range(T):
            gs = torch.autograd.grad(lp[t, lab[t]], params, retain_graph=t < T - 1, allow_unused=True)
            v = torch.stack([torch.zeros((), dtype=torch.float64, device=xb.device) if g is None
                             else g.double().pow(2).sum() for g in gs])
            res[:, n, t].index_add_(0, gi, v)
    return res


def _finish(per_sample: Tensor, groups: list[str], per_layer: bool, estimator: str) -> FisherProfile:
    """per_sample [G, N, T] -> FisherProfile (mean and standard error over N)."""
    per_sample = per_sample.cpu()
    tot = per_sample.sum(0)  # [N, T]
    n = tot.shape[0]
    trace = tot.mean(0)
    stderr = tot.std(0, unbiased=True) / math.sqrt(n) if n > 1 else torch.full_like(trace, float("nan"))
    pl = {g: per_sample[i].mean(0) for i, g in enumerate(groups)} if per_layer else None
    return FisherProfile(trace=trace, stderr=stderr, centroid=information_centroid(trace), per_layer=pl,
                         estimator=estimator, num_samples=n)


def _batches(n: int, batch_size: int) -> list[tuple[int, int]]:
    return [(s, min(n, s + batch_size)) for s in range(0, n, batch_size)]


# ---------------------------------------------------------------------------------------------
# Public API


def temporal_fisher(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    estimator: str = "empirical",
    per_layer: bool = False,
    batch_size: int = 64,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> FisherProfile:
    """Temporal Fisher information I_1..I_T (Eq. 5-6) of `model` on (inputs, targets).

    model: any nn.Module mapping a batch [B, ...] to per-timestep logits [T, B, C] that keeps no
        state between calls. It is measured in eval mode (BatchNorm running statistics; the
        surrogate gradient is always active); afterwards each submodule's train/eval mode and
        each parameter's .grad and requires_grad are restored. Only parameters with
        requires_grad=True count.
    inputs: float tensor [N, ...] (uint8 is divided by 255), cast to the model's dtype/device.
    targets: int64 class indices [N] in [0, C).
    estimator:
        "empirical" - Eq. 6: I_t = (1/N) sum_n ||grad log f(y_n | x_n, <=t)||^2 with the data labels.
        "true"      - Eq. 5: y drawn from the model's own horizon-t distribution softmax(h_t(x_n)),
                      one Monte-Carlo draw per sample and horizon from torch.Generator seeded
                      with `seed` (uniforms rand((T, N)) in data order, inverse CDF), so the draws
                      do not depend on `batch_size`.
        "batch"     - the authors' public code: I_t = mean over minibatches of
                      ||grad (1/b) sum_{n in minibatch} log f(y_n | x_n, <=t)||^2 with b = batch_size.
                      This is NOT Eq. 6: E||mean of b per-sample grads||^2 = ||E g||^2 + tr(Cov g)/b,
                      so its noise part shrinks with the batch size and it is smaller than Eq. 6
                      (which is ||E g||^2 + tr(Cov g)). A last partial minibatch is dropped (so every
                      term has the same b) unless it is the only one; num_samples counts the samples
                      used and stderr is taken over the minibatches.
    per_layer: also return the information per block (`model.block_names`: each parameter goes to the
        first name it lies under, the rest to "other") or, for other models, per parameterised
        module name; the parts sum to the trace.
    batch_size: samples per forward pass (and the minibatch of "batch").
    device: run on this device (the model is moved there and back); default: the model's device.
    progress: tqdm bar over batches (quiet when stderr is not a terminal).

    Raises ConfigError for bad arguments (unknown estimator, empty input, length mismatch, targets
    out of range) and ModelOutputError when the model does not return [T, B, C] or keeps state
    between calls. Falls back (with one warning) to an exact, slower per-sample loop when per-sample
    gradients cannot be rebuilt from hooks.
    """
    if estimator not in ESTIMATORS:
        raise ConfigError(f"unknown Fisher estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    if int(batch_size) < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    batch_size = int(batch_size)
    inputs, targets = _prepare_data(inputs, targets)
    N = len(inputs)
    with _Measurement(model, device) as ctx, torch.inference_mode(False), torch.enable_grad():
        groups, gidx = _param_groups(model, ctx.names)
        dev, dtype = ctx.dev, ctx.dtype
        if estimator == "batch":
            return _batch_fisher(model, inputs, targets, ctx, groups, gidx, per_layer, batch_size, progress)
        engine = _HookEngine(model, ctx.params, gidx, len(groups))
        use_hooks = not engine.problems
        warned = False

        def fallback_warning(reason: str) -> None:
            nonlocal warned
            if not warned:
                warnings.warn(f"spiketide.fisher: {reason}; using the exact per-sample loop (one forward per sample, "
                              "one backward per horizon), which is slower.", RuntimeWarning, stacklevel=3)
                warned = True

        if not use_hooks:
            fallback_warning("; ".join(engine.problems[:3]))
        rng = torch.Generator().manual_seed(_CHECK_SEED)
        uniforms: Tensor | None = None
        C: int | None = None
        results = []
        spans = _batches(N, batch_size)
        with engine, _progress(len(spans), progress, "temporal Fisher") as bar:
            for bi, (s, e) in enumerate(spans):
                xb = _to_model(inputs[s:e], dev, dtype)
                yb = targets[s:e].to(dev)
                ref = None
                if bi == 0:
                    with torch.no_grad():
                        ref = _forward(model, xb, e - s)
                    T, C = ref.shape[0], ref.shape[2]
                    _check_targets(targets, C)
                    if estimator == "true":
                        uniforms = torch.rand((T, N), generator=torch.Generator().manual_seed(int(seed)),
                                              dtype=torch.float64)
                ub = uniforms[:, s:e] if uniforms is not None else None

                def labels_fn(hd: Tensor, yb=yb, ub=ub) -> Tensor:
                    if ub is None:
                        return yb.unsqueeze(0).expand(hd.shape[0], -1)
                    return _labels_from_uniforms(hd, ub)

                def labels_fn_n(hd: Tensor, n: int, yb=yb, ub=ub) -> Tensor:
                    if ub is None:
                        return yb[n].expand(hd.shape[0])
                    return _labels_from_uniforms(hd, ub[:, n:n + 1])[:, 0]

                sq = None
                if use_hooks:
                    sq, reason, out = engine.run(xb, labels_fn, C, rng)
                    if ref is not None:
                        _check_stateless(model, xb, ref, out)
                    if sq is None:
                        use_hooks = False
                        fallback_warning(reason)
                elif ref is not None:
                    with torch.no_grad():
                        out2 = _forward(model, xb, e - s, C)
                    _check_stateless(model, xb, ref, out2)
                if sq is None:
                    sq = _per_sample_loop(model, xb, labels_fn_n, ctx.params, gidx, len(groups), C)
                results.append(sq.cpu())
                bar.update(1)
        return _finish(torch.cat(results, 1), groups, per_layer, estimator)


def _batch_fisher(model, inputs, targets, ctx, groups, gidx, per_layer, batch_size, progress) -> FisherProfile:
    N = len(inputs)
    spans = _batches(N, batch_size)
    if len(spans) > 1 and spans[-1][1] - spans[-1][0] < batch_size:
        spans = spans[:-1]  # equal minibatch sizes: every term has the same noise part tr(Cov)/b
    gi = torch.tensor(gidx)
    vals = []
    C = None
    with _progress(len(spans), progress, "temporal Fisher (batch)") as bar:
        for bi, (s, e) in enumerate(spans):
            xb = _to_model(inputs[s:e], ctx.dev, ctx.dtype)
            yb = targets[s:e].to(ctx.dev)
            if bi == 0:
                with torch.no_grad():
                    ref = _forward(model, xb, e - s)
                C = ref.shape[2]
                _check_targets(targets, C)
            out = _forward(model, xb, e - s, C)
            if bi == 0:
                _check_stateless(model, xb, ref, out)
            T = out.shape[0]
            lp = torch.log_softmax(horizon_logits(out), -1).gather(2, yb.view(1, -1, 1).expand(T, -1, 1)).squeeze(2)
            v = torch.zeros(len(groups), T, dtype=torch.float64)
            for t in range(T):
                gs = torch.autograd.grad(lp[t].mean(), ctx.params, retain_graph=t < T - 1, allow_unused=True)
                n2 = torch.stack([torch.zeros((), dtype=torch.float64, device=ctx.dev) if g is None
                                  else g.double().pow(2).sum() for g in gs]).cpu()
                v[:, t].index_add_(0, gi, n2)
            vals.append(v)
            bar.update(1)
    per = torch.stack(vals, 1)  # [G, num_minibatches, T]
    prof = _finish(per, groups, per_layer, "batch")
    prof.num_samples = sum(e - s for s, e in spans)
    return prof


def brute_force_fisher(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    estimator: str = "empirical",
    per_layer: bool = False,
    batch_size: int = 64,
    seed: int = 0,
    labels: Tensor | None = None,
    device: torch.device | str | None = None,
) -> FisherProfile:
    """Reference implementation: one sample (for "batch": one minibatch), one horizon, one forward
    and one backward at a time, with the horizon output written as out[:t].mean(0) directly.

    Slow and obviously correct; used by the tests and benchmarks. For "true", `labels` [T, N] fixes
    the draws; otherwise they come from `seed` exactly as in `temporal_fisher`.
    """
    if estimator not in ESTIMATORS:
        raise ConfigError(f"unknown Fisher estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    inputs, targets = _prepare_data(inputs, targets)
    N = len(inputs)
    with _Measurement(model, device) as ctx, torch.inference_mode(False), torch.enable_grad():
        groups, gidx = _param_groups(model, ctx.names)
        dev, dtype, params = ctx.dev, ctx.dtype, ctx.params

        def sqnorms(loss: Tensor) -> Tensor:
            gs = torch.autograd.grad(loss, params, allow_unused=True)
            v = torch.zeros(len(groups), dtype=torch.float64)
            for i, g in enumerate(gs):
                if g is not None:
                    v[gidx[i]] += float(g.double().pow(2).sum())
            return v

        if estimator == "batch":
            spans = _batches(N, int(batch_size))
            if len(spans) > 1 and spans[-1][1] - spans[-1][0] < batch_size:
                spans = spans[:-1]
            T = None
            vals = []
            for s, e in spans:
                xb = _to_model(inputs[s:e], dev, dtype)
                yb = targets[s:e].to(dev)
                T = T or model(xb).shape[0]
                cols = []
                for t in range(1, T + 1):
                    out = model(xb)
                    lp = torch.log_softmax(out[:t].mean(0), -1).gather(1, yb.view(-1, 1)).squeeze(1)
                    cols.append(sqnorms(lp.mean()))
                vals.append(torch.stack(cols, 1))
            prof = _finish(torch.stack(vals, 1), groups, per_layer, "batch")
            prof.num_samples = sum(e - s for s, e in spans)
            return prof

        u = None
        res = None
        for n in range(N):
            xb = _to_model(inputs[n:n + 1], dev, dtype)
            T = None
            t = 1
            while T is None or t <= T:
                out = model(xb)
                if T is None:
                    T = out.shape[0]
                    if res is None:
                        res = torch.zeros(len(groups), N, T, dtype=torch.float64)
                        if estimator == "true" and labels is None:
                            g = torch.Generator().manual_seed(int(seed))
                            u = torch.rand((T, N), generator=g, dtype=torch.float64)
                z = out[:t].mean(0)[0]  # horizon-t logits of this sample [C]
                if estimator == "empirical":
                    y = int(targets[n])
                elif labels is not None:
                    y = int(labels[t - 1, n])
                else:
                    y = int(_labels_from_uniforms(z.view(1, 1, -1), u[t - 1:t, n:n + 1])[0, 0])
                res[:, n, t - 1] = sqnorms(torch.log_softmax(z, -1)[y])
                t += 1
        return _finish(res, groups, per_layer, estimator)


# ---------------------------------------------------------------------------------------------
# Tracking during training


from spiketide.train import Callback  # noqa: E402  (train imports this module lazily: no cycle)


class FisherTracker(Callback):
    """Training callback: temporal Fisher information at epoch 0 and every `every` epochs (and the last).

    Measures on a fixed, seeded, class-balanced subset of the training split without augmentation
    and adds a `fisher` object (`FisherProfile.to_dict()`) to that epoch's metrics line. Under DDP
    only rank 0 measures.
    """

    def __init__(self, every: int, samples: int = 128, estimator: str = "empirical", per_layer: bool = False,
                 batch_size: int = 64, seed: int = 0):
        self.every, self.samples, self.estimator = int(every), int(samples), estimator
        self.per_layer, self.batch_size, self.seed = bool(per_layer), int(batch_size), int(seed)
        self._data: tuple[Tensor, Tensor] | None = None

    @classmethod
    def from_config(cls, config) -> "FisherTracker":
        return cls(config.fisher_every, config.fisher_samples, config.fisher_estimator, config.fisher_per_layer,
                   config.fisher_batch_size, config.seed)

    def _subset(self, trainer) -> tuple[Tensor, Tensor]:
        if self._data is None:  # chosen lazily, so a resumed run measures the same images
            from spiketide import data

            ds = trainer.train_set
            idx = data.balanced_subset_indices(ds.labels.cpu(), ds.num_classes, min(self.samples, len(ds)),
                                               seed=self.seed).to(ds.labels.device)
            self._data = (data.to_float(ds.images[idx]), ds.labels[idx])
        return self._data

    def on_epoch_end(self, trainer, record: dict) -> None:
        epoch = record["epoch"]
        if not trainer.is_main or not (epoch % self.every == 0 or epoch == trainer.config.epochs):
            return
        x, y = self._subset(trainer)
        profile = temporal_fisher(trainer.model, x, y, estimator=self.estimator, per_layer=self.per_layer,
                                  batch_size=self.batch_size, seed=self.seed + epoch)
        record["fisher"] = profile.to_dict()
