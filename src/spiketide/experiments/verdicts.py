"""Claims as data, and verdicts computed from per-seed statistics.

A `Claim` states one claim of the paper as a per-seed statistic and a rule; `judge` turns the
statistic's values over seeds into a `Verdict` from the 95% Student-t confidence interval of the mean:
holds / contradicted / inconclusive, or untestable (a precondition of the claim failed at this scale) or
missing (no seed measured it). Each verdict carries its two-sided p-value, the effect its seeds could detect
and the seeds a conclusive verdict would need; `holm` adjusts a report's family of verdicts so that the chance
of any false decisive verdict is at most 5%. The rule and the test travel with the verdict so a report never
shows one without the other. Missing seeds (None, NaN, inf: a failed or unfinished trial) are counted, never
imputed. Pure: numpy, scipy and the standard library only.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import special

from spiketide.errors import ConfigError
from spiketide.tables import markdown_table

DIRECTIONS = (">0", "<0", "~0")
OUTCOMES = ("holds", "contradicted", "inconclusive", "untestable", "missing")
DECISIVE = ("holds", "contradicted")
LEVEL = 0.05  # two-sided: each side of a decision errs at most 2.5% of the time
POWER = 0.8   # for the detectable effect and the seeds a conclusive verdict would need
T_TEST = "one-sample t, 95% CI"
TESTS = (T_TEST,)  # the only test implemented; a claim naming another would be mislabelled
MAX_SEEDS = 1000  # beyond this, "seeds needed" is reported as more than MAX_SEEDS


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
    """The outcome for one claim. `values` are per seed as given (None where missing).

    p: the two-sided p-value of the decision (the verdict is decisive when p < LEVEL), None without a spread.
    reasons: why seeds are missing; untestable: why the claim's preconditions fail (then verdict "untestable").
    detectable: the smallest distance of the true mean from the decision boundary that n seeds with this
    spread detect with 80% power; seeds_needed: seeds for 80% power at the observed mean and spread (None when
    the mean sits on the boundary or there is no spread; MAX_SEEDS + 1 for more than MAX_SEEDS).
    holm: the verdict after Holm's step-down adjustment over the report's family of claims (set by `holm`).
    """

    claim: Claim
    verdict: str
    n: int
    mean: float | None
    ci95: float | None
    values: tuple = field(default_factory=tuple)
    missing: int = 0
    rule: str = ""
    test: str = ""
    p: float | None = None
    sd: float | None = None
    detectable: float | None = None
    seeds_needed: int | None = None
    reasons: tuple[str, ...] = ()
    untestable: tuple[str, ...] = ()
    holm: str | None = None

    @property
    def planned(self) -> int:
        return len(self.values)

    @property
    def zero_spread(self) -> bool:
        return self.n >= 2 and self.sd == 0


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
    return body + "; fewer than 2 seeds or zero spread: inconclusive"


def _distance(claim: Claim, mean: float) -> float:
    """How far the mean lies from the boundary whose crossing by the CI would decide the claim."""
    m = claim.margin
    if claim.direction == ">0":
        return abs(mean - m)
    if claim.direction == "<0":
        return abs(mean + m)
    return abs(abs(mean) - m)


def _cdf(z: float, df: int) -> float:
    return float(special.stdtr(df, z))  # Student t CDF (the ufunc: judge runs in simulations)


def _ppf(q: float, df: int) -> float:
    return float(special.stdtrit(df, q))


def _p_values(claim: Claim, mean: float, se: float, df: int) -> tuple[float, float]:
    """(p for "holds", p for "contradicted"), each two-sided (twice the one-sided p of its test), so that a
    decision at LEVEL is the same as the 95% CI lying on that side of the boundary."""
    m = claim.margin
    if claim.direction == ">0":
        z = (mean - m) / se
        return 2 * _cdf(-z, df), 2 * _cdf(z, df)
    if claim.direction == "<0":
        z = (mean + m) / se
        return 2 * _cdf(z, df), 2 * _cdf(-z, df)
    lo, hi = (mean + m) / se, (mean - m) / se  # equivalence: both one-sided tests (TOST) for holds
    return 2 * max(_cdf(-lo, df), _cdf(hi, df)), 2 * min(_cdf(-hi, df), _cdf(lo, df))


def _power_factor(df: int) -> float:
    return _ppf(1 - LEVEL / 2, df) + _ppf(POWER, df)


def seeds_for(distance: float, sd: float) -> int | None:
    """Seeds for 80% power to decide a claim whose mean lies `distance` from its boundary with spread `sd`
    (the smallest n with (t_0.975 + t_0.8)(n - 1) · sd / sqrt(n) < distance; MAX_SEEDS + 1 beyond MAX_SEEDS)."""
    if not (distance > 0 and sd > 0):
        return None
    enough = lambda n: _power_factor(n - 1) * sd / math.sqrt(n) < distance  # noqa: E731 - decreasing in n
    if not enough(MAX_SEEDS):
        return MAX_SEEDS + 1
    lo, hi = 1, MAX_SEEDS  # enough(hi) holds; find the smallest such n > lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if enough(mid) else (mid, hi)
    return hi


def judge(claim: Claim, values: Sequence, *, reasons: Sequence[str] = (), untestable: Sequence[str] = ()
          ) -> Verdict:
    """Evaluate `claim` on its statistic's per-seed `values` (None/NaN for missing seeds).

    `reasons`: why seeds are missing; `untestable`: the preconditions that failed (any makes the claim
    untestable at this scale, whatever the values say).
    """
    given = tuple(_clean(v) for v in values)
    present = np.array([v for v in given if v is not None], dtype=float)
    n, gaps = len(present), len(given) - len(present)
    common = dict(claim=claim, n=n, values=given, missing=gaps, rule=rule_text(claim),
                  test=f"{claim.test}, {n} seed{'s' if n != 1 else ''}", reasons=tuple(reasons),
                  untestable=tuple(untestable))
    if n == 0:
        return Verdict(verdict="untestable" if untestable else "missing", mean=None, ci95=None, **common)
    mean = float(present.mean())
    if n < 2:  # no spread, no interval: one seed cannot tell an effect from noise
        return Verdict(verdict="untestable" if untestable else "inconclusive", mean=mean, ci95=None, **common)
    sd = float(present.std(ddof=1))
    se = sd / math.sqrt(n)
    half = _ppf(1 - LEVEL / 2, n - 1) * se
    power = dict(sd=sd, detectable=_power_factor(n - 1) * se if sd > 0 else None,
                 seeds_needed=seeds_for(_distance(claim, mean), sd))
    if sd == 0:  # every seed gave the same number: no estimate of the noise, so no test
        outcome, p = "inconclusive", None
    else:
        p_holds, p_contra = _p_values(claim, mean, se, n - 1)
        p = min(p_holds, p_contra, 1.0)
        outcome = "holds" if p_holds < LEVEL else "contradicted" if p_contra < LEVEL else "inconclusive"
    return Verdict(verdict="untestable" if untestable else outcome, mean=mean, ci95=half, p=p, **power, **common)


def holm(verdicts: Sequence[Verdict], level: float = LEVEL) -> list[Verdict]:
    """Holm's step-down adjustment over the family of tested claims (those with a p-value and testable): a
    decisive verdict stays decisive only if its adjusted p is below `level`; the chance of any false decisive
    verdict in the family is then at most `level`. Untested claims keep their verdict."""
    tested = sorted((v.p, i) for i, v in enumerate(verdicts) if v.p is not None and v.verdict != "untestable")
    k, running, adjusted = len(tested), 0.0, {}
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (k - rank) * p))
        adjusted[i] = running
    return [replace(v, holm="inconclusive" if i in adjusted and v.verdict in DECISIVE and adjusted[i] >= level
                    else v.verdict) for i, v in enumerate(verdicts)]


def _sig(x: float, digits: int = 2) -> str:
    """`digits` significant digits, without a float's noise."""
    return _num(float(f"{x:.{digits}g}")) if x else "0"


