"""`spiketide <command>`: parses and validates options, then calls the library modules.

Every error a user can cause ends in one line on stderr ("spiketide: error: ...") and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from spiketide import __version__
from spiketide.errors import ConfigError, SpiketideError


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _nonneg_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {s!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def _int_list(s: str) -> list[int]:
    try:
        return [int(v) for v in s.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated epochs like 0,20,40, got {s!r}") from None


def _float_list(s: str) -> list[float]:
    try:
        return [float(v) for v in s.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {s!r}") from None


def _tau(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if v == 0:
        raise argparse.ArgumentTypeError("tau must be non-zero: Eq. 1 divides by tau (the paper uses 0.75, 2 and 4)")
    return v


def _add_train_options(p: argparse.ArgumentParser, defaults) -> None:
    from spiketide import data, models

    g = p.add_argument_group("model and data")
    g.add_argument("--model", default=defaults.model, help=f"architecture: {', '.join(models.available())} (default %(default)s)")
    g.add_argument("--dataset", default=defaults.dataset, help=f"{', '.join(data.DATASETS)} (default %(default)s)")
    g.add_argument("--data-root", default=None, help="folder holding the dataset files (default: system folder or cache; downloads with checksum)")
    g.add_argument("--subset", type=_positive_int, default=defaults.subset, help="train on a deterministic class-balanced subset of N images")
    g.add_argument("--test-subset", type=_positive_int, default=defaults.test_subset, help="evaluate on a class-balanced subset of N test images")
    g.add_argument("--no-augment", dest="augment", action="store_false", help="switch off training augmentation")
    g.add_argument("-T", "--timesteps", type=_positive_int, default=defaults.timesteps, help="timesteps T (default %(default)s)")
    g.add_argument("--tau", type=_tau, default=defaults.tau, help="LIF time constant (Eq. 1; default %(default)s; any non-zero value)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=_positive_int, default=defaults.epochs, help="default %(default)s")
    g.add_argument("-b", "--batch-size", type=_positive_int, default=defaults.batch_size, help="global batch size (default %(default)s)")
    g.add_argument("--optimizer", choices=("sgd", "adam"), default=defaults.optimizer)
    g.add_argument("--lr", type=float, default=defaults.lr, help="learning rate (default %(default)s)")
    g.add_argument("--momentum", type=float, default=defaults.momentum)
    g.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    g.add_argument("--schedule", choices=("cosine", "constant"), default=defaults.schedule)
    g.add_argument("--loss", choices=("ce", "alpha"), default=defaults.loss,
                   help="ce: cross-entropy of the mean output; alpha: Eq. 9-10 (needs --alpha)")
    g.add_argument("--alpha", default=None,
                   help="alpha for --loss alpha: a number, or a paper preset like cifar10:low (cifar10/svhn/cifar100 x low/intermediate/high)")
    g.add_argument("--seed", type=int, default=defaults.seed)
    g.add_argument("--device", default=defaults.device, help="auto, cpu, cuda or cuda:N (default %(default)s)")
    g.add_argument("--no-amp", dest="amp", action="store_false", help="no bf16 autocast on GPU")
    g.add_argument("--no-compile", dest="fast_lif", action="store_false", help="plain step-loop LIF instead of the compiled scan")
    g = p.add_argument_group("run directory")
    g.add_argument("--out", default=defaults.out, help="run directory (default %(default)s)")
    g.add_argument("--checkpoint-epochs", type=_int_list, default=[], help="also keep checkpoints at these epochs, e.g. 0,20,40 (the last is always kept)")
    g.add_argument("--resume", action="store_true", help="continue the killed run in --out from its last checkpoint")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    g = p.add_argument_group("Fisher tracking (Eq. 6)")
    g.add_argument("--fisher-every", type=_nonneg_int, default=defaults.fisher_every, help="measure temporal Fisher information at epoch 0 and every K epochs (0 = off)")
    g.add_argument("--fisher-samples", type=_positive_int, default=defaults.fisher_samples, help="training images used (fixed, seeded, no augmentation)")
    g.add_argument("--fisher-estimator", choices=("empirical", "true", "batch"), default=defaults.fisher_estimator)
    g.add_argument("--fisher-per-layer", action="store_true", help="also record Fisher information per block (Fig. 3)")


def _resolve_alpha(value: str | None, loss: str) -> float | None:
    if value is None:
        return None
    from spiketide.losses import ALPHA_PRESETS

    if ":" in value:
        ds, level = value.split(":", 1)
        try:
            return ALPHA_PRESETS[ds][level]
        except KeyError:
            raise ConfigError(f"unknown alpha preset {value!r}; presets: "
                              + ", ".join(f"{d}:{lvl}" for d, v in ALPHA_PRESETS.items() for lvl in v)) from None
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"--alpha expects a number or a preset like cifar10:low, got {value!r}") from None


def _config_from_args(args) -> "TrainConfig":
    from spiketide.train import TrainConfig

    fields = {f for f in TrainConfig.__dataclass_fields__}
    values = {k: v for k, v in vars(args).items() if k in fields}
    values["alpha"] = _resolve_alpha(args.alpha, args.loss)
    return TrainConfig(**values).validate()


def cmd_train(args) -> int:
    from spiketide.runs import RunDir
    from spiketide.train import TrainConfig, train

    if args.resume:
        run = RunDir(args.out)
        config = TrainConfig.from_dict(run.read_config())
        config.progress = args.progress
        trainer = train(config, resume=True)
    else:
        config = _config_from_args(args)
        trainer = train(config)
    if trainer.is_main:
        last = trainer.history[-1]
        print(f"run directory: {trainer.run.path}")
        print(f"epoch {last['epoch']}: train loss {last['train_loss']:.4f}, train acc {last['train_acc']:.4f}, "
              f"test acc {last['test_acc']:.4f}")
        _draw_figures(trainer.run.path)
    return 0


def _draw_figures(run_path) -> list[Path]:
    from spiketide import plots

    return plots.plot_run(run_path)


def cmd_demo(args) -> int:
    from spiketide import demo

    demo.run_demo(out=args.out, epochs=args.epochs, progress=args.progress)
    return 0


def cmd_plot(args) -> int:
    paths = _draw_figures(args.run_dir)
    for p in paths:
        print(p)
    if not paths:
        print("nothing to draw: the run has no Fisher records (train with --fisher-every K)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from spiketide.train import TrainConfig

    parser = argparse.ArgumentParser(
        prog="spiketide",
        description="Temporal information dynamics of spiking neural networks (Kim et al., AAAI 2023): "
        "train LIF SNNs, measure temporal Fisher information, robustness and TIC-based pruning.",
    )
    parser.add_argument("--version", action="version", version=f"spiketide {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>")

    p = sub.add_parser("train", help="train an SNN with BPTT and write a run directory",
                       description="Train an SNN (Eq. 1-2, BPTT) and write config.json, metrics.jsonl, checkpoints/ and figures/. "
                       "Defaults are the paper's: resnet19 on CIFAR-10, T=10, tau=2, SGD lr 0.3, cosine, 300 epochs.")
    _add_train_options(p, TrainConfig())
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("demo", help="a CPU demo: convnet on Fashion-MNIST showing temporal information concentration",
                       description="Train convnet on 2,000 Fashion-MNIST images (T=6) on the CPU while tracking temporal "
                       "Fisher information; draws Fig. 1 and Fig. 3 and prints the information centroid's course.")
    p.add_argument("--out", default="runs/demo", help="run directory (default %(default)s)")
    p.add_argument("--epochs", type=_positive_int, default=None, help="override the number of epochs (for a quick look)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("plot", help="redraw a run's figures (Fig. 1, Fig. 3) from its metrics.jsonl")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_plot)

    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except SpiketideError as exc:
        print(f"spiketide {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nspiketide {args.command}: interrupted; written files are complete (atomic writes). "
              "Continue a training run with --resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
