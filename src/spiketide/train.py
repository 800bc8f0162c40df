"""The one training loop: STBP/BPTT (Eq. 2) over all timesteps, extended by losses and callbacks.

`TrainConfig` (spiketide.config) holds every option, validated once; `Trainer.fit()` runs the epochs, writes
`metrics.jsonl` and checkpoints into a run directory it holds locked, and calls the `Callback`s
its caller handed in (Fisher tracking, pruning masks, ...) at fixed points. The loss is handed in
too, or built from the config. Data-parallel with `torchrun` (DDP): every rank holds the whole
split in memory, draws the same global batch and trains on its slice; the loss and the BatchNorm
statistics are those of the global batch; rank 0 writes.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.distributed.nn.functional import all_reduce

from spiketide import data, progress
from spiketide.checkpoints import build_model, check_checkpoint, model_state, read_run, select_device
from spiketide.config import RUN_SETTINGS, TrainConfig
from spiketide.errors import CheckpointError, ConfigError, TrainingDiverged
from spiketide.evaluation import accuracy, check_logits
from spiketide.factory import class_path
from spiketide.losses import batch_mean, horizon_losses, make_loss
from spiketide.runs import RunDir, check_creatable, environment, load_checkpoint, save_checkpoint

if TYPE_CHECKING:
    from spiketide.callbacks import Callback

__all__ = ["TrainConfig", "Trainer", "train"]


# --- data parallel ---------------------------------------------------------------------------

class _GlobalBatchNorm:
    """BatchNorm whose training statistics are those of the global batch across DDP ranks.

    nn.SyncBatchNorm is GPU-only; this all-reduces (sum, sum of squares, count) with autograd on
    any backend, so 2 CPU processes train exactly like one process on the same global batch.
    """

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        x = x.float()  # statistics in float32 even under bf16 autocast, as nn.BatchNorm does
        dims = [0] + list(range(2, x.dim()))
        c = x.shape[1]
        n = x.new_tensor([x.numel() / c])
        stats = all_reduce(torch.cat([x.sum(dims), (x * x).sum(dims), n]))
        total = stats[-1]
        mean = stats[:c] / total
        var = stats[c:2 * c] / total - mean * mean
        with torch.no_grad():
            self.num_batches_tracked += 1
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
            self.running_var.mul_(1 - m).add_(var.detach() * total / (total - 1), alpha=m)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y


class _GlobalBatchNorm1d(_GlobalBatchNorm, nn.BatchNorm1d):
    pass


class _GlobalBatchNorm2d(_GlobalBatchNorm, nn.BatchNorm2d):
    pass


_GLOBAL_BATCHNORM = {nn.BatchNorm1d: _GlobalBatchNorm1d, nn.BatchNorm2d: _GlobalBatchNorm2d}


def _use_global_batchnorm(model: nn.Module) -> None:
    for m in model.modules():
        if type(m) in _GLOBAL_BATCHNORM:  # swapping the class keeps parameters, buffers and state_dict keys
            m.__class__ = _GLOBAL_BATCHNORM[type(m)]


def _global_mean(global_batch: int):
    """Mean over the global batch of per-sample values held by each rank (autograd flows to every rank)."""

    def mean(v: torch.Tensor) -> torch.Tensor:
        return all_reduce(v.sum(-1)) / global_batch

    return mean


# --- the loop --------------------------------------------------------------------------------

class Trainer:
    """Trains one model under one config, in the run directory `run_dir` (default: `config.out`).

    `callbacks` and `loss_fn(out, y, mean)` are the caller's to hand in; the Trainer builds no
    callbacks from config flags. With `resume=True` it continues the run found at `run_dir` (the
    path given, never one recorded inside it) from its last checkpoint.
    """

    def __init__(self, config: TrainConfig, *, callbacks: list[Callback] | tuple = (), model: nn.Module | None = None,
                 train_set: data.ImageSet | None = None, test_set: data.ImageSet | None = None,
                 run_dir: RunDir | str | os.PathLike | None = None, resume: bool = False,
                 extra_config: dict | None = None, loss_fn=None):
        self.config = config.validate()
        self.callbacks = list(callbacks)
        self.world, self.rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
        self.is_main = self.rank == 0
        self.device = select_device(config.device)
        self.amp = bool(config.amp and self.device.type == "cuda")
        self.run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir if run_dir is not None else config.out)
        self.config.out = str(self.run.path)  # the directory actually written, wherever the run was started
        self.resume = resume
        self._check_run_dir()  # before any data is loaded; checked again under the lock in fit()
        self.extra_config = extra_config or {}
        if self.world > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            torch.distributed.init_process_group(backend)
        torch.manual_seed(config.seed)
        self.train_set = (train_set or data.load(config.dataset, "train", root=config.data_root, subset=config.subset,
                                                 seed=config.seed, device=self.device)).to(self.device)
        self.test_set = (test_set or data.load(config.dataset, "test", root=config.data_root, subset=config.test_subset,
                                               seed=config.seed, device=self.device)).to(self.device)
        self.model = (model if model is not None else build_model(config)).to(self.device)
        self.loss_fn = loss_fn if loss_fn is not None else make_loss(config.loss, config.alpha, config.tet_lambda)
        self.optimizer = self._make_optimizer()
        self.scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=config.epochs)
                          if config.schedule == "cosine" else torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda e: 1.0))
        self.generator = torch.Generator(device="cpu").manual_seed(config.seed + 1)
        self.epoch = 0
        self.history: list[dict] = []
        self.net = self.model
        if self.world > 1:
            _use_global_batchnorm(self.model)
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def _make_optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        params = [p for p in self.model.parameters() if p.requires_grad]
        if c.optimizer == "adam":
            return torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay)
        return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)

    # -- checkpoints --
    def _callback_keys(self) -> list[str]:
        keys, seen = [], {}
        for cb in self.callbacks:
            k = cb.key or type(cb).__name__
            seen[k] = seen.get(k, 0) + 1
            keys.append(k if seen[k] == 1 else f"{k}#{seen[k]}")
        return keys

    def state_dict(self) -> dict:
        return {
            **model_state(self.model, self.config, self.epoch),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "data": self.generator.get_state(),
                    **({"cuda": torch.cuda.get_rng_state(self.device)} if self.device.type == "cuda" else {})},
            "callbacks": {k: cb.state_dict() for k, cb in zip(self._callback_keys(), self.callbacks)},
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = int(state["epoch"])
        torch.set_rng_state(state["rng"]["torch"])
        self.generator.set_state(state["rng"]["data"])
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        saved = state.get("callbacks") or {}
        if isinstance(saved, list):  # checkpoints of spiketide 0.1.0 kept callback states by position
            saved = dict(zip(self._callback_keys(), saved))
        for key, cb in zip(self._callback_keys(), self.callbacks):
            if key in saved:
                cb.load_state_dict(saved[key])

    def save(self) -> None:
        if not self.is_main:
            return
        state = self.state_dict()
        if self.epoch in self.config.checkpoint_epochs or self.epoch == self.config.epochs:
            save_checkpoint(state, self.run.checkpoint_path(self.epoch))
        save_checkpoint(state, self.run.checkpoint_path())

    # -- run --
    def _config_record(self) -> dict:
        return {**self.config.to_dict(), "model_class": class_path(self.model), **self.extra_config,
                **environment(), "device_resolved": str(self.device), "world_size": self.world,
                "train_size": len(self.train_set), "test_size": len(self.test_set)}

    def _check_run_dir(self) -> dict | None:
        """Read-only checks of the run directory, done before anything is written (and again under the lock).

        A new run needs an empty folder it can create. A resumed one needs a valid config.json that records
        this config, valid metrics.jsonl, and a last checkpoint that is this run's (`check_checkpoint`) with
        every epoch up to it in the metrics. Returns that checkpoint's state (None: the run starts afresh).
        """
        if self.run.path.exists() and not self.run.path.is_dir():
            raise ConfigError(f"--out {self.run.path} is a file; pass a folder for the run directory")
        if not self.resume and not self.run.is_empty():
            raise ConfigError(f"{self.run.path} already holds a run (or part of one); pass --resume to continue it, "
                              "or pick another --out")
        check_creatable(self.run.path)
        if not self.resume or not self.run.exists():
            return None  # (a resume of a run killed before its config was written starts afresh)
        _, recorded = read_run(self.run)
        for name in RUN_SETTINGS:
            if getattr(recorded, name) != getattr(self.config, name):
                raise ConfigError(f"--resume: {self.run.config_path} records {name} = {getattr(recorded, name)!r}, "
                                  f"but the run is resumed with {getattr(self.config, name)!r}; a run continues with "
                                  "the options it was started with")
        last = self.run.checkpoint_path()
        metrics = self.run.read_metrics()
        if not last.is_file():
            if metrics:
                raise CheckpointError(f"--resume: {last} not found, but {self.run.metrics_path} has epochs; the run "
                                      "directory is damaged. Start a new run in another folder.")
            return None  # (killed before its first checkpoint: nothing to keep, it starts afresh)
        state = load_checkpoint(last, map_location=self.device)
        theirs = check_checkpoint(last, state, self.run, recorded)
        for name in RUN_SETTINGS:
            if getattr(theirs, name) != getattr(recorded, name):
                raise CheckpointError(f"--resume: {last} was trained with {name} = {getattr(theirs, name)!r}, but "
                                      f"{self.run.config_path} records {getattr(recorded, name)!r}; it is not this "
                                      "run's checkpoint: move it out of the run directory")
        epoch = state.get("epoch")
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise CheckpointError(f"{last}: 'epoch' is {epoch!r}, not a whole number >= 0; the file was edited or "
                                  "damaged")
        # metrics.jsonl is written before the checkpoints, so it holds every epoch up to the checkpoint's
        if not {r["epoch"] for r in metrics} >= set(range(epoch + 1)):
            raise CheckpointError(f"--resume: {self.run.metrics_path} lacks epochs up to {epoch}, the "
                                  f"epoch of {last}; the run directory is damaged. Start a new run elsewhere.")
        return state

    def _start(self) -> None:
        """Open the run directory: continue it (resume) or start it; then the callbacks' setup, then epoch 0."""
        state = self._check_run_dir()
        if self.world > 1:  # every rank has read the run directory before rank 0 starts writing it
            torch.distributed.barrier()
        if state is not None and state.get("model_class") not in (None, class_path(self.model)):
            raise CheckpointError(f"{self.run.checkpoint_path()} holds a {state['model_class']}, but this run was "
                                  f"given a {class_path(self.model)}; resume it with the model it was trained with")
        if state is None and self.is_main:
            for stale in self.run.checkpoints.glob("*.pt") if self.run.checkpoints.is_dir() else ():
                stale.unlink()
            self.run.create(self._config_record())
        for cb in self.callbacks:
            cb.on_fit_start(self)
        if state is not None:
            self.load_state_dict(state)
            # Lines written after the checkpoint (a kill between the two writes) are redone.
            self.history = [r for r in self.run.read_metrics() if r["epoch"] <= self.epoch]
            if self.is_main:
                self.run.write_metrics(self.history)
            return
        self._finish_epoch({"epoch": 0, "train_loss": None, "train_acc": None, "test_acc": self.evaluate(),
                            "lr": self.optimizer.param_groups[0]["lr"], "seconds": 0.0, "images_per_second": None})

    def _finish_epoch(self, record: dict) -> None:
        for cb in self.callbacks:
            cb.on_epoch_end(self, record)
        self.history.append(record)
        if self.is_main:
            self.run.append_metrics(record)
        self.save()

    def evaluate(self) -> float:
        return accuracy(self.model, self.test_set.images, self.test_set.labels, self.config.eval_batch_size,
                        amp=self.amp)

    def fit(self) -> list[dict]:
        with contextlib.ExitStack() as stack:
            if self.is_main:
                stack.enter_context(self.run.lock("spiketide train"))
            self._start()
            steps_per_epoch = math.ceil(len(self.train_set) / self.config.batch_size)
            bar = stack.enter_context(progress.bar((self.config.epochs - self.epoch) * steps_per_epoch, unit="step",
                                                   enabled=self.config.progress and self.is_main, leave=True))
            while self.epoch < self.config.epochs:
                self.epoch += 1
                record = self._train_epoch(bar)
                # Between evaluations test_acc is null: an unmeasured epoch is never filled in.
                last = self.epoch == self.config.epochs
                record["test_acc"] = self.evaluate() if last or self.epoch % self.config.eval_every == 0 else None
                self.scheduler.step()
                self._finish_epoch(record)
                tested = {} if record["test_acc"] is None else {"test": f"{record['test_acc']:.3f}"}
                bar.set_postfix(loss=f"{record['train_loss']:.3f}", acc=f"{record['train_acc']:.3f}", **tested)
            for cb in self.callbacks:
                cb.on_fit_end(self)
        return self.history

    def _train_epoch(self, bar) -> dict:
        c = self.config
        self.model.train()
        alpha = getattr(self.loss_fn, "alpha", None)
        lr = self.optimizer.param_groups[0]["lr"]
        totals = _EpochTotals(int(getattr(self.model, "timesteps", c.timesteps)))
        start = time.perf_counter()
        bar.set_description(f"epoch {self.epoch}/{c.epochs}")
        for xb, yb in data.batches(self.train_set.images, self.train_set.labels, c.batch_size, shuffle=True,
                                   generator=self.generator):
            x = data.augment(xb, c.dataset, generator=self.generator) if c.augment else data.to_float(xb)
            mean = batch_mean
            if self.world > 1:  # every rank drew the same global batch; train on this rank's slice
                mean = _global_mean(len(yb))
                x, yb = x[self.rank::self.world], yb[self.rank::self.world]
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                # rate coding draws fresh spikes every step from the run's generator (saved in checkpoints)
                out = self.net(x, generator=self.generator) if c.encoding == "poisson" else self.net(x)
            check_logits(out, len(x))
            loss = self.loss_fn(out, yb, mean)
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"the training loss became {loss.item()} at epoch {self.epoch}, step {totals.steps + 1}. "
                    f"The last good checkpoint is {self.run.checkpoint_path()} (epoch {self.epoch - 1}). "
                    "Lower --lr (the paper uses 0.3 with BN), or try --optimizer adam."
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            totals.add(loss, out.detach(), yb, alpha)
            bar.update(1)
        if self.world > 1:
            totals.all_reduce(self.device)
        return {"epoch": self.epoch, **totals.record(time.perf_counter() - start, lr, alpha, self.world)}


