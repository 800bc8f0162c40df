"""spiketide.adapters.Stateless: stateful SpikingJelly- and snnTorch-style models (written here in each
library's style, neither library imported) measured exactly like hand-written stateless equivalents."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spiketide import robustness
from spiketide.adapters import Stateless, find_resets
from spiketide.errors import ConfigError, ModelOutputError
from spiketide.fisher import temporal_fisher

T, D, H, C = 4, 16, 8, 3


def spike(v):
    """Heaviside forward, sigmoid-derivative surrogate backward."""
    sg = torch.sigmoid(4 * v)
    return (v > 0).to(v.dtype) + sg - sg.detach()


# --- SpikingJelly style: a MemoryModule-like LIF keeping self.v, cleared by reset() --------------------------

class SJLIFNode(nn.Module):
    """LIF (tau = 2, hard reset to 0). step_mode "s": one step per call; "m": loops over dim 0 of [T, B, ...]."""

    def __init__(self, tau=2.0, v_threshold=0.5, step_mode="s"):
        super().__init__()
        self.tau, self.v_threshold, self.step_mode = tau, v_threshold, step_mode
        self.reset()

    def reset(self):
        self.v = 0.0

    def single_step_forward(self, x):
        self.v = self.v + (x - self.v) / self.tau
        s = spike(self.v - self.v_threshold)
        self.v = self.v * (1 - s)
        return s

    def forward(self, x):
        if self.step_mode == "s":
            return self.single_step_forward(x)
        return torch.stack([self.single_step_forward(x[t]) for t in range(x.shape[0])])


def sj_net(step_mode="s"):
    torch.manual_seed(0)
    flat = nn.Flatten() if step_mode == "s" else nn.Flatten(2)
    return nn.Sequential(flat, nn.Linear(D, H), SJLIFNode(step_mode=step_mode), nn.Linear(H, C)).double()


class SJReference(nn.Module):
    """The same network written stateless: the loop over t and the membrane v local to forward."""

    def __init__(self, net):
        super().__init__()
        self.fc1, self.fc2 = net[1], net[3]

    def forward(self, x):
        v, outs = 0.0, []
        for t in range(T):
            xt = x[t] if x.dim() == 5 else x
            v = v + (self.fc1(xt.flatten(1)) - v) / 2.0
            s = spike(v - 0.5)
            v = v * (1 - s)
            outs.append(self.fc2(s))
        return torch.stack(outs)


# --- snnTorch style: a Leaky-like neuron, init_hidden=True keeps self.mem, reset_mem() clears it ---------------

class Leaky(nn.Module):
    """mem = beta mem + input - reset * threshold (subtract reset); returns spk, or (spk, mem) with output=True.
    Like snnTorch it keeps a *tensor* attribute named `reset`, which the adapter must not call."""

    def __init__(self, beta, threshold=1.0, init_hidden=True, output=False):
        super().__init__()
        self.beta, self.threshold, self.init_hidden, self.output = beta, threshold, init_hidden, output
        self.mem = torch.zeros(0)
        self.reset = torch.zeros(0)

    def reset_mem(self):
        self.mem = torch.zeros_like(self.mem)
        return self.mem

    def forward(self, input_):
        if self.mem.shape != input_.shape:
            self.mem = torch.zeros_like(input_)
        self.reset = (self.mem - self.threshold > 0).to(self.mem.dtype).detach()
        self.mem = self.beta * self.mem + input_ - self.reset * self.threshold
        spk = spike(self.mem - self.threshold)
        return (spk, self.mem) if self.output else spk


class SnnNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.fc1, self.lif1 = nn.Linear(D, H), Leaky(beta=0.5, threshold=0.3)
        self.fc2, self.lif2 = nn.Linear(H, C), Leaky(beta=0.5, output=True)

    def forward(self, x):
        return self.lif2(self.fc2(self.lif1(self.fc1(x.flatten(1)))))  # (spk, mem) of the last layer


class SnnReference(nn.Module):
    """SnnNet written stateless, the membrane of the last layer as the logits."""

    def __init__(self, net):
        super().__init__()
        self.fc1, self.fc2 = net.fc1, net.fc2

    def forward(self, x):
        m1 = m2 = 0.0
        outs = []
        for _ in range(T):
            i1 = self.fc1(x.flatten(1))
            m1 = 0.5 * m1 + i1 - (torch.as_tensor(m1) - 0.3 > 0).to(i1.dtype) * 0.3
            i2 = self.fc2(spike(m1 - 0.3))
            m2 = 0.5 * m2 + i2 - (torch.as_tensor(m2) - 1.0 > 0).to(i2.dtype) * 1.0
            outs.append(m2)
        return torch.stack(outs)


def data(n=6):
    g = torch.Generator().manual_seed(2)
    return torch.rand(n, 1, 4, 4, generator=g, dtype=torch.float64), torch.randint(0, C, (n,), generator=g)


def spikingjelly_step():
    net = sj_net()
    return Stateless(net, T), SJReference(net)


def spikingjelly_multistep():
    net = sj_net("m")
    return Stateless(net, T, mode="multistep"), SJReference(net)


def snntorch_step():
    net = SnnNet().double()
    return Stateless(net, T, output="membrane"), SnnReference(net)


CASES = {"spikingjelly-step": spikingjelly_step, "spikingjelly-multistep": spikingjelly_multistep,
         "snntorch": snntorch_step}


@pytest.mark.parametrize("case", CASES)
def test_same_outputs_and_fisher_as_a_stateless_model(case):
    adapted, reference = CASES[case]()
    x, y = data()
    assert adapted.timesteps == T
    out = adapted(x)
    assert out.shape == (T, 6, C)
    torch.testing.assert_close(out, reference(x), rtol=0, atol=0)
    torch.testing.assert_close(adapted(x), out, rtol=0, atol=0)  # callable twice: no state survives
    torch.testing.assert_close(adapted(x.unsqueeze(0).expand(T, *x.shape)), out)  # per-timestep input [T, B, ...]
    got = temporal_fisher(adapted, x, y, estimator="empirical", batch_size=4)
    want = temporal_fisher(reference, x, y, estimator="empirical", batch_size=4)
    assert got.trace.dtype == torch.float64 and bool((got.trace > 0).all())
    torch.testing.assert_close(got.trace, want.trace)
    torch.testing.assert_close(got.stderr, want.stderr, equal_nan=True)


@pytest.mark.parametrize("case", CASES)
def test_robustness_evaluate_runs(case):
    adapted, _ = CASES[case]()
    x, y = data()
    res = robustness.evaluate(adapted, x, y, batch_size=4, pgd_iters=2, attack_timesteps=[0], progress=False)
    for k in ("clean", "gaussian", "blur", "fgsm", "pgd"):
        assert 0.0 <= res[k] <= 1.0


def test_reset_discovery_and_custom_reset():
    net = SnnNet()
    assert len(find_resets(net)) == 2  # the two neurons' reset_mem; their tensor `reset` is skipped
    cleared = []
    adapted = Stateless(nn.Sequential(nn.Flatten(), nn.Linear(D, C)), T, reset=lambda m: cleared.append(m))
    assert adapted(data()[0].float()).shape == (T, 6, C) and len(cleared) == 2  # before and after the run


def test_without_reset_the_state_survives_and_fisher_refuses():
    x, y = data()
    leaky = Stateless(SnnNet().double(), T, output="membrane", reset=lambda m: None)  # clears nothing: the control
    assert not torch.equal(leaky(x), leaky(x))
    with pytest.raises(ModelOutputError, match="keeps state"):
        temporal_fisher(leaky, x, y, batch_size=4)


def test_errors():
    x = data()[0].float()
    with pytest.raises(ConfigError, match="pass reset="):
        Stateless(nn.Sequential(nn.Flatten(), nn.Linear(D, C)), T)
    with pytest.raises(ModelOutputError, match=r"output='spikes'.*output='membrane'"):
        Stateless(SnnNet(), T)(x)
    with pytest.raises(ModelOutputError, match="expected per-timestep logits"):
        Stateless(nn.Sequential(nn.Flatten(), nn.Linear(D, C), SJLIFNode(), nn.Unflatten(1, (C, 1))), T)(x)
    with pytest.raises(ConfigError, match="mode"):
        Stateless(SnnNet(), T, mode="sequence")
    with pytest.raises(ConfigError, match="timesteps"):
        Stateless(SnnNet(), 0)
    with pytest.raises(ConfigError, match="timesteps"):
        Stateless(SnnNet(), T, output="spikes")(x.unsqueeze(0).expand(T + 1, *x.shape))
