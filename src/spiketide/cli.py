"""`spiketide <command>`: parses and validates options, then calls the library modules.

Every error a user can cause ends in one line on stderr ("spiketide: error: ...") and exit code 2.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from spiketide import __version__
from spiketide.config import (DATASETS, ENCODINGS, ESTIMATORS, LOSSES, MODELS, NIR_DT, NIR_POOLINGS, OPTIMIZERS,
                              RUN_INVARIANT, SCALES, SCHEDULES, SEED_MAX, TrainConfig, is_python_model)
from spiketide.errors import ConfigError, SpiketideError


def _int_at_least(lo: int):
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {s!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {v}")
        return v

    return parse


_positive_int, _nonneg_int = _int_at_least(1), _int_at_least(0)


def _items(s: str, what: str, example: str) -> list[str]:
    """The comma-separated items of an option; an empty item (1,,2 or a trailing comma) is refused, not skipped."""
    items = [v.strip() for v in s.split(",")]
    if not s.strip() or any(not v for v in items):
        raise argparse.ArgumentTypeError(f"expected comma-separated {what} like {example}, got {s!r} (an empty item)")
    return items


def _int_list(what: str = "epochs", example: str = "0,20,40", lo: int = 0):
    """A parser of comma-separated whole numbers >= lo; its messages name what they are."""

    def parse(s: str) -> list[int]:
        items = _items(s, what, example)
        try:
            values = [int(v) for v in items]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what} (whole numbers) like {example}, got "
                                             f"{s!r}") from None
        if any(v < lo for v in values):
            raise argparse.ArgumentTypeError(f"{what} must be >= {lo}, got {s!r}")
        return values

    return parse


def _float_list(s: str) -> list[float]:
    try:
        return [float(v) for v in _items(s, "numbers", "0.5,0.9")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {s!r}") from None


def _thresholds(s: str) -> list[float]:
    """Confidence thresholds: softmax probabilities, so numbers in [0, 1]."""
    values = _float_list(s)
    bad = [v for v in values if not 0 <= v <= 1]  # (NaN fails this too)
    if bad:
        raise argparse.ArgumentTypeError(f"confidence thresholds are probabilities in [0, 1], got {bad[0]} in {s!r}")
    return values


def _seed(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole-number seed, got {s!r}") from None
    if not 0 <= v <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"a seed is a whole number from 0 to {SEED_MAX}, got {v}")
    return v


def _path(s: str) -> str:
    """A path option: an empty string would silently mean the current folder (or fall back elsewhere)."""
    if not s.strip():
        raise argparse.ArgumentTypeError("the path is empty; pass a folder or file path, or leave the option out")
    return s


def _finite(lo: float, hi: float = float("inf"), lo_open: bool = True, hi_open: bool = False, meaning: str = ""):
    """A number in an interval (open or closed at each end), NaN and inf refused."""

    def parse(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
        ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi) and math.isfinite(v)
        if not ok:
            span = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
            raise argparse.ArgumentTypeError(f"{meaning} must be a number in {span}, got {s!r}")
        return v

    return parse


def _add_train_options(p: argparse.ArgumentParser, defaults: TrainConfig) -> None:
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default=defaults.model, help=f"architecture: {', '.join(MODELS)} (default %(default)s)")
    g.add_argument("--dataset", default=defaults.dataset, help=f"{', '.join(DATASETS)} (default %(default)s)")
    g.add_argument("--data-root", type=_path, default=None, help="folder holding the dataset files (default: system folder or cache; downloads with checksum)")
    g.add_argument("--subset", type=_positive_int, default=defaults.subset, help="train on a deterministic class-balanced subset of N images")
    g.add_argument("--test-subset", type=_positive_int, default=defaults.test_subset, help="evaluate on a class-balanced subset of N test images")
    g.add_argument("--no-augment", dest="augment", action="store_false", help="switch off training augmentation")
    g.add_argument("-T", "--timesteps", type=_positive_int, default=defaults.timesteps, help="timesteps T (default %(default)s)")
    g.add_argument("--encoding", choices=ENCODINGS, default=defaults.encoding,
                   help="direct (the paper's) or poisson: a Bernoulli spike per pixel and timestep (rate coding)")
    g.add_argument("--width", type=float, default=defaults.width,
                   help="channel multiplier of the architecture (default %(default)s; 0.125 gives CPU-sized models)")
    g.add_argument("--tau", type=float, default=defaults.tau, help="LIF time constant (Eq. 1; default %(default)s; any non-zero value)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=_positive_int, default=defaults.epochs, help="default %(default)s")
    g.add_argument("-b", "--batch-size", type=_positive_int, default=defaults.batch_size, help="global batch size (default %(default)s)")
    g.add_argument("--eval-every", type=_positive_int, default=defaults.eval_every,
                   help="test accuracy every K epochs (default %(default)s; always at epoch 0 and the last)")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=defaults.optimizer)
    g.add_argument("--lr", type=float, default=defaults.lr, help="learning rate (default %(default)s)")
    g.add_argument("--momentum", type=float, default=defaults.momentum)
    g.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    g.add_argument("--schedule", choices=SCHEDULES, default=defaults.schedule)
    g.add_argument("--loss", choices=tuple(LOSSES), default=defaults.loss,
                   help="; ".join(f"{k}: {v}" for k, v in LOSSES.items()))
    g.add_argument("--alpha", default=None,
                   help="alpha for --loss alpha: a number, or a paper preset like cifar10:low (cifar10/svhn/cifar100 x low/intermediate/high)")
    g.add_argument("--tet-lambda", type=float, default=None,
                   help="lambda of --loss tet, in [0, 1]: weight of the MSE term against per-timestep CE (TET uses 0.05)")
    g.add_argument("--seed", type=_seed, default=defaults.seed)
    g.add_argument("--device", default=defaults.device, help="auto, cpu, cuda or cuda:N (default %(default)s)")
    g.add_argument("--no-amp", dest="amp", action="store_false", help="no bf16 autocast on GPU")
    g.add_argument("--no-compile", dest="fast_lif", action="store_false", help="plain step-loop LIF and nn.AvgPool2d instead of the compiled scan and pool")
    g = p.add_argument_group("run directory")
    g.add_argument("--out", type=_path, default=defaults.out, help="run directory (default %(default)s)")
    g.add_argument("--checkpoint-epochs", type=_int_list("checkpoint epochs", "0,20,40"), default=[], help="also keep checkpoints at these epochs, e.g. 0,20,40 (the last is always kept)")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint, with the options it was started with")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    g = p.add_argument_group("Fisher tracking (Eq. 6)")
    g.add_argument("--fisher-every", type=_nonneg_int, default=defaults.fisher_every, help="measure temporal Fisher information at epoch 0 and every K epochs (0 = off)")
    g.add_argument("--fisher-samples", type=_positive_int, default=defaults.fisher_samples, help="training images used (fixed, seeded, no augmentation)")
    g.add_argument("--fisher-estimator", choices=ESTIMATORS, default=defaults.fisher_estimator)
    g.add_argument("--fisher-per-layer", action="store_true", help="also record Fisher information per block (Fig. 3)")


def _config_from_args(args) -> TrainConfig:
    from spiketide.losses import resolve_alpha

    if is_python_model(args.model):
        raise ConfigError(f"--model {args.model}: `spiketide train` builds spiketide's models ({', '.join(MODELS)}); "
                          "train a model built in Python in your own loop and record it with spiketide.tracking."
                          "RunTracker")
    values = {k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__}
    values["alpha"] = resolve_alpha(args.alpha)
    return TrainConfig(**values).validate()


def _given_options(parser: argparse.ArgumentParser, argv: list[str]) -> dict:
    """The options written on the command line (not left at their defaults), with their parsed values."""
    unset = object()  # argparse fills in a default only where the namespace has no value yet
    given = parser.parse_args(argv, argparse.Namespace(**{k: unset for k in vars(parser.parse_args([]))}))
    return {k: v for k, v in vars(given).items() if v is not unset}


def _resume_config(args) -> TrainConfig:
    """The run's own config.json, refusing options that would change what it computes (`config.RUN_INVARIANT`
    names those that may change)."""
    from spiketide.checkpoints import read_run
    from spiketide.losses import resolve_alpha

    run, config = read_run(args.out)
    given = _given_options(args.parser, args.argv)
    if "alpha" in given:
        given["alpha"] = resolve_alpha(given["alpha"])
    changed = [f"--{k.replace('_', '-')} {given[k]} (the run has {getattr(config, k)})" for k in given
               if k in TrainConfig.__dataclass_fields__ and k not in RUN_INVARIANT and given[k] != getattr(config, k)]
    if changed:
        raise ConfigError(f"--resume continues {run.path} exactly as it was started, so these options cannot change: "
                          f"{'; '.join(changed)}. Start a new run with another --out to change them.")
    for k in RUN_INVARIANT - {"out", "progress"}:
        setattr(config, k, given.get(k, getattr(config, k)))
    config.progress = args.progress
    return config


def cmd_train(args) -> int:
    """Train an SNN (Eq. 1-2, BPTT) and write config.json, metrics.jsonl, checkpoints/ and figures/. Defaults are the
    paper's: resnet19 on CIFAR-10, T=10, tau=2, SGD lr 0.3, cosine, 300 epochs.
    """
    from spiketide import callbacks
    from spiketide.train import Trainer

    config = _resume_config(args) if args.resume else _config_from_args(args)
    trainer = Trainer(config, callbacks=callbacks.from_config(config), run_dir=args.out, resume=args.resume)
    trainer.fit()
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
    """Train convnet on 500 Fashion-MNIST images (T=6, 60 epochs) on the CPU while tracking temporal Fisher
    information; draws Fig. 1 and Fig. 3, prints the information centroid's course and the TIC rule's verdict.
    """
    from spiketide import demo

    demo.run_demo(out=args.out, epochs=args.epochs, progress=args.progress)
    return 0


def cmd_plot(args) -> int:
    """Draw Fig. 1 (I_t over training) and, when blocks were tracked, Fig. 3 of a run from its metrics.jsonl."""
    from spiketide.checkpoints import read_run

    read_run(args.run_dir)
    paths = _draw_figures(args.run_dir)
    for p in paths:
        print(p)
    if not paths:
        print("nothing to draw: the run has no Fisher records (train with --fisher-every K)")
    return 0


def _fraction(s: str) -> float:
    """A number, also written as a fraction like 8/255."""
    try:
        if "/" in s:
            num, den = s.split("/", 1)
            return float(num) / float(den)
        return float(s)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number such as 0.03 or 8/255, got {s!r}") from None


def _checkpoints_of(path: str) -> tuple[list[Path], Path]:
    """Checkpoints named by a path (a .pt file, or every saved epoch of a run directory) and where results go.

    Results are written into the run, so a checkpoint of another model or dataset found there is refused.
    """
    from spiketide.checkpoints import read_run
    from spiketide.errors import CheckpointError
    from spiketide.runs import RunDir, resolve_checkpoint, run_of

    p = Path(path)
    if p.is_dir():
        run, _ = read_run(p)
        ckpts = [run.checkpoint_path(e) for e in run.saved_epochs()] or [resolve_checkpoint(p)]
    else:
        ckpts = [resolve_checkpoint(p)]
        if ckpts[0].suffix != ".pt":
            raise CheckpointError(f"{p} is not a .pt checkpoint; pass a checkpoint file or a run directory")
        run = run_of(p) or RunDir(p.parent)
    if run.exists():
        _check_run_checkpoints(run, ckpts)
    return ckpts, run.path


def _check_run_checkpoints(path, extra=()) -> None:
    """Open a run with the validating reader and refuse it when any checkpoint in it (used or not: results are
    written into the run) is not the run's own, naming the first difference."""
    from spiketide.checkpoints import check_checkpoint, read_run
    from spiketide.runs import load_checkpoint

    run, config = read_run(path)
    for ckpt in sorted({*extra, *(run.checkpoints.glob("*.pt") if run.checkpoints.is_dir() else ())}):
        check_checkpoint(ckpt, load_checkpoint(ckpt), run, config)


