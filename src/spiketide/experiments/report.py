"""Reports of the reproduction suite: each experiment's verdicts, figure and runs (`<exp>/report.md`) and the
overview over every experiment in a results folder (`REPORT.md`), rebuilt from the run directories alone.

All claims found in the folder form one family: beside each claim's own verdict (95% CI) the report gives its
Holm-adjusted verdict, under which the chance of any false "holds" or "contradicted" in the family is at most 5%.
The same run directories give a byte-identical REPORT.md.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from spiketide import plots
from spiketide.errors import ConfigError
from spiketide.experiments.figures import FIGURES
from spiketide.experiments.suite import EXPERIMENTS, SCALES
from spiketide.experiments.trials import RunResult
from spiketide.experiments.verdicts import (LEVEL, OUTCOMES, POWER, Verdict, format_mean_ci, format_power,
                                            format_verdict, holm, verdicts_table)
from spiketide.runs import RunDir, atomic_write_text
from spiketide.tables import markdown_table

__all__ = ["write_reports", "failure_path", "read_spec"]


def failure_path(root: Path, trial: str) -> Path:
    """Where a failed trial's error is kept (outside its run directory, which may be what failed)."""
    return root / "failed" / f"{trial}.json"


def read_spec(path: Path) -> dict:
    """An experiment's spec.json, checked: one line naming the file and what is wrong, never a traceback."""
    fix = "rerun `spiketide reproduce` with the same experiments to rewrite it"
    try:
        spec = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} is not readable JSON ({exc}); {fix}") from None
    ok = (isinstance(spec, dict) and isinstance(spec.get("experiment"), str) and spec.get("scale") in SCALES
          and isinstance(spec.get("seeds"), list) and isinstance(spec.get("runs"), dict) and spec["runs"]
          and all(isinstance(v, dict) and v and all(isinstance(t, str) for t in v.values())
                  for v in spec["runs"].values()))
    if not ok:
        raise ConfigError(f"{path} is not an experiment spec (it needs experiment, scale, seeds and runs: "
                          f"seed -> label -> trial id); {fix}")
    try:
        [int(s) for s in spec["runs"]]
    except ValueError:
        raise ConfigError(f"{path}: the seeds under runs must be integers; {fix}") from None
    return spec


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
            if failed.is_file():
                try:
                    f = json.loads(failed.read_text())
                    why = f"failed: {f.get('error')} (log: {f.get('log')})" if isinstance(f, dict) else "failed"
                except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                    why = f"failed (its record {failed} is unreadable)"
                lines.append(f"seed {seed}, {label}: {why}")
            elif not RunResult(root / "runs" / tid).trained:
                lines.append(f"seed {seed}, {label}: not finished (runs/{tid})")
    return lines


def _runs_table(spec: dict) -> str:
    seeds = list(spec["runs"])
    labels = list(next(iter(spec["runs"].values())))
    return markdown_table(["label", *[f"seed {s}" for s in seeds]],
                          [[label, *[f"[{spec['runs'][s][label]}](../runs/{spec['runs'][s][label]})"
                                     if label in spec["runs"][s] else "" for s in seeds]] for label in labels])


def write_reports(root: str | os.PathLike) -> Path:
    """Rebuild `<exp>/report.md` (+ figure) for every experiment in `root` and `REPORT.md`; trains nothing."""
    root = Path(root)
    paths = sorted(root.glob("*/spec.json"))
    if not paths:
        raise ConfigError(f"{root} holds no experiments (no */spec.json); run `spiketide reproduce NAME --out {root}`")
    found = []
    for path in paths:
        spec = read_spec(path)
        exp = EXPERIMENTS.get(spec["experiment"])
        if exp is None:
            continue
        results = _results(root, spec)
        found.append((path, spec, exp, results, [c.evaluate(results) for c in exp.claims(spec["scale"])]))
    family = holm([v for *_, verdicts in found for v in verdicts])  # one family: every claim in the folder
    overview = []
    for path, spec, exp, results, verdicts in found:
        verdicts, family = family[:len(verdicts)], family[len(verdicts):]
        figs = plots.save(FIGURES[exp.figure](results, exp.title), path.parent / exp.name)
        missing = _missing(root, spec)
        notes = [f"- {v.claim.id}: {kind}: {why}" for v in verdicts
                 for kind, whys in (("untestable", v.untestable), ("missing", v.reasons)) for why in whys]
        body = [f"# {exp.name}: {exp.title}", "",
                f"Scale `{spec['scale']}`, seeds {', '.join(map(str, spec['seeds']))}. Verdicts are computed from "
                "the run directories below by the rule and test stated in each row; a missing run is reported, "
                "never filled in. The Holm-adjusted verdict counts every claim in this results folder as one "
                "family.", "", verdicts_table(verdicts), "", f"![{exp.name}]({figs[0].name})", ""]
        if notes:
            body += ["Why a claim is untestable or a seed missing:", *notes, ""]
        if missing:
            body += ["Missing runs:", *[f"- {m}" for m in missing], ""]
        body += ["Runs:", "", _runs_table(spec), ""]
        atomic_write_text(path.parent / "report.md", "\n".join(body))
        overview += [(exp.name, v) for v in verdicts]
    atomic_write_text(root / "REPORT.md", _overview(overview))
    return root / "REPORT.md"


def _overview(overview: list[tuple[str, Verdict]]) -> str:
    def summary(counts: Counter) -> str:
        return "; ".join(f"{counts[o]} {o}" for o in OUTCOMES if counts[o])

    tested = sum(1 for _, v in overview if v.p is not None and v.verdict != "untestable")
    zero = [f"{name}/{v.claim.id}" for name, v in overview if v.zero_spread]
    lines = [
        "# Reproduction report", "",
        f"{len(overview)} claims: {summary(Counter(v.verdict for _, v in overview))}.", "",
        f"Family-wise error: {tested} claims were tested (a p-value from at least two seeds with a spread). Each "
        f"claim's own verdict uses its 95% CI, so with {tested} claims some false verdicts are expected by chance; "
        f"the Holm-adjusted verdict (step-down over those {tested} claims, level {LEVEL:g}) keeps the chance of any "
        f"false \"holds\" or \"contradicted\" in the whole table at most {LEVEL:.0%}. After adjustment: "
        f"{summary(Counter(v.holm for _, v in overview))}.", "",
        "Untestable: a precondition of the claim failed in at least one seed (the runs are not in the regime the "
        "claim is about), so no amount of seeds at this scale decides it. Inconclusive: the CI straddles the "
        f"boundary; the power column gives the effect the seeds could detect with {POWER:.0%} power and, at the "
        "observed mean and spread, how many seeds a conclusive verdict would need.", "",
    ]
    if zero:
        lines += [f"Zero spread (every seed gave the same number, so no test): {', '.join(zero)}.", ""]
    lines.append(markdown_table(
        ["experiment", "claim", "paper", "ours (mean ± 95% CI, n)", "verdict", "Holm-adjusted", "seeds and power",
         "figure"],
        [[f"[{name}]({name}/report.md)", f"{v.claim.id}: {v.claim.text}", v.claim.paper, format_mean_ci(v),
          f"**{format_verdict(v)}**", format_verdict(v, holm_adjusted=True), format_power(v),
          f"[png]({name}/{name}.png)"] for name, v in overview]))
    return "\n".join(lines) + "\n"
