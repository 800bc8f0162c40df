"""Horizon outputs (Eq. 4) and the training losses built on them (mean-output CE, alpha-loss Eq. 9-10)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from spiketide.errors import ConfigError, ModelOutputError

__all__ = ["check_logits", "horizon_logits", "horizon_losses", "mean_output_ce", "alpha_loss", "LOSSES", "ALPHA_PRESETS",
           "make_loss"]


def check_logits(out, batch_size: int | None = None, num_classes: int | None = None) -> torch.Tensor:
    """Validate a model output as per-timestep logits [T, B, C]; raise ModelOutputError otherwise."""
    if not isinstance(out, torch.Tensor):
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


def horizon_logits(out: torch.Tensor) -> torch.Tensor:
    """Eq. 4 horizons: row t-1 of the result is the mean of the first t per-timestep outputs, [T, B, C] -> [T, B, C]."""
    steps = torch.arange(1, out.shape[0] + 1, device=out.device, dtype=out.dtype)
    return out.cumsum(0) / steps.view(-1, *([1] * (out.dim() - 1)))


def horizon_losses(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """L_t for t = 1..T: cross-entropy of each horizon output, averaged over the batch -> [T]."""
    h = horizon_logits(out.float())
    T, B, C = h.shape
    return F.cross_entropy(h.reshape(T * B, C), y.repeat(T), reduction="none").view(T, B).mean(1)


def mean_output_ce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The standard SNN loss: cross-entropy of the timestep-averaged output (= L_T)."""
    return F.cross_entropy(out.float().mean(0), y)


def alpha_loss(out: torch.Tensor, y: torch.Tensor, alpha: float) -> torch.Tensor:
    """Eq. 9-10: (1/T) sum_t |L_t - alpha|; gradient ascent on horizons whose loss is already below alpha."""
    return (horizon_losses(out, y) - alpha).abs().mean()


class _Loss:
    """A named loss: callable (out, y) -> scalar; `details` adds per-horizon L_t for logging."""

    def __init__(self, name: str, alpha: float | None = None):
        self.name, self.alpha = name, alpha

    def __call__(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.name == "ce":
            return mean_output_ce(out, y)
        return alpha_loss(out, y, self.alpha)

    def __repr__(self) -> str:
        return self.name if self.alpha is None else f"{self.name}(alpha={self.alpha})"


LOSSES = ("ce", "alpha")

# The paper's [low, intermediate, high] alpha per dataset (section "Analysis on TIC: Robustness Perspective").
ALPHA_PRESETS: dict[str, dict[str, float]] = {
    "cifar10": {"low": 1e-3, "intermediate": 1e-2, "high": 7e-2},
    "svhn": {"low": 1e-4, "intermediate": 1e-2, "high": 7e-2},
    "cifar100": {"low": 1e-4, "intermediate": 1e-3, "high": 1e-2},
}


def make_loss(name: str = "ce", alpha: float | None = None) -> _Loss:
    """Build a training loss by name: 'ce' (mean-output cross-entropy) or 'alpha' (Eq. 10, needs alpha >= 0)."""
    if name not in LOSSES:
        raise ConfigError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    if name == "alpha":
        if alpha is None or not (alpha >= 0):
            raise ConfigError(f"--loss alpha needs --alpha A with A >= 0 (got {alpha}); paper values are 1e-4 .. 7e-2")
        return _Loss("alpha", float(alpha))
    return _Loss("ce")