def _report_written(paths: list[Path]) -> int:
    print(f"wrote {paths[0]}")
    if paths[1:]:
        print("also: " + ", ".join(str(p) for p in paths[1:]))
    return 0


def _where(args) -> dict:
    """The evaluation options every analysis shares, as its keyword arguments."""
    from spiketide.checkpoints import select_device

    return dict(seed=args.seed, data_root=args.data_root, device=select_device(args.device),
                model_factory=args.model_factory)


def _check_out_file(out: str) -> None:
    """An analysis' --out names a file to write: its folder must be creatable, and it must not be a folder."""
    from spiketide.runs import check_creatable

    if Path(out).is_dir():
        raise ConfigError(f"--out {out} is a folder; pass the path of the JSON file to write")
    parent = Path(out).absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"--out {out} cannot be created: {parent} is a file, not a folder; pick another path")
    check_creatable(Path(out).parent, "--out")


def _analysis(body, path_arg: str):
    """A command that analyses the checkpoints named by `args.<path_arg>` and writes its results into their run,
    holding the run's lock meanwhile (nothing to hold for a loose folder)."""

    def run(args) -> int:
        import contextlib

        from spiketide.runs import RunDir, check_creatable

        ckpts, out_dir = _checkpoints_of(getattr(args, path_arg))
        if args.out:
            _check_out_file(args.out)
        run_dir = RunDir(out_dir)
        if run_dir.exists() or not args.out:  # a run's lock and figures are written there in any case
            check_creatable(run_dir.path, "the results folder")
        with run_dir.lock(f"spiketide {args.command}") if run_dir.exists() else contextlib.nullcontext():
            return body(args, ckpts, out_dir)

    return run