class _EpochTotals:
    """Sums over an epoch's steps (float64): loss x n, correct predictions, n, each horizon's loss (Eq. 4) x n and
    the steps where it was below alpha (Eq. 9-10)."""

    def __init__(self, timesteps: int):
        self.sums = {k: torch.zeros(size, dtype=torch.float64)
                     for k, size in (("loss", 1), ("correct", 1), ("n", 1), ("horizon", timesteps), ("below", timesteps))}
        self.steps = 0

    @torch.no_grad()
    def add(self, loss: torch.Tensor, out: torch.Tensor, y: torch.Tensor, alpha: float | None) -> None:
        n, hl = len(y), horizon_losses(out, y).double().cpu()
        self.sums["loss"] += loss.item() * n
        self.sums["correct"] += (out.float().mean(0).argmax(1) == y).sum().item()
        self.sums["n"] += n
        self.sums["horizon"] += hl * n
        if alpha is not None:
            self.sums["below"] += (hl < alpha).double()
        self.steps += 1

    def all_reduce(self, device: torch.device) -> None:
        """Sum over DDP ranks, in one collective."""
        flat = torch.cat(list(self.sums.values())).to(device)
        torch.distributed.all_reduce(flat)
        self.sums = dict(zip(self.sums, flat.cpu().split([len(v) for v in self.sums.values()])))

    def record(self, seconds: float, lr: float, alpha: float | None, world: int) -> dict[str, Any]:
        n = self.sums["n"].item()
        record = {"train_loss": self.sums["loss"].item() / n, "train_acc": self.sums["correct"].item() / n,
                  "test_acc": None, "lr": lr, "seconds": seconds, "images_per_second": n / seconds,
                  "horizon_loss": (self.sums["horizon"] / n).tolist()}
        if alpha is not None:
            record["alpha"] = alpha
            record["below_alpha_fraction"] = (self.sums["below"] / (self.steps * world)).tolist()
        return record


def train(config: TrainConfig, *, callbacks: list[Callback] | tuple = (), resume: bool = False, **kw) -> Trainer:
    """Build a Trainer with the callbacks given, fit it and return it."""
    trainer = Trainer(config, callbacks=callbacks, resume=resume, **kw)
    trainer.fit()
    return trainer
