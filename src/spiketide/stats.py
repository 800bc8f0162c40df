"""Spike and energy statistics (beyond the paper): firing rates, synaptic operations and an energy estimate.

`spike_stats` runs a model over images once, in eval mode without gradients, and counts with forward
hooks that reduce every activation to a few numbers on the spot (no activation outlives its layer):

* firing rate of every spiking layer at every timestep t: the mean of its output over batch and neurons;
* synaptic operations (SOPs, accumulates) of every Conv/Linear layer that is *spike-driven*;
* the dense multiply-accumulates (MACs) of every Conv/Linear layer, i.e. the same network run as an ANN;
* an energy estimate from those counts with named constants (`EnergyModel`).

Rule for spike-driven layers (module order): a Conv/Linear layer is spike-driven when, at its first call,
a spiking layer has already run in that forward pass; every layer that runs before any spiking layer (the
stem under direct encoding, which sees pixels) is a MAC layer. A spike-driven layer does one accumulate per
synapse that an input *event* (a non-zero input element) reaches:

    SOPs = sum over non-zero input elements of their fan-out
    Linear(in -> out):  fan-out = out, so SOPs = nnz(x) * out  (= dense MACs * nnz(x) / numel(x))
    ConvNd:             fan-out of an element = the number of (output position, output channel) pairs whose
                        receptive field holds it; counted exactly as sum(conv(x != 0, ones)) * out_ch / groups
                        with the layer's stride, padding, dilation and groups (a one-channel-per-group conv,
                        out_channels / groups times cheaper than the layer). Padding zeros are no events.

For binary {0, 1} inputs this is exactly input spikes x fan-out. A spike-driven layer whose input is not
binary (average-pooled spikes, say) still counts one operation per non-zero input and fan-out; such layers
are listed in `nonbinary_inputs`. Biases are not counted. Dense MACs of a layer = output elements x
(in_channels / groups x kernel volume), or rows x in x out for Linear (the usual definition, padding included).

MAC layers are counted as they run: under the built-in direct encoding the stem runs once per image and its
output is repeated over T, so its MACs are counted once (at t = 1), not T times; with per-timestep inputs
[T, B, ...] it runs, and is counted, at every timestep.

Activation layouts understood (per call of a hooked module, B the batch size, T from the model's output):
timesteps folded into the batch [T*B, ...] (the built-in models), multi-step [T, B, ...], or one call per
timestep [B, ...] (step-mode models, T calls per forward); a module called once on [B, ...] (the stem)
counts at the first timestep.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import Tensor, nn

from spiketide import evaluation, progress as progress_bar
from spiketide.errors import ConfigError, ModelOutputError
from spiketide.neuron import LIF

__all__ = ["EnergyModel", "spike_stats", "stats_figure", "summarize"]

SpikingSpec = Callable[[str, nn.Module], bool] | Iterable[str | type] | None
_SYNAPTIC = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


@dataclass(frozen=True)
class EnergyModel:
    """Energy per operation in picojoules: one accumulate (AC, a spike reaching a synapse) and one
    multiply-accumulate (MAC). Defaults: 32-bit float add 0.9 pJ and mult + add 4.6 pJ at 45 nm
    (Horowitz, ISSCC 2014), the values most SNN energy estimates use."""

    e_ac_pj: float = 0.9
    e_mac_pj: float = 4.6

    def __post_init__(self) -> None:
        for name in ("e_ac_pj", "e_mac_pj"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ConfigError(f"EnergyModel {name} must be a finite number of picojoules >= 0, got {v!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"e_ac_pj": float(self.e_ac_pj), "e_mac_pj": float(self.e_mac_pj),
                "source": "Horowitz, ISSCC 2014, 45 nm, 32-bit float" if self == EnergyModel() else "user"}


def _spiking_predicate(spec: SpikingSpec, model: nn.Module) -> Callable[[str, nn.Module], bool]:
    """LIF modules always; plus what the caller names: a predicate (name, module) -> bool, or module names/types."""
    if spec is None:
        return lambda name, m: isinstance(m, LIF)
    if callable(spec) and not isinstance(spec, type):
        return lambda name, m: isinstance(m, LIF) or bool(spec(name, m))
    if isinstance(spec, (str, type)):
        spec = [spec]
    try:
        items = list(spec)
    except TypeError:
        raise ConfigError("spiking_modules must be a predicate (name, module) -> bool, or a list of module "
                          f"names and/or module types; got {type(spec).__name__}") from None
    names = {s for s in items if isinstance(s, str)}
    types = tuple(s for s in items if isinstance(s, type))
    if len(names) + len(types) != len(items):
        raise ConfigError(f"spiking_modules entries must be module names (str) or types, got {items!r}")
    unknown = names - {n for n, _ in model.named_modules()}
    if unknown:
        raise ConfigError(f"spiking_modules names no module called {sorted(unknown)}; the model's modules are "
                          f"{[n for n, _ in model.named_modules() if n][:20]}")
    return lambda name, m: isinstance(m, LIF) or name in names or (bool(types) and isinstance(m, types))


def _first_tensor(out: Any, name: str) -> Tensor:
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        out = out[0]  # neurons that return (spikes, membrane) and the like
    if not isinstance(out, Tensor):
        raise ConfigError(f"spiking module {name!r} returned {type(out).__name__}, not a tensor of spikes")
    return out


def _rows(x: Tensor) -> Tensor:
    """x as [L, rest]: L leading rows (time and/or batch), the rest flattened."""
    return x.reshape(x.shape[0], -1) if x.dim() > 1 else x.reshape(1, -1)


class _Call:
    """One call of a hooked module, already reduced: `values[L]` per leading row (on the device) and whether its
    second axis could be the batch (a multi-step [T, B, ...] layout)."""

    __slots__ = ("values", "multi")

    def __init__(self, values: Tensor, multi: bool):
        self.values, self.multi = values, multi


def _per_timestep(calls: list[_Call], T: int, B: int, name: str) -> np.ndarray:
    """Sum a forward pass's calls into per-timestep totals over the batch (float64 [T]), by layout (module doc)."""
    out = np.zeros(T)
    stepwise = T > 1 and len(calls) == T and all(c.values.numel() == B for c in calls)
    for i, c in enumerate(calls):
        v = c.values.detach().cpu().double().numpy()
        L = v.size
        if stepwise:  # one call per timestep
            out[i] += v.sum()
        elif L == T * B:  # folded [T*B, ...], t-major as `reshape(T*B, ...)` makes it
            out += v.reshape(T, B).sum(1)
        elif L == T and (c.multi or L != B):  # multi-step [T, B, ...]
            out += v
        elif L == B:  # run once per image, its output shared by all timesteps (direct encoding)
            out[0] += v.sum()
        else:
            raise ConfigError(f"cannot tell the timesteps of module {name!r}: a call with {L} leading rows, for "
                              f"T = {T} and batch size {B}; expected [T*B, ...], [T, B, ...] or [B, ...]")
    return out


