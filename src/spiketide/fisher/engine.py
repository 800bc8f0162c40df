"""The hook engine: per-sample squared gradient norms for all T horizons of a batch from one forward pass.

Forward hooks record every call of a module with a per-sample rule (`rules`). Per horizon t, one backward
pass asks autograd only for the gradients of the lowest recorded outputs; every other recorded output's
gradient arrives at a tensor hook on the way and becomes per-sample squared norms at once (so they are never
all alive together, and no weight gradients are computed). Convolutions of a time-major folded batch run
their backward only on the rows of timesteps up to the horizon (`_TailSkipConv`).

Safety net: on the first batch (and whenever the call structure changes) each horizon's loss is weighted per
sample by random w_tn; the per-sample gradients, divided by w_tn and combined with random a_tn over ALL
horizons and samples, must equal autograd's gradient of sum_tn a_tn log f(y_n | x_n, <=t). That catches missed
modules, weights also used outside their module (even in ways that cancel at horizon T) and wrong row-to-sample
layouts. If it fails, or a trainable parameter has no rule, the exact per-sample loop runs, with one warning.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from spiketide.evaluation import logits
from spiketide.fisher.measurement import (Labels, Measured, check_stateless, draw_uniforms, first_forward,
                                          horizon_norms, measurement, sample_dim, spans)
from spiketide.fisher.profile import FisherProfile, summarize
from spiketide.fisher.rules import Budget, HooksDoNotApply, Record, Site, make_site, used_blocks
from spiketide.losses import horizon_logits
from spiketide.progress import bar

__all__ = ["per_sample_fisher", "exact_per_sample", "HookEngine", "CHUNK_BYTES", "CACHE_BYTES"]

CHUNK_BYTES = 256 * 2**20  # largest temporary per module and slice of samples
CACHE_BYTES = 2**30  # horizon-independent tensors (im2col inputs, input Grams) kept across the T backwards (CPU)
CHECK_SEED = 0x5EED  # the safety net's random weights come from a private generator: the global RNG is untouched


def cache_budget(device: torch.device) -> int:
    """Bytes of horizon-independent tensors kept across the T backward passes of a batch."""
    if device.type != "cuda":
        return CACHE_BYTES
    try:  # a quarter of the free GPU memory, at most 16 GB
        return int(min(16 * 2**30, max(CACHE_BYTES, torch.cuda.mem_get_info(device)[0] // 4)))
    except Exception:  # pragma: no cover - the driver query failed
        return CACHE_BYTES


def nonzero_rows(g: Tensor, blocks: int, B: int) -> int:
    """Rows 0 .. r-1 of a time-major [blocks*B, ...] gradient hold all its non-zero row blocks."""
    return used_blocks(g, blocks, B) * B


class _TailSkipConv(torch.autograd.Function):
    """Autograd node of a convolution on a time-major folded batch [k*B, ...] during the measurement.

    Its backward is the convolution's own (aten.convolution_backward with the module's arguments), run only
    on the leading rows whose output gradient is not all zero: for horizon t, the rows of timesteps after t
    carry zero gradient, and a convolution's rows are independent, so their input gradient is exactly zero.
    For a causal SNN this saves about (T-1)/(2T) of the convolutions' backward work over the T horizons.
    Weight gradients only when `engine.param_grads` is set (the safety net's reference pass): the horizon
    passes ask for output gradients alone, which a Python autograd node cannot see by itself."""

    @staticmethod
    def forward(ctx, x, weight, bias, y, geometry, k, B, engine):
        ctx.save_for_backward(x, weight)
        ctx.geometry, ctx.k, ctx.B, ctx.has_bias, ctx.engine = geometry, k, B, bias is not None, engine
        return y.clone()  # a fresh tensor (not a view): later in-place use stays legal and is detected

    @staticmethod
    def backward(ctx, go):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        need_w, need_b = need_w and ctx.engine.param_grads, need_b and ctx.engine.param_grads
        rows = nonzero_rows(go, ctx.k, ctx.B)
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


def _tail_skip(m: nn.Module, x: Any, y: Any, B: int, engine: HookEngine) -> Tensor | None:
    """`y` rebuilt on a _TailSkipConv node when the call is a plain zero-padded convolution of a time-major
    folded batch with more than one row block; None otherwise."""
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
    return _TailSkipConv.apply(x, w, b, y.detach(), geometry, x.shape[0] // B, B, engine)


class BatchResult(NamedTuple):
    """Per-sample squared norms [G, B, T] (None: the hooks do not apply, see `reason`) and the detached output."""

    norms: Tensor | None
    reason: str | None
    out: Tensor


@dataclass
class _Pass:
    """One horizon's backward pass, as the tensor hooks see it."""

    horizon: int
    norms: Tensor  # [G, B, T] per-sample squared norms, filled in place
    coef: Tensor | None  # [B] safety-net weights of the per-sample gradients, on a checked batch
    pending: dict[int, list[Tensor | None]] = field(default_factory=dict)  # site -> grads of a module called twice
    error: Exception | None = None


class HookEngine:
    """Per-sample squared gradient norms for all T horizons of a batch from one forward pass.

    rule: "gram" or "materialize" for every linear/conv module (None: the cheaper one); tail_skip: convolutions'
    backward only up to the horizon; chunk_bytes / cache_bytes: largest temporary per slice of samples and
    the horizon-independent cache (None: `cache_budget`). The last four are for tests and benchmarks.
    """

    def __init__(self, model: nn.Module, measured: Measured, *, rule: str | None = None, tail_skip: bool = True,
                 chunk_bytes: int = CHUNK_BYTES, cache_bytes: int | None = None):
        self.model, self.params, self.groups = model, measured.params, measured.groups
        self.rule, self.tail_skip, self.chunk_bytes = rule, tail_skip, chunk_bytes
        self.cache_bytes = cache_budget(measured.device) if cache_bytes is None else cache_bytes
        self.sites: list[Site] = []
        self.problems: list[str] = []  # why the hooks cannot apply to this model at all
        index = {id(p): i for i, p in enumerate(self.params)}
        owner: dict[int, str] = {}
        for name, mod in model.named_modules():
            direct = [(a, p) for a, p in mod.named_parameters(recurse=False) if p.requires_grad]
            if not direct:
                continue
            site = make_site(name or "<root>", mod, {a: index[id(p)] for a, p in direct})
            label = f"{name or '<root>'} ({type(mod).__name__})"
            if site is None or any(a not in ("weight", "bias") for a, _ in direct):
                self.problems.append(f"{label} has trainable parameters [{', '.join(a for a, _ in direct)}]: "
                                     "no per-sample gradient rule for this module type")
                continue
            for i in site.params.values():
                if i in owner:
                    self.problems.append(f"a parameter of {label} is shared with {owner[i]}")
                owner[i] = label
            self.sites.append(site)
        self.capturing = self.param_grads = False
        self.B = 0
        self.handles: list[Any] = []
        self.checked: Any = None  # the call structure the safety net last confirmed
        self.rng = torch.Generator().manual_seed(CHECK_SEED)
        self.current: _Pass | None = None

    def __enter__(self) -> HookEngine:
        self.handles = [site.module.register_forward_hook(self._forward_hook(site), with_kwargs=True)
                        for site in self.sites]
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []
        for site in self.sites:
            site.records = []
            site.clear()

    def _forward_hook(self, site: Site):
        def hook(mod, args, kwargs, out):
            if not self.capturing:
                return None
            x = args[0] if args else kwargs.get("input", next(iter(kwargs.values()), None))
            if self.tail_skip and isinstance(mod, (nn.Conv1d, nn.Conv2d)):
                rebuilt = _tail_skip(mod, x, out, self.B, self)
                out = out if rebuilt is None else rebuilt
            site.records.append(Record(x, out, getattr(x, "_version", None), getattr(out, "_version", None)))
            return out
        return hook

    def run(self, xb: Tensor, B: int, labels: Labels, C: int | None) -> BatchResult:
        """One forward pass of batch `xb` (B samples), then the T horizons' per-sample squared norms."""
        for site in self.sites:
            site.records = []
        self.B, self.capturing = B, True
        try:
            out = logits(self.model, xb, C)
        finally:
            self.capturing = False
        h = horizon_logits(out)
        lp = torch.log_softmax(h, -1).gather(2, labels.at(h.detach()).unsqueeze(2)).squeeze(2)  # [T, B]
        structure = (B, tuple(tuple(tuple(r.input.shape) if isinstance(r.input, Tensor) else None for r in s.records)
                              for s in self.sites))
        check = structure != self.checked
        try:
            for attempt in range(2):
                try:
                    norms = self._measure(out, lp, B, check)
                    if check:
                        self.checked = structure
                        for site in self.sites:
                            site.preferred = {i: c.layout for i, c in enumerate(site.calls)}
                    return BatchResult(norms, None, out.detach())
                except HooksDoNotApply as exc:
                    reason = str(exc)
                except Exception as exc:  # e.g. mixed dtypes or out of memory: the per-sample loop still works
                    return BatchResult(None, f"per-sample gradients from hooks failed ({type(exc).__name__}: {exc})",
                                       out.detach())
                # retry once with the other reading of ambiguous layouts ([T, B, F] with T == B)
                ambiguous = [(site, i, c) for site in self.sites for i, c in enumerate(site.calls)
                             if len(c.options) > 1]
                if attempt or not ambiguous:
                    break
                for site, i, c in ambiguous:
                    site.preferred[i] = c.options[(c.options.index(c.layout) + 1) % len(c.options)]
            return BatchResult(None, reason, out.detach())
        finally:
            for site in self.sites:
                site.records = []
                site.clear()

    def _plan(self, B: int, T: int, elem: int) -> None:
        for site in self.sites:
            site.read_calls(B)
            site.plan(T, elem)
        budget = Budget(self.cache_bytes)
        for site in sorted(self.sites, key=lambda s: -s.width):  # Gram caches first, widest inputs first
            site.claim(budget, self.rule)
        for site in self.sites:
            site.settle(budget, self.rule, elem, self.chunk_bytes)

    def _measure(self, out: Tensor, lp: Tensor, B: int, check: bool) -> Tensor:
        T, dev = lp.shape[0], out.device
        self._plan(B, T, out.element_size())
        targets = [(si, ci, c.out) for si, site in enumerate(self.sites) for ci, c in enumerate(site.calls)
                   if c.out.requires_grad]
        low = set(_lowest(out.grad_fn, [y.grad_fn for _, _, y in targets]))
        asked = [targets[k] for k in sorted(low)]
        norms = torch.zeros(len(self.groups.names), B, T, dtype=torch.float64, device=dev)
        if check:  # per-sample loss weights w and combination weights a, both [T, B] in [0.5, 1.5)
            w, a = torch.rand(2, T, B, generator=self.rng, dtype=torch.float64).add_(0.5).to(dev, lp.dtype)
        handles = [y.register_hook(self._tensor_hook(si, ci)) for k, (si, ci, y) in enumerate(targets) if k not in low]
        try:
            for t in range(T):
                loss = (lp[t] * w[t]).sum() if check else lp[t].sum()
                self.current = _Pass(t, norms, (a[t] / w[t]) if check else None)
                grads = torch.autograd.grad(loss, [y for _, _, y in asked], retain_graph=t < T - 1 or check,
                                            allow_unused=True) if asked else []
                state, self.current = self.current, None
                if state.error is not None:
                    raise state.error
                with torch.no_grad():
                    for (si, ci, _), g in zip(asked, grads):
                        self._deliver(state, si, ci, g)
                    del grads
                    for si, gs in state.pending.items():
                        self._process(state, si, gs)
        finally:
            self.current = None
            for h in handles:
                h.remove()
        if check:
            norms /= w.t().double().pow(2)  # the loss was weighted by w_tn: undo it in the squared norms
            self._safety_net(lp, a)
        return norms

    def _tensor_hook(self, si: int, ci: int):
        def hook(g: Tensor) -> None:
            state = self.current
            if state is not None and state.error is None:
                try:
                    with torch.no_grad():
                        self._deliver(state, si, ci, g)
                except Exception as exc:  # re-raised after the backward pass
                    state.error = exc
        return hook

    def _deliver(self, state: _Pass, si: int, ci: int, g: Tensor | None) -> None:
        if g is None:
            return
        n = len(self.sites[si].calls)
        if n == 1:
            self._process(state, si, [g])
        else:  # a module called several times: a sample's gradient sums all calls before it is squared
            state.pending.setdefault(si, [None] * n)[ci] = g

    def _process(self, state: _Pass, si: int, grads: list[Tensor | None]) -> None:
        site = self.sites[si]
        for chunk, (s, e) in enumerate(site.chunks):
            coef = None if state.coef is None else state.coef[s:e]
            for attr, v in site.per_sample(grads, chunk, coef).items():
                state.norms[self.groups.index[site.params[attr]], s:e, state.horizon] += v

    def _safety_net(self, lp: Tensor, a: Tensor) -> None:
        """Compare sum_tn a_tn grad_tn (from the hooks) with autograd's gradient of sum_tn a_tn log f."""
        with torch.no_grad():
            for site in self.sites:
                site.finish_check()
        self.param_grads = True
        try:  # retained: a failed check may be retried on the same graph with another reading of layouts
            ref = torch.autograd.grad((lp * a).sum(), self.params, retain_graph=True, allow_unused=True)
        finally:
            self.param_grads = False
        # float rounding only; a wrong layout or a missed use is off by O(0.1) or more (random weights)
        tol = 1e-8 if lp.dtype == torch.float64 else (1e-2 if lp.device.type == "cuda" else 2e-3)
        sizes = [0.0 if g is None else float(g.double().norm()) for g in ref]
        total = math.sqrt(sum(n * n for n in sizes))
        for site in self.sites:
            for attr, i in site.params.items():
                want = torch.zeros_like(self.params[i]) if ref[i] is None else ref[i]
                mine = site.check_sums.get(attr, torch.zeros_like(want))
                err = float((mine.double() - want.double()).norm())
                if err > tol * max(sizes[i], 1e-4 * total) + 1e-300:
                    raise HooksDoNotApply(
                        f"per-sample gradients of {site.label} do not add up to the autograd gradient (relative error "
                        f"{err / max(sizes[i], 1e-300):.2e}); the module may share weights in an unusual way, its "
                        "weight may be used outside it, or it may use an unknown batch layout")


def _lowest(root: Any, nodes: list[Any]) -> list[int]:
    """Indices of the target nodes below which no other target lies in the graph under `root`. Asking autograd
    for just these gradients makes it compute every target's gradient on the way (each arrives at its tensor
    hook), without holding them all at once."""
    wanted = set(n for n in nodes if n is not None)
    below: dict[Any, bool] = {}
    stack = [(root, False)] if root is not None else []
    seen = set()
    while stack:
        node, done = stack.pop()
        if done:
            below[node] = any(ch is not None and (ch in wanted or below.get(ch, False))
                              for ch, _ in node.next_functions)
            continue
        if node in seen:
            continue
        seen.add(node)
        stack.append((node, True))
        stack.extend((ch, False) for ch, _ in node.next_functions if ch is not None and ch not in seen)
    return [i for i, n in enumerate(nodes) if not below.get(n, False)]


def exact_per_sample(model: nn.Module, xb: Tensor, labels: Labels, m: Measured, C: int | None = None) -> Tensor:
    """One forward per sample, one backward per horizon -> per-sample squared norms [G, B, T] (float64)."""
    dim = sample_dim(xb)
    return torch.stack([horizon_norms(model, xb.narrow(dim, n, 1), labels.sample(n), m, C)
                        for n in range(xb.shape[dim])], 1)


def per_sample_fisher(model: nn.Module, inputs: Tensor, targets: Tensor, *, estimator: str = "empirical",
                      per_layer: bool = False, batch_size: int = 64, seed: int = 0,
                      device: torch.device | str | None = None, progress: bool = False, exact: bool = False,
                      rule: str | None = None, tail_skip: bool = True, chunk_bytes: int = CHUNK_BYTES,
                      cache_bytes: int | None = None) -> FisherProfile:
    """Eq. 6 ("empirical") or Eq. 5 ("true") with per-sample gradients from hooks, for arguments that
    `temporal_fisher` has checked. `exact=True` runs the exact per-sample loop on every batch (no warning);
    `rule`, `tail_skip`, `chunk_bytes` and `cache_bytes` go to `HookEngine` (tests and benchmarks)."""
    N = inputs.shape[sample_dim(inputs)]
    with measurement(model, device) as m:
        engine = HookEngine(model, m, rule=rule, tail_skip=tail_skip, chunk_bytes=chunk_bytes, cache_bytes=cache_bytes)
        use_hooks = not exact

        def fall_back(reason: str) -> None:  # once: later batches skip the hooks
            nonlocal use_hooks
            use_hooks = False
            warnings.warn(f"spiketide.fisher: {reason}; using the exact per-sample loop (one forward per sample, "
                          "one backward per horizon), which is slower.", RuntimeWarning, stacklevel=4)

        if engine.problems and use_hooks:
            fall_back("; ".join(engine.problems[:3]))
        uniforms, C, results = None, None, []
        with engine, bar(len(spans(N, batch_size)), "temporal Fisher", enabled=progress) as pbar:
            for s, e in spans(N, batch_size):
                xb = m.batch(inputs, s, e)
                if s == 0:
                    ref = first_forward(model, xb, targets)
                    T, C = ref.shape[0], ref.shape[2]
                    if estimator == "true":
                        uniforms = draw_uniforms(T, N, seed)
                labels = Labels(targets[s:e].to(m.device), None if uniforms is None else uniforms[:, s:e])
                norms = out = None
                if use_hooks:
                    norms, reason, out = engine.run(xb, e - s, labels, C)
                    if norms is None:
                        fall_back(reason)
                if s == 0:
                    check_stateless(model, xb, ref, out)
                if norms is None:
                    norms = exact_per_sample(model, xb, labels, m, C)
                results.append(norms.cpu())
                pbar.update(1)
        return summarize(torch.cat(results, 1), m.groups.names, per_layer, estimator)
