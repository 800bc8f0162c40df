"""Fig. 6-7: iterative magnitude pruning of a trained run, retraining with T_retrain < T timesteps.

The orchestration around the pure pieces of `spiketide.pruning`: read the run, choose the T_retrain
values (given, 2..T, or "auto" from the temporal Fisher information, Eq. 6), then per T_retrain prune
and retrain R rounds through the one `Trainer`, and write `pruning.json`, `pruning.md` and Fig. 7.
The masks need no callback: `torch.nn.utils.prune` re-applies them before every forward.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import numbers
import os
import re
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from torch import nn

from spiketide import data, evaluation, plots, pruning
from spiketide.checkpoints import load_model, select_device
from spiketide.checks import is_whole, whole
from spiketide.config import TrainConfig
from spiketide.errors import CheckpointError, ConfigError
from spiketide.fisher import cumulative_share, temporal_fisher
from spiketide.runs import RunDir, atomic_write_json, atomic_write_text, load_checkpoint
from spiketide.train import Trainer

__all__ = ["iterative_prune"]

_T_DIR = re.compile(r"^T\d+$")


def _t_retrain_list(t_retrain: Any, T: int) -> list[int]:
    """The sorted distinct T_retrain values to run; None means 2..T (the paper's 2, 3, 4, 5 for T = 5)."""
    if t_retrain is None:
        return list(range(2, T + 1)) or [T]
    try:
        values = [t_retrain] if is_whole(t_retrain) else list(t_retrain)
    except TypeError:
        raise ConfigError(f"t_retrain must be 'auto', a whole number or a list of them, got {t_retrain!r}") from None
    if not values:
        raise ConfigError("t_retrain is empty; give at least one timestep count, e.g. 2,3,4,5, or 'auto'")
    for v in values:
        if not is_whole(v):
            raise ConfigError(f"t_retrain values must be whole numbers, got {v!r}")
        if not 1 <= v <= T:
            raise ConfigError(f"T_retrain={v} is outside 1..T={T}: the run was trained with T={T} timesteps and "
                              "retraining uses T_retrain <= T")
    return sorted({int(v) for v in values})


def _measure_fisher(model: nn.Module, inputs, targets, estimator: str, batch_size: int) -> list[float]:
    """Temporal Fisher trace I_t (Eq. 6) of `model` (a separate function so tests can replace it)."""
    return temporal_fisher(model, inputs, targets, estimator=estimator, batch_size=batch_size).trace.flatten().tolist()


def _accuracy_at(model: nn.Module, test_set: data.ImageSet, t: int, config: TrainConfig) -> float:
    """Test accuracy of the horizon-t model (run with t timesteps)."""
    saved, model.timesteps = model.timesteps, t
    try:
        return evaluation.accuracy(model, test_set.images, test_set.labels, config.eval_batch_size, amp=config.amp)
    finally:
        model.timesteps = saved


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(f"[prune] {msg}", file=sys.stderr, flush=True)


def _auto_t_retrain(model: nn.Module, train_set: data.ImageSet, config: TrainConfig, q: float, samples: int,
                    progress: bool) -> dict[str, Any]:
    """`t_retrain="auto"`: Fisher trace of the trained model on a seeded class-balanced training subset."""
    n = min(samples, len(train_set))
    idx = data.balanced_subset_indices(train_set.labels, train_set.num_classes, n, seed=config.seed)
    idx = idx.to(train_set.labels.device)
    _say(progress, f"measuring temporal Fisher information on {n} training images ({config.fisher_estimator})")
    # On a copy: the estimator may run the model in training mode (BatchNorm statistics).
    trace = _measure_fisher(copy.deepcopy(model), data.to_float(train_set.images[idx]), train_set.labels[idx],
                            config.fisher_estimator, config.fisher_batch_size)
    if len(trace) != model.timesteps:
        raise ConfigError(f"the Fisher trace has {len(trace)} values but the model runs T={model.timesteps} timesteps")
    chosen, why = pruning.choose_t_retrain(trace, q)
    _say(progress, f"auto T_retrain: {why}")
    return {"q": float(q), "trace": trace, "cumulative_fraction": cumulative_share(trace) if sum(trace) > 0 else None,
            "chosen": chosen, "explanation": why, "fisher_samples": n, "estimator": config.fisher_estimator}


def _check_options(rounds, q, fisher_samples, retrain_epochs, rewind_epoch, lr) -> None:
    """The options of `iterative_prune`, checked before anything is read or deleted."""
    whole("rounds", rounds, 1)
    if isinstance(q, bool) or not isinstance(q, numbers.Real) or not 0 < q <= 1:
        raise ConfigError(f"q must be a fraction in (0, 1], got {q!r}")
    whole("fisher_samples", fisher_samples, 1)
    if retrain_epochs is not None:
        whole("retrain_epochs", retrain_epochs, 1)
    if rewind_epoch is not None:
        whole("rewind_epoch", rewind_epoch, 0)
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not 0 < lr < math.inf):
        raise ConfigError(f"lr must be a positive number, got {lr!r}")


