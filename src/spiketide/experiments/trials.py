"""Trials of the reproduction suite: one training run plus the analyses asked of it, in an ordinary run directory.

A trial is identified by its resolved training config (the options that change what is computed), so
experiments that need the same run share it. Running a trial is idempotent: a finished run is not
trained again, a half-finished one continues with `resume`, and an analysis whose result file exists is
not redone. Every write goes through the run directory's lock, so a retried trial never writes beside
another copy of itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from spiketide import callbacks
from spiketide.checkpoints import select_device
from spiketide.config import RUN_INVARIANT, TrainConfig
from spiketide.errors import CheckpointError, ConfigError
from spiketide.experiments import analyses
from spiketide.experiments.pruning import iterative_prune
from spiketide.fisher.profile import FisherProfile, read_profiles
from spiketide.runs import RunDir
from spiketide.train import Trainer

__all__ = ["Trial", "RunResult", "run_trial", "trial_id", "resolve_config", "logged_to", "ANALYSES"]


def trial_id(config: dict) -> str:
    """`<model>-<dataset>-<hash>` of the options that change what the run computes and differ from their
    defaults, so that adding an option (whose default keeps the old behaviour) leaves every id unchanged."""
    defaults = TrainConfig().to_dict()
    ident = {k: v for k, v in sorted(config.items()) if k not in RUN_INVARIANT and v != defaults.get(k, object())}
    digest = hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:10]
    return f"{config['model']}-{config['dataset']}-{digest}"


def resolve_config(config: dict) -> dict:
    """Every TrainConfig field, defaults filled in and checked: the form in which runs are compared."""
    unknown = set(config) - set(TrainConfig.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"unknown training options {sorted(unknown)}")
    return TrainConfig(**config).validate().to_dict()


@dataclass
class Trial:
    """A training config (TrainConfig fields) and the analyses to run on its result: name -> parameters."""

    config: dict
    analyses: dict[str, dict] = field(default_factory=dict)

    def __post_init__(self):
        self.config = resolve_config(self.config)

    @property
    def id(self) -> str:
        return trial_id(self.config)

    def run_dir(self, root: str | os.PathLike) -> Path:
        return Path(root) / "runs" / self.id


def _robustness(run: RunDir, config: TrainConfig, p: dict) -> dict:
    return analyses.robustness_suite(run.checkpoint_path(), samples=p["samples"], batch_size=p.get("batch_size", 128),
                                     pgd_iters=p.get("pgd_iters", 10), seed=config.seed, device=select_device("auto"))


def _deficits(run: RunDir, config: TrainConfig, p: dict) -> dict:
    return analyses.deficits([run.checkpoint_path(e) for e in p["epochs"]], window=p.get("window", 3),
                             samples=p["samples"], seed=config.seed, device=select_device("auto"))


def _prune(run: RunDir, config: TrainConfig, p: dict) -> dict:
    # Pruning has no resume of its own: a partial result is started again (overwrite).
    return iterative_prune(run.path, rounds=p["rounds"], rate=p.get("rate", 0.5), retrain_epochs=p["retrain_epochs"],
                           t_retrain=tuple(p["t_retrain"]), device="auto", progress=False, overwrite=True)


# The analyses a trial may ask for: name -> function writing nothing itself and returning the result.
ANALYSES: dict[str, Callable[[RunDir, TrainConfig, dict], dict]] = {
    "robustness": _robustness, "deficits": _deficits, "prune": _prune}


@contextlib.contextmanager
def logged_to(path: Path):
    """Send this process's stdout and stderr (Python and C level: Ray's core and compilers print there) to a log
    file for the duration."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush(), sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a") as log:
        os.dup2(log.fileno(), 1), os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            os.close(saved[0]), os.close(saved[1])


def run_trial(trial: Trial, root: str | os.PathLike, threads: int | None = None) -> dict[str, Any]:
    """Train (or finish) the trial's run and run its missing analyses; returns a short summary.

    Output goes to `<run>/trial.log`. Raises what training or an analysis raises.
    """
    if threads:
        torch.set_num_threads(int(threads))
    path = trial.run_dir(root)
    run = RunDir(path)
    config = TrainConfig.from_dict({**trial.config, "out": str(path), "progress": False, "device": "auto"})
    with logged_to(path / "trial.log"):
        result = RunResult(path)
        if not result.trained:
            resume = not run.is_empty()  # a half-finished trial continues where it stopped
            Trainer(config, callbacks=callbacks.from_config(config), run_dir=run, resume=resume).fit()
        with run.lock("spiketide reproduce"):
            for name, params in trial.analyses.items():
                if not (path / analyses.RESULT_FILES[name]).is_file():
                    result = {**ANALYSES[name](run, config, params), "analysis_params": params}
                    analyses.write(name, result, path)
    result = RunResult(path)
    return {"id": trial.id, "epochs": len(result.metrics) - 1, "test_acc": result.final("test_acc"),
            "train_loss": result.final("train_loss"), "seconds": sum(r.get("seconds") or 0 for r in result.metrics)}


class RunResult:
    """What a trial's run directory holds, read-only: metrics, Fisher records, analysis results."""

    def __init__(self, path: str | os.PathLike):
        self.run = RunDir(path)
        self._analyses: dict[str, dict] | None = None
        self._profiles: list[tuple[int, FisherProfile]] | None = None
        try:
            self.config = self.run.read_config() if self.run.exists() else {}
            self.metrics = self.run.read_metrics() if self.run.exists() else []
        except CheckpointError:
            self.config, self.metrics = {}, []

    @classmethod
    def from_records(cls, config: dict, metrics: list[dict], analyses: dict[str, dict] | None = None) -> RunResult:
        """A result held in memory (what a run directory would hold): for statistics on constructed runs."""
        self = cls.__new__(cls)
        self.run, self.config, self.metrics, self._analyses = None, dict(config), list(metrics), dict(analyses or {})
        self._profiles = None
        return self

    @property
    def trained(self) -> bool:
        return bool(self.metrics) and self.metrics[-1]["epoch"] == self.config.get("epochs")

    def done(self, analyses: dict) -> bool:
        return self.trained and all(self.analysis(a) is not None for a in analyses)

    def final(self, key: str):
        return self.metrics[-1].get(key) if self.trained else None

    def fisher(self) -> list[tuple[int, FisherProfile]]:
        """(epoch, Fisher profile) of every measured epoch, in order, read back once; empty unless the run finished."""
        if self._profiles is None:
            self._profiles = read_profiles(self.metrics) if self.trained else []
        return self._profiles

    def analysis(self, name: str) -> dict | None:
        if self._analyses is not None:
            return self._analyses.get(name)
        p = self.run.path / analyses.RESULT_FILES[name]
        try:
            return json.loads(p.read_text()) if p.is_file() else None
        except (OSError, json.JSONDecodeError):
            return None
