"""Iterative magnitude pruning with fewer retraining timesteps (the paper's Fig. 6-7 application).

Han et al. (2015) prune p% of the remaining low-magnitude weights, retrain, and repeat for R
rounds. Because trained SNNs concentrate their Fisher information in the early timesteps (TIC),
the paper retrains with T_retrain < T timesteps and reports accuracy vs sparsity per T_retrain
(Fig. 7) and the compute saving N_retrain R (T - T_retrain) / (N T + N_retrain R T) (Eq. in the
"Efficient SNN Pruning Using TIC" section).

Pruning uses `torch.nn.utils.prune` (weight = weight_orig * weight_mask), so a pruned model's
state_dict holds `X.weight_orig` / `X.weight_mask`; `apply_masks_from_state` re-creates that
reparametrisation on a fresh model so such checkpoints load (`spiketide.train.load_model` calls it).

Beyond the paper: `choose_t_retrain` picks T_retrain automatically as the smallest t whose
cumulative Fisher information reaches a fraction q of the total (`t_retrain="auto"`).
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
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from spiketide.errors import CheckpointError, ConfigError

__all__ = [
    "compute_saving", "prunable", "prune_round", "sparsity", "apply_masks_from_state", "rewind_weights",
    "choose_t_retrain", "iterative_prune", "to_markdown", "PRUNABLE_TYPES",
]

PRUNABLE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Linear)


# --------------------------------------------------------------------------- small pieces

def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def compute_saving(N: int, N_retrain: int, R: int, T: int, T_retrain: int) -> float:
    """Compute saving (%) of retraining with T_retrain instead of T timesteps (paper, Fig. 6 section).

    = N_retrain * R * (T - T_retrain) / (N * T + N_retrain * R * T) * 100, with N the first-stage
    epochs, N_retrain the epochs of each of the R pruning-retraining rounds. The paper's example
    (N=300, N_retrain=60, R=5, T=5, T_retrain=3) gives 20.0.
    """
    for name, v in (("N", N), ("N_retrain", N_retrain), ("R", R), ("T", T), ("T_retrain", T_retrain)):
        if not _is_int(v):
            raise ConfigError(f"compute_saving: {name} must be a whole number, got {v!r}")
        if v < 1:
            raise ConfigError(f"compute_saving: {name} must be >= 1, got {v}")
    if T_retrain > T:
        raise ConfigError(f"compute_saving: T_retrain={T_retrain} is larger than T={T}; retraining uses T_retrain <= T")
    # Integer numerator/denominator: the paper's example is exactly 20.0.
    return 100 * N_retrain * R * (T - T_retrain) / (N * T + N_retrain * R * T)


def prunable(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """Every nn.Conv1d / nn.Conv2d / nn.Linear weight of the model, in module order."""
    return [(m, "weight") for m in model.modules() if isinstance(m, PRUNABLE_TYPES)]


def _effective_weight(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """The weight the module computes with now (weight_orig * mask when pruned; never stale)."""
    mask = getattr(module, name + "_mask", None)
    if mask is not None:
        return getattr(module, name + "_orig").detach() * mask
    return getattr(module, name).detach()


def _alive(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """Boolean tensor: which weights are not pruned (mask == 1; without a mask, weight != 0)."""
    mask = getattr(module, name + "_mask", None)
    if mask is not None:
        return mask != 0
    return getattr(module, name).detach() != 0


def sparsity(model: nn.Module) -> float:
    """Fraction of prunable weights (Conv1d/Conv2d/Linear) that are pruned (masked out, or exactly zero)."""
    params = prunable(model)
    alive_masks = [_alive(m, n) for m, n in params]
    total = sum(a.numel() for a in alive_masks)
    if total == 0:
        return 0.0
    alive = sum(int(a.sum()) for a in alive_masks)
    return 1.0 - alive / total


def prune_round(model: nn.Module, amount: float) -> float:
    """Globally prune `amount` (0 < amount < 1) of the *remaining* prunable weights by magnitude (L1).

    k = round(amount * remaining) weights with the smallest |w| over all layers together are
    masked (torch.nn.utils.prune.global_unstructured + L1Unstructured), so after R rounds the
    sparsity is 1 - (1 - amount)^R up to rounding. Returns the new sparsity.
    """
    if isinstance(amount, bool) or not isinstance(amount, numbers.Real) or not (0 < amount < 1):
        raise ConfigError(f"pruning rate must be a fraction in (0, 1) (the paper prunes 0.5 per round), got {amount!r}")
    params = prunable(model)
    if not params:
        raise ConfigError("the model has no Conv1d/Conv2d/Linear weights to prune")
    remaining = sum(int(_alive(m, n).sum()) for m, n in params)
    k = int(round(float(amount) * remaining))
    # Fresh importance scores: the `weight` attribute is only refreshed at the next forward,
    # so after an optimiser step it can be stale; weight_orig * mask is always current.
    scores = {(m, n): _effective_weight(m, n).abs() for m, n in params}
    with torch.no_grad():
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, importance_scores=scores, amount=k)
    return sparsity(model)


def apply_masks_from_state(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Re-create the pruning reparametrisation saved in `state_dict` (keys `X.weight_orig` / `X.weight_mask`).

    For every such pair the module `X` gets `prune.custom_from_mask(X, "weight", mask)` (or its
    existing mask is overwritten), so `model.load_state_dict(state_dict)` then succeeds and the
    masks stay in force during training. Returns the names (`X.weight`) that were masked.
    """
    done = []
    for key, mask in state_dict.items():
        if not key.endswith("_mask") or key[: -len("_mask")] + "_orig" not in state_dict:
            continue
        full = key[: -len("_mask")]
        mod_path, _, pname = full.rpartition(".")
        try:
            module = model.get_submodule(mod_path)
        except AttributeError:
            raise CheckpointError(f"pruning mask {key!r} names module {mod_path!r}, which this model does not have; "
                                  "the checkpoint belongs to another architecture") from None
        if not isinstance(mask, torch.Tensor):
            raise CheckpointError(f"pruning mask {key!r} is not a tensor")
        if hasattr(module, pname + "_mask"):  # already pruned: just take the saved mask
            current = getattr(module, pname + "_mask")
            if current.shape != mask.shape:
                raise CheckpointError(f"pruning mask {key!r} has shape {tuple(mask.shape)}, the model's is "
                                      f"{tuple(current.shape)}")
            with torch.no_grad():
                current.copy_(mask)
        else:
            param = module._parameters.get(pname)
            if param is None:
                raise CheckpointError(
                    f"pruning mask {key!r}: module {mod_path or '<model>'!r} has no parameter {pname!r}")
            if param.shape != mask.shape:
                raise CheckpointError(f"pruning mask {key!r} has shape {tuple(mask.shape)}, the parameter's is "
                                      f"{tuple(param.shape)}; the checkpoint belongs to another model")
            prune.custom_from_mask(module, pname, mask.to(device=param.device, dtype=param.dtype))
        done.append(full)
    return done