def _source(run_dir: str | os.PathLike, rewind_epoch: int | None) -> tuple[RunDir, Path, Path | None]:
    """(run, its last checkpoint, the checkpoint to rewind to) of a finished run directory."""
    run = RunDir(run_dir)
    run.read_config()  # CheckpointError when this is not a run directory
    last = run.checkpoint_path()
    if not last.is_file():
        raise CheckpointError(f"{run.path} has no checkpoints/last.pt; train it first (`spiketide train --out "
                              f"{run.path}`) or pass a finished run directory")
    if rewind_epoch is None:
        return run, last, None
    rewind_path = run.checkpoint_path(rewind_epoch)
    if not rewind_path.is_file():
        raise CheckpointError(
            f"cannot rewind to epoch {rewind_epoch}: {rewind_path} does not exist. This run saved epochs "
            f"{run.saved_epochs() or 'none'}; pick one of those, or train with --checkpoint-epochs including "
            f"{rewind_epoch}")
    return run, last, rewind_path


def _earlier_results(out_dir: Path, overwrite: bool) -> list[Path]:
    """The T*/ folders of earlier results in `out_dir` (to delete with `overwrite`); refused without it."""
    old = [p for p in out_dir.iterdir() if p.is_dir() and _T_DIR.match(p.name)] if out_dir.is_dir() else []
    if (old or (out_dir / "pruning.json").exists()) and not overwrite:
        raise ConfigError(f"{out_dir} already holds pruning results; pass overwrite=True (--overwrite) to replace "
                          "them, or a different out (--out)")
    return old


def _curve(last: Path, t: int, acc0: float, acc_T: float, rounds: int, rate: float, early_state, retrain: TrainConfig,
           sets, out_dir: Path, info: dict) -> dict:
    """Accuracy vs sparsity of one T_retrain: the trained model loaded fresh, then `rounds` of pruning `rate` of
    the remaining weights and retraining with T_retrain = t timesteps (outputs in `<out_dir>/T{t}/round{r}`)."""
    progress, T = retrain.progress, info["T"]
    model, _, _ = load_model(last, device=retrain.device)
    curve = {"sparsity": [pruning.sparsity(model)], "test_acc": [acc0], "test_acc_at_T": [acc_T],
             "acc_before_retrain": [None], "retrain_seconds": [0.0], "checkpoint": [str(last)]}
    for r in range(1, rounds + 1):
        s = pruning.prune_round(model, rate)
        if early_state is not None:
            pruning.rewind_weights(model, early_state)
        model.timesteps = t
        cfg = dataclasses.replace(retrain, timesteps=t, out=str(out_dir / f"T{t}" / f"round{r}"))
        round_run = RunDir(cfg.out)
        history = Trainer(cfg, model=model, train_set=sets[0], test_set=sets[1], run_dir=round_run,
                          extra_config={"pruning": {"source_run": info["source_run"], "T": T, "T_retrain": t,
                                                    "round": r, "rounds": rounds, "rate": rate, "sparsity": s,
                                                    "rewind_epoch": info["rewind_epoch"]}}).fit()
        acc = history[-1]["test_acc"]
        curve["sparsity"].append(pruning.sparsity(model))
        curve["test_acc"].append(acc)
        curve["test_acc_at_T"].append(acc if t == T else _accuracy_at(model, sets[1], T, retrain))
        curve["acc_before_retrain"].append(history[0]["test_acc"])
        curve["retrain_seconds"].append(sum(h.get("seconds") or 0.0 for h in history))
        curve["checkpoint"].append(str(round_run.checkpoint_path()))
        _say(progress, f"T_retrain={t} round {r}/{rounds}: sparsity {100 * curve['sparsity'][-1]:.2f}%, "
             f"test acc {100 * acc:.2f}% (after pruning, before retraining: {100 * history[0]['test_acc']:.2f}%)")
    return curve