class _Counter:
    """The forward hooks. Within a forward pass each hooked call leaves one `_Call` (a vector of at most T*B
    numbers); after the pass they are summed per timestep into float64 numpy totals and dropped."""

    def __init__(self, model: nn.Module, is_spiking: Callable[[str, nn.Module], bool]):
        self.spiking = [(n, m) for n, m in model.named_modules() if is_spiking(n, m)]
        spiking_ids = {id(m) for _, m in self.spiking}
        self.synaptic = [(n, m) for n, m in model.named_modules()
                         if isinstance(m, _SYNAPTIC) and id(m) not in spiking_ids]
        self.batch = 0
        self.spiked = False  # has a spiking layer run yet (decides which layers are spike-driven, at first call)
        self.kind: dict[str, str] = {}  # "ac" (spike-driven) or "mac"
        self.pending: dict[tuple[str, str], list[_Call]] = {}
        self.binary: dict[str, list[Tensor]] = {}
        self.totals: dict[tuple[str, str], np.ndarray] = {}
        self.nonbinary: set[str] = set()
        self.handles: list[Any] = []

    def __enter__(self) -> _Counter:
        for n, m in self.spiking:
            self.handles.append(m.register_forward_hook(self._spike_hook(n)))
        for n, m in self.synaptic:
            self.handles.append(m.register_forward_hook(self._synapse_hook(n)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self.pending.clear()
        self.binary.clear()

    def _add(self, key: tuple[str, str], values: Tensor, x: Tensor) -> None:
        multi = x.dim() >= 2 and x.shape[1] == self.batch
        self.pending.setdefault(key, []).append(_Call(values, multi))

    def _spike_hook(self, name: str):
        def hook(mod: nn.Module, args: tuple, out: Any) -> None:
            y = _first_tensor(out, name)
            rows = _rows(y)
            # float64 keeps counts exact for any layer size (MPS has no float64: float32 there)
            acc = torch.float32 if y.device.type == "mps" else torch.float64
            self._add((name, "spikes"), rows.to(acc).sum(1), y)
            self._add((name, "neurons"), torch.full((rows.shape[0],), float(rows.shape[1])), y)
            self.spiked = True

        return hook

    def _synapse_hook(self, name: str):
        def hook(mod: nn.Module, args: tuple, out: Tensor) -> None:
            x = args[0]
            if not isinstance(mod, nn.Linear) and x.dim() != len(mod.kernel_size) + 2:
                raise ConfigError(f"layer {name!r} got an unbatched input {tuple(x.shape)}; spike_stats needs batched "
                                  "inputs [N, C, ...]")
            kind = self.kind.setdefault(name, "ac" if self.spiked else "mac")
            rows = _rows(x).shape[0]
            if isinstance(mod, nn.Linear):
                dense_per_row = x.numel() // rows * mod.out_features
            else:
                dense_per_row = out.numel() // rows * (mod.in_channels // mod.groups) * math.prod(mod.kernel_size)
            self._add((name, "dense"), torch.full((rows,), float(dense_per_row)), x)
            if kind == "ac":
                self._add((name, "sops"), _events_times_fanout(mod, x), x)
                self.binary.setdefault(name, []).append(((x == 0) | (x == 1)).all())

        return hook

    def start(self, batch: int) -> None:
        self.batch = batch
        self.pending.clear()
        self.binary.clear()

    def finish(self, T: int) -> None:
        """Fold this forward pass's calls into the running totals (and drop them)."""
        for key, calls in self.pending.items():
            per_t = _per_timestep(calls, T, self.batch, key[0])
            self.totals[key] = self.totals[key] + per_t if key in self.totals else per_t
        for name, flags in self.binary.items():
            if not all(bool(f) for f in flags):
                self.nonbinary.add(name)
        self.pending.clear()
        self.binary.clear()


def _events_times_fanout(mod: nn.Module, x: Tensor) -> Tensor:
    """Per leading row of x: the sum over its non-zero elements of their fan-out in `mod` (SOPs, module doc)."""
    nz = x != 0
    if isinstance(mod, nn.Linear):
        return _rows(nz).sum(1) * mod.out_features
    d = len(mod.kernel_size)
    ev = nz.float()
    padding = mod.padding
    if mod.padding_mode != "zeros":  # reflect/replicate/circular padding repeats input events: pad them the same way
        ev = F.pad(ev, mod._reversed_padding_repeated_twice, mode=mod.padding_mode)
        padding = 0
    ones = torch.ones(mod.groups, mod.in_channels // mod.groups, *mod.kernel_size, device=x.device)
    # one output channel per group: each entry counts the events in its receptive field; every output channel
    # of the group sees the same ones
    hits = _CONV[d](ev, ones, None, mod.stride, padding, mod.dilation, mod.groups)
    acc = torch.float32 if x.device.type == "mps" else torch.float64
    return _rows(hits).to(acc).sum(1) * (mod.out_channels // mod.groups)


def _check_batch_size(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    return batch_size


def spike_stats(model: nn.Module, images: Any, labels: Any = None, *, batch_size: int = 64, progress: bool = False,
                energy: EnergyModel = EnergyModel(), spiking_modules: SpikingSpec = None) -> dict[str, Any]:
    """Firing rates, synaptic operations, MACs and an energy estimate of `model` on `images` (module doc).

    The model runs in eval mode (each submodule's own mode restored after) under `torch.no_grad()`. Spiking
    layers are every `spiketide.neuron.LIF` plus what `spiking_modules` names: a predicate `(name, module) ->
    bool`, or module names and/or types (for SNNs from other libraries). `labels` are only checked.

    Returns a JSON-ready dict:
      T, n_images;
      firing_rate {layer: [r_1..r_T]}: mean output of the spiking layer over images and neurons at each t;
      overall_rate: all spikes / all neuron-timesteps, over every spiking layer;
      sops_per_image {layer: [..T]}: accumulates of each spike-driven Conv/Linear layer at t, per image;
      snn_macs_per_image {layer: [..T]}: MACs of each layer that runs before any spiking layer, as executed;
      macs_per_image {layer: int}: dense MACs of every Conv/Linear layer for one image at one timestep (the ANN);
      totals: sops / snn_macs / ann_macs per image (SNN summed over T, ANN one pass);
      nonbinary_inputs: spike-driven layers whose input was not all {0, 1} (events are non-zero inputs);
      energy: constants, snn_pj_per_image = e_ac x SOPs + e_mac x SNN MACs (over T), ann_pj_per_image =
              e_mac x ANN MACs, ratio = snn / ann (below 1: the SNN needs less energy).
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch nn.Module, got {type(model).__name__}")
    if not isinstance(energy, EnergyModel):
        raise ConfigError(f"energy must be an EnergyModel(e_ac_pj=..., e_mac_pj=...), got {type(energy).__name__}")
    batch_size = _check_batch_size(batch_size)
    if labels is None:
        n = len(images) if hasattr(images, "__len__") else 0
        labels = torch.zeros(n, dtype=torch.long)
    images, labels = evaluation.check_images(images, labels)
    counter = _Counter(model, _spiking_predicate(spiking_modules, model))
    if not counter.spiking:
        raise ConfigError("the model has no spiking layers: no spiketide.neuron.LIF module; name the spiking "
                          "modules of other libraries with spiking_modules=")
    device = evaluation.model_device(model)
    T = None
    bar = progress_bar.bar(math.ceil(len(images) / batch_size), "spike stats", enabled=progress)
    try:
        with evaluation.eval_mode(model), torch.no_grad(), counter:
            for xb, yb in evaluation.pixel_batches(images, labels, batch_size, device):
                counter.start(xb.shape[0])
                out = evaluation.logits(model, xb)
                if T is not None and out.shape[0] != T:
                    raise ModelOutputError(f"model returned {out.shape[0]} timesteps, earlier batches had {T}")
                T = out.shape[0]
                del out
                counter.finish(T)
                bar.update(1)
    finally:
        bar.close()
    return _result(counter, T, len(images), energy)


def _result(c: _Counter, T: int, n: int, energy: EnergyModel) -> dict[str, Any]:
    tot = c.totals
    rates = {name: (tot[(name, "spikes")] / tot[(name, "neurons")]).tolist()
             for name, _ in c.spiking if (name, "spikes") in tot}
    spikes = sum(tot[(k, "spikes")].sum() for k in rates)
    neurons = sum(tot[(k, "neurons")].sum() for k in rates)
    ran = [name for name, _ in c.synaptic if (name, "dense") in tot]
    sops = {k: (tot[(k, "sops")] / n).tolist() for k in ran if c.kind[k] == "ac"}
    snn_macs = {k: (tot[(k, "dense")] / n).tolist() for k in ran if c.kind[k] == "mac"}
    # one ANN pass: a layer's dense MACs for all images at the timestep it runs, per image
    ann_macs = {k: int(round(tot[(k, "dense")].max() / n)) for k in ran}
    totals = {"sops_per_image": float(sum(map(sum, sops.values()))),
              "snn_macs_per_image": float(sum(map(sum, snn_macs.values()))),
              "ann_macs_per_image": int(sum(ann_macs.values()))}
    snn_pj = energy.e_ac_pj * totals["sops_per_image"] + energy.e_mac_pj * totals["snn_macs_per_image"]
    ann_pj = energy.e_mac_pj * totals["ann_macs_per_image"]
    return {
        "T": int(T), "n_images": int(n),
        "firing_rate": rates,
        "overall_rate": float(spikes / neurons) if neurons else 0.0,
        "sops_per_image": sops,
        "snn_macs_per_image": snn_macs,
        "macs_per_image": ann_macs,
        "totals": totals,
        "nonbinary_inputs": [k for k in sops if k in c.nonbinary],
        "energy": {"constants": energy.to_dict(), "snn_pj_per_image": float(snn_pj), "ann_pj_per_image": float(ann_pj),
                   "ratio": float(snn_pj / ann_pj) if ann_pj > 0 else None},
    }


def summarize(result: dict[str, Any]) -> str:
    """Three lines: overall firing rate, operations per image, energy per image and the SNN / ANN ratio."""
    t, e = result["totals"], result["energy"]
    ratio = e["ratio"]
    versus = "n/a" if ratio is None else f"{ratio:.3g}" + (f" ({1 / ratio:.2f}x less)" if 0 < ratio < 1 else "")
    return (f"overall firing rate {result['overall_rate']:.4g} over {len(result['firing_rate'])} spiking layers, "
            f"T = {result['T']}, {result['n_images']} images\n"
            f"per image: {t['sops_per_image']:.4g} SOPs + {t['snn_macs_per_image']:.4g} MACs (SNN, all T) vs "
            f"{t['ann_macs_per_image']:.4g} MACs (ANN)\n"
            f"energy per image: SNN {e['snn_pj_per_image'] / 1e6:.4g} uJ, ANN {e['ann_pj_per_image'] / 1e6:.4g} uJ, "
            f"SNN / ANN = {versus}")


def stats_figure(result: dict[str, Any]) -> Figure:
    """Left: firing rate of each spiking layer at each timestep (heatmap). Right: the SNN's operations per image
    at each timestep (SOPs, stacked on the MACs of the layers before the first spiking layer) against one ANN
    pass's MACs."""
    T = result["T"]
    ts = np.arange(1, T + 1)
    layers = list(result["firing_rate"])
    fig = Figure(figsize=(11, max(3.6, 0.22 * len(layers) + 1.5)))
    ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.1, 1]})
    rates = np.array([result["firing_rate"][k] for k in layers]).reshape(len(layers), T)
    im = ax1.imshow(rates, aspect="auto", cmap="viridis", extent=(0.5, T + 0.5, len(layers) - 0.5, -0.5))
    ax1.set_yticks(range(len(layers)), layers, fontsize=7)
    ax1.set_xticks(ts)
    ax1.set_xlabel("timestep t")
    ax1.set_title(f"firing rate (overall {result['overall_rate']:.3f})", fontsize=10)
    fig.colorbar(im, ax=ax1, fraction=0.05, pad=0.02)
    sops = np.sum([v for v in result["sops_per_image"].values()], axis=0) if result["sops_per_image"] else np.zeros(T)
    macs = (np.sum([v for v in result["snn_macs_per_image"].values()], axis=0)
            if result["snn_macs_per_image"] else np.zeros(T))
    ax2.bar(ts, macs, color="C1", label="SNN MACs (before the first spiking layer)")
    ax2.bar(ts, sops, bottom=macs, color="C0", label="SOPs (accumulates)")
    ax2.axhline(result["totals"]["ann_macs_per_image"], color="k", ls="--", lw=1, label="ANN MACs (one pass)")
    ax2.set_xticks(ts)
    ax2.set_xlabel("timestep t")
    ax2.set_ylabel("operations per image")
    e = result["energy"]
    ratio = "" if e["ratio"] is None else f", energy SNN / ANN = {e['ratio']:.3g}"
    ax2.set_title(f"operations per timestep{ratio}", fontsize=10)
    ax2.legend(frameon=False, fontsize=7)
    ax2.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig
