"""Synthetic runs whose true answer is known, for the claim rules of the reproduction suite.

`make_run` builds what a finished run directory holds (config, metrics with Fisher records, analysis results)
from a few shapes: an IC trajectory over the fraction of training, noise, the training loss reached, accuracies,
robustness, deficits and pruning results. `write_run` puts one on disk as a real run directory. `null_world`
draws every run of the suite's experiments with no effect anywhere and realistic noise.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from spiketide.experiments.suite import EXPERIMENTS, base_config
from spiketide.experiments.trials import RunResult, resolve_config, trial_id

# r -> IC of the geometric trace I_t ∝ r^(t-1), tabulated once per T and inverted by interpolation
_TABLES: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _table(T: int) -> tuple[np.ndarray, np.ndarray]:
    if T not in _TABLES:
        log_r = np.linspace(-12, 12, 4001)
        w = np.exp(np.outer(log_r, np.arange(T)))
        _TABLES[T] = ((w * np.arange(1, T + 1)).sum(1) / w.sum(1), log_r)
    return _TABLES[T]


def traces_with_centroids(ics, T: int, total: float = 1.0) -> np.ndarray:
    """[len(ics), T]: rows I_1..I_T, geometric in t, whose centroids (Eq. 7) are `ics` and whose sums are `total`."""
    table, log_r = _table(T)
    ics = np.minimum(np.maximum(np.asarray(ics, dtype=float), table[0] + 1e-6), table[-1] - 1e-6)
    w = np.exp(np.outer(np.interp(ics, table, log_r), np.arange(T)))
    return total * w / w.sum(1, keepdims=True)


def trace_with_centroid(ic: float, T: int, total: float = 1.0) -> list[float]:
    return list(traces_with_centroids([ic], T, total)[0])


@functools.lru_cache(maxsize=None)
def _resolved(key: str) -> dict:
    return resolve_config({**base_config("cpu"), **json.loads(key)})


def paper_like(f: float, T: int = 6) -> float:
    """IC rising from uniform to a peak at 10% of training, then falling to 1.6 (Fig. 1's shape)."""
    mid = (T + 1) / 2
    return mid + 0.6 * f / 0.1 if f <= 0.1 else mid + 0.6 - (mid + 0.6 - 1.6) * min(1.0, (f - 0.1) / 0.7)


def flat(f: float, T: int = 6) -> float:
    return (T + 1) / 2


def rising(f: float, T: int = 6) -> float:
    return (T + 1) / 2 + 1.5 * f


def make_run(config: dict | None = None, *, ic: Callable[[float], float] = flat, ic_noise: float = 0.0,
             blocks: dict[str, Callable[[float], float]] | None = None, rng: np.random.Generator | None = None,
             loss_end: float = 0.02, acc: float = 0.8, total_fisher: float = 10.0, below_alpha: float | None = None,
             robustness: dict | None = None, deficits: list[dict] | None = None, prune: dict | None = None,
             nan_at: int | None = None, finished: bool = True) -> RunResult:
    """One finished run (in memory). `ic(fraction of training)` gives the IC at each Fisher reading, plus
    Gaussian `ic_noise`; `blocks` gives per-block IC functions; `nan_at` makes the Fisher record at that epoch
    NaN (written as null, as to_dict does); `finished=False` stops the metrics half-way (a diverged run)."""
    rng = rng or np.random.default_rng(0)
    cfg = dict(_resolved(json.dumps(config or {}, sort_keys=True)))
    T, n, every = cfg["timesteps"], cfg["epochs"], cfg["fisher_every"]
    fisher_epochs = sorted({0, n, *range(0, n + 1, every)}) if every else []
    fractions = [e / n for e in fisher_epochs]
    noise = (lambda: rng.normal(0, ic_noise, len(fractions))) if ic_noise else (lambda: 0.0)
    traces = traces_with_centroids(np.array([ic(f) for f in fractions]) + noise(), T, total_fisher)
    per_block = {b: traces_with_centroids(np.array([fn(f) for f in fractions]) + noise(), T,
                                          total_fisher / len(blocks)) for b, fn in (blocks or {}).items()}
    t = np.arange(1, T + 1)
    horizon = [loss_end * (1 + (T - k)) for k in range(1, T)] + [loss_end]
    metrics = []
    for e in sorted(set(fisher_epochs) | {n}):
        rec: dict = {"epoch": e, "train_loss": loss_end, "train_acc": 1.0, "test_acc": acc if e == n else None,
                     "horizon_loss": horizon}
        if below_alpha is not None:
            rec["below_alpha_fraction"] = [below_alpha] * T
        if e in fisher_epochs:
            i = fisher_epochs.index(e)
            f = {"trace": traces[i].tolist(), "centroid": float(t @ traces[i] / traces[i].sum())}
            if blocks:
                f["per_layer"] = {b: tr[i].tolist() for b, tr in per_block.items()}
            if e == nan_at:
                f = {"trace": [None] * T, "centroid": None}
            rec["fisher"] = f
        metrics.append(rec)
    if not finished:
        metrics = metrics[:len(metrics) // 2]
    analyses = {k: v for k, v in (("robustness", robustness), ("deficits", {"checkpoints": deficits}
                                                                if deficits is not None else None),
                                  ("prune", prune)) if v is not None}
    return RunResult.from_records(cfg, metrics, analyses)


def robustness_result(clean: float, drops: dict[str, float]) -> dict:
    return {"clean": clean, **{k: clean - d for k, d in drops.items()}}


def deficits_result(entries: list[tuple[int, float, float]]) -> list[dict]:
    """[(epoch, clean accuracy, first-window relative accuracy)] -> deficits checkpoints."""
    return [{"epoch": e, "clean": c, "window_starts": [1, 2, 3, 4], "relative_accuracy": [rel, rel / 2, rel / 4, 0.0]}
            for e, c, rel in entries]


def prune_result(final_acc: dict[int, float]) -> dict:
    return {"curves": {str(t): {"test_acc": [0.8, a]} for t, a in final_acc.items()}}


def write_run(root: Path, run: RunResult, analysis_files: dict[str, str] | None = None) -> Path:
    """Write a RunResult as an ordinary run directory under root/runs/<trial id>; returns its path."""
    path = Path(root) / "runs" / trial_id(run.config)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(run.config, indent=2))
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in run.metrics))
    files = {"robustness": "robustness.json", "deficits": "deficits.json", "prune": "pruning/pruning.json",
             **(analysis_files or {})}
    for name, result in (run._analyses or {}).items():
        (path / files[name]).parent.mkdir(parents=True, exist_ok=True)
        (path / files[name]).write_text(json.dumps(result))
    return path