def format_mean_ci(v: Verdict, digits: int = 2) -> str:
    """'1.23 ± 0.45 (n=3)': the CI to `digits` significant digits, the mean to the same decimals.

    Missing seeds are named ('n=2, 1 missing'); 'missing (0 of 3 seeds)' when none is left; without
    an interval (n = 1) or with zero spread the mean is shown to 4 significant digits.
    """
    if v.n == 0:
        return f"missing (0 of {v.missing} seeds)"
    note = f"n={v.n}" + (f", {v.missing} missing" if v.missing else "") + (", zero spread" if v.zero_spread else "")
    if not v.ci95:
        return f"{v.mean:.4g}{'' if v.ci95 is None else ' ± 0'} ({note})"
    # more decimals than the interval has would be noise, and 9.25e-18 ± 0.657 would hide a zero
    dec = min(12, max(0, digits - 1 - math.floor(math.log10(v.ci95))))
    return f"{round(v.mean, dec) + 0.0:.{dec}f} ± {v.ci95:.{dec}f} ({note})"


def format_verdict(v: Verdict, holm_adjusted: bool = False) -> str:
    """The verdict word, marked when seeds are missing and followed by the reason when untestable or missing."""
    word = v.holm if holm_adjusted and v.holm is not None else v.verdict
    if holm_adjusted and word in ("untestable", "missing"):
        return word  # the reason stands beside it, in the claim's own verdict
    if word == "untestable":
        return f"untestable at this scale: {v.untestable[0]}" + (
            f" (+{len(v.untestable) - 1} more)" if len(v.untestable) > 1 else "")
    if word == "missing":
        return "missing" + (f": {v.reasons[0]}" if v.reasons else "")
    if v.missing:
        word += f" ({v.n} of {v.planned} seeds)"
    if v.zero_spread:
        word += " (zero spread)"
    return word


