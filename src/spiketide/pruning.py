"""Iterative magnitude pruning with fewer retraining timesteps (the paper's Fig. 6-7 application): pure pieces.

Han et al. (2015) prune p% of the remaining low-magnitude weights, retrain, and repeat for R rounds.
Because trained SNNs concentrate their Fisher information in the early timesteps (TIC), the paper
retrains with T_retrain < T timesteps; `compute_saving` is its N_retrain R (T - T_retrain) /
(N T + N_retrain R T). The experiment itself (load a run, prune, retrain, report) is
`spiketide.experiments.pruning.iterative_prune`.

Pruning uses `torch.nn.utils.prune` (weight = weight_orig * weight_mask, re-applied before every
forward), so masks stay in force through retraining with no callback, and a pruned state_dict holds
`X.weight_orig` / `X.weight_mask`; `checkpoints.apply_masks_from_state` re-creates that on a fresh model so
such checkpoints load.

Beyond the paper: `choose_t_retrain` picks T_retrain as the smallest t whose cumulative Fisher
information reaches a share q of the total (`fisher.horizon_for_share`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from spiketide import fisher
from spiketide.checks import is_whole
from spiketide.errors import CheckpointError, ConfigError
from spiketide.tables import markdown_table

__all__ = [
    "compute_saving", "prunable", "prune_round", "sparsity", "rewind_weights",
    "check_rate", "choose_t_retrain", "to_markdown", "PRUNABLE_TYPES",
]

PRUNABLE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Linear)


def check_rate(rate: Any) -> float:
    """The pruning rate p as a float; ConfigError unless 0 < p < 1."""
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not (0 < rate < 1):
        raise ConfigError(f"pruning rate must be a fraction in (0, 1) (the paper prunes 0.5 of the remaining "
                          f"weights per round), got {rate!r}")
    return float(rate)


def compute_saving(N: int, N_retrain: int, R: int, T: int, T_retrain: int) -> float:
    """Compute saving (%) of retraining with T_retrain instead of T timesteps (paper, Fig. 6 section).

    = N_retrain * R * (T - T_retrain) / (N * T + N_retrain * R * T) * 100, with N the first-stage
    epochs, N_retrain the epochs of each of the R pruning-retraining rounds. The paper's example
    (N=300, N_retrain=60, R=5, T=5, T_retrain=3) gives 20.0.
    """
    for name, v in (("N", N), ("N_retrain", N_retrain), ("R", R), ("T", T), ("T_retrain", T_retrain)):
        if not is_whole(v):
            raise ConfigError(f"compute_saving: {name} must be a whole number, got {v!r}")
        if v < 1:
            raise ConfigError(f"compute_saving: {name} must be >= 1, got {v}")
    if T_retrain > T:
        raise ConfigError(f"compute_saving: T_retrain={T_retrain} is larger than T={T}; retraining uses T_retrain <= T")
    # Integer numerator/denominator: the paper's example is exactly 20.0.
    return 100 * N_retrain * R * (T - T_retrain) / (N * T + N_retrain * R * T)


def prunable(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """Every nn.Conv1d / nn.Conv2d / nn.Linear weight of the model, in module order."""
    return [(m, "weight") for m in model.modules() if isinstance(m, PRUNABLE_TYPES)]


def _effective_weight(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """The weight the module computes with now (weight_orig * mask when pruned; never stale)."""
    mask = getattr(module, name + "_mask", None)
    if mask is not None:
        return getattr(module, name + "_orig").detach() * mask
    return getattr(module, name).detach()


def _alive(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """Boolean tensor: which weights are not pruned (mask == 1; without a mask, weight != 0)."""
    mask = getattr(module, name + "_mask", None)
    if mask is not None:
        return mask != 0
    return getattr(module, name).detach() != 0


def sparsity(model: nn.Module) -> float:
    """Fraction of prunable weights (Conv1d/Conv2d/Linear) that are pruned (masked out, or exactly zero)."""
    alive = [_alive(m, n) for m, n in prunable(model)]
    total = sum(a.numel() for a in alive)
    return 1.0 - sum(int(a.sum()) for a in alive) / total if total else 0.0


def prune_round(model: nn.Module, amount: float) -> float:
    """Globally prune `amount` (0 < amount < 1) of the *remaining* prunable weights by magnitude (L1).

    k = round(amount * remaining) weights with the smallest |w| over all layers together are
    masked (torch.nn.utils.prune.global_unstructured + L1Unstructured), so after R rounds the
    sparsity is 1 - (1 - amount)^R up to rounding. Returns the new sparsity.
    """
    amount = check_rate(amount)
    params = prunable(model)
    if not params:
        raise ConfigError("the model has no Conv1d/Conv2d/Linear weights to prune")
    remaining = sum(int(_alive(m, n).sum()) for m, n in params)
    k = int(round(amount * remaining))
    # Fresh importance scores: the `weight` attribute is only refreshed at the next forward,
    # so after an optimiser step it can be stale; weight_orig * mask is always current.
    scores = {(m, n): _effective_weight(m, n).abs() for m, n in params}
    with torch.no_grad():
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, importance_scores=scores, amount=k)
    return sparsity(model)


def rewind_weights(model: nn.Module, early_state: Mapping[str, torch.Tensor]) -> None:
    """Copy an earlier (unpruned or pruned) state into a pruned model, keeping its masks.

    `X.weight_orig` takes the early `X.weight` (or `X.weight_orig`); masks stay; every other
    parameter and buffer (biases, BatchNorm statistics) is rewound too (lottery-ticket rewinding).
    """
    current = model.state_dict()
    new = {}
    for key, value in current.items():
        if key.endswith("_mask") and key[: -len("_mask")] + "_orig" in current:
            new[key] = value
            continue
        src = key[: -len("_orig")] if key.endswith("_orig") and key not in early_state else key
        if src not in early_state:
            raise CheckpointError(f"the rewind checkpoint has no {src!r}; it belongs to another model")
        early = early_state[src]
        if early.shape != value.shape:
            raise CheckpointError(f"the rewind checkpoint's {src!r} has shape {tuple(early.shape)}, the model's is "
                                  f"{tuple(value.shape)}; it belongs to another model")
        new[key] = early
    model.load_state_dict(new)


def _steps(a: int, b: int) -> str:
    return f"timestep {a} carries" if a == b else f"timesteps {a}..{b} carry"


def choose_t_retrain(trace: Sequence[float] | torch.Tensor, q: float = 0.95) -> tuple[int, str]:
    """Smallest t (1-based) whose cumulative Fisher information sum_{i<=t} I_i (Eq. 6) reaches q of the total.

    Beyond the paper, which picks T_retrain by eye (near-zero I_t after t=3). Returns (t, an
    explanation listing the cumulative shares). An all-zero trace gives t = T.
    """
    chosen = fisher.horizon_for_share(trace, q)  # checks q and the trace
    share = fisher.cumulative_share(trace)
    T = len(share)
    if math.isnan(share[-1]):
        return T, (f"the Fisher trace is all zero (no information measured), so no timestep can be dropped: "
                   f"T_retrain = T = {T}")
    listing = ", ".join(f"t<={i + 1}: {100 * f:.1f}%" for i, f in enumerate(share))
    return chosen, (f"cumulative share of the temporal Fisher information: {listing}. "
                    f"The smallest t reaching q = {100 * q:g}% is {chosen}, so T_retrain = {chosen} (of T = {T})"
                    + (f"; {_steps(chosen + 1, T)} {100 * (1 - share[chosen - 1]):.1f}% of the information."
                       if chosen < T else "."))


def to_markdown(result: Mapping[str, Any]) -> str:
    """A short Markdown report: accuracy per round for each T_retrain, sparsity and compute saving."""
    T = result["T"]
    keys = sorted(result["curves"], key=int)
    lines = [f"# Iterative pruning (trained with T = {T})", "",
             f"{result['rounds']} rounds, pruning {100 * result['rate']:g}% of the remaining weights per round, "
             f"{result['retrain_epochs']} retraining epoch(s) per round. Accuracy is measured at T_retrain timesteps.",
             ""]
    first = result["curves"][keys[0]]
    header = ["T_retrain"] + [f"{100 * s:.1f}%" for s in first["sparsity"]] + ["compute saving"]
    lines.append(markdown_table(header, [[k, *(f"{100 * a:.2f}" for a in result["curves"][k]["test_acc"]),
                                          f"{result['compute_saving'][k]:.1f}%"] for k in keys]))
    lines += ["", "Columns: sparsity after each round (round 0 = the trained model); cells: test accuracy (%)."]
    if result.get("auto"):
        lines += ["", f"**T_retrain chosen automatically:** {result['auto']['explanation']}"]
    lines.append("")
    return "\n".join(lines)
