"""Temporal Fisher information of an SNN (Kim et al., Eq. 4-7).

The prediction after t timesteps, f_theta(y | x_{i<=t}), is the softmax of the mean of the first t
per-timestep outputs (the horizon outputs of Eq. 4, `spiketide.losses.horizon_logits`). Over all
trainable parameters theta:

    I_t = E_{x~D, y~f_theta(y|x_<=t)} ||grad_theta log f_theta(y | x_<=t)||^2    (Eq. 5, estimator "true")
    I_t = (1/N) sum_n ||grad_theta log f_theta(y_n | x^n_<=t)||^2                  (Eq. 6, estimator "empirical")
    IC  = sum_t t I_t / sum_t I_t                                                   (Eq. 7, information_centroid)

`cumulative_share` and `horizon_for_share` say how much of the information the first t timesteps hold.

Modules: `profile` (the result, Eq. 7, cumulative share) · `reference` (the definition written plainly:
brute force, the authors' batch estimator, the measurement context) · `rules` (per-sample gradient rules
per layer type) · `engine` (hooks: all T horizons of a batch from one forward pass, with a safety net
and an exact per-sample fallback).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from spiketide.fisher.engine import per_sample_fisher
from spiketide.fisher.profile import (ESTIMATORS, FisherProfile, cumulative_share, horizon_for_share,
                                      information_centroid)
from spiketide.fisher.reference import batch_fisher, brute_force_fisher, check_arguments

__all__ = ["ESTIMATORS", "FisherProfile", "temporal_fisher", "brute_force_fisher", "information_centroid",
           "cumulative_share", "horizon_for_share"]


def temporal_fisher(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    estimator: str = "empirical",
    per_layer: bool = False,
    batch_size: int = 64,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> FisherProfile:
    """Temporal Fisher information I_1..I_T (Eq. 5-6) of `model` on (inputs, targets).

    model: any nn.Module mapping a batch to per-timestep logits [T, B, C] that keeps no state between calls.
        It is measured in eval mode (BatchNorm running statistics; the surrogate gradient is always active);
        afterwards each submodule's train/eval mode and each parameter's .grad and requires_grad are restored.
        Only parameters with requires_grad=True count. BatchNorm without running statistics
        (track_running_stats=False) is refused with a ConfigError: it normalises every batch with its own
        statistics even in eval mode, so a sample's output depends on the rest of its batch and per-sample
        Fisher information is undefined.
    inputs: [N, ...] (any finite float values; uint8 pixels are scaled by `evaluation.to_float`), or
        per-timestep inputs [T, N, C, H, W] (5-D: the package's convention; samples on dim 1). Cast to the
        model's dtype and device batch by batch.
    targets: int64 class indices [N] in [0, C).
    estimator:
        "empirical" - Eq. 6 with the data labels.
        "true"      - Eq. 5: y drawn from the model's own horizon-t distribution softmax(h_t(x_n)), one
                      Monte-Carlo draw per sample and horizon from torch.Generator seeded with `seed`
                      (uniforms rand((T, N)) in data order, inverse CDF), so the draws do not depend on
                      `batch_size`.
        "batch"     - the authors' public code: I_t = mean over minibatches of
                      ||grad (1/b) sum_{n in minibatch} log f(y_n | x_n, <=t)||^2 with b = batch_size.
                      This is NOT Eq. 6: E||mean of b per-sample grads||^2 = ||E g||^2 + tr(Cov g)/b, so its
                      noise part shrinks with the batch size and it is smaller than Eq. 6 (which is
                      ||E g||^2 + tr(Cov g)). A last partial minibatch is dropped (so every term has the same
                      b) unless it is the only one; num_samples counts the samples used and stderr is taken
                      over the minibatches.
    per_layer: also return the information per block (`model.block_names`: each parameter goes to the first
        name it lies under, the rest to "other") or, for other models, per parameterised module name; the
        parts sum to the trace.
    batch_size: samples per forward pass (and the minibatch of "batch"), a whole number >= 1.
    device: run on this device (the model is moved there and back); default: the model's device.
    progress: a progress bar over batches (`spiketide.progress.bar`).

    Raises ConfigError for bad arguments (unknown estimator, bad batch_size, empty or non-finite inputs,
    length mismatch, targets out of range, BatchNorm without running statistics) and ModelOutputError when
    the model does not return [T, B, C] or keeps state between calls. Falls back (with one warning) to an
    exact, slower per-sample loop when per-sample gradients cannot be rebuilt from hooks (`engine`).
    """
    inputs, targets = check_arguments(model, inputs, targets, estimator, batch_size)
    if estimator == "batch":
        return batch_fisher(model, inputs, targets, per_layer=per_layer, batch_size=int(batch_size), device=device,
                            progress=progress)
    return per_sample_fisher(model, inputs, targets, estimator=estimator, per_layer=per_layer,
                             batch_size=int(batch_size), seed=seed, device=device, progress=progress)
