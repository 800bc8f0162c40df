"""Confidence-based early exit over timesteps (beyond the paper).

If information concentrates in the first timesteps (TIC, Eq. 6-7), most samples
should already be classified confidently by an early horizon output, the mean of the
first t timestep outputs (Eq. 4). :func:`exit_curve` measures the accuracy / latency
trade-off of exiting at the first horizon whose softmax confidence exceeds a
threshold, and what that saves: synaptic operations and energy, counted per sample with
`spiketide.stats`' forward hooks in the same forward pass. :func:`summarize` sets it beside
where Fisher information concentrates, and :func:`exit_curve_figure` draws it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from spiketide import evaluation, fisher, stats
from spiketide.errors import ConfigError, ModelOutputError
from spiketide.losses import horizon_logits

__all__ = ["DEFAULT_THRESHOLDS", "exit_curve", "summarize", "exit_curve_figure"]

DEFAULT_THRESHOLDS: tuple[float, ...] = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999, 1.0)


def exit_curve(model: nn.Module, images: Any, labels: Any, thresholds: Sequence[float] | None = None,
               batch_size: int = 256, *, energy: stats.EnergyModel | None = stats.EnergyModel(),
               spiking_modules: stats.SpikingSpec = None) -> dict[str, Any]:
    """Accuracy and mean timesteps used when exiting at the first confident horizon (Eq. 4).

    The model runs once per batch (in eval mode, restored afterwards). For threshold `th` a
    sample exits at the first horizon t whose max softmax probability is strictly greater than
    `th` and is classified by that horizon's argmax; if no horizon qualifies it uses all T. Strict
    `>` makes the ends exact: `th = 0` always exits at t = 1 and `th >= 1` never exits early, even
    when float32 rounds a confidence to exactly 1.

    Returns `thresholds`, `accuracy` and `mean_timesteps` (one per threshold), `exit_histogram`
    (per threshold, the number of samples exiting at t = 1..T), `fixed_T_accuracy` (accuracy of the
    horizon-t output for t = 1..T), `T`, `n`, and `operations`: per threshold, the mean per sample of
    `sops_per_sample`, `macs_per_sample`, `energy_pj_per_sample` and what they save against all T
    (`sops_saved_per_sample`, `sops_saving`, `energy_saved_pj_per_sample`, `energy_saving`), beside
    `full_T`, `per_timestep` and `energy_constants`. Exact: a sample exiting at horizon t costs the SOPs
    and MACs (`stats` module doc) of its own timesteps 1..t, counted by hooks in the same forward pass.
    `operations` is None with `energy=None` (no hooks) or when the model has no spiking layers
    (`spiking_modules` as in `stats.spike_stats`).
    """
    ths = [float(t) for t in (DEFAULT_THRESHOLDS if thresholds is None else thresholds)]
    if not ths:
        raise ConfigError("thresholds is empty")
    if any(math.isnan(t) for t in ths):
        raise ConfigError("thresholds must be numbers, got NaN")
    if energy is not None and not isinstance(energy, stats.EnergyModel):
        raise ConfigError("energy must be an EnergyModel(e_ac_pj=..., e_mac_pj=...) or None, "
                          f"got {type(energy).__name__}")
    images, labels = evaluation.check_images(images, labels)
    counter = None if energy is None else stats.OperationCounter(model, spiking_modules, per_sample=True)
    counter = counter if counter is not None and counter.spiking else None
    conf, correct = _confidences(model, images, labels, batch_size, counter)
    T, n = conf.shape
    exits = [_exit_horizons(conf, th) for th in ths]
    return {
        "thresholds": ths,
        "accuracy": [float(correct.gather(0, e[None]).float().mean()) for e in exits],
        "mean_timesteps": [float((e + 1).float().mean()) for e in exits],
        "exit_histogram": [torch.bincount(e, minlength=T).tolist() for e in exits],
        "fixed_T_accuracy": correct.float().mean(1).tolist(),
        "T": int(T),
        "n": int(n),
        "operations": None if counter is None else _operations(counter, exits, energy),
    }


def _exit_horizons(conf: Tensor, th: float) -> Tensor:
    """Per image, the index of the first horizon whose confidence exceeds `th` (strictly), else T - 1."""
    exceed = conf > th
    first = exceed.to(torch.int8).argmax(0)  # argmax returns the first maximal index: the first confident horizon
    return torch.where(exceed.any(0), first, torch.full_like(first, conf.shape[0] - 1))


def _confidences(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int,
                 counter: stats.OperationCounter | None) -> tuple[Tensor, Tensor]:
    """(confidence, correct) of every horizon output (Eq. 4) and image, [T, n] each, from one forward pass per
    batch; `counter` (if any) counts each image's operations per timestep in the same pass."""
    confs: list[Tensor] = []
    corrects: list[Tensor] = []
    with evaluation.eval_mode(model), torch.no_grad(), counter if counter is not None else contextlib.nullcontext():
        for xb, yb in evaluation.pixel_batches(images, labels, batch_size, evaluation.model_device(model)):
            if counter is not None:
                counter.start(xb.shape[0])
            out = evaluation.logits(model, xb)
            if not torch.isfinite(out).all():
                raise ModelOutputError("model returned non-finite logits (NaN or inf)")
            if confs and out.shape[0] != confs[0].shape[0]:
                raise ModelOutputError(f"model returned {out.shape[0]} timesteps, earlier batches had {confs[0].shape[0]}")
            conf, pred = horizon_logits(out.float()).softmax(-1).max(-1)  # [T, B]
            confs.append(conf.cpu())
            corrects.append((pred == yb[None]).cpu())
            if counter is not None:
                try:
                    counter.finish(out.shape[0])
                except ConfigError as e:
                    raise ConfigError(f"{e}; or count nothing with energy=None") from None
    return torch.cat(confs, dim=1), torch.cat(corrects, dim=1)


