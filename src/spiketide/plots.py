"""The paper's figures, drawn from run directories (PNG + PDF in `figures/`).

Fig. 1: I_t over timesteps at several epochs (centroid marked) and the information centroid across
epochs. Fig. 3: per-block Fisher information, normalised over blocks, as block x timestep heatmaps.
Fig. 2 (time-window deficits) and Fig. 7 (accuracy vs sparsity) are drawn from their JSON results.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from torch import Tensor

from spiketide.fisher.profile import read_profiles
from spiketide.fisher.tic import EARLY, END, TIC_MARGIN, MissingValue, ic_levels, tic_score
from spiketide.runs import RunDir

__all__ = ["pick_epochs", "plot_fig1", "plot_fig3", "block_heatmap", "plot_deficits", "plot_pruning", "plot_run",
           "save"]


def save(fig: Figure, path_without_suffix: str | Path) -> list[Path]:
    """Save as PNG (200 dpi) and PDF; uses the Agg canvas directly so no global backend is touched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    base = Path(path_without_suffix)
    base.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for suffix in (".png", ".pdf"):
        p = base.with_name(base.name + suffix)  # not with_suffix: keep dots in names like "exit.v1"
        tmp = p.with_name(f".{p.name}.tmp{suffix}")
        fig.savefig(tmp, dpi=200, bbox_inches="tight")
        tmp.replace(p)  # atomic: a half-drawn figure never replaces a good one
        paths.append(p)
    return paths


def pick_epochs(epochs: list[int], k: int = 4) -> list[int]:
    """Up to k epochs spread from first to last (the paper shows four)."""
    if len(epochs) <= k:
        return list(epochs)
    idx = np.unique(np.round(np.linspace(0, len(epochs) - 1, k)).astype(int))
    return [epochs[i] for i in idx]


def plot_fig1(records: list[dict], epochs: list[int] | None = None, title: str | None = None) -> Figure:
    """Fig. 1: left, information centroid (Eq. 7) across epochs; right, I_t (Eq. 6) vs t at chosen epochs."""
    readings = read_profiles(records)
    all_epochs = [e for e, _ in readings]
    by_epoch = dict(readings)
    if not epochs:  # start, the centroid's peak, and the epochs after it where concentration happens
        peak = max(all_epochs, key=lambda e: np.nan_to_num(by_epoch[e].centroid))  # nan: no centroid
        after = [e for e in all_epochs if e > peak]
        epochs = sorted({all_epochs[0], peak, after[len(after) // 2], after[-1]}) if after else pick_epochs(all_epochs)
    fig = Figure(figsize=(10, 3.6))
    ax_ic, ax_t = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.3]})
    ax_ic.plot(all_epochs, [by_epoch[e].centroid for e in all_epochs], "o-", color="black", lw=1.5, ms=4)
    colors = [f"C{i}" for i in range(len(epochs))]
    for e, c in zip(epochs, colors):
        ax_ic.plot([e], [by_epoch[e].centroid], "o", color=c, ms=8, zorder=3)
    tic = _mark_tic_levels(ax_ic, [(e, by_epoch[e].centroid) for e in all_epochs],
                           readings[-1][1].timesteps if readings else 0, records[-1]["epoch"] if records else 0)
    ax_ic.set(xlabel="epoch", ylabel="information centroid (Eq. 7)")
    ax_ic.grid(alpha=0.3)
    for e, c in zip(epochs, colors):
        p = by_epoch[e]
        t = np.arange(1, p.timesteps + 1)
        ax_t.errorbar(t, p.trace.numpy(), yerr=p.stderr.numpy(), fmt="o-", color=c, capsize=3, lw=1.5, ms=4,
                      label=f"epoch {e}")
        if math.isfinite(p.centroid):  # nan when the trace is all zero
            ax_t.axvline(p.centroid, color=c, ls=":", lw=1.2)
    ax_t.set(xlabel="timestep t", ylabel=r"Fisher information $I_t$ (Eq. 6)", xticks=t)
    ax_t.legend(frameon=False, fontsize=8)
    ax_t.grid(alpha=0.3)
    est = readings[0][1].estimator if readings else ""
    fig.suptitle(title or f"Temporal information dynamics ({est} Fisher; dotted: centroid; {tic})", fontsize=10)
    fig.tight_layout()
    return fig


