"""Running a model over images: evaluation mode, output checks, pixel batches, accuracy.

The one home for what every measurement (training's test accuracy, robustness, early exit,
Fisher) does around a forward pass. It sits low in the stack and imports nothing above `errors`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from spiketide.errors import ConfigError, ModelOutputError

__all__ = ["eval_mode", "model_device", "check_logits", "logits", "to_float", "check_images", "pixel_batches",
           "accuracy"]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Every submodule in eval mode (BN running statistics, no dropout); each one's own flag restored on exit.

    Restoring per submodule matters: a BatchNorm that the caller froze in eval mode stays frozen.
    """
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, was_training in flags:
            m.training = was_training


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model with neither)."""
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return torch.device("cpu") if first is None else first.device


def check_logits(out: Any, batch_size: int | None = None, num_classes: int | None = None) -> Tensor:
    """Validate a model output as per-timestep logits [T, B, C]; raise ModelOutputError otherwise."""
    if not isinstance(out, Tensor):
        raise ModelOutputError(
            f"the model returned {type(out).__name__}; spiketide expects a tensor of per-timestep logits [T, B, C]. "
            "Wrap the model so forward returns that tensor."
        )
    if out.dim() != 3 or (batch_size is not None and out.shape[1] != batch_size) or (
        num_classes is not None and out.shape[2] != num_classes
    ):
        want = f"[T, {batch_size if batch_size is not None else 'B'}, {num_classes if num_classes is not None else 'C'}]"
        raise ModelOutputError(
            f"the model returned shape {tuple(out.shape)}; expected per-timestep logits {want} (timestep-major). "
            "If it returns [B, T, C], transpose it with .transpose(0, 1)."
        )
    return out


def batch_size_of(x: Tensor) -> int:
    """B of an input batch: [B, C, H, W], or [T, B, C, H, W] for per-timestep inputs (the package's convention)."""
    return int(x.shape[1] if x.dim() == 5 else x.shape[0])


def logits(model: nn.Module, x: Tensor, num_classes: int | None = None) -> Tensor:
    """`model(x)` checked to be per-timestep logits [T, B, C] for x's batch size."""
    return check_logits(model(x), batch_size_of(x), num_classes)


def to_float(images: Tensor) -> Tensor:
    """Pixels as float in [0, 1]: uint8 is divided by 255, floating point passes through unchanged."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images


def check_images(images: Any, labels: Any) -> tuple[Tensor, Tensor]:
    """Check a labelled image set at a public entry point: [N, ...] uint8 or finite float pixels in [0, 1],
    1-D integer labels of the same length. Returns them as tensors (labels int64)."""
    try:
        images = images if isinstance(images, Tensor) else torch.as_tensor(images)
        labels = labels if isinstance(labels, Tensor) else torch.as_tensor(labels)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"images and labels must be tensors (or convertible to one): {exc}") from None
    if labels.dim() != 1 or labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ConfigError(f"labels must be a 1-D integer tensor of class indices, got shape {tuple(labels.shape)} "
                          f"dtype {labels.dtype}")
    if images.dim() < 2 or images.shape[0] != labels.shape[0]:
        raise ConfigError(f"images {tuple(images.shape)} and labels {tuple(labels.shape)} must have the same length N "
                          "(images are [N, C, H, W], uint8 or float in [0, 1])")
    if images.shape[0] == 0:
        raise ConfigError("no images given (N = 0)")
    if images.dtype != torch.uint8:
        if not images.is_floating_point():
            raise ConfigError(f"images must be uint8 (0..255) or float in [0, 1], got dtype {images.dtype}")
        if not bool(torch.isfinite(images).all()):
            raise ConfigError("images contain NaN or inf; every pixel must be a finite value in [0, 1]")
        lo, hi = float(images.min()), float(images.max())
        if lo < 0.0 or hi > 1.0:
            raise ConfigError(f"float images must be pixels in [0, 1] (models normalise themselves), "
                              f"got range [{lo:.3g}, {hi:.3g}]")
    return images, labels.long()


def pixel_batches(images: Tensor, labels: Tensor, batch_size: int,
                  device: torch.device | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """(float pixels, labels) batches of a checked image set, in order, on `device`."""
    for start in range(0, images.shape[0], batch_size):
        yield to_float(images[start:start + batch_size].to(device)), labels[start:start + batch_size].to(device)


Perturbation = Callable[[Tensor, Tensor], Tensor]


def accuracy(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 256, *,
             perturb: Perturbation | None = None, amp: bool = False, on_batch: Callable[[], Any] | None = None
             ) -> float:
    """Top-1 accuracy of the timestep-averaged output (the horizon-T output, Eq. 4), in eval mode.

    `perturb(x, y) -> x'` changes each batch first (noise, an attack: it may use gradients);
    `on_batch()` is called after each batch (a progress bar's update).
    """
    device = model_device(model)
    correct = 0
    with eval_mode(model):
        for xb, yb in pixel_batches(images, labels, batch_size, device):
            if perturb is not None:
                xb = perturb(xb, yb)
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16,
                                                 enabled=amp and device.type == "cuda"):
                out = logits(model, xb)
            correct += int((out.float().mean(0).argmax(1) == yb).sum())
            if on_batch is not None:
                on_batch()
    return correct / len(images)
