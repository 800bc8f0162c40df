"""Shared pieces of the built-in SNNs: input normalisation, direct or Poisson (rate) encoding, timestep folding."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from spiketide.config import ENCODINGS
from spiketide.errors import ConfigError

__all__ = ["fold", "scale_width", "poisson_spikes", "SpikingModel", "ENCODINGS", "register"]

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


def scale_width(channels: int, width: float) -> int:
    """A hidden channel count / linear size times the width multiplier, rounded, at least 1."""
    return max(1, int(round(channels * width)))


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