def cmd_fisher(args, ckpts: list[Path], out_dir: Path) -> int:
    """Measure I_1..I_T (Eq. 6) and the information centroid (Eq. 7) of a checkpoint, or of every saved checkpoint of a
    run directory; writes fisher.json and figures.
    """
    from spiketide.experiments import analyses

    def report(r: dict) -> None:
        trace = ", ".join(f"{v:.4g}" for v in r["fisher"]["trace"])
        print(f"{Path(r['checkpoint']).name} (epoch {r['epoch']}): I_t = [{trace}], centroid "
              f"{r['fisher']['centroid']:.3f}")

    result = analyses.fisher(ckpts, split=args.split, samples=args.samples, estimator=args.estimator,
                             per_layer=args.per_layer, batch_size=args.batch_size, progress=args.progress,
                             on_result=report, **_where(args))
    return _report_written(analyses.write("fisher", result, out_dir, args.out, per_layer=args.per_layer))


def cmd_deficits(args, ckpts: list[Path], out_dir: Path) -> int:
    """Test accuracy with Gaussian noise (l2 = 50% of the image's) only in timesteps [t, t+w-1], for every t, relative
    to the last window; for each saved checkpoint.
    """
    from spiketide.experiments import analyses

    def report(r: dict) -> None:
        rel = ", ".join(f"{100 * v:+.1f}" for v in r["relative_accuracy"])
        print(f"{Path(r['checkpoint']).name} (epoch {r['epoch']}): clean {100 * r['clean']:.1f}%, "
              f"relative accuracy by window start [{rel}] points")

    result = analyses.deficits(ckpts, window=args.window, noise_ratio=args.noise_ratio, samples=args.samples,
                               batch_size=args.batch_size, progress=args.progress, on_result=report, **_where(args))
    return _report_written(analyses.write("deficits", result, out_dir, args.out))


