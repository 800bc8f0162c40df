"""Models from other SNN libraries (SpikingJelly, snnTorch) as the stateless models spiketide measures.

`temporal_fisher`, `robustness.evaluate` and the time-window deficits need a model that maps a batch
`[B, ...]` to per-timestep logits `[T, B, C]` and keeps no state between calls. SpikingJelly and snnTorch
neurons keep their membrane potential between calls; `Stateless` resets it and runs the loop over T.
Neither library is imported: resetting goes through method names (see `find_resets`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from spiketide.errors import ConfigError, ModelOutputError
from spiketide.evaluation import check_logits

__all__ = ["Stateless", "find_resets", "RESET_METHODS"]

# Tried on every module, first match only: SpikingJelly's MemoryModule.reset(); snnTorch (>= 0.7)
# reset_mem() and the init_*() methods that reset the state of init_hidden=True neurons; reset_hidden().
RESET_METHODS = ("reset", "reset_mem", "init_leaky", "init_synaptic", "init_rleaky", "init_rsynaptic",
                 "init_alpha", "init_lapicque", "reset_hidden")
OUTPUTS = {"spikes": 0, "membrane": 1}


def find_resets(model: nn.Module) -> list[Callable[[], Any]]:
    """For each module of `model.modules()` that has one, its first callable method named in `RESET_METHODS`.

    Only callables count: snnTorch neurons keep a *tensor* attribute named `reset`, skipped here.
    """
    found = []
    for m in model.modules():
        for name in RESET_METHODS:
            fn = getattr(m, name, None)
            if callable(fn):
                found.append(fn)
                break
    return found


class Stateless(nn.Module):
    """A stateful step-by-step (or SpikingJelly multi-step) SNN as a stateless `[B, ...] -> [T, B, C]` model.

    model: the network. In mode "step" it is called once per timestep on one step's input `[B, ...]` and
        returns `[B, C]` (or a tuple, see `output`); in mode "multistep" it is called once on `[T, B, ...]`
        and returns `[T, B, C]` (SpikingJelly `step_mode="m"`).
    timesteps: T, exposed as `self.timesteps`.
    reset: `reset(model)` clears every neuron's state (e.g. SpikingJelly `functional.reset_net`, snnTorch
        `utils.reset`). Default: call, on every module, the first callable of `RESET_METHODS` it has; a
        model with none of them is refused (ConfigError).
    encode: `encode(x, t) -> input of step t` (0-based) from the batch `x`. Default: direct encoding, the
        same static `x` at every step, or `x[t]` for per-timestep input `[T, B, ...]`. A random encoder
        makes the model non-deterministic, which `temporal_fisher` refuses: seed it from `x`, or encode first.
    output: which part of a tuple output is the logits: "spikes" (element 0, snnTorch's `(spk, mem)`),
        "membrane" (element 1), an int index, or a callable `output(out) -> Tensor`. Default "logits": the
        model must return a tensor.
    sample_dims: dimensions of one sample, so that input with `sample_dims + 2` dimensions is per-timestep
        `[T, B, ...]`. Default: spiketide's convention, per-timestep input is 5-D `[T, B, C, H, W]`.

    forward(x) resets the state, runs the model, resets the state again (no state or autograd graph is
    left behind) and checks the result with `evaluation.check_logits` (ModelOutputError if not `[T, B, C]`).
    """

    def __init__(self, model: nn.Module, timesteps: int, *, mode: str = "step",
                 reset: Callable[[nn.Module], Any] | None = None, encode: Callable[[Tensor, int], Tensor] | None = None,
                 output: str | int | Callable[[Any], Tensor] = "logits", sample_dims: int | None = None):
        super().__init__()
        if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 1:
            raise ConfigError(f"timesteps T must be an integer >= 1, got {timesteps!r}")
        if mode not in ("step", "multistep"):
            raise ConfigError(f"mode must be 'step' or 'multistep', got {mode!r}")
        if not (callable(output) or isinstance(output, int) or output in ("logits", *OUTPUTS)):
            raise ConfigError(f"output must be 'logits', 'spikes', 'membrane', an int index or a callable, "
                              f"got {output!r}")
        if reset is None and not find_resets(model):
            raise ConfigError(f"nothing in {type(model).__name__} can be reset (no module has a method "
                              f"{', '.join(RESET_METHODS)}): pass reset=... that clears the neuron state")
        self.model, self.timesteps, self.mode = model, timesteps, mode
        self.reset_fn, self.encode, self.output, self.sample_dims = reset, encode, output, sample_dims

    def reset_state(self) -> None:
        """Clear every neuron's state: `reset(model)` if given, else each found reset method."""
        if self.reset_fn is not None:
            self.reset_fn(self.model)
        else:
            for fn in find_resets(self.model):
                fn()

    def _per_timestep(self, x: Tensor) -> bool:
        if self.sample_dims is None:
            per = x.dim() == 5
        else:
            per = x.dim() == self.sample_dims + 2
        if per and x.shape[0] != self.timesteps:
            raise ConfigError(f"per-timestep input has {x.shape[0]} timesteps but the adapter's T is "
                              f"{self.timesteps}; shape {tuple(x.shape)}")
        return per

    def _select(self, out: Any) -> Any:
        if callable(self.output):
            return self.output(out)
        if isinstance(out, Tensor) and self.output == "logits":
            return out
        if isinstance(out, (tuple, list)) and self.output != "logits":
            return out[OUTPUTS.get(self.output, self.output)]
        if isinstance(out, (tuple, list)):
            raise ModelOutputError(
                f"the model returned a {type(out).__name__} of {len(out)} per step; pass output='spikes' (element 0), "
                "output='membrane' (element 1), an int index or a callable to Stateless to choose the logits")
        return out  # output chosen but the model returned a tensor: check_logits judges it

    def _step_input(self, x: Tensor, t: int, per: bool) -> Tensor:
        if self.encode is not None:
            return self.encode(x, t)
        return x[t] if per else x

    def forward(self, x: Tensor) -> Tensor:
        per = self._per_timestep(x)
        B = x.shape[1] if per else x.shape[0]
        self.reset_state()
        try:
            if self.mode == "step":
                steps = [self._select(self.model(self._step_input(x, t, per))) for t in range(self.timesteps)]
                bad = next((s for s in steps if not isinstance(s, Tensor)), None)
                out = check_logits(bad) if bad is not None else torch.stack(steps)
            else:
                if self.encode is not None:
                    seq = torch.stack([self.encode(x, t) for t in range(self.timesteps)])
                else:
                    seq = x if per else x.unsqueeze(0).repeat(self.timesteps, *([1] * x.dim()))
                out = self._select(self.model(seq))
        finally:
            self.reset_state()
        return check_logits(out, B)
