"""What every estimator shares, none of it Fisher information itself: the argument checks made once at the public
entries, the measurement context (eval mode with gradients on; trainable parameters, their `per_layer` groups,
batches as the model takes them), labels per horizon (Eq. 6: the data's; Eq. 5: drawn from the model), squared
gradient norms per group, and the check that the model keeps no state between calls."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from spiketide.checks import whole
from spiketide.errors import ConfigError, ModelOutputError
from spiketide.evaluation import eval_mode, logits, model_device, to_float
from spiketide.fisher.profile import ESTIMATORS
from spiketide.losses import horizon_logits

__all__ = ["check_arguments", "sample_dim", "first_forward", "spans", "ParamGroups", "param_groups", "Measured",
           "measurement", "squared_norms", "check_stateless", "true_labels", "draw_uniforms", "Labels", "horizon_norms"]


def sample_dim(inputs: Tensor) -> int:
    """Where the samples are: dim 1 of per-timestep inputs [T, N, C, H, W] (the package's 5-D convention,
    as `evaluation.batch_size_of`), otherwise dim 0 of [N, ...]."""
    return 1 if inputs.dim() == 5 else 0


def check_arguments(model: Any, inputs: Any, targets: Any, estimator: str, batch_size: Any) -> tuple[Tensor, Tensor]:
    """Raise ConfigError for anything that cannot be measured; returns (inputs, targets as int64)."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if estimator not in ESTIMATORS:
        raise ConfigError(f"unknown Fisher estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    whole("batch_size", batch_size, 1)
    if not isinstance(inputs, Tensor):
        raise ConfigError(f"inputs must be a tensor [N, ...] or [T, N, C, H, W], got {type(inputs).__name__}")
    targets = targets if isinstance(targets, Tensor) else torch.as_tensor(targets)
    if targets.dim() != 1:
        raise ConfigError(f"targets must be a 1-D tensor of class indices [N], got shape {tuple(targets.shape)}")
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise ConfigError(f"targets must be integer class indices (int64), got dtype {targets.dtype}")
    dim = sample_dim(inputs)
    if inputs.dim() < 1 or inputs.shape[dim] == 0:
        raise ConfigError(f"inputs is empty (shape {tuple(inputs.shape)}); Fisher information needs a sample or more")
    if inputs.shape[dim] != len(targets):
        where = "dim 1 of per-timestep inputs [T, N, C, H, W]" if dim else "len(inputs)"
        raise ConfigError(f"{where} = {inputs.shape[dim]} but len(targets) = {len(targets)}; they must match")
    if (inputs.is_floating_point() or inputs.is_complex()) and not bool(torch.isfinite(inputs).all()):
        raise ConfigError("inputs contain NaN or inf; every input value must be finite (or the Fisher profile is nan)")
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("the model has no trainable parameters (requires_grad=True); nothing to measure")
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.running_mean is None or m.running_var is None):
            raise ConfigError(
                f"{name or 'the model'} ({type(m).__name__}) has no running statistics (track_running_stats=False), "
                "so even in eval mode each sample's output depends on the rest of its batch and per-sample Fisher "
                "information is undefined; build it with track_running_stats=True (and estimate the statistics in "
                "train mode) or use a per-sample normalisation such as GroupNorm or LayerNorm.")
    # a NaN or inf weight (or BatchNorm statistic) makes every gradient NaN: refused rather than a NaN profile
    for name, t in [*model.named_parameters(), *((n, b) for n, b in model.named_buffers() if b.is_floating_point())]:
        if not bool(torch.isfinite(t.detach()).all()):
            raise ConfigError(f"the model's {name} holds NaN or inf, so its Fisher information is undefined; load "
                              "weights saved before the values went bad (e.g. the last good checkpoint)")
    return inputs, targets.long()


def first_forward(model: nn.Module, xb: Tensor, targets: Tensor) -> Tensor:
    """No-grad logits [T, B, C] of the first batch; the targets are checked against C."""
    with torch.no_grad():
        ref = logits(model, xb)
    C = ref.shape[2]
    bad = targets[(targets < 0) | (targets >= C)]
    if bad.numel():
        raise ConfigError(f"targets must lie in [0, {C}) for a model with {C} classes; found {bad.numel()} out of "
                          f"range (e.g. {int(bad[0])}). Check the label encoding or num_classes.")
    return ref


def spans(n: int, batch_size: int) -> list[tuple[int, int]]:
    return [(s, min(n, s + batch_size)) for s in range(0, n, batch_size)]


class ParamGroups(NamedTuple):
    """Names of the groups ("per_layer" parts) and, per trainable parameter, the index of its group."""

    names: list[str]
    index: list[int]


def param_groups(model: nn.Module, param_names: Sequence[str]) -> ParamGroups:
    """Blocks of `model.block_names` (first dotted prefix that matches, else "other"), otherwise the name of
    the module owning each parameter ("<root>" for the model's own)."""
    blocks = [str(b) for b in getattr(model, "block_names", ()) or ()]
    names: list[str] = list(blocks)
    index = []
    for n in param_names:
        if blocks:
            g = next((b for b in blocks if n == b or n.startswith(b + ".")), "other")
        else:
            g = n.rsplit(".", 1)[0] if "." in n else "<root>"
        if g not in names:
            names.append(g)
        index.append(names.index(g))
    return ParamGroups(names, index)