def cmd_robustness(args, ckpts: list[Path], out_dir: Path) -> int:
    """Evaluate a checkpoint under Gaussian noise (l2 = 50%), blur (down/up x2, bilinear), FGSM (eps 8/255) and PGD
    (eps 8/255, step 4/255, 10 iterations, random start) in pixel space.
    """
    from spiketide.experiments import analyses

    result = analyses.robustness_suite(
        ckpts[-1], samples=args.samples, batch_size=args.batch_size, eps=args.eps, pgd_step=args.pgd_step,
        pgd_iters=args.pgd_iters, random_start=args.random_start, noise_ratio=args.noise_ratio,
        eps_sweep=args.eps_sweep, window_k=args.window_k, progress=args.progress, **_where(args))
    print(f"{ckpts[-1]}: {result['images']} test images; PGD eps {args.eps:.4g}, step {args.pgd_step:.4g}, "
          f"{args.pgd_iters} iterations, random start {'on' if args.random_start else 'off'}")
    for line in analyses.robustness_lines(result):
        print(line)
    print(analyses.table("robustness", result, args.name))
    for w in result.get("warnings", []):
        print(f"warning: {w}", file=sys.stderr)
    return _report_written(analyses.write("robustness", result, out_dir, args.out, label=args.name))


def cmd_early_exit(args, ckpts: list[Path], out_dir: Path) -> int:
    """Each test image exits at the first timestep whose horizon output (Eq. 4) is more confident than a threshold;
    accuracy vs mean timesteps, the synaptic operations and energy that saves (counted per image, --e-ac / --e-mac
    as in `stats`), beside fixed-T accuracy and the Fisher profile.
    """
    from spiketide import early_exit
    from spiketide.experiments import analyses

    curve = analyses.exit_costs(ckpts[-1], samples=args.samples, thresholds=args.thresholds,
                                fisher_samples=args.fisher_samples, batch_size=args.batch_size,
                                energy=_energy_model(args), **_where(args))
    print(early_exit.summarize(curve, curve["fisher"]["trace"]))
    return _report_written(analyses.write("early-exit", curve, out_dir, args.out))


def cmd_stats(args, ckpts: list[Path], out_dir: Path) -> int:
    """Per spiking layer and timestep: firing rate; per spike-driven conv/linear layer: synaptic operations (input
    events x fan-out); dense MACs of the same network as an ANN; energy SNN = SOPs x e_ac + MACs before the first
    spiking layer x e_mac, ANN = MACs x e_mac. Uses the last checkpoint; writes stats.json and
    figures/stats.{png,pdf}.
    """
    from spiketide import stats
    from spiketide.experiments import analyses

    result = analyses.spike_counts(ckpts[-1], samples=args.samples, batch_size=args.batch_size,
                                   energy=_energy_model(args), nonbinary=args.nonbinary, progress=args.progress,
                                   **_where(args))
    print(f"{ckpts[-1].name} (epoch {result['epoch']}):")
    print(stats.summarize(result))
    return _report_written(analyses.write("stats", result, out_dir, args.out))


