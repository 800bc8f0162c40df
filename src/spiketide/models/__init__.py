"""Model registry: `create(name, ...)` builds any built-in spiking network by name."""

from __future__ import annotations

from spiketide.checks import number, whole
from spiketide.errors import ConfigError
from spiketide.models import alexnet, convnet, resnet, vgg  # noqa: F401  (each registers its models on import)
from spiketide.models.base import _REGISTRY, ENCODINGS, AvgPool2d, SpikingModel, fold, register
from spiketide.neuron import LIF

__all__ = ["create", "register", "available", "block_names", "SpikingModel", "fold", "ENCODINGS"]

def available() -> list[str]:
    return sorted(_REGISTRY)


def block_names(name: str) -> tuple[str, ...]:
    """The names of a registered model's blocks (the keys of its per-layer Fisher information), first to last."""
    return tuple(getattr(_REGISTRY[name], "block_names", ()))


def create(name: str, *, num_classes: int, timesteps: int, tau: float = 2.0, in_channels: int = 3,
           image_size: int = 32, fast_lif: bool | None = None, width: float = 1.0, encoding: str = "direct",
           encoding_seed: int = 0, **kwargs) -> SpikingModel:
    """Build a registered SNN: pixels [B, C, H, W] or [T, B, C, H, W] in [0, 1] -> logits [T, B, num_classes].

    `fast_lif` picks the compiled paths for this model, the LIF scan of every neuron and the 2x2 average pool
    (None: `neuron.default_fast()`); False compiles nothing.
    `width` (a number > 0, default 1.0 = the documented model) multiplies every hidden channel count and
    hidden linear size, each rounded to an int and at least 1; input channels and classes are unchanged,
    as are `block_names`. E.g. resnet19 at width=1/8 has stem 16 and stages 32/64/64 (parameters ~ width**2).
    `encoding`: "direct" (the paper's: pixels into the stem at every step) or "poisson" (rate coding, drawn
    from `forward(x, generator=...)` or from `encoding_seed`; see `SpikingModel`).
    kwargs: `mean`, `std` (per-channel normalisation, pixel units) and model-specific options.
    """
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(available())}")
    for arg, value, lo in (("timesteps T", timesteps, 1), ("num_classes", num_classes, 2),
                           ("in_channels", in_channels, 1), ("image_size", image_size, 1)):
        whole(arg, value, lo)
    number("width", width, 0, lo_open=True, hint=" (1.0 = full width)")
    if encoding not in ENCODINGS:
        raise ConfigError(f"unknown encoding {encoding!r}; choose one of {', '.join(ENCODINGS)}")
    model = _REGISTRY[name](num_classes=num_classes, timesteps=timesteps, tau=tau, in_channels=in_channels,
                            image_size=image_size, width=float(width), **kwargs)
    model.encoding, model.encoding_seed = encoding, int(encoding_seed)
    if fast_lif is not None:  # --no-compile means no compilation at all, the pool's included
        for m in model.modules():
            if isinstance(m, (LIF, AvgPool2d)):
                m.fast = bool(fast_lif)
    return model