def _operations(counter: stats.OperationCounter, exits: list[Tensor], energy: stats.EnergyModel) -> dict[str, Any]:
    """Per threshold: mean SOPs, MACs and energy (pJ) per sample, each sample stopping at its exit horizon
    (Eq. 4); the saving against all T timesteps (absolute and as a fraction); the full-T reference."""
    sops, macs = (torch.from_numpy(a) for a in counter.sample_operations())  # float64 [T, n]
    # cumulative over t: what a sample has cost once it has run its timesteps 1..t
    cost = {"sops": sops.cumsum(0), "macs": macs.cumsum(0)}
    cost["energy_pj"] = energy.e_ac_pj * cost["sops"] + energy.e_mac_pj * cost["macs"]
    full = {f"{k}_per_sample": float(c[-1].mean()) for k, c in cost.items()}
    out: dict[str, Any] = {f"{k}_per_sample": [float(c.gather(0, e[None]).mean()) for e in exits]
                           for k, c in cost.items()}
    for k, saved_key, frac_key in (("sops", "sops_saved_per_sample", "sops_saving"),
                                   ("energy_pj", "energy_saved_pj_per_sample", "energy_saving")):
        ref = full[f"{k}_per_sample"]
        out[saved_key] = [ref - v for v in out[f"{k}_per_sample"]]
        out[frac_key] = [saved / ref if ref > 0 else 0.0 for saved in out[saved_key]]
    out["full_T"] = full
    out["per_timestep"] = {"sops_per_sample": sops.mean(1).tolist(), "macs_per_sample": macs.mean(1).tolist()}
    out["nonbinary_inputs"] = [n for n, _ in counter.synaptic if n in counter.nonbinary]
    out["energy_constants"] = energy.to_dict()
    return out


