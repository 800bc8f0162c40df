"""NIR export and import: spiketide's models to and from the Neuromorphic Intermediate Representation.

`to_nir(model)` writes any built-in model (`models.create`) as a `nir.NIRGraph`; `from_nir(graph)` builds a
trainable, stateless spiketide model from a NIR graph of the node types listed in `SUPPORTED`, so temporal
Fisher information (Eq. 6) can be measured on a model from any NIR-speaking framework.

How the graph maps to Eq. 1. NIR's LIF is continuous: tau dv/dt = (v_leak - v) + r I, spike when v reaches
v_threshold, then v = v_reset. One forward-Euler step of length dt gives
    v_t = (1 - dt/tau_nir) v_{t-1} + (dt/tau_nir) (r I_t + v_leak),
which is Eq. 1, U_t = (1 - 1/tau) U_{t-1} + X_t / tau, exactly when tau_nir = tau * dt, r = 1 and v_leak = 0;
threshold 1 and a hard reset to v_reset = 0 complete it. The dt used is recorded in the graph's metadata
(`metadata["dt"]`, seconds; default 1e-4, SpikingJelly's and most importers' default). spiketide spikes when
U >= threshold; some frameworks spike only when U > threshold (equal only exactly at the threshold).

Layout of an exported graph, per timestep (the graph is evaluated once per step, T = `metadata["timesteps"]`):
input pixels [C, H, W] in [0, 1] -> `input_norm`, a 1x1 conv computing (x - mean) / std (folding it into the
zero-padded 3x3 stem would be wrong at the image border) -> each conv with its BatchNorm folded in (running
statistics) -> `nir.LIF` -> average pooling -> ... -> `Flatten` -> one `nir.Affine` per head layer, with an
adaptive average pool (and a hidden FC layer's BatchNorm1d) folded into its weights -> output: the logits of
that timestep. The model's prediction is the mean of the T per-step logits (the paper's readout); spiketide's
logits [T, B, C] are exactly these per-step outputs. A ceil-mode 2x2 average pool on an odd-sized map (28x28
inputs: 7 -> 4) has a partial last window that no NIR pooling node expresses; it is written as a depthwise 3x3
stride-2 conv (padding 1, channel-diagonal) followed by a `nir.Scale` that restores the divisor of the border windows.

NIR carries inference only: no surrogate gradient (spiketide's is the arctan, Eq. 2), no detached reset, no
training state. `from_nir` gives its neurons spiketide's arctan surrogate and detached reset again.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from spiketide import __version__
from spiketide.config import NIR_DT, NIR_POOLINGS
from spiketide.errors import ConfigError
from spiketide.models.alexnet import AlexNet
from spiketide.models.base import SpikingModel, fold
from spiketide.models.convnet import ConvNet
from spiketide.models.resnet import ResNet19, ResNet34, SpikingResNet
from spiketide.models.vgg import VGG16
from spiketide.neuron import LIF, check_tau, lif_scan

__all__ = ["to_nir", "from_nir", "write", "read", "NIRModel", "SUPPORTED", "POOLINGS", "DEFAULT_DT"]

#: Seconds per timestep written into exported graphs (SpikingJelly's `import_from_nir` default), and how `to_nir`
#: writes a 2x2 average pool: AvgPool2d, or SumPool2d with the 1/4 folded into the next conv.
DEFAULT_DT, POOLINGS = NIR_DT, NIR_POOLINGS

#: NIR node types `from_nir` builds; any other type is refused.
SUPPORTED = ("Input", "Output", "Affine", "Linear", "Conv2d", "AvgPool2d", "SumPool2d", "Flatten", "Scale", "LIF")

_NAMES = {ConvNet: "convnet", ResNet19: "resnet19", ResNet34: "resnet34", VGG16: "vgg16", AlexNet: "alexnet"}

READOUT = ("per-step logits: the graph's output at step t is o_t; the prediction is the mean of o_1..o_T "
           "(spiketide's logits [T, B, C] are these o_t)")


def _nir():
    try:
        import nir
    except ImportError:
        raise ConfigError("NIR export/import needs the nir package: pip install nir==1.0.8 (it brings h5py)") from None
    return nir


# --- export ---------------------------------------------------------------------------------------------------

class _Export:
    """Collects nodes and edges; conv and linear weights in `dtype`, neuron parameters in float64."""

    def __init__(self, dtype: np.dtype, dt: float, pooling: str):
        self.nir, self.dtype, self.dt, self.pooling = _nir(), dtype, dt, pooling
        self.nodes: dict = {}
        self.edges: list[tuple[str, str]] = []
        self.divide: dict[str, float] = {}  # sum pool -> the 1/4 its next conv takes over

    def add(self, name: str, node, *sources: str) -> str:
        self.nodes[name] = node
        self.edges += [(s, name) for s in sources]
        return name

    def arr(self, t: torch.Tensor) -> np.ndarray:
        return t.detach().cpu().to(torch.float64).numpy().astype(self.dtype)

    def conv(self, name: str, conv: nn.Conv2d, bn: nn.BatchNorm2d | None, shape: tuple, src: str) -> tuple[str, tuple]:
        """A conv with its BatchNorm folded in (`_folded`)."""
        w, b = _folded(conv, bn)
        w = w * self.divide.pop(src, 1.0)  # 1/4, exact: conv(sum / 4) and (conv / 4)(sum) round alike
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ConfigError(f"{name}: only zero padding given as numbers can be exported, got "
                              f"{conv.padding_mode} / {conv.padding!r}")
        node = self.nir.Conv2d(input_shape=tuple(shape[1:]), weight=self.arr(w), stride=tuple(conv.stride),
                               padding=tuple(conv.padding), dilation=tuple(conv.dilation), groups=conv.groups,
                               bias=self.arr(b))
        return self.add(name, node, src), (w.shape[0], *(int(v) for v in node.output_type["output"][1:]))

    def lif(self, name: str, lif: LIF, shape: tuple, *srcs: str) -> str:
        full = lambda v: np.full(shape, v, dtype=np.float64)  # noqa: E731 - float64: tau*dt/dt must give tau back
        return self.add(name, self.nir.LIF(tau=full(lif.tau * self.dt), r=full(1.0), v_leak=full(0.0),
                                           v_threshold=full(lif.v_threshold), v_reset=full(0.0)), *srcs)

    def pool(self, name: str, pool: nn.AvgPool2d, shape: tuple, src: str) -> tuple[str, tuple]:
        c, h, w = shape
        if (_pair(pool.kernel_size), _pair(pool.stride), _pair(pool.padding)) != ((2, 2), (2, 2), (0, 0)):
            raise ConfigError(f"{name}: only the built-in models' 2x2 average pools can be exported")
        if not pool.ceil_mode or (h % 2 == 0 and w % 2 == 0):
            kind = self.nir.SumPool2d if self.pooling == "sum" else self.nir.AvgPool2d
            if self.pooling == "sum":
                self.divide[name] = 0.25
            node = kind(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0]))
            return self.add(name, node, src), (c, h // 2, w // 2)
        # ceil mode on an odd side: window i covers 2i, 2i+1 (the last one only 2i), divided by what it covers.
        # A 3x3 stride-2 conv with padding 1 and taps [0, 1/2, 1/2] per side covers the same windows (the missing
        # row reads the zero padding); the Scale multiplies the border windows back to their own divisor.
        # Channel-diagonal rather than depthwise (groups = C): NIR's type inference ignores groups.
        k1 = torch.tensor([0.0, 0.5, 0.5], dtype=torch.float64)
        weight = torch.eye(c, dtype=torch.float64)[:, :, None, None] * (k1[:, None] * k1[None, :])
        conv = self.nir.Conv2d(input_shape=(h, w), weight=self.arr(weight), stride=(2, 2), padding=(1, 1),
                               dilation=(1, 1), groups=1, bias=np.zeros(c, dtype=self.dtype),
                               metadata={"spiketide": "ceil-mode average pool"})
        oh, ow = (h + 1) // 2, (w + 1) // 2
        fix = lambda n, o: np.where(np.arange(o) == n // 2, 2.0, 1.0) if n % 2 else np.ones(o)  # noqa: E731
        scale = np.broadcast_to(fix(h, oh)[:, None] * fix(w, ow)[None, :], (c, oh, ow)).astype(self.dtype)
        self.add(name, conv, src)
        return self.add(f"{name}_border", self.nir.Scale(scale=scale.copy(), metadata={
            "spiketide": "ceil-mode average pool: divisor of the partial border windows"}), name), (c, oh, ow)

    def head(self, name: str, pools: list[nn.Module], fc: nn.Linear, bn: nn.BatchNorm1d | None, shape: tuple,
             src: str) -> tuple[str, tuple]:
        """(Flatten +) one Affine computing fc(pools(x).flatten()) (and BatchNorm1d after fc, if given)."""
        w, b = _folded(fc, bn)
        if pools:  # the same pooling matrix Q [h*w, H*W] for every channel: W' = W [O, C, h*w] @ Q
            c, h, wd = shape
            q = torch.eye(h * wd, dtype=torch.float64).view(h * wd, 1, h, wd)
            for pool in pools:
                q = pool(q)
            q = q.flatten(1).T  # [h'*w', H*W]
            w = (w.view(w.shape[0], c, q.shape[0]) @ q).reshape(w.shape[0], c * h * wd)
        if len(shape) > 1:
            src = self.add(f"{name}_flatten", self.nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0,
                                                               end_dim=-1), src)
        return self.add(name, self.nir.Affine(weight=self.arr(w), bias=self.arr(b)), src), (w.shape[0],)


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _folded(mod: nn.Module, bn: nn.modules.batchnorm._BatchNorm | None) -> tuple[torch.Tensor, torch.Tensor]:
    """`mod`'s weight in force and bias, float64, with the BatchNorm `bn` after it (if any) folded in (running
    statistics): w' = w g/s, b' = beta + (b - mu) g/s. A pruned module's `weight` (torch.nn.utils.prune) is only
    recomputed by its next forward, so after loading a checkpoint it is stale: weight_orig * weight_mask is in force."""
    pruned = hasattr(mod, "weight_orig") and hasattr(mod, "weight_mask")
    w = (mod.weight_orig * mod.weight_mask if pruned else mod.weight).detach().to(torch.float64)
    b = mod.bias.detach().to(torch.float64) if mod.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype)
    if bn is None:
        return w, b
    if bn.running_mean is None or bn.running_var is None:
        raise ConfigError("a BatchNorm without running statistics (track_running_stats=False) cannot be folded")
    g = 1.0 / torch.sqrt(bn.running_var.detach().to(torch.float64) + bn.eps)
    if bn.weight is not None:
        g = g * bn.weight.detach().to(torch.float64)
    beta = bn.bias.detach().to(torch.float64) if bn.bias is not None else torch.zeros_like(g)
    return w * g.view(-1, *[1] * (w.dim() - 1)), beta + (b - bn.running_mean.detach().to(torch.float64)) * g


def _export_convnet(m: ConvNet, g: _Export, x: str, shape: tuple) -> tuple[str, tuple]:
    for k, name in enumerate(("stem", "block1", "block2")):
        x, shape = g.conv(name, *getattr(m, name)[:2], shape, x)
        x = g.lif(f"lif{k}", getattr(m, f"lif{k}"), shape, x)
        if k < 2:
            x, shape = g.pool(f"pool{k}", m.pool, shape, x)
    return g.head("fc", [m.head_pool], m.fc, None, shape, x)


def _export_resnet(m: SpikingResNet, g: _Export, x: str, shape: tuple) -> tuple[str, tuple]:
    x, shape = g.conv("stem", m.stem[0], m.stem[1], shape, x)
    x = g.lif("lif_in", m.lif_in, shape, x)
    for s in range(1, m.num_stages + 1):
        for i, blk in enumerate(getattr(m, f"layer{s}")):
            p = f"layer{s}_{i}_"
            y, yshape = g.conv(p + "conv1", blk.conv1, blk.bn1, shape, x)
            y = g.lif(p + "lif1", blk.lif1, yshape, y)
            y, yshape = g.conv(p + "conv2", blk.conv2, blk.bn2, yshape, y)
            # the residual sum: NIR adds every edge that enters a node
            short = g.conv(p + "shortcut", blk.shortcut[0], blk.shortcut[1], shape, x)[0] \
                if isinstance(blk.shortcut, nn.Sequential) else x
            x, shape = g.lif(p + "lif2", blk.lif2, yshape, y, short), yshape
    return g.head("fc", [m.pool], m.fc, None, shape, x)


def _export_vgg(m: VGG16, g: _Export, x: str, shape: tuple) -> tuple[str, tuple]:
    for k in range(1, m.num_convs + 1):
        name = "stem" if k == 1 else f"conv{k}"
        x, shape = g.conv(name, *getattr(m, name)[:2], shape, x)
        x = g.lif(f"lif{k}", getattr(m, f"lif{k}"), shape, x)
        if m._pool_after[k - 1] and k < m.num_convs:
            x, shape = g.pool(f"pool{k}", m.pool, shape, x)
    return g.head("fc", [m.gap], m.fc, None, shape, x)


def _export_alexnet(m: AlexNet, g: _Export, x: str, shape: tuple) -> tuple[str, tuple]:
    for k, name in enumerate(("stem", "conv2", "conv3", "conv4", "conv5"), start=1):
        x, shape = g.conv(name, *getattr(m, name)[:2], shape, x)
        x = g.lif(f"lif{k}", getattr(m, f"lif{k}"), shape, x)
        if k in (1, 2):
            x, shape = g.pool(f"pool{k}", m.pool, shape, x)
    # the third pool is linear like the adaptive one after it: both fold into fc1 (no Scale node at 28x28)
    x, shape = g.head("fc1", [m.pool, m.gap], m.fc1[0], m.fc1[1], shape, x)
    x = g.lif("lif6", m.lif6, shape, x)
    x, shape = g.head("fc2", [], m.fc2[0], m.fc2[1], shape, x)
    x = g.lif("lif7", m.lif7, shape, x)
    return g.head("fc", [], m.fc, None, shape, x)


_EXPORTERS = ((ConvNet, _export_convnet), (SpikingResNet, _export_resnet), (VGG16, _export_vgg),
              (AlexNet, _export_alexnet))


def to_nir(model: SpikingModel, *, dt: float = DEFAULT_DT, dtype: torch.dtype | None = None, pooling: str = "avg"):
    """A built-in model as a `nir.NIRGraph` that maps pixels [C, H, W] to per-step logits (see the module doc).

    BatchNorm uses its running statistics (as in eval mode). `dt` (seconds per timestep) sets tau_nir = tau * dt
    and is recorded in `metadata`, with T, tau, the encoding and the readout. Weights are written in `dtype`
    (default: the model's parameter dtype); neuron parameters always in float64, so tau_nir / dt gives tau back.
    A Poisson-encoded model is exported without its random encoder: its graph's input is the 0/1 spikes.
    `pooling="sum"` writes each 2x2 average pool as a `SumPool2d` with its 1/4 folded into the conv after it
    (the same numbers, for importers without AvgPool2d, such as Norse's).
    """
    nir = _nir()
    exporter = next((f for cls, f in _EXPORTERS if isinstance(model, cls)), None)
    if exporter is None:
        raise ConfigError(f"to_nir exports spiketide's built-in models ({', '.join(sorted(_NAMES.values()))}); "
                          f"got {type(model).__name__}")
    dt = float(dt)
    if not math.isfinite(dt) or dt <= 0:
        raise ConfigError(f"dt must be a time step in seconds > 0, got {dt}")
    if pooling not in POOLINGS:
        raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    dtype = dtype or next(model.parameters()).dtype
    g = _Export(np.dtype(str(dtype).removeprefix("torch.")), dt, pooling)
    shape = (model.in_channels, model.image_size, model.image_size)
    x = g.add("input", nir.Input(input_type={"input": np.array(shape)}))
    if model.encoding == "direct":
        std, mean = (v.detach().to(torch.float64).flatten() for v in (model.std, model.mean))
        x = g.add("input_norm", nir.Conv2d(
            input_shape=shape[1:], weight=g.arr(torch.diag(1.0 / std).view(len(std), len(std), 1, 1)), stride=(1, 1),
            padding=(0, 0), dilation=(1, 1), groups=1, bias=g.arr(-mean / std),
            metadata={"spiketide": "input normalisation (x - mean) / std"}), x)
    with torch.no_grad():
        x, out_shape = exporter(model, g, x, shape)
    g.add("output", nir.Output(output_type={"output": np.array(out_shape)}), x)
    assert not g.divide, f"sum pools feeding no conv: {sorted(g.divide)}"  # every built-in pool feeds a conv
    taus = sorted({m.tau for m in model.modules() if isinstance(m, LIF)})
    metadata = {
        "source": f"spiketide {__version__}", "model": _NAMES.get(type(model), type(model).__name__),
        "dt": dt, "timesteps": int(model.timesteps), "tau": taus[0] if len(taus) == 1 else str(taus),
        "encoding": model.encoding, "pooling": pooling, "readout": READOUT,
        "input": ("pixels in [0, 1], the same image at every step (direct encoding)" if model.encoding == "direct"
                  else "0/1 spikes at every step (Poisson rate coding: Bernoulli(pixel) drawn by the caller)"),
        "neuron": "nir.LIF with tau = tau_spiketide * dt, r = 1, v_leak = 0, v_reset = 0: forward Euler at dt is "
                  "Eq. 1; spiketide spikes at U >= threshold",
    }
    return nir.NIRGraph(nodes=g.nodes, edges=g.edges, metadata=metadata)


def write(path: str | Path, graph) -> Path:
    """`nir.write` to a temporary file beside `path`, then renamed: never a half-written file at `path`."""
    nir, path = _nir(), Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        nir.write(tmp, graph)
        tmp.replace(path)
    except OSError as exc:
        raise ConfigError(f"cannot write {path} ({type(exc).__name__}: {exc.strerror or exc}); pass a file path in a "
                          "folder you can write") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read(path: str | Path):
    """`nir.read`, with a one-line error for a missing or unreadable file."""
    nir, path = _nir(), Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} does not exist; pass a .nir file written by nir.write or `spiketide export-nir`")
    try:
        return nir.read(path)
    except Exception as exc:  # h5py and nir raise many kinds; the file is the problem either way
        raise ConfigError(f"cannot read NIR graph {path} ({type(exc).__name__}: {str(exc)[:200]})") from None


# --- import ---------------------------------------------------------------------------------------------------

class _Lambda(nn.Module):
    def __init__(self, fn, text: str):
        super().__init__()
        self.fn, self.text = fn, text

    def forward(self, x):
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.text


class _Scale(nn.Module):
    def __init__(self, scale: torch.Tensor):
        super().__init__()
        self.register_buffer("scale", scale)

    def forward(self, x):
        return x * self.scale


class _NIRLIF(nn.Module):
    """NIR's LIF stepped at dt: Eq. 1 with tau = tau_nir / dt on the input r I + v_leak (module doc).

    Uniform parameters run spiketide's `LIF` (compiled scan, arctan surrogate); per-neuron ones the same Eq. 1
    step loop with tensors.
    """

    def __init__(self, tau: np.ndarray, r: np.ndarray, v_leak: np.ndarray, v_threshold: np.ndarray,
                 detach_reset: bool, fast: bool | None, dtype: torch.dtype):
        super().__init__()
        t = lambda a: torch.tensor(np.asarray(a, dtype=np.float64), dtype=dtype)  # noqa: E731
        self.r = None if np.all(r == 1) else nn.Buffer(t(r))
        self.v_leak = None if np.all(v_leak == 0) else nn.Buffer(t(v_leak))
        if np.unique(tau).size == 1 and np.unique(v_threshold).size == 1:
            self.lif = LIF(float(tau.flat[0]), float(v_threshold.flat[0]), detach_reset, fast)
            self.tau = self.v_threshold = None
        else:
            self.lif, self.detach_reset = None, detach_reset
            self.tau, self.v_threshold = nn.Buffer(t(tau)), nn.Buffer(t(v_threshold))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.r is not None:
            x = x * self.r
        if self.v_leak is not None:
            x = x + self.v_leak
        if self.lif is not None:
            return self.lif(x)
        return lif_scan(x, self.tau, self.v_threshold, self.detach_reset)


def _scalar_meta(metadata: Mapping, key: str):
    v = metadata.get(key) if isinstance(metadata, Mapping) else None
    if isinstance(v, (bytes, np.bytes_)):
        v = v.decode()
    if isinstance(v, np.ndarray) and v.size == 1:
        v = v.item()
    return v.item() if isinstance(v, np.generic) else v


def _name(raw: str, taken: set[str]) -> str:
    name = re.sub(r"\W", "_", raw) or "node"
    if name[0].isdigit():
        name = "n_" + name
    base, i = name, 1
    while name in taken or hasattr(nn.Module, name):
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


def _np(v) -> np.ndarray:
    return np.asarray(v, dtype=np.float64)


def _ints(v, n: int = 2) -> tuple[int, ...]:
    a = np.asarray(v).astype(int).flatten()
    return (int(a[0]),) * n if a.size == 1 else tuple(int(i) for i in a)


class NIRModel(nn.Module):
    """A NIR graph as a stateless spiketide model: inputs [B, ...] (the same input at every step) or
    [T, B, ...] -> per-step outputs [T, B, C], like the built-in models (module doc).

    Every Conv2d / Affine / Linear weight is a trainable parameter, except the input normalisation and pooling
    convs that `to_nir` marks in their metadata; neurons train through the arctan surrogate (Eq. 2) with the
    reset detached. Neuron state lives inside `forward` only. `block_names` lists the parameterised nodes in
    execution order (per-block Fisher information).
    """

    def __init__(self, graph, *, timesteps: int, dt: float, detach_reset: bool = True, fast_lif: bool | None = None,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        nir = _nir()
        self.timesteps, self.dt = int(timesteps), float(dt)
        for key, node in graph.nodes.items():
            if type(node).__name__ not in SUPPORTED:
                raise ConfigError(f"NIR node {key!r} is a {type(node).__name__}, which spiketide cannot build; "
                                  f"supported node types: {', '.join(SUPPORTED)}")
        inputs = [k for k, n in graph.nodes.items() if isinstance(n, nir.Input)]
        outputs = [k for k, n in graph.nodes.items() if isinstance(n, nir.Output)]
        if len(inputs) != 1 or len(outputs) != 1:
            raise ConfigError(f"spiketide builds NIR graphs with one Input and one Output node; this one has "
                              f"{len(inputs)} Input and {len(outputs)} Output nodes")
        self.order = _topological(graph)
        self.sources = {k: [a for a, b in graph.edges if b == k] for k in self.order}
        self.input_key, self.output_key = inputs[0], outputs[0]
        self.input_shape = tuple(int(v) for v in np.asarray(graph.nodes[inputs[0]].input_type["input"]).flatten())
        out_shape = graph.nodes[outputs[0]].output_type.get("output")
        self.num_classes = int(np.prod(out_shape)) if out_shape is not None else None
        taken: set[str] = set(dir(self))
        self.module_of: dict[str, str] = {}
        self.stateful: set[str] = set()
        blocks = []
        for key in self.order:
            node = graph.nodes[key]
            if isinstance(node, (nir.Input, nir.Output)):
                continue
            mod = self._build(key, node, detach_reset, fast_lif, dtype)
            name = _name(key, taken)
            self.add_module(name, mod)
            self.module_of[key] = name
            frozen = "spiketide" in (node.metadata or {})  # to_nir's normalisation and pooling convs
            mod.requires_grad_(not frozen)
            if isinstance(mod, _NIRLIF):
                self.stateful.add(key)
            elif any(p.requires_grad for p in mod.parameters()):
                blocks.append(name)
        self.block_names = tuple(blocks)
        self.metadata = dict(getattr(graph, "metadata", None) or {})

    def _build(self, key: str, node, detach_reset, fast_lif, dtype) -> nn.Module:
        kind = type(node).__name__
        t = lambda a: torch.tensor(_np(a), dtype=dtype)  # noqa: E731
        if kind in ("Affine", "Linear", "Conv2d"):
            w = _np(node.weight)
            if kind == "Conv2d":
                pad = node.padding if isinstance(node.padding, str) else _ints(node.padding)
                mod = nn.Conv2d(w.shape[1] * int(node.groups), w.shape[0], tuple(w.shape[2:]),
                                stride=_ints(node.stride), padding=pad, dilation=_ints(node.dilation),
                                groups=int(node.groups), dtype=dtype)
            elif w.ndim != 2:
                raise ConfigError(f"NIR {kind} {key!r} has a weight of shape {w.shape}; spiketide builds 2-D weights")
            else:
                mod = nn.Linear(w.shape[1], w.shape[0], bias=kind == "Affine", dtype=dtype)
            with torch.no_grad():
                mod.weight.copy_(t(w))
                if mod.bias is not None:
                    mod.bias.copy_(t(np.broadcast_to(_np(node.bias), (w.shape[0],))))
            return mod
        if kind in ("AvgPool2d", "SumPool2d"):
            k, s, p = _ints(node.kernel_size), _ints(node.stride), _ints(node.padding)
            pool = nn.AvgPool2d(k, s, p)  # count_include_pad: a sum pool is the average times the window
            if kind == "AvgPool2d":
                return pool
            return _Lambda(lambda x: pool(x) * (k[0] * k[1]), f"SumPool2d(kernel={k}, stride={s}, padding={p})")
        if kind == "Flatten":
            # NIR's dims leave out the batch: dim d of a sample is dim d + 1 of the folded batch
            a, b = (d + 1 if d >= 0 else d for d in (int(node.start_dim), int(node.end_dim)))
            return _Lambda(lambda x: x.flatten(a, b), f"Flatten(start_dim={node.start_dim}, end_dim={node.end_dim})")
        if kind == "Scale":
            return _Scale(t(node.scale))
        # LIF
        # 12 significant digits undo the rounding of tau * dt / dt (0.75e-4 / 1e-4 = 0.7499999999999999)
        tau = np.vectorize(lambda v: float(f"{v:.12g}"), otypes=[np.float64])(_np(node.tau) / self.dt)
        if not np.all(np.isfinite(tau)) or np.any(tau == 0):
            raise ConfigError(f"NIR LIF {key!r}: tau / dt must be finite and non-zero (Eq. 1 divides by it); "
                              f"got {np.unique(tau)[:4]} with dt = {self.dt}")
        if np.any(_np(node.v_reset) != 0):
            raise ConfigError(f"NIR LIF {key!r} resets to {np.unique(_np(node.v_reset))[:4]}; spiketide's LIF "
                              "(Eq. 1) resets to 0")
        for v in np.unique(tau):
            check_tau(float(v))
        shape = _np(node.v_threshold).shape
        return _NIRLIF(tau, np.broadcast_to(_np(node.r), shape), np.broadcast_to(_np(node.v_leak), shape),
                       _np(node.v_threshold), detach_reset, fast_lif, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = len(self.input_shape)
        if x.dim() == n + 1 and tuple(x.shape[1:]) == self.input_shape:
            static = True  # one input for every step: stateless nodes run once, as the built-in models' stem does
        elif x.dim() == n + 2 and x.shape[0] == self.timesteps and tuple(x.shape[2:]) == self.input_shape:
            static = False
        else:
            shape = ", ".join(map(str, self.input_shape))
            raise ConfigError(f"this NIR model takes inputs [B, {shape}] or per-timestep inputs "
                              f"[T={self.timesteps}, B, {shape}]; got shape {tuple(x.shape)}")
        values: dict[str, tuple[torch.Tensor, bool]] = {self.input_key: (x, static)}
        for key in self.order:
            if key == self.input_key:
                continue
            ins = [values[s] for s in self.sources[key]]
            if not ins:
                raise ConfigError(f"NIR node {key!r} has no input edge")
            static = all(s for _, s in ins)  # NIR adds every edge that enters a node
            v = ins[0][0] if static or not ins[0][1] else self._steps(ins[0][0])
            for w, s in ins[1:]:
                v = v + (self._steps(w) if s and not static else w)
            if key == self.output_key:
                return self._steps(v) if static else v
            mod = getattr(self, self.module_of[key])
            if key in self.stateful:
                values[key] = (mod(self._steps(v) if static else v), False)
            else:
                values[key] = (mod(v), True) if static else (fold(mod, v), False)
        raise ConfigError("the NIR graph's Output node is not reachable from its Input node")

    def _steps(self, v: torch.Tensor) -> torch.Tensor:
        return v.unsqueeze(0).expand(self.timesteps, *v.shape)


def _topological(graph) -> list[str]:
    preds = {k: {a for a, b in graph.edges if b == k} for k in graph.nodes}
    order, ready = [], [k for k in graph.nodes if not preds[k]]
    while ready:
        k = ready.pop(0)
        order.append(k)
        for a, b in graph.edges:
            if a == k:
                preds[b].discard(k)
                if not preds[b] and b not in order and b not in ready:
                    ready.append(b)
    if len(order) != len(graph.nodes):
        raise ConfigError("the NIR graph has a cycle (a recurrent connection); spiketide builds feed-forward graphs")
    return order


def from_nir(graph, *, timesteps: int | None = None, dt: float | None = None, detach_reset: bool = True,
             fast_lif: bool | None = None, dtype: torch.dtype = torch.float32) -> NIRModel:
    """A trainable, stateless spiketide model (`NIRModel`) from a NIR graph or a .nir file.

    `timesteps` and `dt` default to the graph's `metadata["timesteps"]` / `metadata["dt"]` (what `to_nir` writes);
    graphs from other frameworks need them given (dt: the step their LIF taus were written for, e.g. 1e-4 for
    SpikingJelly). tau_nir / dt is rounded to 12 significant digits, which undoes the rounding of tau * dt.
    Node types outside `SUPPORTED` are refused in one line naming the type.
    """
    if isinstance(graph, (str, Path)):
        graph = read(graph)
    meta = getattr(graph, "metadata", None) or {}
    timesteps = timesteps if timesteps is not None else _scalar_meta(meta, "timesteps")
    dt = dt if dt is not None else _scalar_meta(meta, "dt")
    if timesteps is None or isinstance(timesteps, bool) or int(timesteps) != timesteps or int(timesteps) < 1:
        raise ConfigError(f"from_nir needs timesteps T >= 1 (the graph's metadata has none): got {timesteps!r}; "
                          "pass timesteps=")
    try:
        dt = float(dt)
    except (TypeError, ValueError):
        dt = float("nan")
    if not math.isfinite(dt) or dt <= 0:
        raise ConfigError("from_nir needs the time step dt > 0 in seconds that the graph's LIF taus are written for "
                          f"(the graph's metadata has none): got {meta.get('dt') if dt != dt else dt!r}; pass dt=, "
                          "e.g. 1e-4 (SpikingJelly) or 1e-3 (Norse)")
    return NIRModel(graph, timesteps=int(timesteps), dt=dt, detach_reset=detach_reset, fast_lif=fast_lif, dtype=dtype)
