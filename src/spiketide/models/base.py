"""Shared pieces of the built-in SNNs: input normalisation, direct or Poisson (rate) encoding, timestep folding."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
from torch import nn

from spiketide.config import ENCODINGS
from spiketide.errors import ConfigError
from spiketide.neuron import default_fast, unviewed

__all__ = ["fold", "scale_width", "conv_bn", "poisson_spikes", "AvgPool2d", "SpikingModel", "ENCODINGS", "register"]

# name -> constructor of every built-in model; `models.create` builds from it.
_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    """Decorator: add a model constructor to the registry under `name`."""

    def deco(fn):
        _REGISTRY[name] = fn
        return fn

    return deco


def poisson_spikes(p: torch.Tensor, generator: torch.Generator, shared: bool = False) -> torch.Tensor:
    """Rate coding: a Bernoulli spike with probability p (a pixel in [0, 1]) per element and timestep.

    p is [T, B, ...]. Forward gives exact 0/1 spikes; backward is straight-through, d spike / d p = 1 (the
    gradient of the spike probability), so attacks and training differentiate through the rate.
    `shared=True` draws one uniform pattern [T, ...] for every image of the batch, so what an image gets
    does not depend on which batch it is in. Uniforms are drawn on the generator's device, so a CPU
    generator gives the same spikes on any device.
    """
    shape = (p.shape[0], 1, *p.shape[2:]) if shared else p.shape
    u = torch.rand(shape, generator=generator, device=generator.device, dtype=p.dtype).to(p.device)
    return _RateSpike.apply(p, u)


class _RateSpike(torch.autograd.Function):
    """Exact 0/1 spikes forward (p + s - p would round), identity backward (straight-through)."""

    @staticmethod
    def forward(ctx, p: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return (u < p).to(p.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def _window_means(x: torch.Tensor) -> torch.Tensor:
    """Each 2x2 window's taps added in avg_pool2d's own order (row by row, left to right), then / 4: the CPU
    kernel's roundings exactly."""
    return (((x[:, :, 0::2, 0::2] + x[:, :, 0::2, 1::2]) + x[:, :, 1::2, 0::2]) + x[:, :, 1::2, 1::2]) / 4


def _window_spread(g: torch.Tensor) -> torch.Tensor:
    """avg_pool2d's backward where the 2x2 windows tile the input: each input gets its window's gradient / 4."""
    n, c, h, w = g.shape
    return (g / 4)[:, :, :, None, :, None].expand(n, c, h, 2, w, 2).reshape(n, c, 2 * h, 2 * w)


_compiled_pool: dict[str, Callable] = {}


def _pool_fn(name: str) -> Callable:
    if name not in _compiled_pool:
        _compiled_pool[name] = torch.compile(_window_means if name == "fwd" else _window_spread, dynamic=True)
    return _compiled_pool[name]


class _Pool2x2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return _pool_fn("fwd")(unviewed(x.detach()))

    @staticmethod
    def backward(ctx, g):
        return _pool_fn("bwd")(unviewed(g))


class AvgPool2d(nn.AvgPool2d):
    """`nn.AvgPool2d(2)` (the models' 2x2 average pool) that runs float inputs with even sides on the CPU through
    a compiled loop: the same numbers bit for bit, forward and backward, in a fraction of the CPU kernel's time
    (BENCHMARKS.md). Any other input, `fast=False`, or SPIKETIDE_NO_COMPILE=1 (`fast=None` follows
    `neuron.default_fast()`) uses `nn.AvgPool2d`; so does every input after a compilation failure (warned once)."""

    def __init__(self, ceil_mode: bool = False, fast: bool | None = None):
        super().__init__(2, ceil_mode=ceil_mode)
        self.fast = default_fast() if fast is None else bool(fast)
        self._compile_failed = False  # a fact about this machine, not state: forward stays stateless

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Even sides: every window is whole, so ceil_mode changes nothing and the windows tile the input.
        if (self.fast and not self._compile_failed and x.dim() == 4 and x.device.type == "cpu"
                and x.dtype in (torch.float32, torch.float64) and x.shape[2] % 2 == 0 and x.shape[3] % 2 == 0
                and not torch.compiler.is_compiling()):
            try:
                return _Pool2x2.apply(x)
            except Exception as exc:  # noqa: BLE001 - no compiler or a backend failure: nn.AvgPool2d is always right
                self._compile_failed = True
                warnings.warn(f"spiketide: compiled 2x2 average pool unavailable ({type(exc).__name__}); using "
                              "nn.AvgPool2d. Set SPIKETIDE_NO_COMPILE=1 to silence this.", RuntimeWarning,
                              stacklevel=2)
        return super().forward(x)