def summarize(curve: dict[str, Any], fisher_trace: Any = None, tolerance: float = 0.005) -> str:
    """Short text: fixed-horizon accuracies, the cheapest threshold that keeps full-T
    accuracy (within ``tolerance``), a table of what each threshold costs and saves per
    sample (when the curve has `operations`), and, given a Fisher trace ``[T]`` (Eq. 6), where
    information concentrates (95% point, centroid Eq. 7) next to where samples exit."""
    T = int(curve["T"])
    fixed = curve["fixed_T_accuracy"]
    full = fixed[-1]
    lines = [
        f"Early exit over T={T} timesteps ({curve.get('n', '?')} samples).",
        "Fixed-horizon accuracy: " + ", ".join(f"t={t}: {a:.1%}" for t, a in enumerate(fixed, start=1)),
    ]
    ok = [(steps, th, acc) for th, acc, steps in zip(curve["thresholds"], curve["accuracy"], curve["mean_timesteps"])
          if acc >= full - tolerance]
    exit_t: float | None = None
    ops = curve.get("operations")
    if ok:
        exit_t, th, acc = min(ok)
        saving = ""
        if ops:
            i = curve["thresholds"].index(th)
            saving = (f" and {ops['energy_pj_per_sample'][i] / 1e6:.4g} uJ per sample "
                      f"({ops['energy_saving'][i]:.0%} less energy than all T)")
        lines.append(f"Exiting when confidence > {th:g} keeps {acc:.1%} accuracy (full T: {full:.1%}) "
                     f"using {exit_t:.2f} timesteps on average ({exit_t / T:.0%} of T){saving}.")
    else:
        lines.append(f"No threshold keeps accuracy within {tolerance:.1%} of full-T accuracy {full:.1%}.")
    if ops:
        lines.extend(_operations_table(curve))
    elif "operations" in curve:
        lines.append("Operations not counted (energy=None, or no spiking layers: name them with spiking_modules=).")
    if fisher_trace is not None:
        trace = torch.as_tensor(fisher_trace, dtype=torch.float64).flatten()
        if trace.numel() != T:
            raise ConfigError(f"fisher_trace has {trace.numel()} entries but the curve has T={T}")
        t95 = fisher.horizon_for_share(trace, 0.95)  # checks the trace
        centroid = fisher.information_centroid(trace)
        if math.isnan(centroid):
            raise ConfigError("fisher_trace is all zero: there is no information to locate")
        lines.append(f"Fisher information: 95% is reached by t={t95}; information centroid IC={centroid:.2f} (Eq. 7).")
        if exit_t is not None:
            lines.append(f"Information concentrates by t={t95} (IC {centroid:.2f}); samples exit on average "
                         f"at t={exit_t:.2f}.")
    return "\n".join(lines)


def _operations_table(curve: dict[str, Any]) -> list[str]:
    """The full-T reference line, then one row per threshold."""
    ops = curve["operations"]
    full, c = ops["full_T"], ops["energy_constants"]
    lines = [
        f"Per sample, all T: {full['sops_per_sample']:.4g} SOPs + {full['macs_per_sample']:.4g} MACs, "
        f"{full['energy_pj_per_sample'] / 1e6:.4g} uJ "
        f"(e_ac {c['e_ac_pj']:g} pJ, e_mac {c['e_mac_pj']:g} pJ; {c['source']}).",
        "threshold  accuracy  mean t  SOPs/sample  MACs/sample  uJ/sample  energy saved (uJ, share)",
    ]
    for i, th in enumerate(curve["thresholds"]):
        lines.append(f"{th:>9g}  {curve['accuracy'][i]:>8.1%}  {curve['mean_timesteps'][i]:>6.2f}  "
                     f"{ops['sops_per_sample'][i]:>11.4g}  {ops['macs_per_sample'][i]:>11.4g}  "
                     f"{ops['energy_pj_per_sample'][i] / 1e6:>9.4g}  "
                     f"{ops['energy_saved_pj_per_sample'][i] / 1e6:>11.4g} {ops['energy_saving'][i]:>6.1%}")
    return lines


def exit_curve_figure(curve: dict[str, Any]) -> Figure:
    """Accuracy vs mean timesteps (per threshold) beside fixed-T accuracy vs T; save with `plots.save`."""
    T = int(curve["T"])
    ts = list(range(1, T + 1))
    fixed = [100 * a for a in curve["fixed_T_accuracy"]]
    fig = Figure(figsize=(10, 4), constrained_layout=True)
    ax_exit, ax_fixed = fig.subplots(1, 2)
    ax_exit.plot(ts, fixed, "--", color="0.6", label="fixed horizon t")
    ax_exit.plot(curve["mean_timesteps"], [100 * a for a in curve["accuracy"]], "o-", label="early exit")
    for th, x, a in zip(curve["thresholds"], curve["mean_timesteps"], curve["accuracy"]):
        ax_exit.annotate(f"{th:g}", (x, 100 * a), textcoords="offset points", xytext=(3, -10), fontsize=7)
    ax_exit.set(xlabel="mean timesteps used", ylabel="accuracy (%)", title="Confidence-threshold early exit")
    ax_exit.legend(loc="lower right")
    ax_fixed.plot(ts, fixed, "s-")
    ax_fixed.set(xlabel="horizon t (mean of first t outputs, Eq. 4)", ylabel="accuracy (%)", title="Fixed-T accuracy")
    for ax in (ax_exit, ax_fixed):
        ax.set_xlim(0.5, T + 0.5)
        ax.grid(alpha=0.3)
    return fig