def _mark_tic_levels(ax, series: list[tuple[int, float | None]], timesteps: int, epochs: int) -> str:
    """Draw the early and end IC levels that the TIC rule (fisher.tic) compares; return its verdict in words."""
    try:
        lv = ic_levels(series, timesteps, epochs)
    except MissingValue as exc:
        return f"TIC not measurable: {exc}"
    for (lo, hi), level in ((EARLY, lv.early), (END, lv.end)):
        ax.hlines(level, lo * epochs, hi * epochs, colors="0.45", linestyles="--", lw=1.2)
    score = tic_score(lv)
    return f"dashed: early and end IC levels; TIC {'yes' if score < -TIC_MARGIN else 'no'}, score {score:.2f}"


def plot_fig3(records: list[dict], epochs: list[int] | None = None) -> Figure | None:
    """Fig. 3: per-block Fisher information / max over blocks, heatmap of block x timestep per epoch."""
    by_epoch = {e: p.per_layer for e, p in read_profiles(records) if p.per_layer}
    if not by_epoch:
        return None
    shown = epochs or pick_epochs(list(by_epoch), 3)
    fig = Figure(figsize=(3.6 * len(shown) + 0.8, 3.8))
    axes = np.atleast_1d(fig.subplots(1, len(shown), sharey=True))
    im = None
    for ax, e in zip(axes, shown):
        im = block_heatmap(ax, [by_epoch[e]])
        ax.set_title(f"epoch {e}", fontsize=9)
    axes[0].set_ylabel("block")
    fig.colorbar(im, ax=list(axes), shrink=0.9, label="normalised Fisher information")
    fig.suptitle("Per-block temporal Fisher information (Fig. 3)", fontsize=10)
    return fig


def block_heatmap(ax, parts: list[dict[str, Tensor]]) -> AxesImage:
    """Block x timestep image of per-block Fisher information (`FisherProfile.per_layer`): each of `parts`
    normalised over all its blocks and timesteps, as in the paper, then averaged over them."""
    names = list(parts[0])
    blocks = [torch.stack([p[n] for n in names]).numpy() for p in parts]
    m = np.mean([b / max(b.max(), 1e-30) for b in blocks], axis=0)
    im = ax.imshow(m, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(m.shape[1]), [str(t + 1) for t in range(m.shape[1])])
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("timestep t")
    return im


def _line_figure(curves, xlabel: str, ylabel: str, title: str, zero_line: bool = False) -> Figure:
    """A small figure of one "o-" curve per (x, y, label), with a legend and a grid (Fig. 2 and Fig. 7)."""
    fig = Figure(figsize=(5.5, 3.6))
    ax = fig.subplots()
    for i, (x, y, label) in enumerate(curves):
        ax.plot(x, y, "o-", color=f"C{i}", label=label)
    if zero_line:
        ax.axhline(0, color="gray", lw=0.8)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(frameon=False, fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_deficits(result: dict) -> Figure:
    """Fig. 2: accuracy change when Gaussian noise hits timesteps [t, t+w-1], relative to the last window."""
    curves = [(e["window_starts"], [100 * v for v in e["relative_accuracy"]], f"epoch {e['epoch']}")
              for e in result["checkpoints"]]
    return _line_figure(curves, f"noise window start t (window [t, t+{result['window'] - 1}])",
                        "relative accuracy (points)", "Time-window deficits (Fig. 2)", zero_line=True)


def plot_pruning(result: dict) -> Figure:
    """Fig. 7: test accuracy vs sparsity, one curve per T_retrain."""
    curves = [([100 * s for s in c["sparsity"]], [100 * a for a in c["test_acc"]], f"$T_{{retrain}}$ = {t}")
              for t, c in sorted(result["curves"].items(), key=lambda kv: int(kv[0]))]
    return _line_figure(curves, "sparsity (%)", "test accuracy (%)",
                        f"Iterative pruning, trained with T = {result['T']} (Fig. 7)")


def plot_run(run_path: str | Path) -> list[Path]:
    """Draw every figure a run directory supports into its figures/ folder; returns the files written."""
    run = RunDir(run_path)
    run.read_config()  # a clear error when this is not a run directory
    records = run.read_metrics()
    paths: list[Path] = []
    if read_profiles(records):
        paths += save(plot_fig1(records), run.figures / "fig1_temporal_fisher")
        if (fig3 := plot_fig3(records)) is not None:
            paths += save(fig3, run.figures / "fig3_per_block_fisher")
    return paths
