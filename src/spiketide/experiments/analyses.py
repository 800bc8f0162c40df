"""Analyses of a run's checkpoints, one function each, called alike by the CLI commands and the reproduction trials.

Each function loads what it needs (the checkpoint's model and a seeded, class-balanced split of its dataset),
computes and returns a JSON-ready result; it writes nothing. `write` puts a result into the run directory
under its one file name (`RESULT_FILES`), with its Markdown table and figures. Pruning (Fig. 7) retrains, so it
lives in `experiments.pruning` and writes its own `pruning/` folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from spiketide import data, early_exit, plots, robustness, stats
from spiketide.checkpoints import load_model
from spiketide.errors import ConfigError
from spiketide.fisher import temporal_fisher
from spiketide.runs import RunDir, atomic_write_json, atomic_write_text

__all__ = ["RESULT_FILES", "load_with_data", "fisher", "deficits", "robustness_suite", "robustness_lines",
           "exit_costs", "spike_counts", "table", "write"]

# Where each analysis' result lives in a run directory (and the stem of its figures and Markdown table).
RESULT_FILES = {"fisher": "fisher.json", "deficits": "deficits.json", "robustness": "robustness.json",
                "early-exit": "early_exit.json", "stats": "stats.json", "prune": "pruning/pruning.json"}

Device = torch.device | str


def load_with_data(ckpt: str | os.PathLike, split: str, samples: int | None, seed: int = 0,
                   data_root: str | None = None, device: Device = "cpu", model_factory: str | None = None):
    """(model, config, state, images) of a checkpoint: its model, and `samples` class-balanced images of its
    dataset's `split` drawn with `seed` (`data_root` overrides the folder the run was trained from).
    `model_factory` ("module:function", named by the user) builds a model that was built in Python."""
    model, config, state = load_model(ckpt, device, model_factory)
    ds = data.load(config.dataset, split, root=data_root or config.data_root, subset=samples, seed=seed,
                   device=device)
    return model, config, state, ds


def fisher(checkpoints: Sequence[str | os.PathLike], *, split: str = "train", samples: int | None = 128,
           estimator: str = "empirical", per_layer: bool = False, batch_size: int = 64, seed: int = 0,
           data_root: str | None = None, device: Device = "cpu", progress: bool = False,
           model_factory: str | None = None,
           on_result: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Eq. 6 (and Eq. 7) of every checkpoint, on the same images of `split`."""
    results = []
    for ckpt in checkpoints:
        model, _, state, ds = load_with_data(ckpt, split, samples, seed, data_root, device, model_factory)
        prof = temporal_fisher(model, data.to_float(ds.images), ds.labels, estimator=estimator, per_layer=per_layer,
                               batch_size=batch_size, seed=seed, progress=progress)
        results.append({"checkpoint": str(ckpt), "epoch": state.get("epoch"), "fisher": prof.to_dict()})
        if on_result is not None:
            on_result(results[-1])
    return {"split": split, "samples": samples, "estimator": estimator, "results": results}


