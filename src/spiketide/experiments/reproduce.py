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

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spiketide import progress
from spiketide.errors import ConfigError
from spiketide.experiments.report import failure_path, write_reports
from spiketide.experiments.suite import EXPERIMENTS, SCALES, resolve_names, trial_seconds
from spiketide.experiments.trials import RunResult, Trial, run_trial
from spiketide.runs import atomic_write_json

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
                atomic_write_json(failure_path(root, i), out)
                line = f"FAILED {i}: {out['error']} (log: {log})"
            else:
                failure_path(root, i).unlink(missing_ok=True)
                line = (f"done {i}: test acc {out['test_acc']:.3f}, train loss {out['train_loss']:.4f}, "
                        f"{out['seconds']:.0f} s")
            outcomes[i] = out
            bar.write(f"[{len(outcomes)}/{len(trials)}, {time.monotonic() - start:.0f} s] {line}")
            bar.update(1)
    return outcomes


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

