"""What the reproduction suite's claims measure: per-seed statistics and preconditions over one seed's runs
(label -> RunResult), and `ClaimSpec`, which turns them into a verdict over seeds.

Every statistic reads exactly the epochs it names and raises `MissingValue` with the reason when a value it
needs is absent, NaN or from an unfinished run: never a crash, never another epoch in its place. TIC and the IC
rise are `spiketide.fisher.tic`'s single definition. A precondition says what the runs must satisfy for a claim
to be testable at all (TIC is a near-zero-training-loss phenomenon; the α-loss must bind; a sensitivity
comparison needs a model clearly above chance); a claim whose precondition fails in any seed is untestable at
this scale, whatever its statistic says.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from spiketide.data import DATASETS
from spiketide.experiments.trials import RunResult
from spiketide.experiments.verdicts import Claim, Verdict, judge
from spiketide.fisher.tic import EARLY, END, ICLevels, MissingValue, ic_levels, ic_rise, tic_score, window_mean

Runs = Mapping[str, RunResult | None]
Statistic = Callable[[Runs], float]

FIT_LOSS = 0.1         # mean-output cross-entropy on the training set in the last epoch (L_T, Eq. 4)
ALPHA_BINDS = 0.05     # share of the last epoch's steps with L_t < alpha, averaged over t
ABOVE_CHANCE = 0.2     # clean accuracy at least chance + 0.2
NEAR_ZERO_SHARE = 0.1  # Fig. 6(b): information after t = 3 "near zero": under a tenth of the total


# -- reading a run ---------------------------------------------------------------------------------------------

def run(runs: Runs, label: str) -> RunResult:
    r = runs.get(label)
    if r is None or not r.trained:
        raise MissingValue(f"run {label} did not finish")
    return r


def _finite(x, what: str) -> float:
    if x is None or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise MissingValue(f"{what} is missing or not finite")
    return float(x)


def final(r: RunResult, key: str) -> float:
    return _finite(r.metrics[-1].get(key), f"{key} at epoch {r.metrics[-1]['epoch']}")


def analysis(r: RunResult, name: str) -> dict:
    a = r.analysis(name)
    if a is None:
        raise MissingValue(f"the {name} analysis of run {r.config.get('model')} is missing")
    return a


def ic_series(r: RunResult, block: str | None = None) -> list[tuple[int, float]]:
    """(epoch, IC) at every Fisher reading, nan where it is missing; of one block when `block` is given."""
    out = [(e, p.centroid if block is None else p.block_centroid(block)) for e, p in r.fisher()]
    if not out:
        raise MissingValue("no Fisher information was measured")
    return out


def levels(r: RunResult, block: str | None = None, end: bool = True) -> ICLevels:
    return ic_levels(ic_series(r, block), r.config["timesteps"], r.config["epochs"], end=end)


def trace_at_end(r: RunResult) -> list[float]:
    """I_1..I_T at the last epoch (the last reading must be at the end of training)."""
    e, p = (r.fisher() or [(None, None)])[-1]
    if e != r.config["epochs"]:
        raise MissingValue(f"no Fisher reading at the last epoch ({r.config['epochs']})")
    return [_finite(v, f"I_{t + 1} at epoch {e}") for t, v in enumerate(p.trace.tolist() or [None])]


def _trace_series(r: RunResult, f: Callable[[list], float]) -> list[tuple[int, float | None]]:
    """(epoch, f(I_1..I_T)) at every Fisher reading; None (a missing reading) unless every I_t is finite and the
    sum positive."""
    traces = [(e, p.trace.tolist()) for e, p in r.fisher()]
    return [(e, f(tr) if tr and all(map(math.isfinite, tr)) and sum(tr) > 0 else None) for e, tr in traces]


def _norm(r: RunResult) -> int:
    return max(r.config["timesteps"] - 1, 1)


def _of(label: str, f: Callable[[RunResult], Any]) -> Callable[[Runs], Any]:
    """`f` applied to run `label` of one seed's runs (MissingValue when that run did not finish)."""
    return lambda runs: f(run(runs, label))


# -- statistics: functions of one seed's runs ------------------------------------------------------------------

def tic(label: str) -> Statistic:
    """fisher.tic.tic_score of the run: below -TIC_MARGIN when information concentrated."""
    return _of(label, lambda r: tic_score(levels(r)))


def rise(label: str) -> Statistic:
    return _of(label, lambda r: ic_rise(levels(r, end=False)))


def block_tic(label: str, block: str) -> Statistic:
    return _of(label, lambda r: tic_score(levels(r, block)))


