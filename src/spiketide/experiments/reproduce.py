"""`spiketide reproduce`: the paper's figures and tables over several seeds, trials scheduled on Ray, and a
report with a computed verdict per claim.

Layout of `--out` (default `experiments/`):
    runs/<trial id>/        one ordinary run directory per distinct training run, shared by experiments
    <experiment>/spec.json  which runs (seed x label) the experiment reads, at which scale
    <experiment>/report.md  its verdicts table and figure (PNG + PDF)
    REPORT.md               one table over every experiment found in the folder

Rerunning the same command skips finished trials and resumes half-finished ones (each trial is
idempotent and holds its run directory's lock while it writes); `spiketide report` rebuilds every
report from the run directories without training.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spiketide import plots, progress
from spiketide.errors import ConfigError
from spiketide.experiments.figures import FIGURES
from spiketide.experiments.suite import EXPERIMENTS, SCALES, resolve_names, trial_seconds
from spiketide.experiments.trials import RunResult, Trial, run_trial
from spiketide.experiments.verdicts import format_mean_ci, judge, verdicts_table
from spiketide.runs import RunDir, atomic_write_json, atomic_write_text

__all__ = ["plan", "schedule", "reproduce", "write_reports", "list_experiments"]


def plan(names: Sequence[str], scale: str, seeds: Sequence[int]) -> tuple[dict[str, Trial], dict[str, dict]]:
    """The distinct trials the experiments need, and each experiment's spec (seed -> label -> trial id)."""
    if scale not in SCALES:
        raise ConfigError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    trials: dict[str, Trial] = {}
    specs: dict[str, dict] = {}
    for name in resolve_names(list(names)):
        exp = EXPERIMENTS[name]
        runs: dict[str, dict[str, str]] = {}
        for seed in seeds:
            for label, config in exp.grid(scale, seed).items():
                new = Trial(config)
                trial = trials.setdefault(new.id, new)
                for analysis, params in exp.analyses(scale, label).items():
                    trial.analyses.setdefault(analysis, params)
                runs.setdefault(str(seed), {})[label] = trial.id
        specs[name] = {"experiment": name, "scale": scale, "seeds": list(seeds), "runs": runs}
    # Longest first, so that no long trial starts last and leaves the other workers idle at the end.
    order = sorted(trials.values(), key=lambda t: -trial_seconds(scale, t.config, t.analyses))
    return {t.id: t for t in order}, specs


def _remote_trial(trial: Trial, root: str, threads: int) -> dict[str, Any]:
    """Runs inside a Ray worker: a failure comes back as a result, so the other trials go on."""
    try:
        return run_trial(trial, root, threads)
    except BaseException as exc:  # noqa: BLE001 - reported with the log's path, never raised into the driver
        return {"id": trial.id, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]}


def _ray(workers: int | None, address: str | None):
    try:
        import ray
    except ImportError:
        raise ConfigError('reproduce schedules its trials on Ray, which is not installed: pip install '
                          '"spiketide[sweep]"') from None
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    return ray


def schedule(trials: dict[str, Trial], root: str | os.PathLike, *, workers: int | None = None,
             address: str | None = None, cpus_per_trial: int = 1, gpus_per_trial: float = 0,
             show_progress: bool = True) -> dict[str, dict]:
    """Run every unfinished trial on Ray; returns trial id -> summary (or {"error", "log"})."""
    root = Path(root)
    todo = {i: t for i, t in trials.items() if not RunResult(t.run_dir(root)).done(t.analyses)}
    outcomes: dict[str, dict] = {i: {"id": i, "skipped": True} for i in trials if i not in todo}
    if not todo:
        return outcomes
    ray = _ray(workers, address)
    remote = ray.remote(_remote_trial).options(num_cpus=cpus_per_trial, num_gpus=gpus_per_trial, max_retries=1)
    pending = {remote.remote(t, str(root), cpus_per_trial): i for i, t in todo.items()}
    start = time.monotonic()
    with progress.bar(len(trials), "trials", enabled=show_progress, unit="trial", leave=True) as bar:
        bar.update(len(outcomes))
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(ready[0])
            out = ray.get(ready[0])
            log = trials[i].run_dir(root) / "trial.log"
            if "error" in out:
                out["log"] = str(log)
                atomic_write_json(_failure(root, i), out)
                line = f"FAILED {i}: {out['error']} (log: {log})"
            else:
                _failure(root, i).unlink(missing_ok=True)
                line = (f"done {i}: test acc {out['test_acc']:.3f}, train loss {out['train_loss']:.4f}, "
                        f"{out['seconds']:.0f} s")
            outcomes[i] = out
            bar.write(f"[{len(outcomes)}/{len(trials)}, {time.monotonic() - start:.0f} s] {line}")
            bar.update(1)
    return outcomes


def _failure(root: Path, trial: str) -> Path:
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
            failed = _failure(root, tid)
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


def reproduce(names: Sequence[str], scale: str, seeds: Sequence[int], out: str | os.PathLike, **schedule_options
              ) -> tuple[Path, dict[str, dict]]:
    """Plan, schedule and report; returns (REPORT.md, trial outcomes)."""
    root = Path(out)
    trials, specs = plan(names, scale, seeds)
    for name, spec in specs.items():
        atomic_write_json(root / name / "spec.json", spec)
    outcomes = schedule(trials, root, **schedule_options)
    return write_reports(root), outcomes


def list_experiments() -> str:
    """Every experiment with its claims and estimated cost per scale (runs shared between experiments are counted
    in each)."""
    lines = []
    for name, exp in EXPERIMENTS.items():
        cost = (f"smoke {exp.hours('smoke', 1) * 60:.1f} trial-min per seed; cpu {exp.hours('cpu', 3):.1f} trial-h for "
                f"3 seeds (half that with --workers 2); paper {exp.hours('paper', 1):.1f} GPU-h per seed")
        lines.append(f"{name}: {exp.title}\n    cost: {cost}")
        lines += [f"    - {c.claim.text} (paper: {c.claim.paper})" for c in exp.claims("paper")]
    return "\n".join(lines)

