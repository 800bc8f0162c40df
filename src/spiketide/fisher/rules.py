"""Per-sample gradient rules: each sample's squared gradient norm of one module's parameters, from the call's
input (kept by a forward hook) and output gradient (seen by a tensor hook), summed over the sample's rows m:

* matrix rule (Linear, Conv1d/2d): grad_W(n) = sum_m g_m u_m^T, grad_b(n) = sum_m g_m (u_m: input row or im2col
  patch). Materialised by a batched matmul or, when cheaper, only its squared norm by the Gram identity
  ||sum_m g_m u_m^T||^2 = sum_{m,m'} (g_m.g_m')(u_m.u_m'), whose input half is the same for all T horizons.
* norm rule (BatchNorm with running statistics, LayerNorm, GroupNorm): grad_gamma(n) = sum_m g_m * xhat_m,
  grad_beta(n) = sum_m g_m (xhat: the normalised input).

A `Site` is one such module during one forward pass: its calls read in a `Layout`, its plan (rule, cache,
slices of samples) and, on a checked batch, weighted sums of its per-sample gradients for the safety net.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["HooksDoNotApply", "Layout", "Record", "Budget", "Site", "make_site", "used_blocks"]


class HooksDoNotApply(Exception):
    """Per-sample gradients cannot be rebuilt from hooks here; the message says why."""


class Layout(NamedTuple):
    """How a call's rows map to the samples of a batch of B: `blocks` leading blocks of B rows ([blocks*B, ...],
    sample = row % B; in a time-major SNN a block is a timestep). `split`: the tensors are [blocks, B, ...]."""

    blocks: int
    split: bool = False

    def rows(self, z: Tensor) -> Tensor:
        return z.flatten(0, 1) if self.split else z


def feature_layouts(x: Tensor, y: Tensor, B: int, nfeat: int, nfeat_out: int) -> list[Layout]:
    """Layouts of a call on trailing features (Linear, LayerNorm), most likely first: [B, ..., F] (a module
    called once per timestep), [T, B, ..., F], or the folded [T*B, ..., F]."""
    lead = tuple(x.shape[:x.dim() - nfeat])
    if not lead or tuple(y.shape[:y.dim() - nfeat_out]) != lead:
        return []
    options = []
    if lead[0] == B:
        options.append(Layout(1))
    if len(lead) >= 2 and lead[1] == B:
        options.append(Layout(lead[0], split=True))
    if lead[0] % B == 0 and lead[0] != B:
        options.append(Layout(lead[0] // B))
    return options


def channel_layouts(x: Tensor, y: Tensor, B: int, dims: tuple[int, ...], split: bool) -> list[Layout]:
    """Layout of a call with channels at dim 1 (conv, BatchNorm, GroupNorm): the folded [T*B, C, ...], or
    (`split`) [T, B, C, ...] for a wrapper that folds internally."""
    if x.dim() in dims and y.dim() == x.dim() and x.shape[0] == y.shape[0] and x.shape[0] % B == 0:
        return [Layout(x.shape[0] // B)]
    if split and x.dim() == max(dims) + 1 and x.shape[1] == B and y.dim() == x.dim() and y.shape[:2] == x.shape[:2]:
        return [Layout(x.shape[0], split=True)]
    return []


def used_blocks(g: Tensor, blocks: int, B: int, start: int = 0, stop: int | None = None) -> int:
    """Leading row blocks up to the last one whose output gradient (samples start..stop-1) is not all zero:
    for horizon t the rows of later timesteps carry exactly zero in a causal SNN, and their work is skipped."""
    v = g.reshape(blocks, B, -1)[:, start:stop]
    if v.device.type != "cpu":  # one reduction and one synchronisation
        nonzero = torch.nonzero(v.reshape(blocks, -1).ne(0).any(1)).flatten().tolist()
        return nonzero[-1] + 1 if nonzero else 0
    for j in range(blocks - 1, -1, -1):  # back from the last block: reads only the zero tail
        if bool(v[j].any()):
            return j + 1
    return 0


def sample_rows(z: Tensor, blocks: int, B: int, start: int, stop: int, nfeat: int, used: int | None = None) -> Tensor:
    """Folded [blocks*B, ..., *feat] -> rows of samples start..stop-1 in the first `used` blocks [b, rows, *feat]."""
    feat = z.shape[z.dim() - nfeat:]
    return z.reshape(blocks, B, -1, *feat)[:used, start:stop].transpose(0, 1).reshape(stop - start, -1, *feat)


class Record(NamedTuple):
    """A module call as its forward hook saw it; the versions reveal later in-place changes."""

    input: Any
    output: Any
    input_version: int | None
    output_version: int | None


@dataclass
class Call:
    """A recorded call read in a layout: input rows x [blocks*B, ...] and the output the tensor hooks watch."""

    x: Tensor
    out: Tensor
    layout: Layout
    options: list[Layout]
    rows: int  # rows per sample, all blocks


@dataclass
class Budget:
    """Bytes left for horizon-independent tensors kept across the T backward passes of a batch."""

    left: int

    def take(self, nbytes: int) -> bool:
        ok = nbytes <= self.left
        self.left -= nbytes if ok else 0
        return ok


class Site:
    """A supported module with trainable parameters (`params`: attribute -> parameter index) and its calls
    during one forward pass of a batch of `batch` samples. Subclasses give the layouts and the rule:
    `layouts`, `rows_per_sample`, `plan` (then `claim`: Gram caches first, then `settle`) and `per_sample`."""

    width = 0  # input features per row: Gram caches are handed out widest first

    def __init__(self, name: str, module: nn.Module, params: dict[str, int]):
        self.name, self.module, self.params = name, module, params
        self.label = f"{name} ({type(module).__name__})"
        self.dtype = getattr(module, next(iter(params))).dtype  # under autocast: compute in the parameters' precision
        self.records: list[Record] = []
        self.preferred: dict[int, Layout] = {}  # call index -> the layout the safety net confirmed
        self.clear()

    def clear(self) -> None:
        self.calls: list[Call] = []
        self.cache: dict[Any, Any] = {}
        self.check_sums: dict[str, Tensor] = {}
        self.chunks: list[tuple[int, int]] = []
        self.cached = False  # horizon-independent tensors kept across the T horizons

    def read_calls(self, B: int) -> None:
        """The recorded calls as `Call`s; raises HooksDoNotApply when one has no known layout."""
        self.clear()
        self.batch = B
        for i, (x, y, x_version, y_version) in enumerate(self.records):
            if not isinstance(x, Tensor) or not isinstance(y, Tensor):
                raise HooksDoNotApply(f"{self.label}: call without a tensor input/output")
            options = self.layouts(x, y, B)
            if not options:
                raise HooksDoNotApply(f"{self.label} was called with input shape {tuple(x.shape)}, which is not a "
                                      f"known per-sample layout for batch size {B}")
            if x._version != x_version or y._version != y_version:
                raise HooksDoNotApply(f"{self.label}: its input or output was modified in place after the call")
            layout = self.preferred[i] if self.preferred.get(i) in options else options[0]
            x = layout.rows(x)
            self.calls.append(Call(x, y, layout, options, self.rows_per_sample(x, layout.rows(y), layout)))

    def rows_per_sample(self, x: Tensor, y: Tensor, layout: Layout) -> int:
        return layout.blocks  # the norm rule only needs the blocks

    def plan(self, T: int, elem: int) -> None:
        pass

    def claim(self, budget: Budget, rule: str | None) -> None:
        pass

    def set_chunks(self, bytes_per_sample: int, chunk_bytes: int) -> None:
        """Slices of samples whose temporaries stay under chunk_bytes."""
        b = max(1, min(self.batch, chunk_bytes // max(bytes_per_sample, 1)))
        self.chunks = [(s, min(self.batch, s + b)) for s in range(0, self.batch, b)]

    def per_sample(self, grads: list[Tensor | None], chunk: int, coef: Tensor | None) -> dict[str, Tensor]:
        """Squared gradient norms {attribute: [b] float64} of the samples of slice `chunk`, from each call's
        output gradient (None: the call does not reach the loss). With `coef` [b] (a checked batch) it also
        adds sum_n coef_n grad_n to `check_sums`."""
        raise NotImplementedError

    def finish_check(self) -> None:
        pass

    def zeros(self, b: int) -> dict[str, Tensor]:
        return {a: torch.zeros(b, dtype=torch.float64, device=getattr(self.module, a).device) for a in self.params}

    def norms(self, attr: str, grad: Tensor, coef: Tensor | None) -> Tensor:
        """Per-sample gradients [b, ...] of one parameter -> squared norms [b]; feeds the safety net's sums."""
        grad = grad.reshape(grad.shape[0], -1)
        if coef is not None:
            self.add_check(attr, (grad * coef[:, None]).sum(0))
        return grad.double().pow(2).sum(1)

    def add_check(self, attr: str, total: Tensor) -> None:
        total = total.reshape(getattr(self.module, attr).shape)
        self.check_sums[attr] = total + self.check_sums[attr] if attr in self.check_sums else total


