"""Settings: every option of a training run (`TrainConfig`), the names each option may take and the datasets'
static facts, in one place that imports no torch (so `spiketide --help` answers at once).

The registries that implement the names (`models.create`, `losses.make_loss`, `fisher.ESTIMATORS`,
`data.load`) are tested to cover exactly these names. A `TrainConfig` field marked `invariant` does not
change what a run computes: it is left out of a trial's identity and may change on `--resume`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

from spiketide.checks import check_fields, check_loss, check_tau, field_problem, number, whole
from spiketide.errors import CheckpointError, ConfigError

__all__ = ["TrainConfig", "RUN_INVARIANT", "RUN_SETTINGS", "MODELS", "ENCODINGS", "LOSSES", "ESTIMATORS", "OPTIMIZERS", "SCHEDULES",
           "SEED_MAX", "DATASETS", "DatasetInfo", "dataset_info", "SCALES", "NIR_DT", "NIR_POOLINGS", "PYTHON_MODEL",
           "is_python_model"]

MODELS = ("alexnet", "convnet", "resnet19", "resnet34", "vgg16")
ENCODINGS = ("direct", "poisson")
LOSSES = {"ce": "cross-entropy of the mean output (the paper's)", "alpha": "Eq. 9-10, needs --alpha",
          "per-timestep": "mean over t of CE(o_t, y)", "tet": "TET (Deng et al. 2022), needs --tet-lambda"}
ESTIMATORS = ("empirical", "true", "batch")
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "constant")
SEED_MAX = 2**32 - 1  # the seed seeds torch generators (with seed + 1, seed + epoch) and numpy-sized seeds
SCALES = ("smoke", "cpu", "paper")  # of `spiketide reproduce` (experiments/suite.py)
NIR_DT = 1e-4  # seconds per timestep written into an exported NIR graph: SpikingJelly's default
NIR_POOLINGS = ("avg", "sum")
PYTHON_MODEL = "python"  # config `model` of a model built in Python: "python" or "python:<factory reference>"


def is_python_model(name: object) -> bool:
    """Whether a config's `model` names a model built in Python (`factory.model_name`), not one of `MODELS`."""
    return isinstance(name, str) and (name == PYTHON_MODEL or name.startswith(PYTHON_MODEL + ":"))


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset; ``mean``/``std`` are per channel, of pixels in [0, 1]."""

    name: str
    channels: int
    image_size: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_size: int
    test_size: int


DATASETS: dict[str, DatasetInfo] = {
    "fashion-mnist": DatasetInfo("fashion-mnist", 1, 28, 10, (0.2860,), (0.3530,), 60_000, 10_000),
    "cifar10": DatasetInfo("cifar10", 3, 32, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 50_000, 10_000),
    "cifar100": DatasetInfo("cifar100", 3, 32, 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                            50_000, 10_000),
    "svhn": DatasetInfo("svhn", 3, 32, 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), 73_257, 26_032),
    "digits": DatasetInfo("digits", 1, 8, 10, (0.3057,), (0.3760,), 1_347, 450),  # our split, see data._read_digits
}
# Keys are lower-case names without '-' or '_'.
_ALIASES = {"fashionmnist": "fashion-mnist", "fmnist": "fashion-mnist", "cifar10": "cifar10",
            "cifar100": "cifar100", "svhn": "svhn", "digits": "digits"}


def dataset_info(name: str) -> DatasetInfo:
    """Look up a dataset by name (case-insensitive; ``-`` and ``_`` optional)."""
    key = _ALIASES.get(str(name).strip().lower().replace("-", "").replace("_", ""))
    if key is None:
        raise ConfigError(f"unknown dataset {name!r}; valid names are: {', '.join(DATASETS)}")
    return DATASETS[key]


def _invariant(default: Any) -> Any:
    """A field that does not change what a run computes (`RUN_INVARIANT`)."""
    return field(default=default, metadata={"invariant": True})


@dataclass
class TrainConfig:
    """Every option of a training run; stored in config.json and in every checkpoint."""

    model: str = "resnet19"
    dataset: str = "cifar10"
    data_root: str | None = _invariant(None)
    subset: int | None = None  # class-balanced training subset
    test_subset: int | None = None
    augment: bool = True
    timesteps: int = 10
    tau: float = 2.0
    width: float = 1.0  # channel multiplier of the architecture (1/8 gives CPU-sized paper topologies)
    encoding: str = "direct"  # or "poisson" (rate coding)
    epochs: int = 300
    batch_size: int = 128
    eval_batch_size: int = _invariant(256)
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
    device: str = _invariant("auto")
    amp: bool = True  # bf16 autocast, used on CUDA only
    fast_lif: bool = True
    checkpoint_epochs: list[int] = field(default_factory=list)
    fisher_every: int = 0  # 0 = no Fisher tracking
    fisher_samples: int = 128
    fisher_estimator: str = "empirical"
    fisher_per_layer: bool = False
    fisher_batch_size: int = 64
    out: str = _invariant("runs/run")
    progress: bool = _invariant(True)

    # Fields a run directory written before they existed lacks, with the value that code used (not a guess):
    # every other field of a recorded config.json or checkpoint config is required.
    ADDED_LATER: ClassVar[dict[str, Any]] = {"width": 1.0, "tet_lambda": None, "encoding": "direct", "eval_every": 1}

    def validate(self) -> TrainConfig:
        """Check every option once (ConfigError naming the option); returns self."""
        for name in ("data_root", "out"):  # a Path given in Python is recorded as its string
            if isinstance(getattr(self, name), os.PathLike):
                setattr(self, name, os.fspath(getattr(self, name)))
        if problem := field_problem(self.to_dict(), type(self)):
            raise ConfigError(f"TrainConfig {problem}")
        if not is_python_model(self.model) and self.model not in MODELS:
            raise ConfigError(f"unknown model {self.model!r}; choose one of {', '.join(MODELS)} (or python:<factory> "
                              "for a model built in Python)")
        for option, value, names in (("encoding", self.encoding, ENCODINGS),
                                     ("optimizer", self.optimizer, OPTIMIZERS), ("schedule", self.schedule, SCHEDULES),
                                     ("Fisher estimator", self.fisher_estimator, ESTIMATORS)):
            if value not in names:
                raise ConfigError(f"unknown {option} {value!r}; choose one of {', '.join(names)}")
        dataset_info(self.dataset)
        check_tau(self.tau)
        check_loss(self.loss, self.alpha, self.tet_lambda, LOSSES)
        whole("timesteps T", self.timesteps, 1)
        number("--width", self.width, 0, lo_open=True, hint=" (1 = the paper's width)")
        for name in ("epochs", "batch_size", "eval_batch_size", "eval_every", "fisher_samples", "fisher_batch_size"):
            flag = f"TrainConfig.{name}" if name in ("eval_batch_size", "fisher_batch_size") else f"--{name.replace('_', '-')}"
            whole(flag, getattr(self, name), 1)
        whole("--fisher-every", self.fisher_every, 0, " (0 = no Fisher tracking)")
        number("learning rate", self.lr, 0, lo_open=True)
        number("--momentum", self.momentum, 0)
        number("--weight-decay", self.weight_decay, 0)
        for name in ("subset", "test_subset"):
            if getattr(self, name) is not None:
                whole(f"--{name.replace('_', '-')}", getattr(self, name), 1)
        if whole("--seed", self.seed, 0, f" and <= {SEED_MAX}") > SEED_MAX:
            raise ConfigError(f"--seed must be a whole number from 0 to {SEED_MAX}, got {self.seed}")
        for name in ("data_root", "out", "device"):
            if getattr(self, name) == "":
                raise ConfigError(f"--{name.replace('_', '-')} is empty; pass a path or leave the option out")
        beyond = [e for e in self.checkpoint_epochs if e < 0 or e > self.epochs]
        if beyond:
            raise ConfigError(f"checkpoint epochs {beyond} are outside the run (0..{self.epochs}); pick epochs in "
                              "that range")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Options given in Python: missing ones take their defaults, other keys are ignored (not validated)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_record(cls, d: Any, where: str | os.PathLike) -> TrainConfig:
        """A config recorded in a run directory or checkpoint (`where`): every field present (apart from
        `ADDED_LATER`) and of its type, no default filled in, then validated; CheckpointError naming `where`."""
        d = check_fields(d, cls, where, cls.ADDED_LATER)
        config = cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})
        try:
            return config.validate()
        except ConfigError as exc:
            raise CheckpointError(f"{where} records a config that is not valid ({exc}); the file was edited or "
                                  "damaged: restore it or start a new run") from None


# The options that do not change what a run computes (not part of a trial's identity, free to change on --resume),
# and those that do, in field order.
RUN_INVARIANT = frozenset(f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("invariant"))
RUN_SETTINGS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name not in RUN_INVARIANT)