def ic_end(label: str) -> Statistic:
    """IC at the end of training / (T - 1): IC on the scale of its range."""
    return _of(label, lambda r: levels(r).end / _norm(r))


def ic_mid(label: str) -> Statistic:
    """Mean IC over the middle third of training / (T - 1)."""
    return _of(label, lambda r: window_mean(ic_series(r), r.config["epochs"], 1 / 3, 2 / 3) / _norm(r))


def ic_end_above_uniform(label: str) -> Statistic:
    """(IC at the end - (T + 1) / 2) / (T - 1): above 0 when I_t increases with t."""
    return _of(label, lambda r: (levels(r).end - (r.config["timesteps"] + 1) / 2) / _norm(r))


def block_gap(label: str, first: str, last: str) -> Statistic:
    """(IC of the first block - IC of the last block) at the end / (T - 1)."""
    return _of(label, lambda r: (levels(r, first).end - levels(r, last).end) / _norm(r))


def i1_lead(label: str) -> Statistic:
    """(I_1 - max_{t>1} I_t) / sum_t I_t at the last epoch: > 0 when the first timestep holds the most."""
    def stat(r):
        tr = trace_at_end(r)
        if len(tr) < 2 or sum(tr) <= 0:
            raise MissingValue("the Fisher trace at the end is empty or zero")
        return (tr[0] - max(tr[1:])) / sum(tr)
    return _of(label, stat)


def share_change(label: str, t: int) -> Statistic:
    """Share I_t / sum I_t of timestep t (0-based; -1 = T), end-of-training level minus early level."""
    def stat(r):
        series, n = _trace_series(r, lambda tr: tr[t] / sum(tr)), r.config["epochs"]
        what = f"the share of I_{t + 1 if t >= 0 else 'T'}"
        return window_mean(series, n, *END, what=what, include_lo=True) - window_mean(series, n, *EARLY, what=what)
    return _of(label, stat)


def late_share(label: str, after: int = 3) -> Statistic:
    """Share of the information after timestep `after` at the end, minus NEAR_ZERO_SHARE."""
    def stat(r):
        tr = trace_at_end(r)
        if sum(tr) <= 0:
            raise MissingValue("the Fisher trace at the end is zero")
        return sum(tr[after:]) / sum(tr) - NEAR_ZERO_SHARE
    return _of(label, stat)


def log_fisher_end(label: str) -> Statistic:
    """Mean over the end window of log sum_t I_t."""
    return _of(label, lambda r: window_mean(_trace_series(r, lambda tr: math.log(sum(tr))), r.config["epochs"],
                                            *END, what="log sum I_t", include_lo=True))


def transition(label: str) -> Statistic:
    """When the IC transition starts: the epoch (fraction of training) at which IC, averaged over three
    consecutive readings, is highest."""
    def stat(r):
        s = ic_series(r)
        bad = [e for e, v in s if v is None or not math.isfinite(v)]
        if bad:
            raise MissingValue(f"IC at epoch {bad[0]} is missing or not finite")
        if len(s) < 3:
            raise MissingValue("fewer than three IC readings")
        smooth = [(s[i][0], (s[i - 1][1] + s[i][1] + s[i + 1][1]) / 3) for i in range(1, len(s) - 1)]
        return max(smooth, key=lambda p: p[1])[0] / r.config["epochs"]
    return _of(label, stat)


def acc(label: str) -> Statistic:
    return _of(label, lambda r: final(r, "test_acc"))


def drop(label: str, attack: str) -> Statistic:
    """Table 1's drop: clean accuracy minus accuracy under `attack` (the paper's numbers in parentheses)."""
    def stat(r):
        a = analysis(r, "robustness")
        return _finite(a.get("clean"), "clean accuracy") - _finite(a.get(attack), f"{attack} accuracy")
    return _of(label, stat)


def _chance(r: RunResult) -> float:
    return 1 / DATASETS[r.config["dataset"]].num_classes


def _deficit_checkpoints(r: RunResult) -> list[dict]:
    cps = analysis(r, "deficits").get("checkpoints") or []
    if not cps:
        raise MissingValue("the deficits analysis holds no checkpoint")
    return cps


def first_clear_checkpoint(r: RunResult) -> dict | None:
    """The first deficits checkpoint in the first third of training whose clean accuracy is clearly above chance
    (Fig. 2 "at the beginning of training"), or None."""
    return next((c for c in _deficit_checkpoints(r)[:-1] if (c.get("epoch") or 0) <= EARLY[1] * r.config["epochs"]
                 and (c.get("clean") or 0) >= _chance(r) + ABOVE_CHANCE), None)


