"""Temporal information concentration (TIC): one definition, read by the demo, the figures and the verdicts.

TIC is "an information shift from latter timesteps to the early timesteps as training progresses" (Kim et al.,
Fig. 1), read from the information centroid IC (Eq. 7), which lives in [1, T]. A noisy series has a maximum
above its typical level, so no rule here looks at the maximum: IC is read at fixed fractions of training,
averaged over the readings in each window,

    start = IC at initialisation (the first reading, epoch 0)
    early = mean IC over the readings in (0, 1/3] of training: the early-training level (Fig. 1: epoch 20 of 300)
    end   = mean IC over the readings in [0.8, 1] of training

    tic_score = (end - min(start, early)) / (T - 1)     TIC when below -TIC_MARGIN: IC ends more than a tenth
                                                        of its range below both its start and its early level
    ic_rise   = (early - start) / (T - 1)                > 0 when information first spreads to later timesteps

Both are differences of levels, so on a flat IC with noise their sign goes either way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from spiketide.fisher.profile import information_centroid

__all__ = ["EARLY", "END", "TIC_MARGIN", "MissingValue", "ICLevels", "ic_levels", "tic_score", "ic_rise",
           "shows_tic", "window_mean"]

EARLY = (0.0, 1 / 3)  # fractions of training; the early window excludes the initial reading
END = (0.8, 1.0)
TIC_MARGIN = 0.1


class MissingValue(ValueError):
    """A statistic cannot be computed from what was measured; the message says why (a missing value, never
    a reason to read another epoch)."""


@dataclass(frozen=True)
class ICLevels:
    """IC at initialisation, its early-training and end-of-training levels, and T (IC lies in [1, T])."""

    start: float
    early: float
    end: float
    timesteps: int


def window_mean(series: Sequence[tuple[int, float | None]], total_epochs: int, lo: float, hi: float,
                what: str = "IC", include_lo: bool = False) -> float:
    """Mean of the values whose epoch lies in the window (lo, hi] (or [lo, hi]) of `total_epochs`; MissingValue
    when the window holds no reading or any reading in it is missing or not finite."""
    inside = [(e, v) for e, v in series
              if (lo * total_epochs <= e if include_lo else lo * total_epochs < e) and e <= hi * total_epochs]
    if not inside:
        raise MissingValue(f"no {what} reading between epochs {lo * total_epochs:g} and {hi * total_epochs:g}")
    bad = [e for e, v in inside if v is None or not math.isfinite(v)]
    if bad:
        raise MissingValue(f"{what} at epoch {bad[0]} is missing or not finite")
    return sum(v for _, v in inside) / len(inside)


def ic_levels(series: Sequence[tuple[int, float | None]], timesteps: int, total_epochs: int, end: bool = True
              ) -> ICLevels:
    """The three IC levels of a run from its (epoch, IC) readings; `total_epochs` is the length of training.
    With `end=False` the end level is not read (nan): the IC rise needs only the first third."""
    if not series or series[0][0] != 0:
        raise MissingValue("no IC reading at initialisation (epoch 0)")
    start = series[0][1]
    if start is None or not math.isfinite(start):
        raise MissingValue("IC at epoch 0 is missing or not finite")
    return ICLevels(start=start, early=window_mean(series, total_epochs, *EARLY), timesteps=timesteps,
                    end=window_mean(series, total_epochs, *END, include_lo=True) if end else math.nan)


def tic_score(levels: ICLevels) -> float:
    """(end - min(start, early)) / (T - 1); TIC when below -TIC_MARGIN."""
    return (levels.end - min(levels.start, levels.early)) / max(levels.timesteps - 1, 1)


def ic_rise(levels: ICLevels) -> float:
    """(early - start) / (T - 1); above 0 when IC first rises."""
    return (levels.early - levels.start) / max(levels.timesteps - 1, 1)


def shows_tic(traces: Sequence[tuple[int, Sequence[float]]], total_epochs: int) -> bool:
    """One run's verdict under the TIC rule, from (epoch, I_1..I_T) readings (False when it cannot be read)."""
    try:
        series = [(e, information_centroid([math.nan if v is None else v for v in tr])) for e, tr in traces]
        return tic_score(ic_levels(series, len(traces[-1][1]), total_epochs)) < -TIC_MARGIN
    except (MissingValue, IndexError):
        return False
