"""Models from checkpoints: build a model from its config, the identity a checkpoint carries, and loading.

A checkpoint holds the model, optimizer, scheduler and RNG states, its config and its *identity*: every
option that shapes the parameters or the computation (model, dataset channels/classes/image size,
width, T, tau, encoding). Loading checks that identity against the run the checkpoint lies in and
re-creates pruning masks, so every command and `train --resume` refuse a checkpoint of another run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from spiketide import __version__, factory, models
from spiketide.config import TrainConfig, dataset_info
from spiketide.errors import CheckpointError, ConfigError
from spiketide.factory import class_path
from spiketide.runs import RunDir, load_checkpoint, run_of

__all__ = ["read_run", "select_device", "build_model", "class_path", "model_identity", "model_state",
           "checkpoint_identity", "check_checkpoint", "load_model", "apply_masks_from_state"]


def read_run(path: str | os.PathLike | RunDir) -> tuple[RunDir, TrainConfig]:
    """Open a run directory for reading: its config.json checked against `TrainConfig` (`from_record`) and
    its metrics.jsonl records checked (`RunDir.read_metrics`); CheckpointError naming the file and field."""
    run = path if isinstance(path, RunDir) else RunDir(path)
    config = TrainConfig.from_record(run.read_config(TrainConfig), run.config_path)
    run.read_metrics()
    return run, config


def select_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    return dev


def build_model(config: TrainConfig) -> nn.Module:
    if factory.is_python_model(config.model):
        raise ConfigError(f"model {config.model!r} is built in Python, not by spiketide: hand the module in "
                          "(Trainer(model=...)), or name its factory with --model-factory")
    info = dataset_info(config.dataset)
    return models.create(config.model, num_classes=info.num_classes, timesteps=config.timesteps, tau=config.tau,
                         in_channels=info.channels, image_size=info.image_size, mean=info.mean, std=info.std,
                         fast_lif=config.fast_lif, width=config.width, encoding=config.encoding,
                         encoding_seed=config.seed)


# What a checkpoint is: every option that changes the model's parameters or its computation, in the order
# differences are reported. (Channels, classes and image size come from the dataset, recorded as numbers.)
_IDENTITY_NAMES = {
    "model_class": "model class", "model": "model", "dataset": "dataset", "in_channels": "input channels",
    "num_classes": "classes", "image_size": "image size", "width": "width", "timesteps": "timesteps T",
    "tau": "tau", "encoding": "encoding", "encoding_seed": "Poisson encoding seed",
}


def model_identity(config: TrainConfig, timesteps: int | None = None, model_class: str | None = None) -> dict:
    """The identity of the model a config builds (`timesteps`: the model's own, when it differs from the config's)."""
    info = dataset_info(config.dataset)
    ident = {"model": config.model, "dataset": config.dataset, "in_channels": info.channels,
             "num_classes": info.num_classes, "image_size": info.image_size, "width": float(config.width),
             "timesteps": int(timesteps or config.timesteps), "tau": float(config.tau), "encoding": config.encoding}
    if config.encoding == "poisson":  # without a generator the spike pattern is drawn from the run's seed
        ident["encoding_seed"] = int(config.seed)
    if model_class:
        ident["model_class"] = model_class
    return {k: ident[k] for k in _IDENTITY_NAMES if k in ident}


def model_state(model: nn.Module, config: TrainConfig, epoch: int, timesteps: int | None = None) -> dict:
    """What every checkpoint holds about its model: the weights, the epoch, the config, the model's own T, its
    class and its identity (`model_identity`), and the version that wrote it. A training checkpoint adds the
    optimizer, scheduler and RNG states. `timesteps`: the model's T when known (default: its `timesteps`)."""
    T = int(timesteps or getattr(model, "timesteps", config.timesteps))
    built = class_path(model)
    return {"model": model.state_dict(), "epoch": epoch, "timesteps": T, "model_class": built,
            "identity": model_identity(config, T, built), "config": config.to_dict(), "version": __version__}