def deficit_first_window(label: str, when: str) -> Statistic:
    """Accuracy with noise in the first window minus in the last (Fig. 2) at the last checkpoint ("end") or at
    the first checkpoint clearly above chance ("start")."""
    def stat(r):
        c = _deficit_checkpoints(r)[-1] if when == "end" else first_clear_checkpoint(r)
        if c is None:
            raise MissingValue("no early checkpoint clearly above chance")
        rel = c.get("relative_accuracy") or [None]
        return _finite(rel[0], f"relative accuracy at epoch {c.get('epoch')}")
    return _of(label, stat)


def pruned(label: str, t_retrain: int) -> Statistic:
    """Test accuracy at the highest sparsity reached when retraining with T_retrain timesteps."""
    def stat(r):
        curve = analysis(r, "prune").get("curves", {}).get(str(t_retrain))
        if not curve or not curve.get("test_acc"):
            raise MissingValue(f"no pruning curve for T_retrain = {t_retrain}")
        return _finite(curve["test_acc"][-1], f"pruned accuracy (T_retrain = {t_retrain})")
    return _of(label, stat)


def diff(a: Statistic, b: Statistic) -> Statistic:
    return lambda runs: a(runs) - b(runs)


# -- preconditions ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Precondition:
    """What a claim's runs must satisfy to be testable: `check(runs)` gives the reason it fails, or None."""

    text: str
    check: Callable[[Runs], str | None]


def fits(label: str) -> Precondition:
    def check(r):
        loss = _finite((r.metrics[-1].get("horizon_loss") or [None])[-1], f"the training loss of run {label}")
        return None if loss <= FIT_LOSS else (
            f"run {label} ends at a training loss (mean-output CE) of {loss:.2g} > {FIT_LOSS:g}: not near zero")
    return Precondition(f"run {label} fits its training set (mean-output CE ≤ {FIT_LOSS:g} at the end)",
                        _of(label, check))


def fisher_tracked(label: str) -> Precondition:
    def check(r):
        epochs, n = [e for e, _ in r.fisher()], r.config["epochs"]
        if not epochs or epochs[0] != 0:
            return f"run {label} has no Fisher reading at initialisation"
        if not any(EARLY[0] * n < e <= EARLY[1] * n for e in epochs):
            return f"run {label} has no Fisher reading in the first third of training"
        if not any(END[0] * n <= e for e in epochs):
            return f"run {label} has no Fisher reading in the last fifth of training"
        return None
    return Precondition(f"run {label} measured Fisher at the start, in the first third and the last fifth",
                        _of(label, check))


def binds(label: str) -> Precondition:
    def check(r):
        below = r.metrics[-1].get("below_alpha_fraction")
        if not below:
            return f"run {label} did not train with the alpha-loss"
        share = sum(below) / len(below)
        return None if share >= ALPHA_BINDS else (
            f"alpha never binds in run {label} (L_t < alpha in {share:.0%} of the last epoch's steps)")
    return Precondition(f"the alpha-loss binds in run {label} (L_t < alpha in ≥ {ALPHA_BINDS:.0%} of the last "
                        "epoch's steps)", _of(label, check))


def above_chance(label: str, when: str) -> Precondition:
    def check(r):
        if when == "start":
            return None if first_clear_checkpoint(r) else (
                f"run {label} has no checkpoint in the first third of training with clean accuracy ≥ chance + "
                f"{ABOVE_CHANCE:g}")
        clean = _finite(_deficit_checkpoints(r)[-1].get("clean"), "clean accuracy at the last checkpoint")
        return None if clean >= _chance(r) + ABOVE_CHANCE else (
            f"run {label} is at {clean:.0%} clean accuracy at the end, not clearly above chance")
    return Precondition(f"run {label} is clearly above chance at the compared checkpoint", _of(label, check))


# -- a claim and how it is evaluated ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ClaimSpec:
    """A claim, the per-seed statistic that tests it, and the preconditions its runs must meet."""

    claim: Claim
    statistic: Statistic
    requires: tuple[Precondition, ...] = ()

    def evaluate(self, results: Mapping[int, Runs]) -> Verdict:
        """The verdict over seeds (`results[seed][label]`): a missing value is a missing seed with its reason;
        a failed precondition in any seed makes the claim untestable (its numbers are still shown)."""
        values, reasons, untestable = [], [], []
        for seed in sorted(results):
            try:
                untestable += [f"seed {seed}: {why}" for why in (p.check(results[seed]) for p in self.requires)
                               if why]
                values.append(self.statistic(results[seed]))
            except MissingValue as exc:
                values.append(None)
                reasons.append(f"seed {seed}: {exc}")
        return judge(self.claim, values, reasons=reasons, untestable=untestable)
