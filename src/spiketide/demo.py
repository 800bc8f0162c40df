"""`spiketide demo`: temporal information concentration (TIC) on a laptop CPU.

Trains `convnet` on a class-balanced Fashion-MNIST subset while tracking the empirical Fisher
information I_t (Eq. 6) every few epochs, then draws Fig. 1 and Fig. 3 and prints how the
information centroid (Eq. 7) moved: up while the network starts learning, then down towards
t = 1 as the training loss approaches zero (the paper's TIC, Fig. 1, judged by the one rule in `fisher.tic`).
"""

from __future__ import annotations

import math
from pathlib import Path

from spiketide import callbacks, plots
from spiketide.config import TrainConfig
from spiketide.fisher.profile import read_profiles
from spiketide.fisher.tic import TIC_MARGIN, MissingValue, ic_levels, tic_score
from spiketide.runs import RunDir, atomic_write_json
from spiketide.train import train

__all__ = ["demo_config", "run_demo", "tic_summary"]


def demo_config(out: str = "runs/demo", epochs: int | None = None) -> TrainConfig:
    """The embedded demo setting, sized for 2 CPU cores and well under 10 minutes.

    500 training images without augmentation so that the network fits them to near-zero loss:
    concentration appears as the training loss approaches zero (measured: IC 3.50 at init, 3.99 at
    epoch 5, 2.86 at epoch 30, 1.39 at epoch 60 with I_1 the largest from epoch 25 on).
    """
    epochs = epochs or 60
    every = max(1, round(epochs / 12))
    checkpoints = sorted({0, every, epochs // 3, 2 * epochs // 3, epochs})
    return TrainConfig(
        model="convnet", dataset="fashion-mnist", subset=500, test_subset=500, augment=False, timesteps=6, tau=2.0,
        epochs=epochs, batch_size=25, lr=0.1, optimizer="sgd", schedule="cosine", seed=0,
        fisher_every=every, fisher_samples=128, fisher_estimator="empirical", fisher_per_layer=True,
        checkpoint_epochs=checkpoints, out=out, device="cpu",
    )


def tic_summary(records: list[dict], epochs: int) -> dict:
    """IC at the start, its early-training and end-of-training levels, and the TIC rule's verdict (fisher.tic);
    whether I_1 is the largest at the end."""
    readings = read_profiles(records)
    if not readings:
        return {}
    end_epoch, end = readings[-1]
    trace = end.trace.tolist()
    summary = {"end_epoch": end_epoch, "end_trace": end.to_dict()["trace"],
               "i1_largest_at_end": all(map(math.isfinite, trace)) and trace[0] == max(trace)}
    try:
        levels = ic_levels([(e, p.centroid) for e, p in readings], end.timesteps, epochs)
    except MissingValue as exc:
        return {**summary, "tic": False, "tic_unmeasured": str(exc)}
    score = tic_score(levels)
    return {**summary, "ic_start": levels.start, "ic_early": levels.early, "ic_end": levels.end, "tic_score": score,
            "tic": score < -TIC_MARGIN}


def _fresh(out: str | None) -> str:
    if out is not None:
        return out
    path, i = Path("runs/demo"), 1
    while RunDir(path).exists():
        path, i = Path(f"runs/demo-{i}"), i + 1
    return str(path)


def run_demo(out: str | None = None, epochs: int | None = None, progress: bool = True) -> dict:
    """Train the demo, draw Fig. 1 / Fig. 3, print and return the TIC summary."""
    config = demo_config(_fresh(out), epochs)
    config.progress = progress
    print(f"spiketide demo: {config.model} on {config.subset} Fashion-MNIST images, T={config.timesteps}, "
          f"tau={config.tau}, {config.epochs} epochs; Fisher (Eq. 6) on {config.fisher_samples} training images "
          f"every {config.fisher_every} epochs -> {config.out}")
    run = train(config, callbacks=callbacks.from_config(config)).run
    records = run.read_metrics()
    figures = plots.plot_run(run.path)
    summary = {**tic_summary(records, config.epochs), "test_acc": records[-1]["test_acc"],
               "train_loss": records[-1]["train_loss"], "seconds": sum(r.get("seconds") or 0 for r in records)}
    atomic_write_json(run.path / "summary.json", summary)
    print(f"\nrun directory: {run.path}")
    print(f"final: train loss {summary['train_loss']:.4f}, test accuracy {summary['test_acc']:.3f}")
    if "ic_start" in summary:
        print(f"information centroid (Eq. 7): {summary['ic_start']:.2f} at epoch 0 -> {summary['ic_early']:.2f} in the "
              f"first third of training -> {summary['ic_end']:.2f} in the last fifth (mean of the readings)")
    trace = ", ".join(f"{v:.3g}" for v in summary["end_trace"] if v is not None)
    print(f"I_t at the end: [{trace}]; I_1 is {'the largest' if summary['i1_largest_at_end'] else 'not the largest'}")
    if "tic_score" in summary:
        print(f"temporal information concentration: {'yes' if summary['tic'] else 'no'} (IC ended "
              f"{-summary['tic_score']:.2f} of its range below both its start and its early level; the rule asks "
              f"for more than {TIC_MARGIN:g})")
    else:
        print(f"temporal information concentration: not measured ({summary['tic_unmeasured']})")
    for f in figures:
        print(f"figure: {f}")
    return summary