def scale_width(channels: int, width: float) -> int:
    """A hidden channel count / linear size times the width multiplier, rounded, at least 1."""
    return max(1, int(round(channels * width)))


def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """conv3x3 (padding 1, no bias) followed by BatchNorm2d."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout))


def fold(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Apply a stateless layer to [T, B, ...] by folding time into the batch ([T*B, ...])."""
    T, B = x.shape[:2]
    y = fn(x.flatten(0, 1))
    return y.view(T, B, *y.shape[1:])


class SpikingModel(nn.Module):
    """Base class: pixels in [0, 1] -> per-timestep logits [T, B, num_classes].

    Subclasses define `stem` (a stateless conv/BN module, the direct-encoding layer), `body`
    (a callable on [T, B, ...] spikes/currents) via `forward_features`, and list `block_names`:
    module-name prefixes that group parameters into blocks for per-block Fisher information.
    A static image [B, C, H, W] goes through the stem once and is repeated T times (direct
    encoding); a per-timestep input [T, B, C, H, W] goes through the stem at every step.
    `width` multiplies every hidden channel count / linear size (see `scale_width`); subclasses
    read it from `self.width`.

    `encoding = "poisson"` feeds the stem rate-coded spikes instead (`poisson_spikes` of the pixels, at
    every timestep; a per-timestep input gives each timestep's probabilities). Training passes
    `forward(x, generator=...)`: independent spikes for every image, fresh at every step. Without a
    generator, one uniform pattern [T, C, H, W] drawn from `encoding_seed` serves every image, so the model
    keeps no state and an image's output depends neither on the call nor on its batch (Fisher measurement,
    evaluation and attacks are deterministic).
    """

    block_names: Sequence[str] = ()
    encoding: str = "direct"
    encoding_seed: int = 0

    def __init__(self, *, num_classes: int, timesteps: int, in_channels: int, image_size: int,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None, width: float = 1.0):
        super().__init__()
        self.width = float(width)
        self.num_classes, self.timesteps = int(num_classes), int(timesteps)
        self.in_channels, self.image_size = int(in_channels), int(image_size)
        mean = [0.5] * in_channels if mean is None else list(mean)
        std = [0.5] * in_channels if std is None else list(std)
        if len(mean) != in_channels or len(std) != in_channels:
            raise ConfigError(f"mean/std need {in_channels} values (one per input channel), got {mean} / {std}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Normalise and apply the stem: [B, C, H, W] -> [T, B, ...] repeated, or [T, B, C, H, W] -> [T, B, ...]."""
        size = (self.in_channels, self.image_size, self.image_size)
        if self.encoding == "poisson" and x.dim() in (4, 5) and tuple(x.shape[-3:]) == size and (
                x.dim() == 4 or x.shape[0] == self.timesteps):
            p = x.unsqueeze(0).expand(self.timesteps, *x.shape) if x.dim() == 4 else x
            if generator is None:
                return fold(self.stem, poisson_spikes(p, torch.Generator().manual_seed(self.encoding_seed), True))
            return fold(self.stem, poisson_spikes(p, generator))
        if x.dim() == 4 and tuple(x.shape[1:]) == size:
            z = self.stem((x - self.mean.to(x.dtype)) / self.std.to(x.dtype))
            return z.unsqueeze(0).expand(self.timesteps, *z.shape)
        if x.dim() == 5 and x.shape[0] == self.timesteps and tuple(x.shape[2:]) == size:
            return fold(self.stem, (x - self.mean.to(x.dtype)) / self.std.to(x.dtype))
        # A wrong size would still give logits (adaptive pooling) that mean nothing: refuse it.
        raise ConfigError(f"this model takes images [B, {', '.join(map(str, size))}] or per-timestep inputs "
                          f"[T={self.timesteps}, B, {', '.join(map(str, size))}]; got shape {tuple(x.shape)}. "
                          "Build it with the dataset's channels and image_size.")

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.forward_features(self.encode(x, generator))

    def forward_features(self, z: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