# -- a world with no effect anywhere -----------------------------------------------------------------------------

def null_run(config: dict, rng: np.random.Generator, seed_offset: dict[str, float], blocks: bool = False
             ) -> RunResult:
    """One run of the null world: IC flat at the uniform value with seed-level and reading noise, every
    accuracy, drop and pruning result the same in distribution for every configuration."""
    cfg = _resolved(json.dumps(config, sort_keys=True))
    T = cfg["timesteps"]
    level = (T + 1) / 2 + seed_offset["ic"] * (T - 1) / 5
    n = cfg["epochs"]
    blocks = {b: (lambda f, lv=level + rng.normal(0, 0.15): lv) for b in ("block1", "block2")} if blocks else None
    clean = 0.8 + seed_offset["acc"] + rng.normal(0, 0.015)
    drops = {"pgd": 0.25, "fgsm": 0.22, "gaussian": 0.1, "blur": 0.12}
    checkpoints = sorted(set(cfg["checkpoint_epochs"] or [n]))
    return make_run(config, ic=lambda f: level, ic_noise=0.2, blocks=blocks, rng=rng,
                    total_fisher=float(np.exp(rng.normal(math.log(10), 0.3))),
                    acc=clean, below_alpha=0.3 if cfg["loss"] == "alpha" else None,
                    robustness=robustness_result(clean, {k: d + rng.normal(0, 0.02) for k, d in drops.items()}),
                    deficits=deficits_result([(e, 0.8, rng.normal(0, 0.01)) for e in checkpoints]),
                    prune=prune_result({t: 0.75 + rng.normal(0, 0.01) for t in (2, 3, 5)}))


@functools.lru_cache(maxsize=None)
def _grid(seed: int, scale: str) -> tuple[tuple[str, str, str, dict], ...]:
    """(experiment, label, config key, config) for every run of every experiment at one seed."""
    return tuple((name, label, json.dumps(cfg, sort_keys=True), cfg)
                 for name, exp in EXPERIMENTS.items() for label, cfg in exp.grid(scale, seed).items())


def null_world(rng: np.random.Generator, seeds: int = 3, scale: str = "cpu") -> dict[str, dict[int, dict]]:
    """experiment -> seed -> label -> RunResult, every run drawn from the null world (runs that experiments share
    are drawn once per seed, as in the suite)."""
    out: dict[str, dict[int, dict]] = {}
    for seed in range(seeds):
        offset = {"ic": rng.normal(0, 0.2), "acc": rng.normal(0, 0.01)}
        drawn: dict[str, RunResult] = {}
        for name, label, key, cfg in _grid(seed, scale):
            if key not in drawn:  # per-block Fisher only on the base run (Fig. 3)
                drawn[key] = null_run(cfg, rng, offset, blocks=label == "base")
            out.setdefault(name, {}).setdefault(seed, {})[label] = drawn[key]
    return out
