"""Horizon outputs (Eq. 4) and the training losses: mean-output CE (the paper's), the alpha-loss (Eq. 9-10),
and two per-timestep losses the paper left open: per-timestep CE and TET (Deng et al., ICLR 2022).

Every loss averages per-sample terms through `batch_mean`. On one process that is the mean over
the batch; under DDP the training loop hands in a mean over the *global* batch, so a rank's slice
size never changes the loss (the mean of per-rank means is not the global mean).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from spiketide.checks import check_loss
from spiketide.config import LOSSES
from spiketide.errors import ConfigError

__all__ = ["horizon_logits", "horizon_losses", "mean_output_ce", "alpha_loss", "per_timestep_ce", "tet_loss",
           "LOSSES", "ALPHA_PRESETS", "make_loss", "resolve_alpha", "batch_mean", "Loss"]

BatchMean = Callable[[torch.Tensor], torch.Tensor]


def batch_mean(v: torch.Tensor) -> torch.Tensor:
    """Mean over the last (sample) axis."""
    return v.mean(-1)


def horizon_logits(out: torch.Tensor) -> torch.Tensor:
    """Eq. 4 horizons: row t-1 of the result is the mean of the first t per-timestep outputs, [T, B, C] -> [T, B, C]."""
    steps = torch.arange(1, out.shape[0] + 1, device=out.device, dtype=out.dtype)
    return out.cumsum(0) / steps.view(-1, *([1] * (out.dim() - 1)))


def horizon_losses(out: torch.Tensor, y: torch.Tensor, mean: BatchMean = batch_mean) -> torch.Tensor:
    """L_t for t = 1..T: cross-entropy of each horizon output (Eq. 4), averaged over the batch -> [T]."""
    h = horizon_logits(out.float())
    T, B, C = h.shape
    return mean(F.cross_entropy(h.reshape(T * B, C), y.repeat(T), reduction="none").view(T, B))


def mean_output_ce(out: torch.Tensor, y: torch.Tensor, mean: BatchMean = batch_mean) -> torch.Tensor:
    """The standard SNN loss: cross-entropy of the timestep-averaged output (= L_T)."""
    return mean(F.cross_entropy(out.float().mean(0), y, reduction="none"))


def alpha_loss(out: torch.Tensor, y: torch.Tensor, alpha: float, mean: BatchMean = batch_mean) -> torch.Tensor:
    """Eq. 9-10: (1/T) sum_t |L_t - alpha|; gradient ascent on horizons whose loss is already below alpha."""
    return (horizon_losses(out, y, mean) - alpha).abs().mean()


def per_timestep_ce(out: torch.Tensor, y: torch.Tensor, mean: BatchMean = batch_mean) -> torch.Tensor:
    """(1/T) sum_t CE(o_t, y): every timestep's own output is trained to classify (not the running mean)."""
    T, B, C = out.shape
    return mean(F.cross_entropy(out.float().reshape(T * B, C), y.repeat(T), reduction="none").view(T, B)).mean()


def tet_loss(out: torch.Tensor, y: torch.Tensor, lam: float, phi: float = 1.0,
             mean: BatchMean = batch_mean) -> torch.Tensor:
    """TET (Deng et al., ICLR 2022, Eq. 8-10): (1 - lam) (1/T) sum_t CE(o_t, y) + lam (1/T) sum_t MSE(o_t, phi),
    phi the firing threshold; the MSE term keeps the outputs from drifting while each timestep is trained."""
    mse = mean((out.float() - phi).pow(2).mean(2)).mean()  # [T, B] per-sample MSE over classes
    return (1 - lam) * per_timestep_ce(out, y, mean) + lam * mse


class Loss:
    """A named training loss: `loss(out, y, mean=batch_mean)` -> scalar, with its parameter (alpha or TET's
    lambda) as an attribute; `alpha` is None unless it is the alpha-loss."""

    def __init__(self, name: str, alpha: float | None = None, tet_lambda: float | None = None):
        self.name, self.alpha, self.tet_lambda = name, alpha, tet_lambda

    def __call__(self, out: torch.Tensor, y: torch.Tensor, mean: BatchMean = batch_mean) -> torch.Tensor:
        if self.name == "alpha":
            return alpha_loss(out, y, self.alpha, mean)
        if self.name == "per-timestep":
            return per_timestep_ce(out, y, mean)
        if self.name == "tet":
            return tet_loss(out, y, self.tet_lambda, mean=mean)
        return mean_output_ce(out, y, mean)

    def __repr__(self) -> str:
        param = {"alpha": f"(alpha={self.alpha})", "tet": f"(lambda={self.tet_lambda})"}
        return self.name + param.get(self.name, "")


# The paper's [low, intermediate, high] alpha per dataset (section "Analysis on TIC: Robustness Perspective").
ALPHA_PRESETS: dict[str, dict[str, float]] = {
    "cifar10": {"low": 1e-3, "intermediate": 1e-2, "high": 7e-2},
    "svhn": {"low": 1e-4, "intermediate": 1e-2, "high": 7e-2},
    "cifar100": {"low": 1e-4, "intermediate": 1e-3, "high": 1e-2},
}


def resolve_alpha(value: str | float | None) -> float | None:
    """An alpha given as a number or as a paper preset such as 'cifar10:low'."""
    if value is None or isinstance(value, (int, float)):
        return value
    if ":" in value:
        ds, level = value.split(":", 1)
        try:
            return ALPHA_PRESETS[ds][level]
        except KeyError:
            raise ConfigError(f"unknown alpha preset {value!r}; presets: "
                              + ", ".join(f"{d}:{lvl}" for d, v in ALPHA_PRESETS.items() for lvl in v)) from None
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"--alpha expects a number or a preset like cifar10:low, got {value!r}") from None


def make_loss(name: str = "ce", alpha: float | None = None, tet_lambda: float | None = None) -> Loss:
    """Build a training loss by name (`LOSSES`): 'alpha' needs alpha >= 0, 'tet' needs tet_lambda in [0, 1]."""
    check_loss(name, alpha, tet_lambda, LOSSES)
    if name == "alpha":
        return Loss("alpha", float(alpha))
    if name == "tet":
        return Loss("tet", tet_lambda=float(tet_lambda))
    return Loss(name)
