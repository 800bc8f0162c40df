"""Aggregate figures of the reproduction suite: mean across seeds with a band of one standard error.

Each function takes `results[seed][label] -> RunResult | None` and returns a matplotlib Figure; a
missing run simply contributes nothing (the report says which runs are missing).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from matplotlib.figure import Figure

from spiketide.experiments.trials import RunResult
from spiketide.fisher.tic import EARLY, END
from spiketide.plots import block_heatmap, pick_epochs

__all__ = ["FIGURES"]

Results = dict[int, dict[str, RunResult | None]]


def _labels(results: Results) -> list[str]:
    return list(next(iter(results.values()))) if results else []


def _mean_se(rows: list[list[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error over seeds of equal-length rows (rows of another length are left out)."""
    n = max((len(r) for r in rows), default=0)
    a = np.array([r for r in rows if len(r) == n], dtype=float).reshape(-1, n)
    se = a.std(0, ddof=1) / np.sqrt(len(a)) if len(a) > 1 else np.zeros(n)
    return a.mean(0), se


def _band(ax, x, rows: list[list[float]], label: str, color: str) -> None:
    # a seed with a missing or non-finite value contributes nothing (the report names it)
    rows = [r for r in rows if r and all(v is not None and np.isfinite(v) for v in r)]
    if not rows:
        return
    m, se = _mean_se(rows)
    ax.plot(x[:len(m)], m, "o-", ms=3, lw=1.5, color=color, label=f"{label} (n={len(rows)})")
    ax.fill_between(x[:len(m)], m - se, m + se, color=color, alpha=0.2, lw=0)