@dataclass
class Measured:
    """What a measurement needs to know about the model: its trainable parameters, their groups, device, dtype."""

    params: list[Tensor]
    groups: ParamGroups
    device: torch.device
    dtype: torch.dtype

    def batch(self, inputs: Tensor, start: int, stop: int) -> Tensor:
        """Samples start..stop-1 as the model takes them: uint8 pixels scaled (`to_float`), its dtype and device."""
        xb = to_float(inputs.narrow(sample_dim(inputs), start, stop - start).to(self.device)).to(self.dtype)
        return xb.clone() if xb.is_inference() else xb  # inference-mode tensors cannot enter autograd


@contextmanager
def measurement(model: nn.Module, device: torch.device | str | None) -> Iterator[Measured]:
    """`eval_mode` (BN running statistics, no dropout) with gradients on, on `device`; on exit it also restores
    what eval_mode does not: every parameter's .grad and requires_grad, and the model's device."""
    saved = [(p, p.grad, p.requires_grad) for p in model.parameters()]
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    home = model_device(model)
    target = home if device is None else torch.device(device)
    if target != home:
        model.to(target)
    params = [p for _, p in named]
    dtype = params[0].dtype if params[0].is_floating_point() else torch.get_default_dtype()
    try:
        with eval_mode(model), torch.inference_mode(False), torch.enable_grad():
            yield Measured(params, param_groups(model, [n for n, _ in named]), params[0].device, dtype)
    finally:
        if target != home:
            model.to(home)
        for p, grad, requires_grad in saved:
            p.requires_grad_(requires_grad)
            p.grad = grad


def squared_norms(grads: Sequence[Tensor | None], groups: ParamGroups) -> Tensor:
    """Gradients of the trainable parameters -> squared norm per group [G] (float64, on their device)."""
    dev = next((g.device for g in grads if g is not None), torch.device("cpu"))
    out = torch.zeros(len(groups.names), dtype=torch.float64, device=dev)
    for g, i in zip(grads, groups.index):
        if g is not None:
            out[i] += g.double().pow(2).sum()
    return out


def check_stateless(model: nn.Module, xb: Tensor, ref: Tensor, out: Tensor | None = None) -> None:
    """`ref` is a no-grad forward of xb made before `out` (default: another no-grad forward); a model that
    keeps state between calls (neuron membranes not reset inside forward) gives a different answer."""
    if out is None:
        with torch.no_grad():
            out = model(xb)
    scale = float(ref.abs().max()) + 1e-30
    if ref.shape == out.shape and torch.allclose(out.detach(), ref, rtol=1e-5, atol=1e-6 * scale):
        return
    with torch.no_grad():
        again = model(xb)
    if isinstance(again, Tensor) and again.shape == ref.shape and torch.allclose(again, ref, rtol=1e-6,
                                                                                 atol=1e-7 * scale):
        return  # no-grad calls agree: the difference was float rounding between grad and no-grad kernels
    raise ModelOutputError(
        "the model gave different outputs for the same batch on consecutive calls: it keeps state between calls "
        "(or is random). The model must reset its neuron state (membrane potentials) inside forward, e.g. "
        "snnTorch `mem = lif.init_leaky()` / SpikingJelly `functional.reset_net(net)` at the start of forward, "
        "and must not draw random numbers (encode stochastic inputs before calling temporal_fisher).")


def true_labels(hlogits: Tensor, uniforms: Tensor) -> Tensor:
    """Inverse-CDF draw: horizon logits [T, N, C] and uniforms [T, N] in [0, 1) -> labels [T, N] (int64)."""
    cdf = torch.softmax(hlogits.detach().double(), dim=-1).cumsum(-1)
    labels = (cdf <= uniforms.to(device=cdf.device, dtype=cdf.dtype).unsqueeze(-1)).sum(-1)
    return labels.clamp_max(hlogits.shape[-1] - 1).long()


def draw_uniforms(T: int, N: int, seed: int) -> Tensor:
    """The uniforms of every "true" draw, [T, N] in data order, so the draws do not depend on batching:
    `true_labels(horizon logits of the whole data set, draw_uniforms(T, N, seed))` are exactly the labels
    `temporal_fisher(..., estimator="true", seed=seed)` uses."""
    return torch.rand((T, N), generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float64)


class Labels(NamedTuple):
    """A batch's labels at every horizon: the data's `targets` [B] (Eq. 6), or, with `uniforms` [T, B],
    drawn from the model's own horizon-t prediction (Eq. 5)."""

    targets: Tensor
    uniforms: Tensor | None = None

    def at(self, hlogits: Tensor) -> Tensor:
        """Horizon logits [T, B, C] -> labels [T, B]."""
        if self.uniforms is None:
            return self.targets.unsqueeze(0).expand(hlogits.shape[0], -1)
        return true_labels(hlogits, self.uniforms)

    def sample(self, n: int) -> Labels:
        return Labels(self.targets[n:n + 1], None if self.uniforms is None else self.uniforms[:, n:n + 1])


def horizon_norms(model: nn.Module, xb: Tensor, labels: Labels, m: Measured, num_classes: int | None = None) -> Tensor:
    """||grad_theta (1/b) sum_n log f(y_n | x_n, <=t)||^2 of one batch for every horizon, per group [G, T]: one
    forward, one backward per horizon. For one sample it is a term of Eq. 5-6; for b, one of the authors'."""
    h = horizon_logits(logits(model, xb, num_classes))
    lp = torch.log_softmax(h, -1).gather(2, labels.at(h.detach()).unsqueeze(2)).squeeze(2).mean(1)  # [T]
    T = lp.shape[0]
    return torch.stack([squared_norms(torch.autograd.grad(lp[t], m.params, retain_graph=t < T - 1, allow_unused=True),
                                      m.groups) for t in range(T)], 1)