def cmd_prune(args) -> int:
    """Start from a trained run (T timesteps); R rounds of pruning p of the remaining conv/linear weights and
    retraining with T_retrain timesteps; accuracy vs sparsity per T_retrain and the compute saving.
    """
    from spiketide import pruning
    from spiketide.experiments.pruning import iterative_prune
    from spiketide.runs import RunDir, check_creatable

    _check_run_checkpoints(args.run_dir)  # before the lock: a missing or damaged run gets no lock file
    run = RunDir(args.run_dir)
    check_creatable(args.out if args.out else run.path / "pruning", "--out")
    with run.lock("spiketide prune"):
        result = iterative_prune(args.run_dir, rounds=args.rounds, rate=args.rate, retrain_epochs=args.retrain_epochs,
                                 t_retrain=args.t_retrain, q=args.q, rewind_epoch=args.rewind_epoch, lr=args.lr,
                                 fisher_samples=args.fisher_samples, out=args.out, device=args.device,
                                 progress=args.progress, overwrite=args.overwrite)
    print(pruning.to_markdown(result))
    files = result.get("files", {})
    for f in [files.get("json"), files.get("markdown"), *files.get("figure", [])]:
        if f:
            print(f"wrote {f}")
    return 0


def _t_retrain(s: str) -> str | tuple[int, ...]:
    """--t-retrain: 'auto', or comma-separated timestep counts >= 1."""
    return "auto" if s.strip() == "auto" else tuple(_int_list("T_retrain timestep counts, or auto", "2,3,4,5", 1)(s))


def _command(sub, handler, help: str) -> argparse.ArgumentParser:
    """The subcommand `handler` runs (cmd_early_exit: early-exit); its docstring is the command's description."""
    return sub.add_parser(handler.__name__.removeprefix("cmd_").replace("_", "-"), help=help,
                          description=handler.__doc__)


def _add_eval_options(p: argparse.ArgumentParser, samples_default: int | None, samples_help: str,
                      batch_size: int = 128) -> None:
    p.add_argument("--samples", type=_positive_int, default=samples_default, help=samples_help)
    p.add_argument("--batch-size", type=_positive_int, default=batch_size, help="images per batch (default %(default)s)")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--data-root", type=_path, default=None, help="dataset folder (default: as at training time)")
    p.add_argument("--out", type=_path, default=None, help="JSON file to write (default: next to the run)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--model-factory", metavar="MODULE:FUNCTION", default=None,
                   help="for a run whose model was built in Python (an own training loop): import this function (or "
                   "path/to/file.py:function) and call it with no arguments to build the model; user code runs only "
                   "when named here, never from what the run directory records")


def _add_energy_options(p: argparse.ArgumentParser) -> None:
    """The energy constants of `stats.EnergyModel`, shared by `stats` and `early-exit`."""
    p.add_argument("--e-ac", type=float, default=0.9,
                   help="pJ per accumulate (default %(default)s: 45 nm, Horowitz 2014)")
    p.add_argument("--e-mac", type=float, default=4.6, help="pJ per multiply-accumulate (default %(default)s)")


def _energy_model(args):
    """The `stats.EnergyModel` of `_add_energy_options`' constants (it refuses negative or NaN ones)."""
    from spiketide import stats

    return stats.EnergyModel(e_ac_pj=args.e_ac, e_mac_pj=args.e_mac)


def _add_fisher(sub) -> None:
    p = _command(sub, cmd_fisher, "temporal Fisher information (Eq. 3-7) of saved checkpoints")
    p.add_argument("path", help="a checkpoint .pt or a run directory")
    p.add_argument("--estimator", choices=ESTIMATORS, default="empirical")
    p.add_argument("--per-layer", action="store_true", help="also per block (Fig. 3)")
    p.add_argument("--split", choices=("train", "test"), default="train")
    _add_eval_options(p, 128, "class-balanced images measured (default %(default)s)", batch_size=64)
    p.set_defaults(func=_analysis(cmd_fisher, "path"))


def _add_deficits(sub) -> None:
    p = _command(sub, cmd_deficits, "time-window noise deficits of saved checkpoints (Fig. 2)")
    p.add_argument("path", help="a run directory (all saved checkpoints) or one checkpoint")
    p.add_argument("--window", type=_positive_int, default=3, help="window length w (default %(default)s)")
    p.add_argument("--noise-ratio", type=float, default=0.5)
    _add_eval_options(p, 1000, "class-balanced test images (default %(default)s)")
    p.set_defaults(func=_analysis(cmd_deficits, "path"))