def _finish(fig: Figure, axes, title: str) -> Figure:
    for ax in np.atleast_1d(axes):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # nothing to label when every run is missing
            ax.legend(frameon=False, fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def ic_figure(results: Results, title: str) -> Figure:
    """Fig. 1 / Fig. 4: information centroid across epochs (left); right, for one configuration I_t at four
    epochs (Fig. 1), for several the normalised I_t at the end of each."""
    fig = Figure(figsize=(10, 3.6))
    ax_ic, ax_t = fig.subplots(1, 2)
    labels = _labels(results)
    for i, label in enumerate(labels):
        read = [rd for r in results.values() if r.get(label) and (rd := r[label].fisher())]
        if not read:
            continue
        epochs = [e for e, _ in read[0]]
        _band(ax_ic, np.array(epochs, dtype=float), [[p.centroid for _, p in rd] for rd in read], label, f"C{i}")
        if len(labels) == 1:
            for j, e in enumerate(pick_epochs(epochs)):
                rows = [p.trace.tolist() for rd in read for ep, p in rd if ep == e]
                _band(ax_t, np.arange(1, len(rows[0]) + 1, dtype=float), rows, f"epoch {e}", f"C{j + 1}")
            ax_t.set(ylabel=r"Fisher information $I_t$ (Eq. 6)")
        else:
            ends = [rd[-1][1].trace.numpy() for rd in read]
            _band(ax_t, np.arange(1, len(ends[0]) + 1), [list(e / max(e.sum(), 1e-30)) for e in ends], label, f"C{i}")
            ax_t.set(ylabel=r"$I_t / \sum_t I_t$ at the end")
    done = [r[label] for r in results.values() for label in labels if r.get(label) and r[label].trained]
    if done:  # the windows whose mean IC the TIC rule compares (fisher.tic)
        n = done[0].config["epochs"]
        for (lo, hi), name in ((EARLY, "early level"), (END, "end level")):
            ax_ic.axvspan(lo * n, hi * n, color="0.5", alpha=0.08, lw=0)
            ax_ic.text((lo + hi) / 2 * n, 1.0, name, transform=ax_ic.get_xaxis_transform(), ha="center", va="bottom",
                       fontsize=7, color="0.4")
    ax_ic.set(xlabel="epoch", ylabel="information centroid (Eq. 7)")
    ax_t.set(xlabel="timestep t")
    return _finish(fig, [ax_ic, ax_t], f"{title} (mean ± s.e. over seeds)")


def deficits_figure(results: Results, title: str) -> Figure:
    """Fig. 2: relative accuracy with noise in [t, t+w-1] vs the last window, one curve per checkpoint epoch."""
    fig = Figure(figsize=(5.5, 3.6))
    ax = fig.subplots()
    ds = [d for r in results.values() if r.get("base") and (d := r["base"].analysis("deficits"))]
    if ds:
        for i, entry in enumerate(ds[0]["checkpoints"]):
            rows = [[100 * v for v in d["checkpoints"][i]["relative_accuracy"]] for d in ds]
            _band(ax, np.array(entry["window_starts"], dtype=float), rows, f"epoch {entry['epoch']}", f"C{i}")
    ax.axhline(0, color="gray", lw=0.8)
    ax.set(xlabel="noise window start t", ylabel="relative accuracy (points)")
    return _finish(fig, ax, f"{title} (mean ± s.e.)")


def blocks_figure(results: Results, title: str) -> Figure:
    """Fig. 3: per-block Fisher information at the end, normalised, averaged over seeds."""
    per = [p for r in results.values() if r.get("base") and (rd := r["base"].fisher()) and (p := rd[-1][1].per_layer)]
    fig = Figure(figsize=(5, 3.8))
    ax = fig.subplots()
    if per:
        fig.colorbar(block_heatmap(ax, per), ax=ax, label="normalised Fisher information")
    ax.set(xlabel="timestep t", ylabel="block")
    ax.set_title(f"{title} (end of training, mean of {len(per)} seeds)", fontsize=9)
    fig.tight_layout()
    return fig


def alpha_figure(results: Results, title: str) -> Figure:
    """Fig. 5: (a) I_t at the end, (b) per-horizon training loss L_t at the end, (c) test accuracy per epoch."""
    fig = Figure(figsize=(12, 3.6))
    axes = fig.subplots(1, 3)
    for i, label in enumerate(_labels(results)):
        runs = [r[label] for r in results.values() if r.get(label) and r[label].trained]
        if not runs:
            continue
        if runs[0].fisher():
            tr = [r.fisher()[-1][1].trace.tolist() for r in runs]
            _band(axes[0], np.arange(1, len(tr[0]) + 1), tr, label, f"C{i}")
        hl = [r.metrics[-1]["horizon_loss"] for r in runs]
        _band(axes[1], np.arange(1, len(hl[0]) + 1), hl, label, f"C{i}")
        tested = [m["epoch"] for m in runs[0].metrics if m["test_acc"] is not None]  # --eval-every leaves gaps
        acc = [[m["test_acc"] for m in r.metrics if m["epoch"] in tested] for r in runs]
        _band(axes[2], np.asarray(tested, dtype=float), acc, label, f"C{i}")
    axes[0].set(xlabel="timestep t", ylabel=r"$I_t$ at the end", yscale="log")
    axes[1].set(xlabel="horizon t", ylabel=r"training loss $L_t$ at the end", yscale="log")
    axes[2].set(xlabel="epoch", ylabel="test accuracy")
    return _finish(fig, axes, f"{title} (mean ± s.e.)")


def table_figure(results: Results, title: str) -> Figure:
    """Table 1 as bars: accuracy under each perturbation per row, mean ± s.e. over seeds."""
    keys = ("clean", "gaussian", "blur", "fgsm", "pgd")
    fig = Figure(figsize=(7, 3.6))
    ax = fig.subplots()
    labels = _labels(results)
    width = 0.8 / max(len(labels), 1)
    for i, label in enumerate(labels):
        rows = [[100 * a[k] for k in keys] for r in results.values()
                if r.get(label) and (a := r[label].analysis("robustness"))]
        if rows:
            m, se = _mean_se(rows)
            ax.bar(np.arange(len(keys)) + i * width, m, width, yerr=se, capsize=2, color=f"C{i}",
                   label=f"{label} (n={len(rows)})")
    ax.set_xticks(np.arange(len(keys)) + 0.4 - width / 2, keys)
    ax.set_ylabel("accuracy (%)")
    return _finish(fig, ax, f"{title} (mean ± s.e.)")


def pruning_figure(results: Results, title: str) -> Figure:
    """Fig. 7: accuracy against sparsity per T_retrain, one panel per architecture."""
    labels = _labels(results)
    fig = Figure(figsize=(5 * max(len(labels), 1), 3.6))
    axes = np.atleast_1d(fig.subplots(1, max(len(labels), 1)))
    for ax, label in zip(axes, labels):
        ps = [p for r in results.values() if r.get(label) and (p := r[label].analysis("prune"))]
        for i, t in enumerate(sorted(ps[0]["curves"], key=int) if ps else []):
            x = np.array([100 * s for s in ps[0]["curves"][t]["sparsity"]])
            _band(ax, x, [[100 * a for a in p["curves"][t]["test_acc"]] for p in ps], f"T_retrain={t}", f"C{i}")
        ax.set(xlabel="sparsity (%)", ylabel="test accuracy (%)", title=label)
    return _finish(fig, axes, f"{title} (mean ± s.e.)")


def accuracy_vs_t_figure(results: Results, title: str) -> Figure:
    """Pilot: final test accuracy against T, one curve per model."""
    fig = Figure(figsize=(5.5, 3.6))
    ax = fig.subplots()
    models: dict[str, list[str]] = {}
    for label in _labels(results):
        models.setdefault(label.split("-T=")[0], []).append(label)
    for i, (m, labels) in enumerate(models.items()):
        ts = np.array([float(lab.split("-T=")[1]) for lab in labels])
        rows = [[r[lab].final("test_acc") for lab in labels] for r in results.values()
                if all(r.get(lab) and r[lab].trained for lab in labels)]
        _band(ax, ts, rows, m, f"C{i}")
    ax.set(xlabel="timesteps T", ylabel="test accuracy")
    return _finish(fig, ax, f"{title} (mean ± s.e.)")


FIGURES: dict[str, Callable[[Results, str], Figure]] = {
    "ic": ic_figure, "deficits": deficits_figure, "blocks": blocks_figure, "alpha": alpha_figure,
    "table": table_figure, "pruning": pruning_figure, "accuracy-vs-T": accuracy_vs_t_figure,
}