def checkpoint_identity(state: dict, where: str | os.PathLike) -> tuple[dict, TrainConfig]:
    """(identity, config) of a loaded checkpoint; its recorded `identity` (checkpoints since 0.1 without one are
    checked by their config alone) must be what its config builds."""
    config = TrainConfig.from_record(state["config"], f"{where} (its config)")
    timesteps = state.get("timesteps")
    if timesteps is not None and (isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 1):
        raise CheckpointError(f"{where}: 'timesteps' is {timesteps!r}, not a whole number >= 1; the file was "
                              "edited or damaged")
    ident = model_identity(config, timesteps, state.get("model_class"))
    stored = state.get("identity")
    if stored is not None:
        if not isinstance(stored, dict):
            raise CheckpointError(f"{where}: 'identity' is not a mapping; the file was edited or damaged")
        if diff := _first_difference(stored, ident):
            raise CheckpointError(f"{where} is inconsistent: it records {diff[0]} {diff[1]!r}, but its config builds "
                                  f"{diff[2]!r}; the file was edited, or written under other dataset definitions")
    return ident, config


def _first_difference(a: dict, b: dict) -> tuple[str, Any, Any] | None:
    """(name, a's value, b's value) of the first identity field, in `_IDENTITY_NAMES` order, that differs."""
    for key, name in _IDENTITY_NAMES.items():
        if key in a and key in b and a[key] != b[key]:
            return name, a[key], b[key]
    return None


def check_checkpoint(checkpoint: str | os.PathLike, state: dict, run: RunDir, config: TrainConfig) -> TrainConfig:
    """Refuse a checkpoint whose identity differs from the run it lies in, naming the first difference;
    returns the checkpoint's own config."""
    ident, ckpt_config = checkpoint_identity(state, checkpoint)
    model_class = run.read_config().get("model_class")
    run_ident = model_identity(config, None, model_class if isinstance(model_class, str) else None)
    if diff := _first_difference(ident, run_ident):
        raise CheckpointError(f"{checkpoint} is not a checkpoint of the run {run.path}: its {diff[0]} is {diff[1]!r}, "
                              f"the run's is {diff[2]!r} ({ident['model']} / {ident['dataset']} checkpoint); move it "
                              "out of that run directory (a copy elsewhere can be analysed on its own)")
    return ckpt_config


def load_model(checkpoint: str | os.PathLike, device: str | torch.device = "cpu",
               model_factory: str | None = None) -> tuple[nn.Module, TrainConfig, dict]:
    """Rebuild a model from a checkpoint (config inside it), weights loaded; returns (model, config, state).

    A checkpoint inside a run directory (`<run>/checkpoints/x.pt`) must be what that run is
    (`check_checkpoint`): model, dataset, width, T, tau and encoding. `model_factory` ("module:function",
    named by the user, see `spiketide.factory`) builds the module instead of the config: a model built in Python.
    """
    state = load_checkpoint(checkpoint, map_location=device)
    built = state.get("model_class") or ""
    if built and not built.startswith("spiketide.models.") and model_factory is None:
        recorded = state["config"].get("model") if isinstance(state["config"], dict) else None
        hint = factory.recorded_reference(str(recorded)) or "MODULE:FUNCTION"
        raise CheckpointError(f"{checkpoint} holds a model built in Python ({built}), not one of spiketide's models, "
                              f"so it cannot be rebuilt from its config; name the code that builds it: --model-factory "
                              f"{hint} (or load spiketide.runs.load_checkpoint(path)['model'] into it)")
    run = run_of(checkpoint)
    if run is not None:
        run, run_config = read_run(run)
        config = check_checkpoint(checkpoint, state, run, run_config)
    else:
        _, config = checkpoint_identity(state, checkpoint)
    model = build_model(config) if model_factory is None else factory.build(model_factory, built or None)
    sd = state["model"]
    if any(k.endswith("_orig") for k in sd):  # a pruned model: re-create the masks before loading
        apply_masks_from_state(model, sd)
    try:
        model.load_state_dict(sd)
    except RuntimeError as exc:
        raise CheckpointError(f"{checkpoint}: weights do not fit model {config.model!r}: {str(exc)[:300]}") from None
    if timesteps := state.get("timesteps"):
        model.timesteps = int(timesteps)
    return model.to(device), config, state


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
