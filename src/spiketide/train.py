"""The one training loop: STBP/BPTT (Eq. 2) over all timesteps, extended by losses and callbacks.

`TrainConfig` holds every option (validated once); `Trainer.fit()` runs the epochs, writes
`metrics.jsonl` and checkpoints into a run directory it holds locked, and calls the `Callback`s
its caller handed in (Fisher tracking, pruning masks, ...) at fixed points. The loss is handed in
too, or built from the config. Data-parallel with `torchrun` (DDP): every rank holds the whole
split in memory, draws the same global batch and trains on its slice; the loss and the BatchNorm
statistics are those of the global batch; rank 0 writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn
from torch.distributed.nn.functional import all_reduce

from spiketide import __version__, data, factory, models, progress
from spiketide.callbacks import Callback
from spiketide.errors import CheckpointError, ConfigError, TrainingDiverged
from spiketide.evaluation import accuracy, check_logits
from spiketide.fisher import ESTIMATORS
from spiketide.losses import batch_mean, horizon_losses, make_loss
from spiketide.neuron import check_tau
from spiketide.pruning import apply_masks_from_state
from spiketide.runs import (RunDir, check_creatable, check_fields, field_problem, git_commit, load_checkpoint, run_of,
                            save_checkpoint)

__all__ = ["TrainConfig", "Callback", "Trainer", "train", "build_model", "select_device", "load_model",
           "read_run", "model_identity", "checkpoint_identity", "check_checkpoint", "OPTIMIZERS", "SCHEDULES",
           "SEED_MAX"]

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "constant")
SEED_MAX = 2**32 - 1  # the seed seeds torch generators (with seed + 1, seed + epoch) and numpy-sized seeds


@dataclass
class TrainConfig:
    """Every option of a training run; stored in config.json and in every checkpoint."""

    model: str = "resnet19"
    dataset: str = "cifar10"
    data_root: str | None = None
    subset: int | None = None  # class-balanced training subset
    test_subset: int | None = None
    augment: bool = True
    timesteps: int = 10
    tau: float = 2.0
    width: float = 1.0  # channel multiplier of the architecture (1/8 gives CPU-sized paper topologies)
    encoding: str = "direct"  # or "poisson" (rate coding)
    epochs: int = 300
    batch_size: int = 128
    eval_batch_size: int = 256
    eval_every: int = 1  # test accuracy every K epochs; always at epoch 0 and the last
    optimizer: str = "sgd"
    lr: float = 0.3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    loss: str = "ce"
    alpha: float | None = None
    tet_lambda: float | None = None
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bf16 autocast, used on CUDA only
    fast_lif: bool = True
    checkpoint_epochs: list[int] = field(default_factory=list)
    fisher_every: int = 0  # 0 = no Fisher tracking
    fisher_samples: int = 128
    fisher_estimator: str = "empirical"
    fisher_per_layer: bool = False
    fisher_batch_size: int = 64
    out: str = "runs/run"
    progress: bool = True

    # Fields a run directory written before they existed lacks, with the value that code used (not a guess):
    # every other field of a recorded config.json or checkpoint config is required.
    ADDED_LATER: ClassVar[dict[str, Any]] = {"width": 1.0, "tet_lambda": None, "encoding": "direct", "eval_every": 1}

    def validate(self) -> "TrainConfig":
        def bad(msg: str):
            raise ConfigError(msg)

        for name in ("data_root", "out"):  # a Path given in Python is recorded as its string
            if isinstance(getattr(self, name), os.PathLike):
                setattr(self, name, os.fspath(getattr(self, name)))
        problem = field_problem(self.to_dict(), type(self))
        if problem:
            bad(f"TrainConfig {problem}")
        if self.model not in models.available() and not factory.is_python_model(self.model):
            bad(f"unknown model {self.model!r}; available: {', '.join(models.available())}")
        data.dataset_info(self.dataset)  # raises ConfigError for unknown names
        if self.timesteps < 1:
            bad(f"timesteps T must be >= 1, got {self.timesteps}")
        check_tau(self.tau)
        if self.encoding not in models.ENCODINGS:
            bad(f"unknown encoding {self.encoding!r}; choose one of {', '.join(models.ENCODINGS)}")
        if not (math.isfinite(self.width) and self.width > 0):
            bad(f"--width must be a finite number > 0 (1 = the paper's width), got {self.width}")
        if self.epochs < 1:
            bad(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            bad("batch sizes must be >= 1")
        if self.eval_every < 1:
            bad(f"--eval-every must be >= 1 (test accuracy every K epochs), got {self.eval_every}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            bad(f"learning rate must be a finite number > 0, got {self.lr}")
        for name in ("momentum", "weight_decay"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                bad(f"--{name.replace('_', '-')} must be a finite number >= 0, got {v}")
        if self.optimizer not in OPTIMIZERS:
            bad(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            bad(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        for name in ("subset", "test_subset"):
            v = getattr(self, name)
            if v is not None and v < 1:
                bad(f"--{name.replace('_', '-')} must be >= 1, got {v}")
        if self.alpha is not None and self.loss != "alpha":
            bad(f"--alpha {self.alpha} applies only to --loss alpha (this run uses --loss {self.loss}); drop --alpha "
                "or pass --loss alpha")
        if self.tet_lambda is not None and self.loss != "tet":
            bad(f"--tet-lambda {self.tet_lambda} applies only to --loss tet (this run uses --loss {self.loss}); drop "
                "--tet-lambda or pass --loss tet")
        for name in ("alpha", "tet_lambda"):
            v = getattr(self, name)
            if v is not None and not math.isfinite(v):
                bad(f"--{name.replace('_', '-')} must be a finite number, got {v}")
        make_loss(self.loss, self.alpha, self.tet_lambda)
        if not 0 <= self.seed <= SEED_MAX:
            bad(f"--seed must be a whole number from 0 to {SEED_MAX}, got {self.seed}")
        for name in ("data_root", "out", "device"):
            if getattr(self, name) == "":
                bad(f"--{name.replace('_', '-')} is empty; pass a path or leave the option out")
        beyond = [e for e in self.checkpoint_epochs if e < 0 or e > self.epochs]
        if beyond:
            bad(f"checkpoint epochs {beyond} are outside the run (0..{self.epochs}); pick epochs in that range")
        if self.fisher_every < 0 or self.fisher_samples < 1 or self.fisher_batch_size < 1:
            bad("--fisher-every must be >= 0, --fisher-samples >= 1 and the Fisher batch size >= 1")
        if self.fisher_estimator not in ESTIMATORS:
            bad(f"unknown Fisher estimator {self.fisher_estimator!r}; choose one of {', '.join(ESTIMATORS)}")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Options given in Python: missing ones take their defaults, other keys are ignored (not validated)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_record(cls, d: Any, where: str | os.PathLike) -> "TrainConfig":
        """A config recorded in a run directory or checkpoint (`where`): every field present (apart from
        `ADDED_LATER`) and of its type, no default filled in, then validated; CheckpointError naming `where`."""
        d = check_fields(d, cls, where, cls.ADDED_LATER)
        config = cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})
        try:
            return config.validate()
        except ConfigError as exc:
            raise CheckpointError(f"{where} records a config that is not valid ({exc}); the file was edited or "
                                  "damaged: restore it or start a new run") from None


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
            local = int(os.environ.get("LOCAL_RANK", 0))
            return torch.device("cuda", local)
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
    info = data.dataset_info(config.dataset)
    return models.create(config.model, num_classes=info.num_classes, timesteps=config.timesteps, tau=config.tau,
                         in_channels=info.channels, image_size=info.image_size, mean=info.mean, std=info.std,
                         fast_lif=config.fast_lif, width=config.width, encoding=config.encoding,
                         encoding_seed=config.seed)


def _class_path(model: nn.Module) -> str:
    return f"{type(model).__module__}.{type(model).__qualname__}"


# What a checkpoint is: every option that changes the model's parameters or its computation, in the order
# differences are reported. (Channels, classes and image size come from the dataset, recorded as numbers.)
_IDENTITY_NAMES = {
    "model_class": "model class", "model": "model", "dataset": "dataset", "in_channels": "input channels",
    "num_classes": "classes", "image_size": "image size", "width": "width", "timesteps": "timesteps T",
    "tau": "tau", "encoding": "encoding", "encoding_seed": "Poisson encoding seed",
}


def model_identity(config: TrainConfig, timesteps: int | None = None, model_class: str | None = None) -> dict:
    """The identity of the model a config builds (`timesteps`: the model's own, when it differs from the config's)."""
    info = data.dataset_info(config.dataset)
    ident = {"model": config.model, "dataset": config.dataset, "in_channels": info.channels,
             "num_classes": info.num_classes, "image_size": info.image_size, "width": float(config.width),
             "timesteps": int(timesteps or config.timesteps), "tau": float(config.tau), "encoding": config.encoding}
    if config.encoding == "poisson":  # without a generator the spike pattern is drawn from the run's seed
        ident["encoding_seed"] = int(config.seed)
    if model_class:
        ident["model_class"] = model_class
    return {k: ident[k] for k in _IDENTITY_NAMES if k in ident}


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
        diff = _first_difference(stored, ident)
        if diff:
            raise CheckpointError(f"{where} is inconsistent: it records {diff[0]} {diff[1]!r}, but its config builds "
                                  f"{diff[2]!r}; the file was edited, or written under other dataset definitions")
    return ident, config


def _first_difference(a: dict, b: dict) -> tuple[str, Any, Any] | None:
    """(name, a's value, b's value) of the first identity field, in `_IDENTITY_NAMES` order, that differs."""
    for key, name in _IDENTITY_NAMES.items():
        if key in a and key in b and a[key] != b[key]:
            return name, a[key], b[key]
    return None


def _run_identity(run: RunDir, config: TrainConfig) -> dict:
    recorded = run.read_config()
    model_class = recorded.get("model_class") if isinstance(recorded.get("model_class"), str) else None
    return model_identity(config, None, model_class)


def check_checkpoint(checkpoint: str | os.PathLike, state: dict, run: RunDir, config: TrainConfig) -> TrainConfig:
    """Refuse a checkpoint whose identity differs from the run it lies in, naming the first difference;
    returns the checkpoint's own config."""
    ident, ckpt_config = checkpoint_identity(state, checkpoint)
    diff = _first_difference(ident, _run_identity(run, config))
    if diff:
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
    timesteps = state.get("timesteps")
    if timesteps:
        model.timesteps = int(timesteps)
    return model.to(device), config, state


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