def format_power(v: Verdict) -> str:
    """Seeds had and planned, the effect 80% power detects, and the seeds a conclusive verdict needs."""
    parts = [f"{v.n} of {v.planned} seeds"]
    if v.verdict in ("untestable", "missing") or v.n < 2:
        return parts[0]
    if v.detectable is not None:
        parts.append(f"detects ±{_sig(v.detectable)}")
    if v.verdict == "inconclusive":
        need = v.seeds_needed
        parts.append("no seed count decides it (mean on the boundary or zero spread)" if need is None else
                     f"needs > {MAX_SEEDS} seeds" if need > MAX_SEEDS else f"needs ~{need} seeds")
    return "; ".join(parts)


ExtraColumn = Callable[[Verdict], str] | Mapping[str, str]


def verdicts_table(verdicts: Sequence[Verdict], extra_columns: Mapping[str, ExtraColumn] | None = None) -> str:
    """A Markdown table: claim; paper; ours (mean ± 95% CI, n); verdict; Holm; power; rule and test; extras.

    Each extra column is a function of the verdict, or a mapping claim id -> cell ('' if absent).
    """
    extra = dict(extra_columns or {})
    head = ["claim", "paper", "ours (mean ± 95% CI, n)", "verdict", "Holm-adjusted", "seeds and power",
            "rule and test", *extra]
    rows = []
    for v in verdicts:
        cells = [f"{v.claim.id}: {v.claim.text}", v.claim.paper, format_mean_ci(v), format_verdict(v),
                 format_verdict(v, holm_adjusted=True) if v.holm is not None else "", format_power(v),
                 f"{v.rule}; test: {v.test}"]
        cells += [col(v) if callable(col) else col.get(v.claim.id, "") for col in extra.values()]
        rows.append(cells)
    return markdown_table(head, rows)
