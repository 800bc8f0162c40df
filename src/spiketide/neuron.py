"""Leaky integrate-and-fire neuron (Eq. 1) with the arctan surrogate gradient (Eq. 2).

The dynamics are small pure functions (`lif_step`, `lif_scan`); `LIF` is a thin,
stateless multi-step module around them. A compiled scan (`torch.compile`) is the
fast path; it gives the same spikes as the step loop and falls back to it cleanly.
"""

from __future__ import annotations

import math
import os
import warnings

import torch
from torch import nn

from spiketide.checks import check_tau  # re-exported: LIF(tau) checks it
from spiketide.errors import ConfigError

__all__ = ["ArcTanSpike", "spike", "lif_step", "lif_scan", "LIF", "check_tau", "default_fast", "unviewed"]


class ArcTanSpike(torch.autograd.Function):
    """Heaviside step forward; backward is d/dx [(1/pi) arctan(pi x) + 1/2] = 1 / (1 + (pi x)^2)."""

    generate_vmap_rule = True  # lets torch.func (vmap/grad) trace through the neuron

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return (x >= 0).to(x.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad_output / (1 + (math.pi * x) ** 2)


def spike(x: torch.Tensor) -> torch.Tensor:
    """Spike where the (threshold-shifted) membrane potential x >= 0, arctan surrogate backward."""
    return ArcTanSpike.apply(x)


def lif_step(
    x: torch.Tensor, u: torch.Tensor, tau: float, v_threshold: float, detach_reset: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of Eq. 1: U_t = (1 - 1/tau) U_{t-1} + X_t / tau, spike if U_t >= threshold, hard reset to 0.

    Returns (spike, membrane after reset).
    """
    u = u * (1.0 - 1.0 / tau) + x * (1.0 / tau)
    s = spike(u - v_threshold)
    # The authors detach the reset path: the gradient skips d(reset)/dU.
    r = s.detach() if detach_reset else s
    return s, u * (1.0 - r)


def lif_scan(x: torch.Tensor, tau: float, v_threshold: float = 1.0, detach_reset: bool = True) -> torch.Tensor:
    """Run Eq. 1 over the leading time axis of `x` [T, ...]; returns spikes [T, ...] (0./1.)."""
    u = torch.zeros_like(x[0])
    out = []
    for t in range(x.shape[0]):
        s, u = lif_step(x[t], u, tau, v_threshold, detach_reset)
        out.append(s)
    return torch.stack(out)


def default_fast() -> bool:
    """The default of `LIF(fast=None)`: the compiled scan, unless the environment sets SPIKETIDE_NO_COMPILE=1."""
    return os.environ.get("SPIKETIDE_NO_COMPILE", "") in ("", "0")


def _scan_forward(x: torch.Tensor, tau: float, v_threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 1 without autograd: spikes and h = U_t - threshold (pre-reset), all the backward needs."""
    u = torch.zeros_like(x[0])
    spikes, hs = [], []
    for t in range(x.shape[0]):
        u = u * (1.0 - 1.0 / tau) + x[t] * (1.0 / tau)  # same op order as lif_step: identical spikes
        h = u - v_threshold
        s = (h >= 0).to(x.dtype)
        spikes.append(s)
        hs.append(h)
        u = u * (1.0 - s)
    return torch.stack(spikes), torch.stack(hs)


def _scan_backward(grad_s: torch.Tensor, h: torch.Tensor, tau: float, v_threshold: float,
                   detach_reset: bool) -> torch.Tensor:
    """BPTT through Eq. 1 in reverse time (Eq. 2), arctan surrogate dS/dU = 1 / (1 + (pi h)^2)."""
    grad_v = torch.zeros_like(grad_s[0])  # dL/d(post-reset membrane) flowing back from step t+1
    grads = []
    for t in range(grad_s.shape[0] - 1, -1, -1):
        sg = 1.0 / (1.0 + (math.pi * h[t]) ** 2)
        grad_u = grad_s[t] * sg + grad_v * (h[t] < 0).to(grad_s.dtype)
        if not detach_reset:  # d[u (1 - s)]/du also carries -u * dS/dU
            grad_u = grad_u - grad_v * (h[t] + v_threshold) * sg
        grads.append(grad_u * (1.0 / tau))
        grad_v = grad_u * (1.0 - 1.0 / tau)
    grads.reverse()
    return torch.stack(grads)


_compiled: dict[str, object] = {}


def _compiled_fn(name: str):
    if name not in _compiled:
        # dynamic=True: one graph per T serves every layer shape and batch size (fewer recompiles).
        _compiled[name] = torch.compile(_scan_forward if name == "fwd" else _scan_backward, dynamic=True)
    return _compiled[name]


def unviewed(x: torch.Tensor) -> torch.Tensor:
    """x, contiguous, as a tensor that is not a view, sharing x's memory where it can: what a compiled fast path
    is handed, since Dynamo also guards on a view's base shape (a recompile per base shape otherwise)."""
    x = x.contiguous()
    return x.new_empty(0).set_(x.untyped_storage(), x.storage_offset(), x.shape, x.stride())


def _flat(x: torch.Tensor) -> torch.Tensor:
    """x as a contiguous [T, 1, N] tensor that is not a view. The size-1 dimension is specialised, so one graph
    per T remains; without it Inductor's CPU loop over [T, N] does not speed up with a second thread (measured:
    2 threads 64 -> 36 ms forward on [6, 128, 32, 28, 28], 1 thread unchanged; BENCHMARKS.md)."""
    return unviewed(x.reshape(x.shape[0], 1, -1))


class _FusedLIF(torch.autograd.Function):
    """The whole scan as one autograd node: a compiled forward loop and a compiled reverse-time loop."""

    @staticmethod
    def forward(ctx, x, tau, v_threshold, detach_reset):
        # detach: the compiled graph then does not depend on requires_grad (one graph per T, not two). The scan is
        # elementwise, so it runs on [T, 1, N] (`_flat`): with one dynamic size no layer's channel count can
        # coincide with T and force a recompile (dynamic shapes give equal sizes one symbol).
        s, h = _compiled_fn("fwd")(_flat(x.detach()), tau, v_threshold)
        ctx.save_for_backward(h)
        ctx.params, ctx.shape = (tau, v_threshold, detach_reset), x.shape
        return s.view(x.shape)

    @staticmethod
    def backward(ctx, grad_s):
        (h,) = ctx.saved_tensors
        grad = _compiled_fn("bwd")(_flat(grad_s), h, *ctx.params)
        return grad.view(ctx.shape), None, None, None


class LIF(nn.Module):
    """Multi-step LIF neuron (Eq. 1) with arctan surrogate (Eq. 2): currents [T, B, ...] -> spikes [T, B, ...].

    tau may be any non-zero float. For tau < 1 the leak factor (1 - 1/tau) is negative
    (tau = 0.75 gives -1/3, Fig. 4b): the membrane potential flips sign each step instead of
    decaying. For tau = 1 the neuron has no memory. No state survives a forward call.
    `fast=True` uses the compiled scan (identical spikes, gradients to float rounding);
    `fast=False` always runs the plain step loop; `fast=None` takes `default_fast()`. If
    compilation fails, this module warns once and runs the step loop from then on.
    """

    def __init__(self, tau: float = 2.0, v_threshold: float = 1.0, detach_reset: bool = True,
                 fast: bool | None = None):
        super().__init__()
        self.tau = check_tau(tau)
        if not math.isfinite(float(v_threshold)):
            raise ConfigError(f"LIF v_threshold must be finite, got {v_threshold}.")
        self.v_threshold = float(v_threshold)
        self.detach_reset = bool(detach_reset)
        self.fast = default_fast() if fast is None else bool(fast)
        self._compile_failed = False  # a fact about this machine, not neuron state: forward stays stateless

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2:
            raise ValueError(f"LIF expects input [T, B, ...], got shape {tuple(x.shape)}")
        dtype = x.dtype
        if dtype in (torch.float16, torch.bfloat16):
            x = x.float()  # integrate the membrane in float32; bf16 would lose sub-threshold increments
        if self.fast and not self._compile_failed and not torch.compiler.is_compiling():
            try:
                return _FusedLIF.apply(x, self.tau, self.v_threshold, self.detach_reset).to(dtype)
            except Exception as exc:  # no compiler or a backend failure: the plain loop is always correct
                self._compile_failed = True
                warnings.warn(
                    f"spiketide: compiled LIF scan unavailable ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); using the plain step loop. "
                    "Set SPIKETIDE_NO_COMPILE=1 or fast_lif=False to silence this.", RuntimeWarning, stacklevel=2)
        return lif_scan(x, self.tau, self.v_threshold, self.detach_reset).to(dtype)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, v_threshold={self.v_threshold}, detach_reset={self.detach_reset}, fast={self.fast}"