class MatrixSite(Site):
    """The matrix rule, per sample grad_W = G U^T with output gradients G [b, O, rows] and inputs U [b, K, rows].
    Subclasses give `inputs` and `grads` of a call for samples start..stop-1 in its first `used` blocks."""

    def __init__(self, name: str, module: nn.Module, params: dict[str, int]):
        super().__init__(name, module, params)
        self.out_features = module.weight.shape[0]
        self.width = module.weight[0].numel()  # per convolution group
        self.groups = getattr(module, "groups", 1)

    def plan(self, T: int, elem: int) -> None:
        O, K, M = self.out_features, self.width * self.groups, sum(c.rows for c in self.calls)
        # multiply-adds for all T horizons (upper bounds: trailing zero blocks are skipped)
        self.cost_materialise = T * M * O * K
        self.cost_gram_cached = M * M * (K + T * O)
        self.cost_gram = T * M * M * (K + O)
        self.gram_bytes = self.batch * M * M * elem  # the input Gram matrices
        self.input_bytes = self.batch * K * M * elem  # the im2col inputs
        self.gram = self.cached = False
        self.check_grads: dict[int, Tensor] = {}

    def prefers_gram(self, rule: str | None) -> bool:
        if self.groups != 1:
            return False
        return rule == "gram" if rule else self.cost_gram_cached < self.cost_materialise

    def claim(self, budget, rule):
        if self.prefers_gram(rule) and budget.take(self.gram_bytes):  # saves the most work per byte
            self.gram = self.cached = True

    def settle(self, budget: Budget, rule: str | None, elem: int, chunk_bytes: int) -> None:
        if not self.gram and self.prefers_gram(rule):  # no room for its cache: Gram only if it still wins
            self.gram = rule == "gram" or self.cost_gram < self.cost_materialise
        if not self.gram:
            self.cached = budget.take(self.input_bytes)
        O, K = self.out_features, self.width * self.groups
        M, widest = sum(c.rows for c in self.calls), max((c.rows for c in self.calls), default=1)
        self.set_chunks((max(K, O) * widest + (2 * M * M if self.gram else O * K)) * elem, chunk_bytes)

    def per_sample(self, grads, chunk, coef):
        start, stop = self.chunks[chunk]
        concat = self.gram and len(self.calls) > 1  # Gram rows of several calls are concatenated: all blocks
        used = [0 if g is None else c.layout.blocks if concat else
                used_blocks(c.layout.rows(g), c.layout.blocks, self.batch, start, stop)
                for c, g in zip(self.calls, grads)]
        G = [self.grads(c, g, start, stop, u) if u else None for c, g, u in zip(self.calls, grads, used)]
        if all(g is None for g in G):  # no call of this module reaches this horizon's loss
            return self.zeros(stop - start)
        out = {}
        if "bias" in self.params:
            out["bias"] = self.norms("bias", sum(g.sum(2) for g in G if g is not None), coef)
        if "weight" in self.params:
            rule = self._gram_norms if self.gram else self._materialised_norms
            out["weight"] = rule(G, used, chunk, coef)
        return out

    def _all_inputs(self, chunk: int, used: int | None = None) -> Tensor:
        start, stop = self.chunks[chunk]
        if len(self.calls) == 1:
            return self.inputs(self.calls[0], start, stop, used)
        return torch.cat([self.inputs(c, start, stop) for c in self.calls], 2)

    def _gram_norms(self, G, used, chunk, coef) -> Tensor:
        if len(self.calls) > 1:
            ref = next(g for g in G if g is not None)
            grads = torch.cat([g if g is not None else ref.new_zeros(ref.shape[0], self.out_features, c.rows)
                               for c, g in zip(self.calls, G)], 2)
        else:
            grads = G[0]  # one call: only the rows of the used blocks
        m = grads.shape[2]
        input_gram = self.cache.get(chunk)
        if input_gram is None:
            U = self._all_inputs(chunk, None if self.cached else used[0])
            input_gram = torch.bmm(U.transpose(1, 2), U)
            if self.cached:
                self.cache[chunk] = input_gram
        if coef is not None:  # the sums need G U^T: gather coef-weighted G over the horizons, multiply once
            full = F.pad(grads * coef[:, None, None], (0, sum(c.rows for c in self.calls) - m))
            self.check_grads[chunk] = full + self.check_grads[chunk] if chunk in self.check_grads else full
        return (input_gram[:, :m, :m] * torch.bmm(grads.transpose(1, 2), grads)).sum((1, 2)).double()

    def finish_check(self):
        for chunk, grads in self.check_grads.items():
            self.add_check("weight", torch.einsum("bom,bkm->ok", grads, self._all_inputs(chunk)))
        self.check_grads = {}

    def _materialised_norms(self, G, used, chunk, coef) -> Tensor:
        start, stop = self.chunks[chunk]
        if self.cached:
            U_all = self.cache.get(chunk)
            if U_all is None:
                U_all = self.cache[chunk] = [self.inputs(c, start, stop) for c in self.calls]
        else:  # only the row blocks this horizon uses
            U_all = [self.inputs(c, start, stop, u) if u else None for c, u in zip(self.calls, used)]
        b, acc = stop - start, None
        for U, g in zip(U_all, G):
            if g is None:
                continue
            U = U[:, :, :g.shape[-1]]
            if self.groups > 1:
                U = U.reshape(b * self.groups, self.width, U.shape[-1])
                g = g.reshape(b * self.groups, self.out_features // self.groups, g.shape[-1])
            part = torch.bmm(g, U.transpose(1, 2))
            acc = part if acc is None else acc.add_(part)
        return self.norms("weight", acc.reshape(b, -1), coef)


class LinearSite(MatrixSite):
    def layouts(self, x, y, B):
        return feature_layouts(x, y, B, 1, 1)

    def rows_per_sample(self, x, y, layout):
        return x.numel() // (self.batch * max(x.shape[-1], 1))

    def inputs(self, c, start, stop, used=None):
        return sample_rows(c.x, c.layout.blocks, self.batch, start, stop, 1, used).to(self.dtype).transpose(1, 2)

    def grads(self, c, g, start, stop, used):
        g = sample_rows(c.layout.rows(g), c.layout.blocks, self.batch, start, stop, 1, used)
        return g.to(self.dtype).transpose(1, 2)


class ConvSite(MatrixSite):
    def layouts(self, x, y, B):
        return channel_layouts(x, y, B, (3,) if isinstance(self.module, nn.Conv1d) else (4,), split=True)

    def rows_per_sample(self, x, y, layout):
        return layout.blocks * math.prod(y.shape[2:])

    def inputs(self, c, start, stop, used=None):
        """Strided im2col (an `as_strided` view: on CPU much faster than F.unfold) of samples start..stop-1 in
        the first `used` blocks: [b, C*kh*kw, used*Ho*Wo], rows ordered (block, position)."""
        m, x, k, b = self.module, c.x, c.layout.blocks, stop - start
        used = k if used is None else used
        xs = x.reshape(k, self.batch, *x.shape[1:])[:used, start:stop].transpose(0, 1).reshape(b * used, *x.shape[1:])
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
        if Ho * Wo * k != c.rows:
            raise HooksDoNotApply(f"{self.label}: output size does not match the convolution geometry")
        xs = xs.view(b, used, C, Hp, Wp)
        st = xs.stride()
        v = xs.as_strided((b, C, kh, kw, used, Ho, Wo),
                          (st[0], st[2], st[3] * dh, st[4] * dw, st[1], st[3] * sh, st[4] * sw), xs.storage_offset())
        return v.reshape(b, C * kh * kw, used * Ho * Wo).to(self.dtype)

    def grads(self, c, g, start, stop, used):
        g = c.layout.rows(g)
        g = g.reshape(c.layout.blocks, self.batch, g.shape[1], -1)[:used, start:stop]
        return g.permute(1, 2, 0, 3).reshape(stop - start, g.shape[2], -1).to(self.dtype)


class NormSite(Site):
    """The norm rule. Subclasses give `parts`: one call's per-sample (gamma, beta) gradients."""

    input_bytes = 0  # horizon-independent bytes worth caching (normalised inputs)

    def settle(self, budget, rule, elem, chunk_bytes):
        self.cached = budget.take(self.input_bytes)
        self.set_chunks((3 * sum(c.x.numel() for c in self.calls) // self.batch + 1) * elem, chunk_bytes)

    def per_sample(self, grads, chunk, coef):
        start, stop = self.chunks[chunk]
        total: dict[str, Tensor] = {}
        for i, (c, g) in enumerate(zip(self.calls, grads)):
            used = 0 if g is None else used_blocks(c.layout.rows(g), c.layout.blocks, self.batch, start, stop)
            if used:
                for attr, part in zip(("weight", "bias"), self.parts(c, c.layout.rows(g), (chunk, i), used)):
                    if part is not None:
                        total[attr] = part + total[attr] if attr in total else part
        return {**self.zeros(stop - start), **{a: self.norms(a, v, coef) for a, v in total.items()}}


class LayerNormSite(NormSite):
    def layouts(self, x, y, B):
        n = len(self.module.normalized_shape)
        return feature_layouts(x, y, B, n, n)

    def parts(self, c, g, key, used):
        (start, stop), m = self.chunks[key[0]], self.module
        n = len(m.normalized_shape)
        rows = [sample_rows(z, c.layout.blocks, self.batch, start, stop, n, used).to(self.dtype) for z in (g, c.x)]
        weight = None  # one row per sample and block: recomputed per horizon, not cached
        if "weight" in self.params:
            weight = (rows[0] * F.layer_norm(rows[1], m.normalized_shape, None, None, m.eps)).sum(1)
        return weight, rows[0].sum(1) if "bias" in self.params else None


class ChannelNormSite(NormSite):
    """BatchNorm in eval mode with running statistics, and GroupNorm (statistics per row and group)."""

    def layouts(self, x, y, B):
        m = self.module
        if isinstance(m, nn.GroupNorm):
            return channel_layouts(x, y, B, (2, 3, 4, 5), split=False)
        dims = (2, 3) if isinstance(m, nn.BatchNorm1d) else (4,) if isinstance(m, nn.BatchNorm2d) else (5,)
        return channel_layouts(x, y, B, dims, split=True)

    def plan(self, T, elem):
        self.input_bytes = sum(c.x.numel() * elem for c in self.calls)

    def normalised(self, c: Call, key: Any, used: int) -> Tensor:
        """Normalised input [used, b, C, S] of a slice of samples (horizon-independent: cached if planned)."""
        hit = self.cache.get(key)
        if hit is not None:
            return hit[:used]
        (start, stop), m, k = self.chunks[key[0]], self.module, c.layout.blocks
        n = k if self.cached else used
        x = c.x.reshape(k, self.batch, *c.x.shape[1:])[:n, start:stop].to(self.dtype)  # [n, b, C, ...]
        if isinstance(m, nn.GroupNorm):
            xh = F.group_norm(x.flatten(0, 1), m.num_groups, None, None, m.eps)
            xh = xh.reshape(n, stop - start, x.shape[2], -1)
        else:
            x = x.reshape(n, stop - start, x.shape[2], -1)
            xh = (x - m.running_mean.to(x.dtype).view(1, 1, -1, 1)) * torch.rsqrt(
                m.running_var.to(x.dtype) + m.eps).view(1, 1, -1, 1)
        if self.cached:
            self.cache[key] = xh
        return xh[:used]

    def parts(self, c, g, key, used):
        (start, stop), C = self.chunks[key[0]], g.shape[1]
        G = g.reshape(c.layout.blocks, self.batch, C, -1)[:used, start:stop].to(self.dtype)  # [used, b, C, S]
        weight = None
        if "weight" in self.params:
            xh = self.normalised(c, key, used)
            # per (row, channel) dot products over positions as one batched matmul (no product temporary)
            dots = torch.bmm(G.reshape(-1, 1, G.shape[-1]), xh.reshape(-1, xh.shape[-1], 1))
            weight = dots.view(used, -1, C).sum(0)
        return weight, G.sum(-1).sum(0) if "bias" in self.params else None


def make_site(name: str, module: nn.Module, params: dict[str, int]) -> Site | None:
    """The site of a module type with a per-sample rule, or None."""
    if isinstance(module, nn.Linear):
        return LinearSite(name, module, params)
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return ConvSite(name, module, params)
    if isinstance(module, nn.LayerNorm):
        return LayerNormSite(name, module, params)
    if isinstance(module, nn.GroupNorm) or (isinstance(module, nn.modules.batchnorm._BatchNorm)
                                            and module.running_mean is not None and module.running_var is not None):
        return ChannelNormSite(name, module, params)
    return None