def rewind_weights(model: nn.Module, early_state: Mapping[str, torch.Tensor]) -> None:
    """Copy an earlier (unpruned or pruned) state into a pruned model, keeping its masks.

    `X.weight_orig` takes the early `X.weight` (or `X.weight_orig`); masks stay; every other
    parameter and buffer (biases, BatchNorm statistics) is rewound too (lottery-ticket rewinding).
    """
    current = model.state_dict()
    new = {}
    for key, value in current.items():
        if key.endswith("_mask") and key[: -len("_mask")] + "_orig" in current:
            new[key] = value
            continue
        if key.endswith("_orig") and key not in early_state:
            src = key[: -len("_orig")]
        else:
            src = key
        if src not in early_state:
            raise CheckpointError(f"the rewind checkpoint has no {src!r}; it belongs to another model")
        early = early_state[src]
        if early.shape != value.shape:
            raise CheckpointError(f"the rewind checkpoint's {src!r} has shape {tuple(early.shape)}, the model's is "
                                  f"{tuple(value.shape)}; it belongs to another model")
        new[key] = early
    model.load_state_dict(new)


def _cumulative_fractions(trace: Sequence[float] | torch.Tensor) -> list[float]:
    t = torch.as_tensor(trace, dtype=torch.float64).flatten()
    total = float(t.sum())
    return (t.cumsum(0) / total).tolist()


def _steps(a: int, b: int) -> str:
    return f"timestep {a} carries" if a == b else f"timesteps {a}..{b} carry"