def _use_global_batchnorm(model: nn.Module) -> None:
    for m in model.modules():
        # Swapping the class keeps parameters, buffers and state_dict keys unchanged.
        if type(m) is nn.BatchNorm2d:
            m.__class__ = _GlobalBatchNorm2d
        elif type(m) is nn.BatchNorm1d:
            m.__class__ = _GlobalBatchNorm1d


def _global_mean(global_batch: int):
    """Mean over the global batch of per-sample values held by each rank (autograd flows to every rank)."""

    def mean(v: torch.Tensor) -> torch.Tensor:
        return all_reduce(v.sum(-1)) / global_batch

    return mean


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    return world, rank


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
        self.world, self.rank = _distributed()
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
        self.train_set = train_set or data.load(config.dataset, "train", root=config.data_root, subset=config.subset,
                                                seed=config.seed, device=self.device)
        self.test_set = test_set or data.load(config.dataset, "test", root=config.data_root,
                                              subset=config.test_subset, seed=config.seed, device=self.device)
        self.train_set = self.train_set.to(self.device)
        self.test_set = self.test_set.to(self.device)
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
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "timesteps": int(getattr(self.model, "timesteps", self.config.timesteps)),
            "model_class": _class_path(self.model),
            "identity": model_identity(self.config, int(getattr(self.model, "timesteps", self.config.timesteps)),
                                       _class_path(self.model)),
            "config": self.config.to_dict(),
            "rng": {"torch": torch.get_rng_state(), "data": self.generator.get_state(),
                    **({"cuda": torch.cuda.get_rng_state(self.device)} if self.device.type == "cuda" else {})},
            "callbacks": {k: cb.state_dict() for k, cb in zip(self._callback_keys(), self.callbacks)},
            "version": __version__,
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
        return {**self.config.to_dict(), "model_class": _class_path(self.model), **self.extra_config,
                "spiketide_version": __version__,
                "git_commit": git_commit(), "torch_version": torch.__version__, "python": sys.version.split()[0],
                "platform": platform.platform(), "device_resolved": str(self.device), "world_size": self.world,
                "train_size": len(self.train_set), "test_size": len(self.test_set)}

    # Options a resume may give otherwise than the run recorded: where the run is read from and how it is shown.
    _RESUME_FREE = ("out", "progress", "device", "data_root")

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
        for name in (f.name for f in dataclasses.fields(TrainConfig) if f.name not in self._RESUME_FREE):
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
        for name in (f.name for f in dataclasses.fields(TrainConfig) if f.name not in self._RESUME_FREE):
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
        if state is not None and state.get("model_class") not in (None, _class_path(self.model)):
            raise CheckpointError(f"{self.run.checkpoint_path()} holds a {state['model_class']}, but this run was "
                                  f"given a {_class_path(self.model)}; resume it with the model it was trained with")
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
        record = {"epoch": 0, "train_loss": None, "train_acc": None, "test_acc": self.evaluate(),
                  "lr": self.optimizer.param_groups[0]["lr"], "seconds": 0.0, "images_per_second": None}
        self._finish_epoch(record)

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
        T = int(getattr(self.model, "timesteps", c.timesteps))
        alpha = getattr(self.loss_fn, "alpha", None)
        lr = self.optimizer.param_groups[0]["lr"]
        totals = torch.zeros(3 + 2 * T, dtype=torch.float64)  # loss*n, correct, n, horizon losses*n, below-alpha steps
        steps = 0
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
                    f"the training loss became {loss.item()} at epoch {self.epoch}, step {steps + 1}. "
                    f"The last good checkpoint is {self.run.checkpoint_path()} (epoch {self.epoch - 1}). "
                    "Lower --lr (the paper uses 0.3 with BN), or try --optimizer adam."
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            with torch.no_grad():
                n = len(yb)
                hl = horizon_losses(out.detach(), yb).double().cpu()
                totals[0] += loss.item() * n
                totals[1] += (out.float().mean(0).argmax(1) == yb).sum().item()
                totals[2] += n
                totals[3:3 + T] += hl * n
                if alpha is not None:
                    totals[3 + T:] += (hl < alpha).double()
            steps += 1
            bar.update(1)
        if self.world > 1:
            totals = totals.to(self.device)
            torch.distributed.all_reduce(totals)
            totals = totals.cpu()
        seconds = time.perf_counter() - start
        n = totals[2].item()
        record: dict[str, Any] = {
            "epoch": self.epoch,
            "train_loss": totals[0].item() / n,
            "train_acc": totals[1].item() / n,
            "test_acc": None,
            "lr": lr,
            "seconds": seconds,
            "images_per_second": n / seconds,
            "horizon_loss": (totals[3:3 + T] / n).tolist(),
        }
        if alpha is not None:
            record["alpha"] = alpha
            record["below_alpha_fraction"] = (totals[3 + T:] / (steps * self.world)).tolist()
        return record


def train(config: TrainConfig, *, callbacks: list[Callback] | tuple = (), resume: bool = False, **kw) -> Trainer:
    """Build a Trainer with the callbacks given, fit it and return it."""
    trainer = Trainer(config, callbacks=callbacks, resume=resume, **kw)
    trainer.fit()
    return trainer
