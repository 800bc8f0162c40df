"""Claims as data, and verdicts computed from per-seed statistics.

A `Claim` states one claim of the paper as a per-seed statistic and a rule; `judge` turns the
statistic's values over seeds into a `Verdict` (holds / contradicted / inconclusive / missing) from
the 95% Student-t confidence interval of the mean. The rule and the test travel with the verdict so
a report never shows one without the other. Missing seeds (None, NaN, inf: a failed or unfinished
trial) are counted, never imputed. Pure: numpy, scipy and the standard library only.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from spiketide.errors import ConfigError

DIRECTIONS = (">0", "<0", "~0")
OUTCOMES = ("holds", "contradicted", "inconclusive", "missing")
T_TEST = "one-sample t, 95% CI"
TESTS = (T_TEST,)  # the only test implemented; a claim naming another would be mislabelled


@dataclass(frozen=True)
class Claim:
    """One claim of the paper as a measurable per-seed statistic and a rule.

    direction ">0": holds when the statistic exceeds +margin; "<0": when it is below -margin;
    "~0" (equivalence): when it lies within (-margin, +margin), so margin must then be > 0.
    """

    id: str
    text: str
    paper: str
    statistic: str
    direction: str
    margin: float = 0.0
    test: str = T_TEST

    def __post_init__(self):
        if self.direction not in DIRECTIONS:
            raise ConfigError(f"claim {self.id!r}: direction must be one of {DIRECTIONS}, not {self.direction!r}")
        if not (math.isfinite(self.margin) and self.margin >= 0):
            raise ConfigError(f"claim {self.id!r}: margin must be a finite number >= 0, not {self.margin!r}")
        if self.direction == "~0" and self.margin == 0:
            raise ConfigError(f"claim {self.id!r}: an equivalence claim ('~0') needs a margin > 0")
        if self.test not in TESTS:
            raise ConfigError(f"claim {self.id!r}: unknown test {self.test!r}; implemented: {TESTS}")


@dataclass(frozen=True)
class Verdict:
    """The outcome for one claim. `values` are per seed as given (None where missing)."""

    claim: Claim
    verdict: str
    n: int
    mean: float | None
    ci95: float | None
    values: tuple = field(default_factory=tuple)
    missing: int = 0
    rule: str = ""
    test: str = ""


def _num(x: float) -> str:
    return f"{x + 0.0:g}".replace("-", "−")  # + 0.0 turns -0.0 into 0 so "−0" never shows


def _clean(v) -> float | None:
    """A value as float, or None when it is missing (None, NaN, ±inf: no usable measurement)."""
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ConfigError(f"a claim's statistic must be a number or None, not {v!r}") from None
    return f if math.isfinite(f) else None


def rule_text(claim: Claim) -> str:
    """The rule in words, as the report prints it next to the verdict."""
    ci = f"the 95% CI of mean({claim.statistic})"
    if claim.direction == "~0":
        m = _num(claim.margin)
        body = f"holds if {ci} lies inside (−{m}, {m}); contradicted if it lies wholly outside; else inconclusive"
    else:
        above = claim.direction == ">0"
        edge = _num(claim.margin if above else -claim.margin)
        yes, no = ("above", "below") if above else ("below", "above")
        body = f"holds if {ci} lies {yes} {edge}; contradicted if it lies {no} {edge}; else inconclusive"
    return body + "; fewer than 2 seeds: inconclusive"


def judge(claim: Claim, values: Sequence) -> Verdict:
    """Evaluate `claim` on its statistic's per-seed `values` (None/NaN for missing seeds)."""
    given = tuple(_clean(v) for v in values)
    present = np.array([v for v in given if v is not None], dtype=float)
    n, gaps = len(present), len(given) - len(present)
    common = dict(claim=claim, n=n, values=given, missing=gaps, rule=rule_text(claim),
                  test=f"{claim.test}, {n} seed{'s' if n != 1 else ''}")
    if n == 0:
        return Verdict(verdict="missing", mean=None, ci95=None, **common)
    mean = float(present.mean())
    if n < 2:  # no spread, no interval: one seed cannot tell an effect from noise
        return Verdict(verdict="inconclusive", mean=mean, ci95=None, **common)
    # all-equal values give s = 0, so half = 0 and the mean alone decides
    half = float(stats.t.ppf(0.975, n - 1) * present.std(ddof=1) / math.sqrt(n))
    lo, hi, m = mean - half, mean + half, claim.margin
    if claim.direction == ">0":
        outcome = "holds" if lo > m else "contradicted" if hi < m else "inconclusive"
    elif claim.direction == "<0":
        outcome = "holds" if hi < -m else "contradicted" if lo > -m else "inconclusive"
    else:  # equivalence (TOST-like): the whole interval inside, or wholly outside, the band
        outcome = ("holds" if -m < lo and hi < m else
                   "contradicted" if lo > m or hi < -m else "inconclusive")
    return Verdict(verdict=outcome, mean=mean, ci95=half, **common)


def format_mean_ci(v: Verdict, digits: int = 2) -> str:
    """'1.23 ± 0.45 (n=3)': the CI to `digits` significant digits, the mean to the same decimals.

    Missing seeds are named ('n=2, 1 missing'); 'missing (0 of 3 seeds)' when none is left; without
    an interval (n = 1) or with zero spread the mean is shown to 4 significant digits.
    """
    if v.n == 0:
        return f"missing (0 of {v.missing} seeds)"
    note = f"n={v.n}" + (f", {v.missing} missing" if v.missing else "")
    if not v.ci95:
        return f"{v.mean:.4g}{'' if v.ci95 is None else ' ± 0'} ({note})"
    # more decimals than the interval has would be noise, and 9.25e-18 ± 0.657 would hide a zero
    dec = min(12, max(0, digits - 1 - math.floor(math.log10(v.ci95))))
    return f"{round(v.mean, dec) + 0.0:.{dec}f} ± {v.ci95:.{dec}f} ({note})"


def _cell(s) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")  # keep one Markdown row per claim


ExtraColumn = Callable[[Verdict], str] | Mapping[str, str]


def verdicts_table(verdicts: Sequence[Verdict], extra_columns: Mapping[str, ExtraColumn] | None = None) -> str:
    """A Markdown table: claim; paper; ours (mean ± 95% CI, n); verdict; rule and test; then extras.

    Each extra column is a function of the verdict, or a mapping claim id -> cell ('' if absent).
    """
    extra = dict(extra_columns or {})
    head = ["claim", "paper", "ours (mean ± 95% CI, n)", "verdict", "rule and test", *extra]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in verdicts:
        cells = [f"{v.claim.id}: {v.claim.text}", v.claim.paper, format_mean_ci(v), v.verdict,
                 f"{v.rule}; test: {v.test}"]
        cells += [col(v) if callable(col) else col.get(v.claim.id, "") for col in extra.values()]
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(rows)
