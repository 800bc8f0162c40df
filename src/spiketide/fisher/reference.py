"""The definition, written plainly: Eq. 5-6 one sample, one horizon, one forward and one backward at a time
(`brute_force_fisher`), and the authors' estimator over minibatches (`batch_fisher`).

With f(y | x_<=t) the softmax of the mean of the first t per-timestep outputs and theta the trainable parameters,

    I_t = (1/N) sum_n ||grad_theta log f(y_n | x^n_<=t)||^2     y_n the data's label (Eq. 6, "empirical") or drawn
                                                                from f(y | x^n_<=t) (Eq. 5, "true")
    I_t = mean over minibatches B of ||grad_theta (1/b) sum_{n in B} log f(y_n | x^n_<=t)||^2      ("batch")

The rest is bookkeeping (`measurement`): `check_arguments` refuses what cannot be measured, `measurement` gives
eval mode with gradients on (`m.params`, `m.groups` for `per_layer`, `m.batch`), `first_forward` T and a check
of the targets, `draw_uniforms` and `true_labels` Eq. 5's draw (the engine's), `squared_norms` ||g||^2 per group;
`summarize` turns the terms [G, N, T] into the profile (their mean over N and its standard error).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from spiketide.evaluation import logits
from spiketide.fisher.measurement import (Labels, check_arguments, check_stateless, draw_uniforms, first_forward,
                                          horizon_norms, measurement, sample_dim, spans, squared_norms, true_labels)
from spiketide.fisher.profile import FisherProfile, summarize
from spiketide.progress import bar

__all__ = ["brute_force_fisher", "batch_fisher", "equal_minibatches"]


def brute_force_fisher(model: nn.Module, inputs: Tensor, targets: Tensor, *, estimator: str = "empirical",
                       per_layer: bool = False, batch_size: int = 64, seed: int = 0, labels: Tensor | None = None,
                       device: torch.device | str | None = None) -> FisherProfile:
    """Reference implementation of Eq. 5-6 (and of "batch"): one sample (for "batch": one minibatch), one
    horizon, one forward and one backward at a time, with the horizon output written as out[:t].mean(0).

    Slow and obviously correct; used by the tests and benchmarks. For "true", `labels` [T, N] fixes the
    draws; otherwise they come from `seed` exactly as in `temporal_fisher`. Inputs as for `temporal_fisher`.
    """
    inputs, targets = check_arguments(model, inputs, targets, estimator, batch_size)
    N = inputs.shape[sample_dim(inputs)]
    terms = equal_minibatches(N, batch_size) if estimator == "batch" else [(n, n + 1) for n in range(N)]
    with measurement(model, device) as m:
        T = first_forward(model, m.batch(inputs, 0, 1), targets).shape[0]
        uniforms = draw_uniforms(T, N, seed) if estimator == "true" and labels is None else None
        columns = []
        for s, e in terms:
            xb = m.batch(inputs, s, e)
            per_horizon = []
            for t in range(1, T + 1):
                z = logits(model, xb)[:t].mean(0)  # horizon-t logits [b, C]: f(y | x_<=t) = softmax(z)
                y = targets[s:e].to(m.device)  # Eq. 6: the data's labels
                if estimator == "true":  # Eq. 5: y ~ f(y | x_<=t), drawn as temporal_fisher draws it, or given
                    y = (true_labels(z[None], uniforms[t - 1:t, s:e])[0] if uniforms is not None
                         else labels[t - 1, s:e].to(m.device))
                log_f = torch.log_softmax(z, -1).gather(1, y.view(-1, 1)).squeeze(1)
                grads = torch.autograd.grad(log_f.mean(), m.params, allow_unused=True)
                per_horizon.append(squared_norms(grads, m.groups))  # ||grad_theta log f||^2 per group [G]
            columns.append(torch.stack(per_horizon, 1))  # [G, T]
        return summarize(torch.stack(columns, 1), m.groups.names, per_layer, estimator,
                         num_samples=sum(e - s for s, e in terms))


def equal_minibatches(n: int, batch_size: int) -> list[tuple[int, int]]:
    """Minibatches of the "batch" estimator: a last partial one is dropped unless it is the only one,
    so every term has the same noise part tr(Cov)/b."""
    out = spans(n, batch_size)
    return out[:-1] if len(out) > 1 and out[-1][1] - out[-1][0] < batch_size else out


def batch_fisher(model: nn.Module, inputs: Tensor, targets: Tensor, *, per_layer: bool = False,
                 batch_size: int = 64, device: torch.device | str | None = None,
                 progress: bool = False) -> FisherProfile:
    """The authors' public estimator: I_t = mean over minibatches of ||grad (1/b) sum_n log f(y_n | x_n, <=t)||^2.
    Not Eq. 6 (see `temporal_fisher`); stderr is over the minibatches. Arguments as `check_arguments` left them.
    The estimator of brute_force_fisher(estimator="batch"), with one forward per minibatch (`horizon_norms`)."""
    chosen = equal_minibatches(inputs.shape[sample_dim(inputs)], batch_size)
    with measurement(model, device) as m, bar(len(chosen), "temporal Fisher (batch)", enabled=progress) as pbar:
        terms = []
        for s, e in chosen:
            xb = m.batch(inputs, s, e)
            if s == 0:
                ref = first_forward(model, xb, targets)
                check_stateless(model, xb, ref)
            terms.append(horizon_norms(model, xb, Labels(targets[s:e].to(m.device)), m, ref.shape[2]))
            pbar.update(1)
        return summarize(torch.stack(terms, 1), m.groups.names, per_layer, "batch",
                         num_samples=sum(e - s for s, e in chosen))