def _add_robustness(sub) -> None:
    p = _command(sub, cmd_robustness, "Table 1: clean, Gaussian noise, blur, FGSM and PGD accuracy")
    p.add_argument("checkpoint", help="a checkpoint .pt or a run directory (its last checkpoint)")
    p.add_argument("--eps", type=_fraction, default=8 / 255, help="l-inf budget (default 8/255)")
    p.add_argument("--pgd-step", type=_fraction, default=4 / 255, help="PGD step (default 4/255)")
    p.add_argument("--pgd-iters", type=_positive_int, default=10)
    p.add_argument("--no-random-start", dest="random_start", action="store_false", help="PGD without random start")
    p.add_argument("--noise-ratio", type=float, default=0.5)
    p.add_argument("--eps-sweep", action="store_true", help="also PGD accuracy over growing eps (gradient-masking check)")
    p.add_argument("--window-k", type=_positive_int, default=None,
                   help="also attack only timesteps 1..k vs only the last k (beyond the paper)")
    p.add_argument("--name", default=None, help="row name in the Markdown table")
    _add_eval_options(p, None, "class-balanced test images (default: the whole test split)")
    p.set_defaults(func=_analysis(cmd_robustness, "checkpoint"))


def _add_early_exit(sub) -> None:
    p = _command(sub, cmd_early_exit, "confidence-based early exit: accuracy vs timesteps used")
    p.add_argument("checkpoint")
    p.add_argument("--thresholds", type=_thresholds, default=None,
                   help="comma-separated confidence thresholds, probabilities in [0, 1]")
    p.add_argument("--fisher-samples", type=_positive_int, default=128)
    _add_energy_options(p)
    _add_eval_options(p, None, "class-balanced test images (default: the whole test split)")
    p.set_defaults(func=_analysis(cmd_early_exit, "checkpoint"))


def _add_stats(sub) -> None:
    p = _command(sub, cmd_stats, "firing rates, synaptic operations and an energy estimate (beyond the paper)")
    p.add_argument("checkpoint", help="a checkpoint .pt or a run directory (its last checkpoint)")
    p.add_argument("--nonbinary", choices=("sops", "macs"), default="sops",
                   help="spike-driven layers fed non-binary inputs (e.g. average-pooled spikes): 'sops' counts their "
                   "non-zero inputs x fan-out (default), 'macs' their dense MACs, as SpikingJelly's op counters and syops")
    _add_energy_options(p)
    _add_eval_options(p, 256, "class-balanced test images (default %(default)s)", batch_size=64)
    p.set_defaults(func=_analysis(cmd_stats, "checkpoint"))


def _add_prune(sub) -> None:
    p = _command(sub, cmd_prune, "iterative magnitude pruning that retrains with fewer timesteps (Fig. 6-7)")
    p.add_argument("run_dir")
    p.add_argument("--rounds", type=_positive_int, default=5)
    p.add_argument("--rate", type=_finite(0, 1, hi_open=True, meaning="the pruning rate"), default=0.5,
                   help="fraction of the remaining weights pruned each round, in (0, 1)")
    p.add_argument("--retrain-epochs", type=_positive_int, default=None, help="N_retrain (default: training epochs / 5)")
    p.add_argument("--t-retrain", type=_t_retrain, default=None,
                   help="comma-separated T_retrain values (default: 2..T), or 'auto': the smallest t whose cumulative "
                   "Fisher information reaches --q of the total")
    p.add_argument("--q", type=_finite(0, 1, meaning="--q (a cumulative Fisher fraction)"), default=0.95,
                   help="with --t-retrain auto: cumulative Fisher fraction to keep, in (0, 1]")
    p.add_argument("--rewind-epoch", type=_nonneg_int, default=None, help="rewind surviving weights to this saved epoch")
    p.add_argument("--lr", type=_finite(0, meaning="the retraining learning rate"), default=None,
                   help="retraining learning rate (default: the run's lr x 0.1)")
    p.add_argument("--fisher-samples", type=_positive_int, default=128, help="with --t-retrain auto: training images for Fisher")
    p.add_argument("--out", type=_path, default=None, help="results folder (default RUN_DIR/pruning)")
    p.add_argument("--overwrite", action="store_true", help="replace earlier pruning results in the results folder")
    p.add_argument("--device", default=None)
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=cmd_prune)


def add_analysis_commands(sub) -> None:
    for add in (_add_fisher, _add_deficits, _add_robustness, _add_early_exit, _add_stats, _add_prune):
        add(sub)


