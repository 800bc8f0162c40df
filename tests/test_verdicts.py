"""Tests for spiketide.experiments.verdicts: constructed numbers, one case per outcome at least."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from spiketide.errors import ConfigError
from spiketide.experiments.verdicts import (
    Claim,
    format_mean_ci,
    judge,
    rule_text,
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
    assert "fewer than 2 seeds: inconclusive" in v.rule
    assert format_mean_ci(v) == "5 (n=1)"


def test_zero_spread_lets_the_mean_decide():
    v = judge(claim(), [0.5, 0.5, 0.5])
    assert v.ci95 == 0.0 and v.verdict == "holds"
    assert judge(claim("<0"), [0.5, 0.5, 0.5]).verdict == "contradicted"
    assert judge(claim("~0", margin=1.0), [0.5, 0.5]).verdict == "holds"
    assert judge(claim(), [0.0, 0.0, 0.0]).verdict == "inconclusive"  # exactly on the margin


def test_ci_half_width_is_student_t():
    values = [2.0, 4.0, 9.0]  # mean 5, s = sqrt(13)
    v = judge(claim(), values)
    expected = stats.t.ppf(0.975, 2) * math.sqrt(13) / math.sqrt(3)
    assert v.ci95 == pytest.approx(expected) and v.ci95 == pytest.approx(8.9566, abs=1e-3)
    assert v.verdict == "inconclusive"  # 5 − 8.96 < 0
    assert format_mean_ci(v) == "5.0 ± 9.0 (n=3)"
    assert format_mean_ci(judge(claim(), [0.2, -0.3, 0.1])) == "0.00 ± 0.66 (n=3)"  # 1e-17 shows as zero
    assert format_mean_ci(judge(claim(), [0.5, 0.5])) == "0.5 ± 0 (n=2)"
    assert format_mean_ci(judge(claim(), [1.0, 1.2, 1.5])) == "1.23 ± 0.63 (n=3)"
    assert format_mean_ci(judge(claim(), [74.63])) == "74.63 (n=1)"


def test_rule_and_test_text():
    c = Claim(id="tic", text="IC falls below its peak", paper="Fig. 1", statistic="IC_end − IC_peak + 1",
              direction="<0")
    assert rule_text(c) == ("holds if the 95% CI of mean(IC_end − IC_peak + 1) lies below 0; contradicted if it "
                            "lies above 0; else inconclusive; fewer than 2 seeds: inconclusive")
    assert "inside (−1, 1)" in rule_text(claim("~0", margin=1.0))
    assert judge(c, [1, 2, 3]).test == "one-sample t, 95% CI, 3 seeds"


def test_markdown_table_contains_rule_test_and_extra_columns():
    a = judge(claim(id="pgd", text="robust | more"), TIGHT_POS)
    b = judge(claim("~0", margin=1.0, id="acc"), [None, None])
    table = verdicts_table([a, b], extra_columns={"figure": {"pgd": "fig5.png"}, "n seeds": lambda v: str(v.n)})
    lines = table.splitlines()
    assert lines[0] == ("| claim | paper | ours (mean ± 95% CI, n) | verdict | rule and test | figure | n seeds |")
    assert len(lines) == 4 and lines[1].count("---") == 7
    assert a.rule in table and "test: one-sample t, 95% CI, 3 seeds" in table
    assert "robust \\| more" in lines[2] and "| holds |" in lines[2] and "fig5.png" in lines[2]
    assert "| missing |" in lines[3] and lines[3].endswith("|  | 0 |")
    assert all(line.count(" | ") == lines[0].count(" | ") for line in lines[2:])


def test_claim_validation():
    for bad in [dict(direction="=0"), dict(direction="~0", margin=0.0), dict(margin=-1.0),
                dict(margin=float("nan")), dict(test="wilcoxon")]:
        with pytest.raises(ConfigError):
            claim(**bad)
    with pytest.raises(ConfigError):
        judge(claim(), [1.0, "x"])
