"""Models from other SNN libraries (SpikingJelly, snnTorch, Norse) as the stateless models spiketide measures.

`temporal_fisher`, `robustness.evaluate` and the time-window deficits need a model that maps a batch
`[B, ...]` to per-timestep logits `[T, B, C]` and keeps no state between calls. `Stateless` runs the loop
over T and makes sure that no state is kept or lost, in the two ways SNN libraries keep it:

* inside the neurons (SpikingJelly, snnTorch `init_hidden=True`): cleared before and after every call through
  method names (see `find_resets`), so neither library is imported;
* passed in and out of every step (Norse: `cell(x, state) -> (z, state)`, state None at the first step): the
  state one step returns goes into the next one (`takes_state`), and a state that cannot go back is refused,
  never dropped.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from spiketide.errors import ConfigError, ModelOutputError
from spiketide.evaluation import check_logits

__all__ = ["Stateless", "find_resets", "takes_state", "is_library_neuron", "RESET_METHODS", "LIBRARY_NEURONS"]

# Tried on every module, first match only: SpikingJelly's MemoryModule.reset(); snnTorch (>= 0.7)
# reset_mem() and the init_*() methods that reset the state of init_hidden=True neurons; reset_hidden().
RESET_METHODS = ("reset", "reset_mem", "init_leaky", "init_synaptic", "init_rleaky", "init_rsynaptic",
                 "init_alpha", "init_lapicque", "reset_hidden")
OUTPUTS = {"spikes": 0, "membrane": 1}
# Spiking neurons of other libraries, as (package prefix, base class name): SpikingJelly's neuron BaseNode,
# snnTorch's SpikingNeuron, Norse's cells and multi-step modules, less Norse's leaky integrators, which emit
# no spikes (their membrane is the readout). Recognised by name, so no library is imported.
LIBRARY_NEURONS = (("spikingjelly.", "BaseNode"), ("snntorch.", "SpikingNeuron"), ("norse.", "SNNCell"),
                   ("norse.", "SNN"))
_NOT_SPIKING = {"norse.": ("LI", "LICell", "LIBoxCell")}


def find_resets(model: nn.Module) -> list[Callable[[], Any]]:
    """For each module of `model.modules()` that has one, its first callable method named in `RESET_METHODS`.

    Only callables count: snnTorch neurons keep a *tensor* attribute named `reset`, skipped here.
    """
    firsts = (next((fn for name in RESET_METHODS if callable(fn := getattr(m, name, None))), None)
              for m in model.modules())
    return [fn for fn in firsts if fn is not None]


def is_library_neuron(module: nn.Module) -> bool:
    """Whether `module` is a spiking neuron layer of SpikingJelly, snnTorch or Norse (`LIBRARY_NEURONS`)."""
    cls = type(module)
    for prefix, base in LIBRARY_NEURONS:
        if cls.__module__.startswith(prefix) and cls.__name__ in _NOT_SPIKING.get(prefix, ()):
            return False
        if any(c.__name__ == base and c.__module__.startswith(prefix) for c in cls.__mro__):
            return True
    return False


def takes_state(model: nn.Module) -> bool:
    """Whether `model(x)` can also be called as `model(x, state)`: its forward has a second positional parameter
    with a default (Norse's `forward(input_tensor, state=None)`)."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):  # no signature to read (some C or compiled callables)
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 and positional[1].default is not inspect.Parameter.empty


def _kinds(out: tuple | list) -> str:
    return f"({', '.join(type(o).__name__ for o in out)})"


class Stateless(nn.Module):
    """A stateful step-by-step (or SpikingJelly multi-step) SNN as a stateless `[B, ...] -> [T, B, C]` model.

    model: the network. In mode "step" it is called once per timestep on one step's input `[B, ...]` and
        returns `[B, C]` (or a tuple, see `output` and `state`); in mode "multistep" it is called once on
        `[T, B, ...]` and returns `[T, B, C]` (SpikingJelly `step_mode="m"`, Norse `LIFBox` and the like).
    timesteps: T, exposed as `self.timesteps`.
    state: whether the model passes its state in and out (Norse's convention, `model(x, state) -> (out,
        state)`). None (default): yes when its forward takes a second argument with a default (`takes_state`)
        and a step returns a pair; then step 1 is `model(x_1)` (the state starts as None) and step t is
        `model(x_t, state returned by step t-1)`; in mode "multistep", `model(seq)` and the end state is
        discarded. True: the same, and a model whose forward takes no state is refused. False: never passed on;
        the model keeps its state itself. Unless state=False, a step (mode "step") that returns something
        other than tensors (a state object, a list of states) without its state threaded is refused: that
        state would be lost between steps.
    reset: `reset(model)` clears every neuron's state (e.g. SpikingJelly `functional.reset_net`, snnTorch
        `utils.reset`). Default: call, on every module, the first callable of `RESET_METHODS` it has; a
        model with none of them that does not pass its state in and out is refused (ConfigError).
    encode: `encode(x, t) -> input of step t` (0-based) from the batch `x`. Default: direct encoding, the
        same static `x` at every step, or `x[t]` for per-timestep input `[T, B, ...]`. A random encoder
        makes the model non-deterministic, which `temporal_fisher` refuses: seed it from `x`, or encode first.
    output: which part of a tuple output is the logits: "spikes" (element 0, snnTorch's `(spk, mem)`),
        "membrane" (element 1), an int index, or a callable `output(out) -> Tensor`. Default "logits": the
        model must return a tensor. With a threaded state it applies to the output part of `(out, state)`.
    sample_dims: dimensions of one sample, so that input with `sample_dims + 2` dimensions is per-timestep
        `[T, B, ...]`. Default: spiketide's convention, per-timestep input is 5-D `[T, B, C, H, W]`.

    forward(x) resets the state, runs the model, resets the state again (no state or autograd graph is
    left behind) and checks the result with `evaluation.check_logits` (ModelOutputError if not `[T, B, C]`).
    """

    def __init__(self, model: nn.Module, timesteps: int, *, mode: str = "step",
                 reset: Callable[[nn.Module], Any] | None = None, encode: Callable[[Tensor, int], Tensor] | None = None,
                 output: str | int | Callable[[Any], Tensor] = "logits", sample_dims: int | None = None,
                 state: bool | None = None):
        super().__init__()
        if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 1:
            raise ConfigError(f"timesteps T must be an integer >= 1, got {timesteps!r}")
        if mode not in ("step", "multistep"):
            raise ConfigError(f"mode must be 'step' or 'multistep', got {mode!r}")
        if not (callable(output) or isinstance(output, int) or output in ("logits", *OUTPUTS)):
            raise ConfigError(f"output must be 'logits', 'spikes', 'membrane', an int index or a callable, "
                              f"got {output!r}")
        if state not in (None, True, False):
            raise ConfigError(f"state must be None (detect), True or False, got {state!r}")
        can_thread = state is not False and takes_state(model)
        if state is True and not can_thread:
            raise ConfigError(f"state=True but {type(model).__name__}.forward takes no state: it must accept "
                              "forward(x, state=None) and return (output, state)")
        if reset is None and not can_thread and not find_resets(model):
            raise ConfigError(f"nothing in {type(model).__name__} can be reset (no module has a method "
                              f"{', '.join(RESET_METHODS)}) and its forward takes no state to thread: pass "
                              "reset=... that clears the neuron state, or give forward a state argument "
                              "(forward(x, state=None) -> (output, state), Norse's convention)")
        self.model, self.timesteps, self.mode, self.state, self.can_thread = model, timesteps, mode, state, can_thread
        self.reset_fn, self.encode, self.output, self.sample_dims = reset, encode, output, sample_dims

    def reset_state(self) -> None:
        """Clear every neuron's state: `reset(model)` if given, else each found reset method."""
        if self.reset_fn is not None:
            self.reset_fn(self.model)
        else:
            for fn in find_resets(self.model):
                fn()

    def _per_timestep(self, x: Tensor) -> bool:
        per = x.dim() == (5 if self.sample_dims is None else self.sample_dims + 2)
        if per and x.shape[0] != self.timesteps:
            raise ConfigError(f"per-timestep input has {x.shape[0]} timesteps but the adapter's T is "
                              f"{self.timesteps}; shape {tuple(x.shape)}")
        return per

    def _threads(self, out: Any) -> bool:
        """Whether the model's first result is (output, state) to thread (see `state`)."""
        pair = isinstance(out, (tuple, list)) and len(out) == 2
        if self.can_thread and not pair and (self.state is True or not find_resets(self.model)
                                             and self.reset_fn is None):
            got = _kinds(out) if isinstance(out, (tuple, list)) else type(out).__name__
            raise ModelOutputError(
                f"{type(self.model).__name__}.forward takes a state but returned {got}, not (output, state): return "
                "both so that Stateless can thread the state" + ("" if self.state is True else
                                                                 ", or pass reset=... that clears its state"))
        return self.can_thread and pair

    def _select(self, out: Any, threaded: bool) -> Any:
        if threaded:
            out = out[0]
            if isinstance(out, Tensor) and not callable(self.output) and self.output not in ("logits", "spikes", 0):
                raise ModelOutputError(
                    f"output={self.output!r} but {type(self.model).__name__} returns (output, state) and its state is "
                    "threaded into the next step, so element 1 is the state, not logits: drop output=, or pass "
                    "state=False if the second element is not a state")
        elif (self.mode == "step" and self.state is not False and isinstance(out, (tuple, list))
              and not all(isinstance(o, Tensor) for o in out)):
            raise ModelOutputError(
                f"the model returned {_kinds(out)} per step: a state that must go into the next step (Norse's "
                f"convention cell(x, state) -> (z, state)), but {type(self.model).__name__}.forward takes no state, "
                "so every step would start afresh: give it forward(x, state=None) that passes the state on and "
                "returns (output, state), and Stateless threads it")
        if callable(self.output):
            return self.output(out)
        if not isinstance(out, (tuple, list)):
            return out  # a tensor, or anything else: check_logits judges it
        if self.output != "logits":
            return out[OUTPUTS.get(self.output, self.output)]
        raise ModelOutputError(
            f"the model returned a {type(out).__name__} of {len(out)} per step; pass output='spikes' (element 0), "
            "output='membrane' (element 1), an int index or a callable to Stateless to choose the logits")

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
                first = self.model(self._step_input(x, 0, per))  # a threaded state starts as None (the default)
                threaded = self._threads(first)
                steps, out = [self._select(first, threaded)], first
                for t in range(1, self.timesteps):
                    xt = self._step_input(x, t, per)
                    out = self.model(xt, out[1]) if threaded else self.model(xt)
                    if threaded and not (isinstance(out, (tuple, list)) and len(out) == 2):
                        raise ModelOutputError(f"step {t + 1} of {type(self.model).__name__} returned "
                                               f"{type(out).__name__}, not (output, state) as step 1 did")
                    steps.append(self._select(out, threaded))
                bad = next((s for s in steps if not isinstance(s, Tensor)), None)
                out = check_logits(bad) if bad is not None else torch.stack(steps)
            else:
                if self.encode is not None:
                    seq = torch.stack([self.encode(x, t) for t in range(self.timesteps)])
                else:
                    seq = x if per else x.unsqueeze(0).repeat(self.timesteps, *([1] * x.dim()))
                out = self.model(seq)
                out = self._select(out, self._threads(out))  # a multi-step call's end state is not needed
        finally:
            self.reset_state()
        return check_logits(out, B)
