"""Temporal Fisher information (Eq. 6) tracked inside a training loop of your own, written as a run directory.

For a model trained outside `train.Trainer` (a SpikingJelly, snnTorch or Norse model in its own PyTorch loop):

    tracker = RunTracker(model, images, labels, "runs/mine", dataset="fashion-mnist", factory=make_model)
    tracker.epoch(0)                                    # before training: Fig. 1 starts at epoch 0
    for epoch in range(1, epochs + 1):
        ...                                             # your training
        tracker.epoch(epoch, train_loss=loss, test_acc=acc)
    tracker.close()                                     # (or use the tracker as a `with` block)

Each `epoch()` measures the Fisher profile on the fixed measurement set (`callbacks.FisherTracker`, as the
Trainer's Fisher tracking does) and appends one metrics.jsonl line in the Trainer's format; the model's weights
go to checkpoints/. `spiketide plot RUN` then draws Fig. 1 / Fig. 3, and `spiketide fisher|stats|robustness|
early-exit|deficits RUN --model-factory package.module:make_model` analyse it (see `spiketide.factory`).

config.json is a `TrainConfig` record (so every reader validates it as strictly as a Trainer run's) whose
`model` is "python:<factory reference>" (`factory.model_name`). Fields the tracker cannot know (optimizer, lr,
augmentation, ...) hold what `settings=` gives, else TrainConfig's defaults; `settings_given` lists the fields that
describe this run, and `trained_by` says the run came from an own loop.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from spiketide import data
from spiketide.callbacks import FisherTracker
from spiketide.checkpoints import model_identity, model_state, read_run
from spiketide.checks import whole
from spiketide.config import TrainConfig
from spiketide.errors import ConfigError
from spiketide.evaluation import check_images, check_logits, eval_mode, model_device
from spiketide.factory import class_path, model_name, reference_of
from spiketide.runs import RunDir, atomic_write_json, check_creatable, environment, save_checkpoint

__all__ = ["RunTracker", "TRAINED_BY"]

TRAINED_BY = "own loop (spiketide.tracking.RunTracker)"
# TrainConfig fields the tracker fills from its own arguments; `settings=` may give any of the others.
_OWN = ("model", "dataset", "timesteps", "epochs", "seed", "checkpoint_epochs", "fisher_every", "fisher_samples",
        "fisher_estimator", "fisher_per_layer", "fisher_batch_size", "out")
_METRICS = ("train_loss", "train_acc", "test_acc", "lr", "seconds")


class RunTracker:
    """Fisher tracking and a run directory for a training loop of your own (module doc).

    model: any nn.Module mapping a batch [B, ...] of pixels in [0, 1] to per-timestep logits [T, B, C] and
        keeping no state between calls (a SpikingJelly / snnTorch / Norse network wrapped by
        `adapters.Stateless`). The analysis commands feed it images of `dataset` as float pixels in [0, 1].
    images, labels: the fixed measurement set ([N, C, H, W] uint8 or float in [0, 1]; N class indices).
    out: the run directory; it must be empty (or missing) unless `resume=True`.
    dataset: the spiketide dataset the model takes (fashion-mnist, cifar10, ...): the analysis commands load
        their evaluation images from it.
    factory: the function (or class) that builds `model` with no arguments, or its reference "module:function";
        recorded so the analysis commands can say which `--model-factory` to pass. Never imported from the run.
    every: measure at epoch 0, every `every`-th epoch and the last (`epochs`, when given); others get no `fisher`.
    estimator, per_layer, batch_size, seed: as `fisher.temporal_fisher` (the seed of epoch e is seed + e).
    checkpoints: save the weights at every call (checkpoints/last.pt) and at `checkpoint_epochs` and `epochs`
        (checkpoints/epoch_NNNN.pt, which `spiketide fisher RUN` measures one by one).
    epochs: the number of epochs the loop runs, when known (else config.json records the last one seen).
    settings: other TrainConfig fields that describe the loop (lr, optimizer, batch_size, tau, ...).
    resume: continue a run this tracker wrote (same model class, dataset and T); epochs must go on increasing.

    The directory is locked (`RunDir.lock`) from construction to `close()`: one writer at a time.
    """

    def __init__(self, model: nn.Module, images: Any, labels: Any, out: str | os.PathLike, *, dataset: str,
                 factory: Callable[[], nn.Module] | str | None = None, every: int = 1, estimator: str = "empirical",
                 per_layer: bool = False, batch_size: int = 64, seed: int = 0, checkpoints: bool = True,
                 checkpoint_epochs: list[int] | tuple = (), epochs: int | None = None, settings: dict | None = None,
                 resume: bool = False):
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model must be a torch nn.Module, got {type(model).__name__}")
        images, labels = check_images(images, labels)
        info = data.dataset_info(dataset)
        if images.dim() == 4 and tuple(images.shape[1:]) != (info.channels, info.image_size, info.image_size):
            raise ConfigError(f"the measurement images are {list(images.shape[1:])}, but {info.name} images are "
                              f"[{info.channels}, {info.image_size}, {info.image_size}]; pass the dataset they "
                              "are from")
        for name, v in (("every", every), ("batch_size", batch_size), ("epochs", epochs)):
            if v is not None:
                whole(name, v, 1)
        settings = dict(settings or {})
        own = sorted(set(settings) & set(_OWN))
        unknown = sorted(set(settings) - set(TrainConfig.__dataclass_fields__))
        if own or unknown:
            raise ConfigError(f"settings= takes TrainConfig fields other than the tracker's own arguments; "
                              f"{'these are set by the tracker: ' + ', '.join(own) if own else ''}"
                              f"{'; ' if own and unknown else ''}{'unknown: ' + ', '.join(unknown) if unknown else ''}")
        if not (factory is None or isinstance(factory, str) or callable(factory)):
            raise ConfigError(f"factory must be a function or class that builds the model, or its 'module:function' "
                              f"reference, got {type(factory).__name__}")
        reference = factory if isinstance(factory, str) or factory is None else reference_of(factory)
        self.model, self.run, self.epochs = model, RunDir(out), epochs
        self.checkpoints, self.checkpoint_epochs = bool(checkpoints), sorted({int(e) for e in checkpoint_epochs})
        self.fisher = FisherTracker(every, len(images), estimator, per_layer, batch_size, seed)
        self.fisher.use(images, labels)
        self.config = TrainConfig(**{**settings, "model": model_name(reference), "dataset": info.name,
                                     "timesteps": _timesteps(model, images), "epochs": epochs or 1, "seed": seed,
                                     "fisher_every": every, "fisher_samples": len(images),
                                     "fisher_estimator": estimator, "fisher_per_layer": bool(per_layer),
                                     "fisher_batch_size": batch_size, "out": str(self.run.path), "progress": False})
        self.config.validate()
        self._given = sorted({*_OWN, *settings} - {"out"})
        self._environment = environment()
        self._last: int | None = None
        self._saved: list[int] = []
        self._stack = contextlib.ExitStack()
        self._open(resume)

    def _open(self, resume: bool) -> None:
        run = self.run
        if run.path.exists() and not run.path.is_dir():
            raise ConfigError(f"{run.path} is a file; pass a folder for the run directory")
        if not resume and not run.is_empty():
            raise ConfigError(f"{run.path} already holds a run (or part of one); pass resume=True to continue it, "
                              "or pick another folder")
        check_creatable(run.path, "out")
        self._stack.enter_context(run.lock("spiketide.tracking.RunTracker"))
        try:
            if resume and run.exists():
                _, recorded = read_run(run)
                mine = model_identity(self.config, model_class=class_path(self.model))
                theirs = model_identity(recorded, model_class=run.read_config().get("model_class"))
                if mine != theirs:
                    raise ConfigError(f"resume=True: {run.path} holds another model or dataset ({theirs}); this "
                                      f"tracker has {mine}")
                records = run.read_metrics()
                self._last = records[-1]["epoch"] if records else None
                self._saved = run.saved_epochs()
                if self.epochs is None:
                    self.config.epochs = max(1, self._last or 0)
                self.config.checkpoint_epochs = list(self._saved)
            else:
                for stale in run.checkpoints.glob("*.pt") if run.checkpoints.is_dir() else ():
                    stale.unlink()
            run.create(self._record())
            self._written = self._record()
        except BaseException:
            self._stack.close()
            raise

    def _record(self) -> dict:
        """config.json: the TrainConfig record, the model's class, how the run was made and where."""
        return {**self.config.to_dict(), "model_class": class_path(self.model), "trained_by": TRAINED_BY,
                "settings_given": self._given, **self._environment}

    def epoch(self, epoch: int, *, train_loss: Any = None, train_acc: Any = None, test_acc: Any = None,
              lr: Any = None, seconds: Any = None, **extra: Any) -> dict:
        """Record epoch `epoch` (0 = before training): measure Fisher when due, append the metrics line, save
        the weights. Numbers may be floats or one-element tensors; `extra` keys (JSON values) are kept as given.
        Returns the record written."""
        if self._stack is None:
            raise ConfigError("this RunTracker is closed; make a new one (resume=True continues the run)")
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ConfigError(f"epoch must be a whole number >= 0, got {epoch!r}")
        if self._last is not None and epoch <= self._last:
            raise ConfigError(f"epoch {epoch} comes after epoch {self._last}; epochs must increase")
        if self.epochs is not None and epoch > self.epochs:
            raise ConfigError(f"epoch {epoch} is beyond epochs={self.epochs} given to the tracker")
        record: dict[str, Any] = {"epoch": epoch}
        record.update((k, _number(k, v)) for k, v in zip(_METRICS, (train_loss, train_acc, test_acc, lr, seconds)))
        record.update({"images_per_second": None, **extra})
        if self.fisher.due(epoch, self.epochs):
            record["fisher"] = self.fisher.measure(self.model, epoch)
        if self.epochs is None and epoch > self.config.epochs:  # the run so far: config.json follows it
            self.config.epochs = epoch
        self.run.append_metrics(record)
        self._last = epoch
        if self.checkpoints:
            self._save(epoch)
        self.config.checkpoint_epochs = list(self._saved)
        if self._record() != self._written:  # the epochs run so far and the checkpoints kept
            self._written = self._record()
            atomic_write_json(self.run.config_path, self._written)
        return record

    def _save(self, epoch: int) -> None:
        state = model_state(self.model, self.config, epoch, self.config.timesteps)
        if epoch in self.checkpoint_epochs or epoch == self.epochs:
            save_checkpoint(state, self.run.checkpoint_path(epoch))
            self._saved = sorted({*self._saved, epoch})
        save_checkpoint(state, self.run.checkpoint_path())

    def close(self) -> None:
        """Release the run directory's lock (the files are complete after every `epoch()`)."""
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    def __enter__(self) -> RunTracker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _timesteps(model: nn.Module, images: Tensor) -> int:
    """T: the model's `timesteps`, else the length of its output on one measurement image."""
    T = getattr(model, "timesteps", None)
    if isinstance(T, int) and not isinstance(T, bool) and T >= 1:
        return T
    with eval_mode(model), torch.no_grad():
        x = data.to_float(images[:1]).to(model_device(model))
        return int(check_logits(model(x), 1).shape[0])


def _number(name: str, v: Any) -> float | None:
    if isinstance(v, Tensor):
        if v.numel() != 1:
            raise ConfigError(f"{name} must be a number, got a tensor of shape {tuple(v.shape)}")
        v = v.item()
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
        raise ConfigError(f"{name} must be a number or None, got {v!r}")
    return None if v is None else float(v)