def _settings(run: RunDir, last: Path, config: TrainConfig, t_retrain, rounds: int, rate: float, n_retrain: int,
              retrain_lr: float, lr_given: bool, rewind_epoch: int | None, q: float, fisher_samples: int, dev) -> dict:
    """What a pruning result was computed with, recorded beside it."""
    return {
        "run": str(run.path), "checkpoint": str(last), "model": config.model, "dataset": config.dataset,
        "subset": config.subset, "test_subset": config.test_subset, "original_epochs": int(config.epochs),
        "t_retrain": t_retrain, "rounds": rounds, "rate": rate,
        "expected_sparsity": 1 - (1 - rate) ** rounds, "retrain_epochs": n_retrain,
        "lr": retrain_lr, "lr_rule": "given" if lr_given else "run lr x 0.1",
        "optimizer": config.optimizer, "schedule": config.schedule, "loss": config.loss,
        "batch_size": config.batch_size, "seed": config.seed, "rewind_epoch": rewind_epoch,
        "q": float(q), "fisher_samples": fisher_samples, "device": str(dev),
        "prunable": "every Conv1d/Conv2d/Linear weight, global L1 magnitude",
        "accuracy": "test_acc is measured at T_retrain timesteps; test_acc_at_T at the trained T",
    }


def _round0(model: nn.Module, test_set: data.ImageSet, T: int, t_list: list[int], config: TrainConfig,
            progress: bool) -> tuple[float, dict[int, float]]:
    """Test accuracy of the trained model at T and at every T_retrain (round 0 of each curve)."""
    acc_T = _accuracy_at(model, test_set, T, config)
    acc0 = {t: acc_T if t == T else _accuracy_at(model, test_set, t, config) for t in t_list}
    _say(progress, f"trained model: test acc {100 * acc_T:.2f}% at T={T}; "
         + ", ".join(f"{100 * a:.2f}% at T={t}" for t, a in acc0.items()))
    return acc_T, acc0


def _write(result: dict, out_dir: Path, fig_base: Path) -> dict:
    """`pruning.json`, `pruning.md` and Fig. 7 (rank 0 only under torchrun); the result with its file names."""
    if int(os.environ.get("RANK", 0)) == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_dir / "pruning.json", result)
        atomic_write_text(out_dir / "pruning.md", pruning.to_markdown(result))
        plots.save(plots.plot_pruning(result), fig_base)
    result["files"] = {"json": str(out_dir / "pruning.json"), "markdown": str(out_dir / "pruning.md"),
                       "figure": [str(fig_base.with_suffix(s)) for s in (".png", ".pdf")]}
    return result


