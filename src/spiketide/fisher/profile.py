"""The result of a measurement, written as `to_dict()` and read back (`read_profiles`), and what a trace I_1..I_T
says: its centroid (Eq. 7, computed here only) and the share of the information reached by each horizon."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from spiketide.config import ESTIMATORS
from spiketide.errors import ConfigError

__all__ = ["ESTIMATORS", "FisherProfile", "information_centroid", "cumulative_share", "horizon_for_share",
           "summarize", "read_profiles"]


def information_centroid(trace: Tensor | Sequence[float]) -> float:
    """Eq. 7: IC = sum_t t I_t / sum_t I_t with t = 1..T; nan if the trace sums to zero."""
    tr = torch.as_tensor(trace, dtype=torch.float64).detach().cpu().flatten()
    if tr.numel() == 0:
        raise ConfigError("information_centroid needs a non-empty trace I_1..I_T")
    total = tr.sum()
    if not torch.isfinite(total) or total == 0:
        return float("nan")
    t = torch.arange(1, tr.numel() + 1, dtype=torch.float64)
    return float((t * tr).sum() / total)


def cumulative_share(trace: Tensor | Sequence[float]) -> list[float]:
    """Share of the total information reached by horizon t, sum_{i<=t} I_i / sum_i I_i, for t = 1..T (the last
    is 1; an all-zero trace, nothing measured, gives nan). ConfigError for an empty, non-finite or negative trace."""
    try:
        t = torch.as_tensor(trace, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError):
        raise ConfigError(f"a Fisher trace must be a list of numbers I_1..I_T, got {trace!r}") from None
    if t.dim() != 1 or t.numel() == 0:
        raise ConfigError(f"a Fisher trace must be a non-empty 1-D sequence I_1..I_T, got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
        raise ConfigError(f"a Fisher trace must be finite and non-negative (Eq. 6 is a mean of squared norms), "
                          f"got {t.tolist()}")
    return (t.cumsum(0) / t.sum()).tolist()


def horizon_for_share(trace: Tensor | Sequence[float], q: float) -> int:
    """Smallest t (1-based) whose cumulative share (`cumulative_share`) reaches q, with q in (0, 1].

    A slack of 1e-9 keeps rounding from pushing an exact hit one step later (q = 0.75 with shares
    0.25, 0.5, 0.75 gives 3). An all-zero trace gives T: no horizon can be dropped.
    """
    if isinstance(q, bool) or not isinstance(q, numbers.Real) or not 0 < q <= 1:
        raise ConfigError(f"q must be a fraction in (0, 1], got {q!r}")
    share = cumulative_share(trace)
    return next((i + 1 for i, s in enumerate(share) if s >= q - 1e-9), len(share))


def _floats(x: Tensor) -> list[float | None]:
    return [float(v) if math.isfinite(v) else None for v in x.detach().cpu().double().tolist()]


def _tensor(v: Sequence[float | None]) -> Tensor:
    return torch.tensor([float("nan") if a is None else float(a) for a in v], dtype=torch.float64)


@dataclass
class FisherProfile:
    """Temporal Fisher information of a model on a data set.

    trace: I_1..I_T, tensor [T] (float64). stderr: standard error of each I_t over the samples
    ("batch": over the minibatches), nan when only one was used. centroid: Eq. 7.
    per_layer: {block or module name: tensor [T]} whose parts sum to `trace`, or None.
    """

    trace: Tensor
    stderr: Tensor
    centroid: float
    per_layer: dict[str, Tensor] | None
    estimator: str
    num_samples: int

    @property
    def timesteps(self) -> int:
        return int(self.trace.numel())

    def block_centroid(self, block: str) -> float:
        """Eq. 7 of one block's (or module's) part of the trace; nan when that part was not measured."""
        part = (self.per_layer or {}).get(block)
        return information_centroid(part) if part is not None and part.numel() else math.nan

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (nan -> None); `per_layer` only when it was measured."""
        d: dict[str, Any] = {"trace": _floats(self.trace), "stderr": _floats(self.stderr),
                             "centroid": float(self.centroid) if math.isfinite(self.centroid) else None,
                             "estimator": self.estimator, "num_samples": int(self.num_samples)}
        if self.per_layer is not None:
            d["per_layer"] = {k: _floats(v) for k, v in self.per_layer.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FisherProfile:
        """The profile `to_dict` wrote (null -> nan); a missing centroid is computed, a missing stderr is nan."""
        trace, c, per = _tensor(d["trace"]), d.get("centroid"), d.get("per_layer")
        return cls(trace=trace, stderr=_tensor(d.get("stderr") or [None] * len(trace)),
                   centroid=float(c) if c is not None else information_centroid(trace) if trace.numel() else math.nan,
                   per_layer=None if per is None else {k: _tensor(v) for k, v in per.items()},
                   estimator=str(d.get("estimator", "empirical")), num_samples=int(d.get("num_samples", 0)))


def summarize(per_sample: Tensor, groups: Sequence[str], per_layer: bool, estimator: str,
              num_samples: int | None = None) -> FisherProfile:
    """Squared gradient norms [G, N, T] per parameter group, sample (or minibatch) and horizon -> the profile:
    the mean over N (Eq. 5-6) and its standard error, summed over groups (or kept per group)."""
    per_sample = per_sample.detach().cpu().double()
    total = per_sample.sum(0)  # [N, T]
    n = total.shape[0]
    trace = total.mean(0)
    stderr = total.std(0, unbiased=True) / math.sqrt(n) if n > 1 else torch.full_like(trace, float("nan"))
    parts = {g: per_sample[i].mean(0) for i, g in enumerate(groups)} if per_layer else None
    return FisherProfile(trace=trace, stderr=stderr, centroid=information_centroid(trace), per_layer=parts,
                         estimator=estimator, num_samples=n if num_samples is None else num_samples)


def read_profiles(records: Iterable[Mapping[str, Any]]) -> list[tuple[int, FisherProfile]]:
    """(epoch, profile) of every metrics line that carries a Fisher measurement (its "fisher" object, as
    `to_dict` wrote it), in epoch order: how a written profile is read back."""
    fisher = sorted((r for r in records if r.get("fisher")), key=lambda r: r["epoch"])
    return [(r["epoch"], FisherProfile.from_dict(r["fisher"])) for r in fisher]