def cmd_export_nir(args, ckpts: list[Path], out_dir: Path) -> int:
    """Export the last checkpoint of a run (or a checkpoint .pt) to a NIR file that SpikingJelly, snnTorch, Norse and
    neuromorphic toolchains read: BatchNorm folded into each conv, the input normalisation as a 1x1 conv, nir.LIF
    with tau x dt (dt in the metadata), per-step logits whose mean over T is the prediction. The file is read back
    and its logits compared with the model's on 4 random images. Needs the nir package.
    """
    import torch

    from spiketide import nir as snir
    from spiketide.checkpoints import load_model, read_run
    from spiketide.models.base import poisson_spikes

    ckpt = ckpts[-1]
    out = Path(args.out) if args.out else out_dir / "model.nir"
    if (out_dir / "config.json").is_file() and is_python_model(read_run(out_dir)[1].model):
        raise ConfigError(f"{out_dir} holds a model built in Python; export-nir writes spiketide's own models "
                          "(NIR export of another framework's model is that framework's exporter's job)")
    model, config, state = load_model(ckpt, "cpu")
    graph = snir.to_nir(model.eval(), dt=args.dt, pooling=args.pooling)
    out.parent.mkdir(parents=True, exist_ok=True)
    snir.write(out, graph)
    # the file as an importer sees it: the same per-step logits as spiketide on a few seeded random images
    back = snir.from_nir(snir.read(out), dtype=next(model.parameters()).dtype, fast_lif=False)  # no compile wait
    x = torch.rand(4, model.in_channels, model.image_size, model.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = model(x)
        if model.encoding == "poisson":  # the graph takes the spikes; the model draws them from encoding_seed
            x = poisson_spikes(x.expand(model.timesteps, *x.shape), torch.Generator().manual_seed(model.encoding_seed),
                               shared=True)
        b = back(x)
    rel = float((a - b).abs().max() / a.abs().max().clamp_min(1e-30))
    meta = graph.metadata
    print(f"wrote {out}: {config.model} (epoch {state.get('epoch')}), {len(graph.nodes)} NIR nodes, T = "
          f"{meta['timesteps']}, dt = {meta['dt']:g} s (nir.LIF tau = {meta['tau']} x dt, r = 1, v_leak = 0, reset to 0)")
    print(f"input: {meta['input']}")
    print(f"readout: {meta['readout']}")
    print(f"read back by spiketide.nir.from_nir: max |logit difference| / max |logit| = {rel:.2g} on 4 random images")
    return 0


def add_nir_command(sub) -> None:
    p = _command(sub, cmd_export_nir, "write a run's model as a NIR graph (Neuromorphic Intermediate Representation)")
    p.add_argument("run_dir", help="a run directory (its last checkpoint) or a checkpoint .pt")
    p.add_argument("--out", type=_path, default=None, help="NIR file to write (default RUN_DIR/model.nir)")
    p.add_argument("--dt", type=_finite(0, meaning="--dt"), default=NIR_DT,
                   help="seconds per timestep written into the graph (default %(default)g, SpikingJelly's default)")
    p.add_argument("--pooling", choices=NIR_POOLINGS, default="avg",
                   help="avg: AvgPool2d nodes; sum: SumPool2d with the 1/4 folded into the next conv (for Norse)")
    p.set_defaults(func=_analysis(cmd_export_nir, "run_dir"))


def _seeds(s: str) -> list[int]:
    seeds = _int_list("seeds", "0,1,2")(s)
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct seeds >= 0 like 0,1,2, got {s!r}")
    return [_seed(str(v)) for v in seeds]


def _gpus(s: str) -> float:
    """GPUs per trial: a finite number >= 0 (Ray waits forever on what no node has, and -1 or nan are no amount)."""
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of GPUs per trial like 1 or 0.5, got {s!r}") from None
    if not (v >= 0 and v != float("inf")):
        raise argparse.ArgumentTypeError(f"GPUs per trial must be a finite number >= 0 (0.5 shares a GPU), got {s!r}")
    return v


def cmd_reproduce(args) -> int:
    """Train every run the named experiments need (shared between experiments, one run directory each under OUT/runs),
    scheduled on Ray, then write OUT/<name>/report.md and OUT/REPORT.md with a computed verdict per claim. Rerunning
    skips finished trials and resumes half-finished ones. Needs Ray: pip install "spiketide[sweep]". Exit code: 0
    report complete, 1 some trials failed, 2 bad input, 3 report incomplete (trials being run by another `reproduce`
    on the same --out).
    """
    from spiketide.experiments import reproduce

    if args.list:
        print(reproduce.list_experiments(args.seeds))
        return 0
    if not args.names:
        raise ConfigError("name the experiments to run (or `all`); `spiketide reproduce --list` shows them")
    reproduce.plan(args.names, args.scale, args.seeds)  # bad names and scales fail before Ray starts
    if args.dry_run:  # no Ray, nothing written to --out
        reproduce.dry_run(args.names, args.scale, args.seeds)
        return 0
    reproduce.check_request(args.workers, args.address, args.cpus_per_trial, args.gpus_per_trial)
    report, outcomes = reproduce.reproduce(args.names, args.scale, args.seeds, args.out, workers=args.workers,
                                           address=args.address, cpus_per_trial=args.cpus_per_trial,
                                           gpus_per_trial=args.gpus_per_trial, show_progress=args.progress)
    failed = [o for o in outcomes.values() if "error" in o]
    elsewhere = [o for o in outcomes.values() if "elsewhere" in o]
    print(f"report: {report}")
    for o in failed:
        print(f"failed trial {o['id']}: {o['error']} (log: {o['log']})", file=sys.stderr)
    if elsewhere and not failed:
        print(f"spiketide reproduce: {len(elsewhere)} trial(s) are being run by another process ("
              f"{elsewhere[0]['elsewhere']}); the report is incomplete until they finish: run the same command "
              f"again then (exit code {reproduce.INCOMPLETE})", file=sys.stderr)
    return 1 if failed else reproduce.INCOMPLETE if elsewhere else 0


def cmd_report(args) -> int:
    """Write every experiment's report.md and OUT/REPORT.md again from the run directories under OUT, training nothing."""
    from spiketide.experiments.report import write_reports

    print(f"report: {write_reports(args.out)}")
    return 0


def add_experiment_commands(sub) -> None:
    p = _command(sub, cmd_reproduce, "the paper's figures and tables over several seeds, with a verdict per claim")
    p.add_argument("names", nargs="*", help="experiment names, or all (see --list)")
    p.add_argument("--list", action="store_true",
                   help="list the experiments, their claims and estimated costs (for --seeds)")
    p.add_argument("--scale", choices=SCALES, default="cpu", help="smoke (tests), cpu (2 cores) or paper (GPUs)")
    p.add_argument("--seeds", type=_seeds, default=[0, 1, 2], help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--out", default="experiments", help="results folder (default %(default)s)")
    p.add_argument("--workers", type=_positive_int, default=None,
                   help="start a local Ray instance with N CPUs, always a new one (default: all cores)")
    p.add_argument("--address", default=None,
                   help="join a running Ray cluster instead: HOST:PORT (what `ray start --head` prints) or auto; run "
                   "this on a node of the cluster, with --out on a file system every node sees at the same path")
    p.add_argument("--cpus-per-trial", type=_positive_int, default=1, help="CPUs (and torch threads) per trial")
    p.add_argument("--gpus-per-trial", type=_gpus, default=0, help="GPUs per trial (fractions below 1 share a GPU)")
    p.add_argument("--dry-run", action="store_true",
                   help="check every trial instead of running it: locate its data, one training step on two images, "
                   "one Fisher measurement and each analysis on one; print parameters, memory per image and "
                   "estimated GPU-hours. Needs no Ray; writes nothing to --out")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=cmd_reproduce)

    p = _command(sub, cmd_report, "rebuild the reproduction reports from the run directories, without training")
    p.add_argument("out", nargs="?", default="experiments", help="results folder of `reproduce` (default %(default)s)")
    p.set_defaults(func=cmd_report)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what was wrong; `--help` shows the rest), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="spiketide",
        description="Temporal information dynamics of spiking neural networks (Kim et al., AAAI 2023): "
        "train LIF SNNs, measure temporal Fisher information, robustness and TIC-based pruning.",
    )
    parser.add_argument("--version", action="version", version=f"spiketide {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>")

    p = _command(sub, cmd_train, "train an SNN with BPTT and write a run directory")
    _add_train_options(p, TrainConfig())
    p.set_defaults(func=cmd_train, parser=p)

    p = _command(sub, cmd_demo, "a CPU demo: convnet on Fashion-MNIST showing temporal information concentration")
    p.add_argument("--out", type=_path, default="runs/demo", help="run directory (default %(default)s)")
    p.add_argument("--epochs", type=_positive_int, default=None, help="override the number of epochs (for a quick look)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=cmd_demo)

    p = _command(sub, cmd_plot, "redraw a run's figures (Fig. 1, Fig. 3) from its metrics.jsonl")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_plot)

    add_analysis_commands(sub)
    add_nir_command(sub)
    add_experiment_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv[argv.index(args.command) + 1:] if args.command in argv else argv
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except SpiketideError as exc:
        print(f"spiketide {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path given that cannot be made, read or written (permissions, a file in the way, /proc)
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"spiketide {args.command}: error: {where}{exc.strerror or exc}; check that path and its permissions, "
              "or pick another", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nspiketide {args.command}: interrupted; written files are complete (atomic writes). "
              "Continue a training run with --resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