def iterative_prune(run_dir: str | os.PathLike, *, rounds: int = 5, rate: float = 0.5,
                    retrain_epochs: int | None = None, t_retrain: int | Iterable[int] | str | None = None,
                    q: float = 0.95, rewind_epoch: int | None = None, lr: float | None = None,
                    fisher_samples: int = 128, out: str | os.PathLike | None = None, device: str | None = None,
                    progress: bool = True, overwrite: bool = False) -> dict:
    """Fig. 6-7: iterative magnitude pruning of a trained run, retraining with T_retrain timesteps.

    For each T_retrain the trained model (`<run>/checkpoints/last.pt`) is loaded fresh, then for
    r = 1..rounds: prune `rate` of the remaining Conv/Linear weights (global L1), optionally rewind
    the survivors to the run's saved epoch `rewind_epoch`, retrain `retrain_epochs` epochs at
    T_retrain timesteps with the run's own settings (outputs in `<out>/T{t}/round{r}`), and record
    test accuracy (at T_retrain and at T) and sparsity. Round 0 is the trained model.

    t_retrain: timestep counts, or "auto" (`pruning.choose_t_retrain` on the Fisher trace of
    `fisher_samples` training images, share `q`); None means 2..T (the paper's 2, 3, 4, 5 for T = 5).
    Defaults: retrain_epochs = max(1, run epochs // 5) (the paper: 300 -> 60); lr = run lr x 0.1 (the
    paper does not give it; Han et al. retrain at a lowered rate); out = `<run>/pruning`.

    Writes `<out>/pruning.json` (the returned dict), `<out>/pruning.md` and Fig. 7
    (`<run>/figures/fig7_pruning.{png,pdf}`, or in `out` when given). Existing results in `out` are an
    error unless overwrite=True (which deletes `<out>/T*/`).
    """
    _check_options(rounds, q, fisher_samples, retrain_epochs, rewind_epoch, lr)
    rate = pruning.check_rate(rate)
    auto = isinstance(t_retrain, str)
    if auto and t_retrain != "auto":
        raise ConfigError(f"t_retrain must be 'auto' or timestep counts like 2,3,4,5, got {t_retrain!r}")
    run, last, rewind_path = _source(run_dir, rewind_epoch)
    out_dir = Path(out) if out is not None else run.path / "pruning"
    old = _earlier_results(out_dir, overwrite)

    model, config, _ = load_model(last)
    dev = select_device(device or config.device)
    model = model.to(dev)
    if not hasattr(model, "timesteps"):
        raise ConfigError(f"model {config.model!r} has no `timesteps` attribute; pruning with T_retrain needs it")
    T, N = int(model.timesteps), int(config.epochs)
    n_retrain = int(retrain_epochs) if retrain_epochs is not None else max(1, N // 5)
    retrain_lr = float(lr) if lr is not None else config.lr * 0.1
    t_list = None if auto else _t_retrain_list(t_retrain, T)
    if overwrite:
        for p in old:
            shutil.rmtree(p)
        (out_dir / "pruning.json").unlink(missing_ok=True)

    _say(progress, f"loading {config.dataset} (subset {config.subset}, test subset {config.test_subset}) on {dev}")
    sets = tuple(data.load(config.dataset, split, root=config.data_root, subset=n, seed=config.seed, device=dev)
                 for split, n in (("train", config.subset), ("test", config.test_subset)))
    auto_info = _auto_t_retrain(model, sets[0], config, q, fisher_samples, progress) if auto else None
    t_list = [auto_info["chosen"]] if auto else t_list
    acc_T, acc0 = _round0(model, sets[1], T, t_list, config, progress)

    early_state = load_checkpoint(rewind_path, map_location=dev)["model"] if rewind_path is not None else None
    retrain = dataclasses.replace(config, epochs=n_retrain, lr=retrain_lr, fisher_every=0, checkpoint_epochs=[],
                                  device=str(dev), progress=progress)
    info = {"source_run": str(run.path), "T": T, "rewind_epoch": rewind_epoch}
    curves = {str(t): _curve(last, t, acc0[t], acc_T, rounds, rate, early_state, retrain, sets, out_dir, info)
              for t in t_list}
    result = {"T": T, "rounds": rounds, "rate": rate, "retrain_epochs": n_retrain, "curves": curves,
              "compute_saving": {str(t): pruning.compute_saving(N, n_retrain, rounds, T, t) for t in t_list},
              "auto": auto_info,
              "round0": {"test_acc_at_T": acc_T, "test_acc": {str(t): a for t, a in acc0.items()}},
              "settings": _settings(run, last, config, "auto" if auto else t_list, rounds, rate, n_retrain,
                                    retrain_lr, lr is not None, rewind_epoch, q, fisher_samples, dev)}
    return _write(result, out_dir, (run.figures if out is None else out_dir) / "fig7_pruning")