def deficits(checkpoints: Sequence[str | os.PathLike], *, window: int = 3, noise_ratio: float = 0.5,
             samples: int | None = 1000, batch_size: int = 256, seed: int = 0, data_root: str | None = None,
             device: Device = "cpu", progress: bool = False, model_factory: str | None = None,
             on_result: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Fig. 2 over training: `robustness.time_window_deficits` of every checkpoint, on the same test images."""
    if not checkpoints:
        raise ConfigError("no checkpoints to evaluate")
    entries = []
    for ckpt in checkpoints:
        model, _, state, test = load_with_data(ckpt, "test", samples, seed, data_root, device, model_factory)
        entry = robustness.time_window_deficits(model, test.images, test.labels, window=window,
                                                noise_ratio=noise_ratio, batch_size=batch_size, seed=seed,
                                                progress=progress)
        entry.update(checkpoint=str(ckpt), epoch=state.get("epoch"))
        entries.append(entry)
        if on_result is not None:
            on_result(entry)
    return {"window": window, "noise_ratio": noise_ratio, "checkpoints": entries}


def robustness_suite(ckpt: str | os.PathLike, *, samples: int | None = None, batch_size: int = 128, seed: int = 0,
                     eps: float = 8 / 255, pgd_step: float = 4 / 255, pgd_iters: int = 10, random_start: bool = True,
                     noise_ratio: float = 0.5, eps_sweep: bool = False, window_k: int | None = None,
                     data_root: str | None = None, device: Device = "cpu", progress: bool = False,
                     model_factory: str | None = None) -> dict[str, Any]:
    """Table 1 for one checkpoint; with `eps_sweep` the gradient-masking check, with `window_k` PGD on the first
    and on the last k timesteps only (beyond the paper)."""
    model, config, _, ds = load_with_data(ckpt, "test", samples, seed, data_root, device, model_factory)
    attack = dict(eps=eps, pgd_step=pgd_step, pgd_iters=pgd_iters, random_start=random_start)
    result = robustness.evaluate(model, ds.images, ds.labels, batch_size=batch_size, noise_ratio=noise_ratio,
                                 seed=seed, progress=progress, **attack)
    result.update(checkpoint=str(ckpt), model=config.model, images=len(ds))
    if eps_sweep:
        sweep = robustness.eps_sweep(model, ds.images, ds.labels, batch_size=batch_size, seed=seed,
                                     random_start=random_start, progress=progress)
        result["eps_sweep"] = [{"eps": e, "accuracy": a} for e, a in sweep]
        warning = robustness.check_gradient_masking(sweep)
        if warning:
            result.setdefault("warnings", []).append(warning)
    if window_k:
        result["windowed"] = robustness.windowed_attack_report(model, ds.images, ds.labels, window_k,
                                                               batch_size=batch_size, seed=seed, progress=progress,
                                                               **attack)
    return result


def robustness_lines(result: dict) -> list[str]:
    """What `robustness_suite` measured beyond Table 1, in words."""
    lines = []
    if "eps_sweep" in result:
        lines.append("eps sweep (PGD): " + ", ".join(f"{255 * r['eps']:.0f}/255: {100 * r['accuracy']:.1f}%"
                                                     for r in result["eps_sweep"]))
    if "windowed" in result:
        w = result["windowed"]
        lines.append(f"PGD on timesteps 1..{w['k']} only: {100 * w['first_k']:.1f}%; on the last {w['k']} only: "
                     f"{100 * w['last_k']:.1f}%; all timesteps: {100 * w['all']:.1f}%")
    return lines


def exit_costs(ckpt: str | os.PathLike, *, samples: int | None = None, thresholds: Sequence[float] | None = None,
               fisher_samples: int = 128, batch_size: int = 128, seed: int = 0, energy=stats.EnergyModel(),
               data_root: str | None = None, device: Device = "cpu", model_factory: str | None = None) -> dict[str, Any]:
    """Early exit: accuracy, timesteps, operations and energy per confidence threshold, beside the Fisher profile
    of `fisher_samples` training images (Eq. 6)."""
    model, config, _, ds = load_with_data(ckpt, "test", samples, seed, data_root, device, model_factory)
    curve = early_exit.exit_curve(model, ds.images, ds.labels, thresholds=thresholds, batch_size=batch_size,
                                  energy=energy)
    train = data.load(config.dataset, "train", root=data_root or config.data_root, subset=fisher_samples,
                      seed=seed, device=device)
    curve["fisher"] = temporal_fisher(model, data.to_float(train.images), train.labels, batch_size=64,
                                      seed=seed).to_dict()
    curve["checkpoint"] = str(ckpt)
    return curve


def spike_counts(ckpt: str | os.PathLike, *, samples: int | None = 256, batch_size: int = 64, seed: int = 0,
                 energy=stats.EnergyModel(), nonbinary: str = "sops", data_root: str | None = None,
                 device: Device = "cpu", progress: bool = False, model_factory: str | None = None) -> dict[str, Any]:
    """Firing rates, synaptic operations and energy (`stats.spike_stats`) of one checkpoint on test images."""
    model, _, state, ds = load_with_data(ckpt, "test", samples, seed, data_root, device, model_factory)
    result = stats.spike_stats(model, ds.images, ds.labels, batch_size=batch_size, progress=progress, energy=energy,
                               nonbinary=nonbinary)
    result["checkpoint"], result["epoch"] = str(ckpt), state.get("epoch")
    return result


def _figures(name: str, result: dict, stem: str, per_layer: bool) -> dict:
    """File name (without suffix) -> figure of an analysis result."""
    if name == "fisher":
        records = [{"epoch": r["epoch"] if r["epoch"] is not None else i, "fisher": r["fisher"]}
                   for i, r in enumerate(result["results"])]
        figs = {f"{stem}_fig1": plots.plot_fig1(records)}
        return {**figs, f"{stem}_fig3": plots.plot_fig3(records)} if per_layer else figs
    draw = {"deficits": ("fig2_deficits", plots.plot_deficits), "early-exit": ("early_exit", early_exit.exit_curve_figure),
            "stats": (stem, stats.stats_figure)}
    return {draw[name][0]: draw[name][1](result)} if name in draw else {}


def table(name: str, result: dict, label: str | None = None) -> str | None:
    """The Markdown table of an analysis result, where it has one (Table 1 for robustness: one row, named
    `label`, else the model's name)."""
    return robustness.to_markdown(result, name=label or result.get("model", "model")) if name == "robustness" else None


def write(name: str, result: dict, run_dir: str | os.PathLike, out: str | os.PathLike | None = None,
          label: str | None = None, per_layer: bool = False) -> list[Path]:
    """Write analysis `name`'s result as JSON to `out` (default: its `RESULT_FILES` name in `run_dir`), its
    Markdown `table` beside it, and its figures into the run's figures/ folder (beside `out` outside a run).
    Returns the paths written."""
    out = Path(out) if out else Path(run_dir) / RESULT_FILES[name]
    atomic_write_json(out, result)
    written = [out]
    markdown = table(name, result, label)
    if markdown is not None:
        atomic_write_text(out.with_suffix(".md"), markdown + "\n")
        written.append(out.with_suffix(".md"))
    run = RunDir(run_dir)
    folder = run.figures if run.exists() else out.parent
    for file, fig in _figures(name, result, out.stem, per_layer).items():
        written += plots.save(fig, folder / file)
    return written

