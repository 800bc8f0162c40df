"""Reports of the reproduction suite: each experiment's verdicts, figure and runs (`<exp>/report.md`) and the
overview over every experiment in a results folder (`REPORT.md`), rebuilt from the run directories alone."""

from __future__ import annotations

import json
import os
from pathlib import Path

from spiketide import plots
from spiketide.errors import ConfigError
from spiketide.experiments.figures import FIGURES
from spiketide.experiments.suite import EXPERIMENTS
from spiketide.experiments.trials import RunResult
from spiketide.experiments.verdicts import format_mean_ci, judge, verdicts_table
from spiketide.runs import RunDir, atomic_write_text

__all__ = ["write_reports", "failure_path"]


def failure_path(root: Path, trial: str) -> Path:
    """Where a failed trial's error is kept (outside its run directory, which may be what failed)."""
    return root / "failed" / f"{trial}.json"


def _results(root: Path, spec: dict) -> dict[int, dict[str, RunResult | None]]:
    return {int(seed): {label: RunResult(root / "runs" / tid) if RunDir(root / "runs" / tid).exists() else None
                        for label, tid in labels.items()}
            for seed, labels in spec["runs"].items()}


def _missing(root: Path, spec: dict) -> list[str]:
    """One line per run the report could not use, with why."""
    lines = []
    for seed, labels in spec["runs"].items():
        for label, tid in labels.items():
            failed = failure_path(root, tid)
            result = RunResult(root / "runs" / tid)
            if failed.is_file():
                f = json.loads(failed.read_text())
                lines.append(f"seed {seed}, {label}: failed: {f.get('error')} (log: {f.get('log')})")
            elif not result.trained:
                lines.append(f"seed {seed}, {label}: not finished (runs/{tid})")
    return lines


def write_reports(root: str | os.PathLike) -> Path:
    """Rebuild `<exp>/report.md` (+ figure) for every experiment in `root` and `REPORT.md`; trains nothing."""
    root = Path(root)
    specs = sorted(root.glob("*/spec.json"))
    if not specs:
        raise ConfigError(f"{root} holds no experiments (no */spec.json); run `spiketide reproduce NAME --out {root}`")
    overview = []
    for path in specs:
        try:
            spec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path} is not valid JSON ({exc}); rerun `spiketide reproduce` to rewrite it") from None
        exp = EXPERIMENTS.get(spec["experiment"])
        if exp is None:
            continue
        results = _results(root, spec)
        verdicts = [judge(c.claim, [c.statistic(results[s]) for s in sorted(results)]) for c in exp.claims(spec["scale"])]
        figs = plots.save(FIGURES[exp.figure](results, exp.title), path.parent / exp.name)
        missing = _missing(root, spec)
        seeds = ", ".join(map(str, spec["seeds"]))
        runs_table = "\n".join(
            [f"| label | {' | '.join(f'seed {s}' for s in spec['runs'])} |", "|---|" + "---|" * len(spec["runs"])]
            + [f"| {label} | " + " | ".join(f"[{spec['runs'][s][label]}](../runs/{spec['runs'][s][label]})"
                                            for s in spec["runs"]) + " |" for label in next(iter(spec["runs"].values()))])
        body = [f"# {exp.name}: {exp.title}", "",
                f"Scale `{spec['scale']}`, seeds {seeds}. Verdicts are computed from the run directories below by "
                "the rule and test stated in each row; a missing run is reported, never filled in.", "",
                verdicts_table(verdicts), "", f"![{exp.name}]({figs[0].name})", ""]
        if missing:
            body += ["Missing runs:", *[f"- {m}" for m in missing], ""]
        body += ["Runs:", "", runs_table, ""]
        atomic_write_text(path.parent / "report.md", "\n".join(body))
        overview += [(exp.name, v) for v in verdicts]
    lines = ["# Reproduction report", "",
             "Each row is one claim of the paper, its statistic per seed and the verdict computed from them; "
             "see each experiment's report.md for its runs and figure.", "",
             "| experiment | claim | paper | ours (mean ± 95% CI, n) | verdict | figure |", "|---|---|---|---|---|---|"]
    for name, v in overview:
        lines.append(f"| [{name}]({name}/report.md) | {v.claim.text} | {v.claim.paper} | {format_mean_ci(v)} | "
                     f"**{v.verdict}** | [png]({name}/{name}.png) |")
    report = root / "REPORT.md"
    atomic_write_text(report, "\n".join(lines) + "\n")
    return report
