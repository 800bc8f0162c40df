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

For binary {0, 1} inputs this is exactly input spikes x fan-out, and the same number as SpikingJelly's
`SynOpCounter` (op_counter, 2.0.0). Biases are not counted. Dense MACs of a layer = output elements x
(in_channels / groups x kernel volume), or rows x in x out for Linear (the usual definition, padding included).

Non-binary inputs (average-pooled spikes, say), two conventions, `nonbinary=`:
* "sops" (default): one accumulate per non-zero input and fan-out, as for spikes; the layer is listed in
  `nonbinary_inputs`. A lower bound: a graded input needs a multiply at each synapse, not an add.
* "macs": as SpikingJelly's `SynOpCounter` + `MACCounter` and syops count them: a call of the layer whose input
  is not all {0, 1} costs its dense MACs (every synapse, zeros included) and no SOPs; a call whose input happens
  to be binary (all zero, say) still counts SOPs. Those MACs go into `snn_macs_per_image` and the energy at e_mac.

MAC layers are counted as they run: under the built-in direct encoding the stem runs once per image and its
output is repeated over T, so its MACs are counted once (at t = 1), not T times; with per-timestep inputs
[T, B, ...] it runs, and is counted, at every timestep.

Activation layouts understood (per call of a hooked module, B the batch size, T from the model's output):
timesteps folded into the batch [T*B, ...] (the built-in models), multi-step [T, B, ...], or one call per
timestep [B, ...] (step-mode models, T calls per forward); a module called once on [B, ...] (the stem)
counts at the first timestep.

`OperationCounter` is the hook engine itself. With `per_sample=True` it also keeps, per image and timestep, the SOPs
of the spike-driven layers and the MACs of the layers before them (two float64 numbers per image and timestep):
what an image that stops after t timesteps has cost (`spiketide.early_exit`). Telling images apart needs a
layout whose rows are images: folded, one call per timestep, [B, ...], or multi-step [T, B, features...].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import Tensor, nn

from spiketide import evaluation, progress as progress_bar
from spiketide.adapters import is_library_neuron
from spiketide.checks import whole
from spiketide.errors import ConfigError, ModelOutputError
from spiketide.neuron import LIF

__all__ = ["EnergyModel", "OperationCounter", "spike_stats", "stats_figure", "summarize", "NONBINARY"]

SpikingSpec = Callable[[str, nn.Module], bool] | Iterable[str | type] | None
_SYNAPTIC = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
NONBINARY = ("sops", "macs")  # how spike-driven layers with non-binary inputs count (module doc)


def _check_nonbinary(nonbinary: Any) -> str:
    if nonbinary not in NONBINARY:
        raise ConfigError(f"nonbinary must be 'sops' (events x fan-out, spiketide's default) or 'macs' (dense MACs, "
                          f"as SpikingJelly's op counters and syops), got {nonbinary!r}")
    return nonbinary


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


def _neuron(m: nn.Module) -> bool:
    return isinstance(m, LIF) or is_library_neuron(m)


def _spiking_predicate(spec: SpikingSpec, model: nn.Module) -> Callable[[str, nn.Module], bool]:
    """LIF modules and other libraries' neurons (`adapters.is_library_neuron`) always; plus what the caller
    names: a predicate (name, module) -> bool, or module names/types."""
    if spec is None:
        return lambda name, m: _neuron(m)
    if callable(spec) and not isinstance(spec, type):
        return lambda name, m: _neuron(m) or bool(spec(name, m))
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
    return lambda name, m: _neuron(m) or name in names or (bool(types) and isinstance(m, types))


def _first_tensor(out: Any, name: str) -> Tensor:
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        out = out[0]  # neurons that return (spikes, membrane) and the like
    if not isinstance(out, Tensor):
        raise ConfigError(f"spiking module {name!r} returned {type(out).__name__}, not a tensor of spikes")
    return out


def _rows(x: Tensor) -> Tensor:
    """x as [L, rest]: L leading rows (time and/or batch), the rest flattened."""
    return x.reshape(x.shape[0], -1) if x.dim() > 1 else x.reshape(1, -1)


def _cells(x: Tensor, split: bool) -> Tensor:
    """x as [L, M, rest]: M = x.shape[1] when `split` (a possible multi-step [T, B, ...] batch axis), else 1."""
    return x.reshape(x.shape[0], x.shape[1], -1) if split else _rows(x).unsqueeze(1)


class _Call(NamedTuple):
    """One call of a hooked module, already reduced: `values[L, M]` per leading row and, where the second axis could
    be the batch of a multi-step [T, B, features...] layout, per entry of that axis (M = B; else M = 1); on the
    device. `multi`: whether the second axis could be the batch at all."""

    values: Tensor
    multi: bool


def _by_sample(calls: list[_Call], T: int, B: int, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Sum a forward pass's calls by layout (module doc): totals over the batch per timestep (float64 [T]), and the
    same per image ([T, B]), or None where a call's rows are timesteps with no batch axis to tell images apart."""
    per_sample = np.zeros((T, B))
    unattributed = np.zeros(T)
    stepwise = T > 1 and len(calls) == T and all(c.values.shape[0] == B for c in calls)
    for i, c in enumerate(calls):
        v = c.values.detach().cpu().double().numpy()
        L = v.shape[0]
        rows = v.sum(1)
        if stepwise:  # one call per timestep
            per_sample[i] += rows
        elif L == T * B:  # folded [T*B, ...], t-major as `reshape(T*B, ...)` makes it
            per_sample += rows.reshape(T, B)
        elif L == T and (c.multi or L != B):  # multi-step [T, B, ...]
            if v.shape[1] == B:
                per_sample += v
            elif B == 1:
                per_sample[:, 0] += rows
            else:
                unattributed += rows
        elif L == B:  # run once per image, its output shared by all timesteps (direct encoding)
            per_sample[0] += rows
        else:
            raise ConfigError(f"cannot tell the timesteps of module {name!r}: a call with {L} leading rows, for "
                              f"T = {T} and batch size {B}; expected [T*B, ...], [T, B, ...] or [B, ...]")
    totals = per_sample.sum(1) + unattributed
    return totals, (per_sample if not unattributed.any() else None)


class OperationCounter:
    """The forward hooks of `spike_stats` (module doc), for use around your own forward passes::

        with OperationCounter(model, per_sample=True) as ops:
            for x in batches:
                ops.start(len(x)); out = model(x); ops.finish(out.shape[0])
        sops, macs = ops.sample_operations()  # [T, n] each

    Within a forward pass each hooked call leaves one `_Call` (at most T*B numbers); `finish` sums them per
    timestep into float64 totals (and, with `per_sample`, per image and timestep) and drops them."""

    def __init__(self, model: nn.Module, spiking_modules: SpikingSpec = None, *, per_sample: bool = False,
                 nonbinary: str = "sops"):
        self.nonbinary_as = _check_nonbinary(nonbinary)
        is_spiking = _spiking_predicate(spiking_modules, model)
        self.spiking = [(n, m) for n, m in model.named_modules() if is_spiking(n, m)]
        spiking_ids = {id(m) for _, m in self.spiking}
        self.synaptic = [(n, m) for n, m in model.named_modules()
                         if isinstance(m, _SYNAPTIC) and id(m) not in spiking_ids]
        self.per_sample = per_sample
        self.batch = 0
        self.spiked = False  # has a spiking layer run yet (decides which layers are spike-driven, at first call)
        self.kind: dict[str, str] = {}  # "ac" (spike-driven) or "mac"
        self.pending: dict[tuple[str, str], list[_Call]] = {}
        self.binary: dict[str, list[Tensor]] = {}
        self.totals: dict[tuple[str, str], np.ndarray] = {}
        self.nonbinary: set[str] = set()
        self.samples: dict[str, list[np.ndarray]] = {"sops": [], "macs": []}
        self.handles: list[Any] = []

    def __enter__(self) -> OperationCounter:
        self.handles += [m.register_forward_hook(self._spike_hook(n)) for n, m in self.spiking]
        self.handles += [m.register_forward_hook(self._synapse_hook(n)) for n, m in self.synaptic]
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self.pending.clear()
        self.binary.clear()

    def _split(self, x: Tensor) -> bool:
        # only with feature axes behind it: splitting a 2-D [rows, features] tensor would keep it whole
        return x.dim() >= 3 and x.shape[1] == self.batch

    def _add(self, key: tuple[str, str], values: Tensor, x: Tensor) -> None:
        multi = x.dim() >= 2 and x.shape[1] == self.batch
        self.pending.setdefault(key, []).append(_Call(values, multi))

    def _spike_hook(self, name: str):
        def hook(mod: nn.Module, args: tuple, out: Any) -> None:
            y = _first_tensor(out, name)
            cells = _cells(y, self._split(y))
            # float64 keeps counts exact for any layer size (MPS has no float64: float32 there)
            acc = torch.float32 if y.device.type == "mps" else torch.float64
            self._add((name, "spikes"), cells.to(acc).sum(2), y)
            self._add((name, "neurons"), torch.full(cells.shape[:2], float(cells.shape[2])), y)
            self.spiked = True

        return hook

    def _synapse_hook(self, name: str):
        def hook(mod: nn.Module, args: tuple, out: Tensor) -> None:
            x = args[0]
            if not isinstance(mod, nn.Linear) and x.dim() == len(mod.kernel_size) + 3 and out.dim() == x.dim():
                # a multi-step conv ([T, B, C, ...] in and out, e.g. SpikingJelly's step_mode="m"): as [T*B, C, ...]
                x, out = x.flatten(0, 1), out.flatten(0, 1)
            if not isinstance(mod, nn.Linear) and x.dim() != len(mod.kernel_size) + 2:
                raise ConfigError(f"layer {name!r} got an unbatched input {tuple(x.shape)}; spike_stats needs batched "
                                  "inputs [N, C, ...]")
            kind = self.kind.setdefault(name, "ac" if self.spiked else "mac")
            # a conv's second axis is channels, never the batch
            shape = _cells(x, isinstance(mod, nn.Linear) and self._split(x)).shape
            if isinstance(mod, nn.Linear):
                dense_per_cell = shape[2] * mod.out_features
            else:
                dense_per_cell = out.numel() // shape[0] * (mod.in_channels // mod.groups) * math.prod(mod.kernel_size)
            self._add((name, "dense"), torch.full(shape[:2], float(dense_per_cell)), x)
            if kind == "ac":
                sops = _events_times_fanout(mod, x, self._split(x))
                binary = ((x == 0) | (x == 1)).all()  # stays on the device: no synchronisation per call
                self.binary.setdefault(name, []).append(binary)
                if self.nonbinary_as == "macs":  # per call, as SpikingJelly's counters decide per operation
                    dense = torch.full_like(sops, float(dense_per_cell))
                    self._add((name, "nonbinary_macs"), torch.where(binary, torch.zeros_like(dense), dense), x)
                    sops = torch.where(binary, sops, torch.zeros_like(sops))
                self._add((name, "sops"), sops, x)

        return hook

    def start(self, batch: int) -> None:
        """Before a forward pass of `batch` images."""
        self.batch = batch
        self.pending.clear()
        self.binary.clear()

    def finish(self, T: int) -> None:
        """After the forward pass (the model returned T timesteps): fold its calls into the totals and drop them."""
        costs = {"sops": np.zeros((T, self.batch)), "macs": np.zeros((T, self.batch))}
        for key, calls in self.pending.items():
            per_t, per_sample = _by_sample(calls, T, self.batch, key[0])
            self.totals[key] = self.totals[key] + per_t if key in self.totals else per_t
            name, what = key
            mac = what == "nonbinary_macs" or (what == "dense" and self.kind[name] == "mac")
            cost = "sops" if what == "sops" else "macs" if mac else None
            if self.per_sample and cost:
                if per_sample is None:
                    raise ConfigError(f"cannot tell the images of layer {name!r} apart: its input has the "
                                      f"timesteps first but no batch axis after them; per-image counts need "
                                      "[T*B, ...], [B, ...] or [T, B, features...]")
                costs[cost] += per_sample
        if self.per_sample:
            for k, v in costs.items():
                self.samples[k].append(v)
        self.nonbinary.update(name for name, flags in self.binary.items() if not all(bool(f) for f in flags))
        self.pending.clear()
        self.binary.clear()

    def sample_operations(self) -> tuple[np.ndarray, np.ndarray]:
        """(SOPs, MACs), float64 [T, n] each, images in the order they ran: per image and timestep, the accumulates
        of the spike-driven layers and the MACs of the layers that run before the first spiking layer (and, with
        nonbinary="macs", of spike-driven layers' calls on non-binary inputs)."""
        if not self.per_sample:
            raise ConfigError("OperationCounter(per_sample=True) keeps per-image counts; this one did not")
        if not self.samples["sops"]:
            return np.zeros((0, 0)), np.zeros((0, 0))
        return tuple(np.concatenate(self.samples[k], axis=1) for k in ("sops", "macs"))


def _events_times_fanout(mod: nn.Module, x: Tensor, split: bool = False) -> Tensor:
    """Per leading row of x (and per entry of its second axis, with `split` and a Linear layer: [L, M]; else
    [L, 1]): the sum over its non-zero elements of their fan-out in `mod` (SOPs, module doc)."""
    nz = x != 0
    if isinstance(mod, nn.Linear):
        return _cells(nz, split).sum(2) * mod.out_features
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
    return _rows(hits).to(acc).sum(1, keepdim=True) * (mod.out_channels // mod.groups)


def spike_stats(model: nn.Module, images: Any, labels: Any = None, *, batch_size: int = 64, progress: bool = False,
                energy: EnergyModel = EnergyModel(), spiking_modules: SpikingSpec = None,
                nonbinary: str = "sops") -> dict[str, Any]:
    """Firing rates, synaptic operations, MACs and an energy estimate of `model` on `images` (module doc).

    The model runs in eval mode (each submodule's own mode restored after) under `torch.no_grad()`. Spiking
    layers are every `spiketide.neuron.LIF`, every SpikingJelly / snnTorch / Norse neuron layer
    (`adapters.is_library_neuron`) and what `spiking_modules` names: a predicate `(name, module) -> bool`, or
    module names and/or types (other neurons). `labels` are only checked.
    `nonbinary`: "sops" (default) or "macs", how spike-driven layers fed non-binary inputs count (module doc).

    Returns a JSON-ready dict:
      T, n_images;
      firing_rate {layer: [r_1..r_T]}: mean output of the spiking layer over images and neurons at each t;
      overall_rate: all spikes / all neuron-timesteps, over every spiking layer;
      sops_per_image {layer: [..T]}: accumulates of each spike-driven Conv/Linear layer at t, per image;
      snn_macs_per_image {layer: [..T]}: MACs of each layer that runs before any spiking layer, as executed (and
              with nonbinary="macs", the dense MACs of spike-driven layers' calls on non-binary inputs);
      macs_per_image {layer: int}: dense MACs of every Conv/Linear layer for one image at one timestep (the ANN);
      totals: sops / snn_macs / ann_macs per image (SNN summed over T, ANN one pass);
      nonbinary_inputs: spike-driven layers whose input was not all {0, 1}; nonbinary: how they were counted;
      energy: constants, snn_pj_per_image = e_ac x SOPs + e_mac x SNN MACs (over T), ann_pj_per_image =
              e_mac x ANN MACs, ratio = snn / ann (below 1: the SNN needs less energy).
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch nn.Module, got {type(model).__name__}")
    if not isinstance(energy, EnergyModel):
        raise ConfigError(f"energy must be an EnergyModel(e_ac_pj=..., e_mac_pj=...), got {type(energy).__name__}")
    batch_size = whole("batch_size", batch_size, 1)
    nonbinary = _check_nonbinary(nonbinary)
    if labels is None:
        labels = torch.zeros(len(images) if hasattr(images, "__len__") else 0, dtype=torch.long)
    images, labels = evaluation.check_images(images, labels)
    counter = OperationCounter(model, spiking_modules, nonbinary=nonbinary)
    if not counter.spiking:
        raise ConfigError("the model has no spiking layers: no spiketide.neuron.LIF module and no SpikingJelly, "
                          "snnTorch or Norse neuron; name its spiking modules with spiking_modules=")
    T = None
    with (progress_bar.bar(math.ceil(len(images) / batch_size), "spike stats", enabled=progress) as bar,
          evaluation.eval_mode(model), torch.no_grad(), counter):
        for xb, yb in evaluation.pixel_batches(images, labels, batch_size, evaluation.model_device(model)):
            counter.start(xb.shape[0])
            out = evaluation.logits(model, xb)
            if T is not None and out.shape[0] != T:
                raise ModelOutputError(f"model returned {out.shape[0]} timesteps, earlier batches had {T}")
            T = out.shape[0]
            del out
            counter.finish(T)
            bar.update(1)
    return _result(counter, T, len(images), energy)


def _result(c: OperationCounter, T: int, n: int, energy: EnergyModel) -> dict[str, Any]:
    tot = c.totals
    rates = {name: (tot[(name, "spikes")] / tot[(name, "neurons")]).tolist()
             for name, _ in c.spiking if (name, "spikes") in tot}
    spikes = sum(tot[(k, "spikes")].sum() for k in rates)
    neurons = sum(tot[(k, "neurons")].sum() for k in rates)
    ran = [name for name, _ in c.synaptic if (name, "dense") in tot]
    graded = {k: tot[(k, "nonbinary_macs")] for k in ran
              if (k, "nonbinary_macs") in tot and tot[(k, "nonbinary_macs")].any()}
    # with nonbinary="macs", a layer fed only non-binary inputs has no SOPs left: listed with the MAC layers only
    sops = {k: (tot[(k, "sops")] / n).tolist() for k in ran if c.kind[k] == "ac" and not (k in graded and
                                                                                        not tot[(k, "sops")].any())}
    snn_macs = {k: ((tot[(k, "dense")] if c.kind[k] == "mac" else graded[k]) / n).tolist() for k in ran
                if c.kind[k] == "mac" or k in graded}
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
        "nonbinary_inputs": [k for k in ran if c.kind[k] == "ac" and k in c.nonbinary],
        "nonbinary": c.nonbinary_as,
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
    ax1.set_title(f"firing rate (overall {result['overall_rate']:.3f})", fontsize=10)
    fig.colorbar(im, ax=ax1, fraction=0.05, pad=0.02)
    sops, macs = (np.sum(list(result[k].values()), axis=0) if result[k] else np.zeros(T)
                  for k in ("sops_per_image", "snn_macs_per_image"))
    graded = " and non-binary inputs" if result.get("nonbinary") == "macs" and result["nonbinary_inputs"] else ""
    ax2.bar(ts, macs, color="C1", label=f"SNN MACs (before the first spiking layer{graded})")
    ax2.bar(ts, sops, bottom=macs, color="C0", label="SOPs (accumulates)")
    ax2.axhline(result["totals"]["ann_macs_per_image"], color="k", ls="--", lw=1, label="ANN MACs (one pass)")
    for ax in (ax1, ax2):
        ax.set_xticks(ts)
        ax.set_xlabel("timestep t")
    ax2.set_ylabel("operations per image")
    e = result["energy"]
    ratio = "" if e["ratio"] is None else f", energy SNN / ANN = {e['ratio']:.3g}"
    ax2.set_title(f"operations per timestep{ratio}", fontsize=10)
    ax2.legend(frameon=False, fontsize=7)
    ax2.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig
