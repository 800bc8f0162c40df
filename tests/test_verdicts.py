"""Tests for spiketide.experiments.verdicts: constructed numbers, one case per outcome at least."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from spiketide.errors import ConfigError
from spiketide.experiments.verdicts import (
    Claim,
    format_mean_ci,
    format_power,
    format_verdict,
    holm,
    judge,
    rule_text,
    seeds_for,
    verdicts_table,
)


def claim(direction=">0", margin=0.0, **kw):
    kw = {"id": "c1", "text": "a claim", "paper": "74.63 vs 32.58", "statistic": "a − b", **kw}
    return Claim(direction=direction, margin=margin, **kw)


TIGHT_POS, TIGHT_NEG, WIDE = [1.0, 1.1, 0.9], [-1.0, -1.1, -0.9], [-1.0, 0.0, 1.5]


@pytest.mark.parametrize("direction,values,expected", [
    (">0", TIGHT_POS, "holds"), (">0", TIGHT_NEG, "contradicted"), (">0", WIDE, "inconclusive"),
    ("<0", TIGHT_NEG, "holds"), ("<0", TIGHT_POS, "contradicted"), ("<0", WIDE, "inconclusive"),
])
def test_directional_outcomes(direction, values, expected):
    v = judge(claim(direction), values)
    assert v.verdict == expected and v.n == 3 and v.missing == 0
    assert v.mean == pytest.approx(sum(values) / 3)


def test_margin_is_a_magnitude_on_the_claimed_side():
    # positive, but the whole CI is below the claimed size of the effect: contradicted
    assert judge(claim(">0", margin=0.5), [0.3, 0.35, 0.25]).verdict == "contradicted"
    assert judge(claim(">0", margin=0.5), [1.0, 1.1, 0.9]).verdict == "holds"
    assert judge(claim("<0", margin=0.5), [-1.0, -1.1, -0.9]).verdict == "holds"
    assert judge(claim("<0", margin=0.5), [-0.3, -0.35, -0.25]).verdict == "contradicted"


@pytest.mark.parametrize("values,expected", [
    ([0.1, -0.1, 0.0], "holds"),            # CI ±0.25 inside (−1, 1)
    ([3.0, 3.1, 2.9], "contradicted"),      # CI wholly above +1
    ([-3.0, -3.1, -2.9], "contradicted"),   # CI wholly below −1
    ([0.0, 2.0, -1.0], "inconclusive"),     # CI straddles the band's edges
    ([0.8, 0.9, 1.0], "inconclusive"),      # CI crosses +1
])
def test_equivalence_outcomes(values, expected):
    assert judge(claim("~0", margin=1.0), values).verdict == expected


def test_all_missing():
    v = judge(claim(), [None, float("nan"), None])
    assert (v.verdict, v.n, v.missing, v.mean, v.ci95) == ("missing", 0, 3, None, None)
    assert format_mean_ci(v) == "missing (0 of 3 seeds)"


def test_partial_missing_counts_gaps_and_never_imputes():
    v = judge(claim(), [1.0, None, 1.2, float("nan"), 0.8, float("inf")])
    assert v.n == 3 and v.missing == 3
    assert v.values == (1.0, None, 1.2, None, 0.8, None)
    assert v.mean == pytest.approx(1.0)
    assert v.ci95 == pytest.approx(stats.t.ppf(0.975, 2) * 0.2 / math.sqrt(3))
    assert v.verdict == "holds" and "3 seeds" in v.test
    assert format_mean_ci(v).endswith("(n=3, 3 missing)")


def test_single_seed_is_inconclusive():
    v = judge(claim(), [5.0])
    assert (v.verdict, v.n, v.mean, v.ci95) == ("inconclusive", 1, 5.0, None)
    assert "fewer than 2 seeds or zero spread: inconclusive" in v.rule
    assert format_mean_ci(v) == "5 (n=1)"


def test_zero_spread_is_no_test_and_is_flagged():
    # every seed the same number: no estimate of the noise, so no verdict however far the mean is from 0
    for c, values in ((claim(), [0.5, 0.5, 0.5]), (claim("<0"), [0.5, 0.5, 0.5]), (claim("~0", margin=1.0), [0.5, 0.5])):
        v = judge(c, values)
        assert v.verdict == "inconclusive" and v.zero_spread and v.p is None and v.ci95 == 0.0
    v = judge(claim(), [2.5, 2.5, 2.5])
    assert format_mean_ci(v) == "2.5 ± 0 (n=3, zero spread)" and format_verdict(v) == "inconclusive (zero spread)"


def test_p_value_decides_exactly_when_the_ci_excludes_the_boundary():
    rng = np.random.default_rng(3)
    for direction, margin in ((">0", 0.0), ("<0", 0.3), ("~0", 0.5)):
        c = claim(direction, margin=margin)
        for _ in range(300):
            v = judge(c, list(rng.normal(rng.normal(0, 0.5), 0.4, 3)))
            lo, hi = v.mean - v.ci95, v.mean + v.ci95
            if direction == ">0":
                by_ci = "holds" if lo > margin else "contradicted" if hi < margin else "inconclusive"
            elif direction == "<0":
                by_ci = "holds" if hi < -margin else "contradicted" if lo > -margin else "inconclusive"
            else:
                by_ci = ("holds" if -margin < lo and hi < margin else
                         "contradicted" if lo > margin or hi < -margin else "inconclusive")
            assert v.verdict == by_ci and ((v.p < 0.05) == (by_ci != "inconclusive"))


def test_power_detectable_effect_and_seeds_needed():
    v = judge(claim(), [0.1, 0.5, -0.1])  # mean 0.167, s 0.306: inconclusive at n = 3
    assert v.verdict == "inconclusive"
    factor = stats.t.ppf(0.975, 2) + stats.t.ppf(0.8, 2)
    assert v.detectable == pytest.approx(factor * v.sd / math.sqrt(3))
    n = v.seeds_needed
    need = lambda k: (stats.t.ppf(0.975, k - 1) + stats.t.ppf(0.8, k - 1)) * v.sd / math.sqrt(k)  # noqa: E731
    assert need(n) < v.mean <= need(n - 1)
    assert "needs ~" in format_power(v) and "3 of 3 seeds" in format_power(v)
    assert seeds_for(0.0, 1.0) is None and seeds_for(1.0, 0.0) is None and seeds_for(1e-6, 1.0) == 1001


def test_holm_adjusts_over_the_family():
    strong = judge(claim(), [1.0, 1.1, 0.9])  # p ~ 0.004
    weak = judge(claim(), [0.3, 0.5, 0.4])    # p ~ 0.012
    assert strong.verdict == weak.verdict == "holds"
    alone = holm([strong, weak])
    assert [v.holm for v in alone] == ["holds", "holds"]
    crowd = holm([strong, weak] + [judge(claim(), [-1.0, 0.0, 1.5])] * 8)
    assert crowd[1].holm == "inconclusive" and crowd[1].verdict == "holds"  # 10 tests: 0.012 x 9 > 0.05
    assert format_verdict(crowd[1], holm_adjusted=True) == "inconclusive"
    untestable = judge(claim(), [1.0, 1.1, 0.9], untestable=["seed 0: run base ends at a training loss of 1.4"])
    assert holm([untestable])[0].holm == "untestable" and untestable.verdict == "untestable"
    assert format_verdict(untestable).startswith("untestable at this scale: seed 0: run base")


def test_ci_half_width_is_student_t():
    values = [2.0, 4.0, 9.0]  # mean 5, s = sqrt(13)
    v = judge(claim(), values)
    expected = stats.t.ppf(0.975, 2) * math.sqrt(13) / math.sqrt(3)
    assert v.ci95 == pytest.approx(expected) and v.ci95 == pytest.approx(8.9566, abs=1e-3)
    assert v.verdict == "inconclusive"  # 5 − 8.96 < 0
    assert format_mean_ci(v) == "5.0 ± 9.0 (n=3)"
    assert format_mean_ci(judge(claim(), [0.2, -0.3, 0.1])) == "0.00 ± 0.66 (n=3)"  # 1e-17 shows as zero
    assert format_mean_ci(judge(claim(), [0.5, 0.5])) == "0.5 ± 0 (n=2, zero spread)"
    assert format_mean_ci(judge(claim(), [1.0, 1.2, 1.5])) == "1.23 ± 0.63 (n=3)"
    assert format_mean_ci(judge(claim(), [74.63])) == "74.63 (n=1)"


def test_rule_and_test_text():
    c = Claim(id="tic", text="IC falls below its peak", paper="Fig. 1", statistic="IC_end − IC_peak + 1",
              direction="<0")
    assert rule_text(c) == ("holds if the 95% CI of mean(IC_end − IC_peak + 1) lies below 0; contradicted if it "
                            "lies above 0; else inconclusive; fewer than 2 seeds or zero spread: inconclusive")
    assert "inside (−1, 1)" in rule_text(claim("~0", margin=1.0))
    assert judge(c, [1, 2, 3]).test == "one-sample t, 95% CI, 3 seeds"


def test_markdown_table_contains_rule_test_and_extra_columns():
    a = judge(claim(id="pgd", text="robust | more"), TIGHT_POS)
    b = judge(claim("~0", margin=1.0, id="acc"), [None, None])
    table = verdicts_table([a, b], extra_columns={"figure": {"pgd": "fig5.png"}, "n seeds": lambda v: str(v.n)})
    lines = table.splitlines()
    assert lines[0] == ("| claim | paper | ours (mean ± 95% CI, n) | verdict | Holm-adjusted | seeds and power | "
                        "rule and test | figure | n seeds |")
    assert len(lines) == 4 and lines[1].count("---") == 9
    assert a.rule in table and "test: one-sample t, 95% CI, 3 seeds" in table
    assert "robust \\| more" in lines[2] and "| holds |" in lines[2] and "fig5.png" in lines[2]
    assert "| missing |" in lines[3] and lines[3].endswith("|  | 0 |")
    assert "3 of 3 seeds" in lines[2] and "0 of 2 seeds" in lines[3]
    assert all(line.count(" | ") == lines[0].count(" | ") for line in lines[2:])


def test_claim_validation():
    for bad in [dict(direction="=0"), dict(direction="~0", margin=0.0), dict(margin=-1.0),
                dict(margin=float("nan")), dict(test="wilcoxon")]:
        with pytest.raises(ConfigError):
            claim(**bad)
    with pytest.raises(ConfigError):
        judge(claim(), [1.0, "x"])
