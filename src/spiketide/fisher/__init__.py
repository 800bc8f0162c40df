"""Temporal Fisher information of an SNN (Kim et al., Eq. 4-7).

The prediction after t timesteps, f_theta(y | x_{i<=t}), is the softmax of the mean of the first t
per-timestep outputs (the horizon outputs of Eq. 4, `spiketide.losses.horizon_logits`). Over all
trainable parameters theta:

    I_t = E_{x~D, y~f_theta(y|x_<=t)} ||grad_theta log f_theta(y | x_<=t)||^2    (Eq. 5, estimator "true")
    I_t = (1/N) sum_n ||grad_theta log f_theta(y_n | x^n_<=t)||^2                  (Eq. 6, estimator "empirical")
    IC  = sum_t t I_t / sum_t I_t                                                   (Eq. 7, information_centroid)

`cumulative_share` and `horizon_for_share` say how much of it the first t timesteps hold. Modules: `profile`
(result, Eq. 7) · `tic` (temporal information concentration: the one rule, read from IC at fixed fractions of
training) · `reference` (the definition written plainly: brute force, the authors' estimator) · `measurement`
(what the estimators share: checks, eval-mode context, parameter groups, labels, squared norms) · `rules`
(per-sample gradient rules per layer type) · `engine` (hooks: all T horizons from one forward pass).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from spiketide.fisher.engine import per_sample_fisher
from spiketide.fisher.measurement import check_arguments
from spiketide.fisher.profile import (ESTIMATORS, FisherProfile, cumulative_share, horizon_for_share,
                                      information_centroid)
from spiketide.fisher.reference import batch_fisher, brute_force_fisher

__all__ = ["ESTIMATORS", "FisherProfile", "temporal_fisher", "brute_force_fisher", "information_centroid",
           "cumulative_share", "horizon_for_share"]


def temporal_fisher(model: nn.Module, inputs: Tensor, targets: Tensor, *, estimator: str = "empirical",
                    per_layer: bool = False, batch_size: int = 64, seed: int = 0,
                    device: torch.device | str | None = None, progress: bool = False) -> FisherProfile:
    """Temporal Fisher information I_1..I_T (Eq. 5-6) of `model` on (inputs, targets).

    model: any nn.Module mapping a batch to per-timestep logits [T, B, C] that keeps no state between calls,
        measured in eval mode (BatchNorm running statistics; the surrogate gradient stays active); each
        submodule's mode and each parameter's .grad and requires_grad are restored. Only trainable parameters
        count. BatchNorm without running statistics is refused (ConfigError): it normalises each batch with
        its own statistics even in eval mode, so per-sample Fisher information is undefined.
    inputs: [N, ...] (finite values; uint8 pixels scaled by `evaluation.to_float`) or per-timestep inputs
        [T, N, C, H, W] (5-D, the package's convention: samples on dim 1).
    targets: int64 class indices [N] in [0, C).
    estimator: "empirical" (Eq. 6, the data labels); "true" (Eq. 5: one label per sample and horizon drawn
        from softmax(h_t(x_n)) by inverse CDF of rand((T, N)) from a Generator seeded with `seed`, in data
        order, so independent of `batch_size`); "batch" (the authors' code: the mean over minibatches of
        ||grad (1/b) sum_n log f(y_n | x_n, <=t)||^2, b = batch_size. NOT Eq. 6: E||mean of b gradients||^2 =
        ||E g||^2 + tr(Cov g)/b, smaller than Eq. 6's ||E g||^2 + tr(Cov g). A last partial minibatch is
        dropped unless it is the only one; stderr is over the minibatches).
    per_layer: also the parts per block (`model.block_names`, the rest in "other") or, for other models, per
        parameterised module; they sum to the trace.
    batch_size: samples per forward pass (and the minibatch of "batch"), a whole number >= 1.
    device: run there (the model is moved there and back); default: the model's device.
    progress: a progress bar over batches (`spiketide.progress.bar`).

    Raises ConfigError for bad arguments and ModelOutputError when the model does not return [T, B, C] or
    keeps state between calls. Falls back, with one warning, to an exact and slower per-sample loop when
    per-sample gradients cannot be rebuilt from hooks (`engine`).
    """
    inputs, targets = check_arguments(model, inputs, targets, estimator, batch_size)
    if estimator == "batch":
        return batch_fisher(model, inputs, targets, per_layer=per_layer, batch_size=int(batch_size), device=device,
                            progress=progress)
    return per_sample_fisher(model, inputs, targets, estimator=estimator, per_layer=per_layer,
                             batch_size=int(batch_size), seed=seed, device=device, progress=progress)