def choose_t_retrain(trace: Sequence[float] | torch.Tensor, q: float = 0.95) -> tuple[int, str]:
    """Smallest t (1-based) whose cumulative Fisher information sum_{i<=t} I_i reaches q * sum_t I_t.

    Beyond the paper, which picks T_retrain by eye (near-zero I_t after t=3). Returns (t, an
    explanation listing the cumulative fractions). An all-zero trace gives t = T.
    """
    if isinstance(q, bool) or not isinstance(q, numbers.Real) or not (0 < q <= 1):
        raise ConfigError(f"q must be a fraction in (0, 1], got {q!r}")
    try:
        t = torch.as_tensor(trace, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError):
        raise ConfigError(f"the Fisher trace must be a list of numbers, got {trace!r}") from None
    if t.dim() != 1 or t.numel() == 0:
        raise ConfigError("the Fisher trace must be a non-empty 1-D sequence (one I_t per timestep), "
                          f"got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ConfigError(f"the Fisher trace has non-finite values: {t.tolist()}")
    if (t < 0).any():
        raise ConfigError(f"Fisher information is non-negative, but the trace has negative values: {t.tolist()}")
    T = t.numel()
    total = float(t.sum())
    if total == 0:
        return T, (f"the Fisher trace is all zero (no information measured), so no timestep can be dropped: "
                   f"T_retrain = T = {T}")
    frac = _cumulative_fractions(t)
    # A small tolerance so that e.g. q = 0.75 with fractions 0.25, 0.5, 0.75 picks t = 3.
    chosen = next(i + 1 for i, f in enumerate(frac) if f >= q - 1e-9 or i == T - 1)
    listing = ", ".join(f"t<={i + 1}: {100 * f:.1f}%" for i, f in enumerate(frac))
    explanation = (f"cumulative share of the temporal Fisher information: {listing}. "
                   f"The smallest t reaching q = {100 * q:g}% is {chosen}, so T_retrain = {chosen} (of T = {T})"
                   + (f"; {_steps(chosen + 1, T)} {100 * (1 - frac[chosen - 1]):.1f}% of the information."
                      if chosen < T else "."))
    return chosen, explanation


# --------------------------------------------------------------------------- the experiment

def _measure_fisher(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, estimator: str,
                    batch_size: int) -> list[float]:
    """Temporal Fisher trace I_t of `model` (a separate function so tests can replace it)."""
    from spiketide.fisher import temporal_fisher

    profile = temporal_fisher(model, inputs, targets, estimator=estimator, batch_size=batch_size)
    return [float(v) for v in torch.as_tensor(profile.trace).flatten().tolist()]


def _check_t_list(t_retrain: Any, T: int) -> list[int]:
    """The sorted distinct T_retrain values to run; None means 2..T (the paper's 2, 3, 4, 5 for T = 5)."""
    if t_retrain is None:
        return list(range(2, T + 1)) or [T]
    values = [t_retrain] if _is_int(t_retrain) else t_retrain
    try:
        values = list(values)
    except TypeError:
        raise ConfigError(f"t_retrain must be 'auto', a whole number or a list of them, got {t_retrain!r}") from None
    if not values:
        raise ConfigError("t_retrain is empty; give at least one timestep count, e.g. 2,3,4,5, or 'auto'")
    for v in values:
        if not _is_int(v):
            raise ConfigError(f"t_retrain values must be whole numbers, got {v!r}")
        if not (1 <= v <= T):
            raise ConfigError(f"T_retrain={v} is outside 1..T={T}: the run was trained with T={T} timesteps and "
                              "retraining uses T_retrain <= T")
    return sorted(set(int(v) for v in values))


def _eval_at(model: nn.Module, test_set, t: int, batch_size: int, amp: bool) -> float:
    from spiketide.train import evaluate_accuracy

    saved = model.timesteps
    model.timesteps = t
    try:
        return evaluate_accuracy(model, test_set.images, test_set.labels, batch_size, amp)
    finally:
        model.timesteps = saved


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(f"[prune] {msg}", file=sys.stderr, flush=True)


_T_DIR = re.compile(r"^T\d+$")


def iterative_prune(
    run_dir: str | os.PathLike,
    *,
    rounds: int = 5,
    rate: float = 0.5,
    retrain_epochs: int | None = None,
    t_retrain: int | Iterable[int] | str | None = None,
    q: float = 0.95,
    rewind_epoch: int | None = None,
    lr: float | None = None,
    fisher_samples: int = 128,
    out: str | os.PathLike | None = None,
    device: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Fig. 6-7: iterative magnitude pruning of a trained run, retraining with T_retrain timesteps.

    For each T_retrain the trained model (`<run>/checkpoints/last.pt`) is loaded fresh, then for
    r = 1..rounds: prune `rate` of the remaining Conv/Linear weights (global L1), optionally rewind
    the surviving weights to `<run>/checkpoints/epoch_XXXX.pt` of `rewind_epoch`, retrain
    `retrain_epochs` epochs at T_retrain timesteps with the run's own settings through the one
    Trainer (outputs in `<out>/T{t}/round{r}`), and record test accuracy (at T_retrain; also at
    T) and sparsity. Round 0 is the trained model (sparsity 0).

    t_retrain: timestep counts to compare, or "auto"; None (default) means 2..T, which is the
    paper's 2, 3, 4, 5 for T = 5 (just T when T = 1).

    Defaults: retrain_epochs = max(1, run epochs // 5) (the paper: 300 -> 60); lr = run lr x 0.1
    (the paper does not give the retraining lr; Han et al. retrain at a lowered rate); the
    schedule, optimizer, batch size, loss, augmentation and seed are the run's. out defaults to
    `<run>/pruning`. `t_retrain="auto"` measures the temporal Fisher information of the trained
    model on a seeded class-balanced subset of `fisher_samples` training images (no augmentation)
    and picks `choose_t_retrain(trace, q)`.

    Writes `<out>/pruning.json` (the returned dict), `<out>/pruning.md` and the figure
    (`<run>/figures/fig7_pruning.{png,pdf}`, or `<out>/fig7_pruning.*` when `out` is given).
    Existing results in `out` are an error unless overwrite=True (which deletes `<out>/T*/`).
    """
    from spiketide import data, plots
    from spiketide.runs import RunDir, atomic_write_json, atomic_write_text, load_checkpoint
    from spiketide.train import Trainer, load_model, select_device

    # -- arguments that need no run --
    if not _is_int(rounds) or rounds < 1:
        raise ConfigError(f"rounds must be a whole number >= 1 (the paper uses 5), got {rounds!r}")
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not (0 < rate < 1):
        raise ConfigError(f"rate must be a fraction in (0, 1) (the paper prunes 0.5 of the remaining weights per "
                          f"round), got {rate!r}")
    if retrain_epochs is not None and (not _is_int(retrain_epochs) or retrain_epochs < 1):
        raise ConfigError(f"retrain_epochs must be a whole number >= 1, got {retrain_epochs!r}")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not (lr > 0)
                           or not math.isfinite(lr)):
        raise ConfigError(f"lr must be a positive number, got {lr!r}")
    if isinstance(q, bool) or not isinstance(q, numbers.Real) or not (0 < q <= 1):
        raise ConfigError(f"q must be a fraction in (0, 1], got {q!r}")
    if not _is_int(fisher_samples) or fisher_samples < 1:
        raise ConfigError(f"fisher_samples must be a whole number >= 1, got {fisher_samples!r}")
    auto = isinstance(t_retrain, str)
    if auto and t_retrain != "auto":
        raise ConfigError(f"t_retrain must be 'auto' or timestep counts like 2,3,4,5, got {t_retrain!r}")
    if rewind_epoch is not None and (not _is_int(rewind_epoch) or rewind_epoch < 0):
        raise ConfigError(f"rewind_epoch must be a whole number >= 0, got {rewind_epoch!r}")

    # -- the run --
    run = RunDir(run_dir)
    run.read_config()  # CheckpointError when this is not a run directory
    last = run.checkpoint_path()
    if not last.is_file():
        raise CheckpointError(f"{run.path} has no checkpoints/last.pt; train it first (`spiketide train --out "
                              f"{run.path}`) or pass a finished run directory")
    rewind_path = None
    if rewind_epoch is not None:
        rewind_path = run.checkpoint_path(rewind_epoch)
        if not rewind_path.is_file():
            saved = run.saved_epochs()
            raise CheckpointError(
                f"cannot rewind to epoch {rewind_epoch}: {rewind_path} does not exist. This run saved epochs "
                f"{saved or 'none'}; pick one of those, or train with --checkpoint-epochs including {rewind_epoch}")
    out_dir = Path(out) if out is not None else run.path / "pruning"
    fig_base = (run.figures if out is None else out_dir) / "fig7_pruning"
    old = [p for p in out_dir.iterdir() if p.is_dir() and _T_DIR.match(p.name)] if out_dir.is_dir() else []
    if (old or (out_dir / "pruning.json").exists()) and not overwrite:
        raise ConfigError(f"{out_dir} already holds pruning results; pass overwrite=True (--overwrite) to replace "
                          "them, or a different out (--out)")

    dev = select_device(device) if device is not None else None
    model, config, _state = load_model(last, device=dev or "cpu")
    if dev is None:
        dev = select_device(config.device)
        model = model.to(dev)
    if not hasattr(model, "timesteps"):
        raise ConfigError(f"model {config.model!r} has no `timesteps` attribute; pruning with T_retrain needs it")
    T = int(model.timesteps)
    N = int(config.epochs)
    n_retrain = int(retrain_epochs) if retrain_epochs is not None else max(1, N // 5)
    retrain_lr = float(lr) if lr is not None else config.lr * 0.1
    amp = bool(config.amp and dev.type == "cuda")
    if not auto:
        t_list = _check_t_list(t_retrain, T)
    if overwrite:
        for p in old:
            shutil.rmtree(p)
        (out_dir / "pruning.json").unlink(missing_ok=True)

    _say(progress, f"loading {config.dataset} (subset {config.subset}, test subset {config.test_subset}) on {dev}")
    train_set = data.load(config.dataset, "train", root=config.data_root, subset=config.subset, seed=config.seed,
                          device=dev)
    test_set = data.load(config.dataset, "test", root=config.data_root, subset=config.test_subset,
                         seed=config.seed, device=dev)

    # -- T_retrain = "auto": temporal Fisher of the trained model --
    auto_info = None
    if auto:
        n = min(fisher_samples, len(train_set))
        idx = data.balanced_subset_indices(train_set.labels, train_set.num_classes, n, seed=config.seed)
        idx = idx.to(train_set.labels.device)
        inputs = data.to_float(train_set.images[idx])
        targets = train_set.labels[idx]
        _say(progress, f"measuring temporal Fisher information on {n} training images ({config.fisher_estimator})")
        # On a copy: the estimator may run the model in training mode (BatchNorm statistics).
        trace = _measure_fisher(copy.deepcopy(model), inputs, targets, config.fisher_estimator,
                                config.fisher_batch_size)
        if len(trace) != T:
            raise ConfigError(f"the Fisher trace has {len(trace)} values but the model runs T={T} timesteps")
        chosen, why = choose_t_retrain(trace, q)
        t_list = [chosen]
        auto_info = {"q": float(q), "trace": trace,
                     "cumulative_fraction": _cumulative_fractions(trace) if sum(trace) > 0 else None,
                     "chosen": chosen, "explanation": why, "fisher_samples": n,
                     "estimator": config.fisher_estimator}
        _say(progress, f"auto T_retrain: {why}")

    # -- round 0: the trained model --
    acc_T = _eval_at(model, test_set, T, config.eval_batch_size, amp)
    acc0 = {t: (acc_T if t == T else _eval_at(model, test_set, t, config.eval_batch_size, amp)) for t in t_list}
    _say(progress, f"trained model: test acc {100 * acc_T:.2f}% at T={T}; "
         + ", ".join(f"{100 * a:.2f}% at T={t}" for t, a in acc0.items()))

    early_state = load_checkpoint(rewind_path, map_location=dev)["model"] if rewind_path is not None else None
    curves: dict[str, dict] = {}
    for t in t_list:
        model, _, _ = load_model(last, device=dev)  # fresh trained model for every T_retrain
        curve = {"sparsity": [sparsity(model)], "test_acc": [acc0[t]], "test_acc_at_T": [acc_T],
                 "acc_before_retrain": [None], "retrain_seconds": [0.0], "checkpoint": [str(last)]}
        for r in range(1, rounds + 1):
            s = prune_round(model, rate)
            if early_state is not None:
                rewind_weights(model, early_state)
            model.timesteps = t
            cfg = dataclasses.replace(config, timesteps=t, epochs=n_retrain, lr=retrain_lr, fisher_every=0,
                                      checkpoint_epochs=[], out=str(out_dir / f"T{t}" / f"round{r}"),
                                      device=str(dev), progress=progress)
            round_run = RunDir(cfg.out)
            trainer = Trainer(cfg, model=model, train_set=train_set, test_set=test_set, run_dir=round_run,
                              extra_config={"pruning": {"source_run": str(run.path), "T": T, "T_retrain": t,
                                                        "round": r, "rounds": rounds, "rate": float(rate),
                                                        "sparsity": s, "rewind_epoch": rewind_epoch}})
            history = trainer.fit()
            acc = history[-1]["test_acc"]
            curve["sparsity"].append(sparsity(model))
            curve["test_acc"].append(acc)
            curve["test_acc_at_T"].append(acc if t == T else _eval_at(model, test_set, T, config.eval_batch_size, amp))
            curve["acc_before_retrain"].append(history[0]["test_acc"])
            curve["retrain_seconds"].append(sum(h.get("seconds") or 0.0 for h in history))
            curve["checkpoint"].append(str(round_run.checkpoint_path()))
            _say(progress, f"T_retrain={t} round {r}/{rounds}: sparsity {100 * curve['sparsity'][-1]:.2f}%, "
                 f"test acc {100 * acc:.2f}% (after pruning, before retraining: {100 * history[0]['test_acc']:.2f}%)")
        curves[str(t)] = curve

    result = {
        "T": T,
        "rounds": rounds,
        "rate": float(rate),
        "retrain_epochs": n_retrain,
        "curves": curves,
        "compute_saving": {str(t): compute_saving(N, n_retrain, rounds, T, t) for t in t_list},
        "auto": auto_info,
        "round0": {"test_acc_at_T": acc_T, "test_acc": {str(t): a for t, a in acc0.items()}},
        "settings": {
            "run": str(run.path), "checkpoint": str(last), "model": config.model, "dataset": config.dataset,
            "subset": config.subset, "test_subset": config.test_subset, "original_epochs": N,
            "t_retrain": "auto" if auto else t_list, "rounds": rounds, "rate": float(rate),
            "expected_sparsity": 1 - (1 - float(rate)) ** rounds, "retrain_epochs": n_retrain,
            "lr": retrain_lr, "lr_rule": "given" if lr is not None else "run lr x 0.1",
            "optimizer": config.optimizer, "schedule": config.schedule, "loss": config.loss,
            "batch_size": config.batch_size, "seed": config.seed, "rewind_epoch": rewind_epoch,
            "q": float(q), "fisher_samples": fisher_samples, "device": str(dev),
            "prunable": "every Conv1d/Conv2d/Linear weight, global L1 magnitude",
            "accuracy": "test_acc is measured at T_retrain timesteps; test_acc_at_T at the trained T",
        },
    }
    if int(os.environ.get("RANK", 0)) == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_dir / "pruning.json", result)
        atomic_write_text(out_dir / "pruning.md", to_markdown(result))
        plots.save(plots.plot_pruning(result), fig_base)
    result["files"] = {"json": str(out_dir / "pruning.json"), "markdown": str(out_dir / "pruning.md"),
                       "figure": [str(fig_base.with_suffix(s)) for s in (".png", ".pdf")]}
    return result


def to_markdown(result: Mapping[str, Any]) -> str:
    """A short Markdown report: accuracy per round for each T_retrain, sparsity and compute saving."""
    T = result["T"]
    keys = sorted(result["curves"], key=int)
    lines = [f"# Iterative pruning (trained with T = {T})", "",
             f"{result['rounds']} rounds, pruning {100 * result['rate']:g}% of the remaining weights per round, "
             f"{result['retrain_epochs']} retraining epoch(s) per round. Accuracy is measured at T_retrain timesteps.",
             ""]
    first = result["curves"][keys[0]]
    header = ["T_retrain"] + [f"{100 * s:.1f}%" for s in first["sparsity"]] + ["compute saving"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    for k in keys:
        c = result["curves"][k]
        row = [k] + [f"{100 * a:.2f}" for a in c["test_acc"]] + [f"{result['compute_saving'][k]:.1f}%"]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append("Columns: sparsity after each round (round 0 = the trained model); cells: test accuracy (%).")
    if result.get("auto"):
        lines += ["", f"**T_retrain chosen automatically:** {result['auto']['explanation']}"]
    lines.append("")
    return "\n".join(lines)
