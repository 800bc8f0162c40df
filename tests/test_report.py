"""`spiketide report` on synthetic run directories with a known answer: verdicts, Holm column, power, untestable
and missing seeds with their reasons, byte-identical output, one line for a damaged spec."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spiketide.cli import main
from spiketide.experiments.suite import EXPERIMENTS
from spiketide.experiments.trials import trial_id
from synthetic_runs import deficits_result, make_run, paper_like, robustness_result, write_run


def _world(root, nan_seed=None, underfit=False):
    """fig1, fig2, fig5 and table1 at cpu scale, 3 seeds: paper-like TIC, an early window that hurts, low alpha robust."""
    for name in ("fig1", "fig2", "fig5", "table1"):
        runs = {}
        for seed in range(3):
            rng = np.random.default_rng(seed)
            labels = {}
            for label, cfg in EXPERIMENTS[name].grid("cpu", seed).items():
                over = {k: v for k, v in cfg.items() if k in ("loss", "alpha", "seed")}
                d = {"alpha-low": 0.1, "alpha-intermediate": 0.2, "alpha-high": 0.4}.get(label, 0.15)
                run = make_run(over, ic=paper_like, ic_noise=0.1, rng=rng,
                               loss_end=1.4 if underfit and label in ("base", "ce") else 0.02,
                               nan_at=60 if seed == nan_seed else None,
                               below_alpha=0.3 if label.startswith("alpha") else None,
                               robustness=robustness_result(0.8, {k: d + rng.normal(0, 0.01)
                                                                  for k in ("pgd", "fgsm", "gaussian", "blur")}),
                               deficits=deficits_result([(1, 0.1, 0.3), (10, 0.7, rng.normal(0, 0.005)),
                                                         (60, 0.8, -0.04 + rng.normal(0, 0.005))]))
                assert trial_id(run.config) == trial_id(cfg)
                write_run(root, run)
                labels[label] = trial_id(run.config)
            runs[str(seed)] = labels
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "spec.json").write_text(json.dumps({"experiment": name, "scale": "cpu", "seeds": [0, 1, 2],
                                                           "runs": runs}))


def _row(report: str, claim_id: str) -> str:
    return next(line for line in report.splitlines() if f"| {claim_id}:" in line)


def test_report_verdicts_holm_and_power(tmp_path, capsys):
    _world(tmp_path)
    assert main(["report", str(tmp_path)]) == 0
    first = (tmp_path / "REPORT.md").read_text()
    assert "claims:" in first.splitlines()[2] and "Holm-adjusted" in first and "Family-wise error" in first
    assert "**holds**" in _row(first, "tic-base") and "**holds**" in _row(first, "early-window-hurts")
    assert "**holds**" in _row(first, "flat-at-start")  # epoch 1 is at chance: epoch 10 is compared
    assert "**holds**" in _row(first, "low-alpha-pgd")
    assert "3 of 3 seeds" in _row(first, "rise-first")
    fig1 = (tmp_path / "fig1" / "report.md").read_text()
    assert "| tic-base:" in fig1 and "seeds and power" in fig1
    # deterministic: the same run directories give a byte-identical REPORT.md
    assert main(["report", str(tmp_path)]) == 0
    assert (tmp_path / "REPORT.md").read_text() == first


def test_report_with_a_nan_record_and_an_underfit_run(tmp_path):
    _world(tmp_path, nan_seed=2, underfit=True)
    assert main(["report", str(tmp_path)]) == 0
    report = (tmp_path / "REPORT.md").read_text()
    assert "untestable at this scale" in _row(report, "tic-base") and "1.4 > 0.1" in _row(report, "tic-base")
    assert "(2 of 3 seeds)**" in _row(report, "alpha-high-later-ic")
    assert "3 of 3 seeds" in _row(report, "rise-first")  # it needs no fit and reads only the first third
    fig1 = (tmp_path / "fig1" / "report.md").read_text()
    assert "tic-base: untestable: seed 0: run base ends at a training loss" in fig1
    fig5 = (tmp_path / "fig5" / "report.md").read_text()
    assert "alpha-high-later-ic: missing: seed 2: IC at epoch 60 is missing or not finite" in fig5


@pytest.mark.parametrize("spec,needle", [
    ("[1, 2]", "is not an experiment spec"),
    ('{"experiment": "fig1", "scale": "cpu", "seeds": [0]}', "is not an experiment spec"),
    ("{not json", "is not readable JSON"),
])
def test_report_refuses_a_damaged_spec_in_one_line(tmp_path, capsys, spec, needle):
    (tmp_path / "fig1").mkdir()
    (tmp_path / "fig1" / "spec.json").write_text(spec)
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err
