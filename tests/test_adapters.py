"""spiketide.adapters.Stateless: stateful SpikingJelly- and snnTorch-style models measured exactly like
hand-written stateless equivalents. snnTorch itself (1.0.0, in the `test` extra) is tested at the end, the README's
snnTorch example included: it is imported directly, so a missing snnTorch fails these tests instead of skipping them.
SpikingJelly cannot be a test dependency (its metadata requires torchvision and torchaudio): its tests run on models
written in its style."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import snntorch as snn
import torch
from snntorch import utils as snn_utils
from torch import nn

from spiketide import neuron, robustness
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


def reset_net(net):
    """As SpikingJelly's functional.reset_net: reset() on every module that has one."""
    for m in net.modules():
        if hasattr(m, "reset"):
            m.reset()


def spikingjelly_multistep_reset_net():
    net = sj_net("m")
    return Stateless(net, T, mode="multistep", reset=reset_net), SJReference(net)


def snntorch_step():
    net = SnnNet().double()
    return Stateless(net, T, output="membrane"), SnnReference(net)


CASES = {"spikingjelly-step": spikingjelly_step, "spikingjelly-multistep": spikingjelly_multistep,
         "spikingjelly-multistep-reset_net": spikingjelly_multistep_reset_net, "snntorch-style": snntorch_step}


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


# --- snnTorch 1.0.0 itself ---------------------------------------------------------------------------------------
# With beta = 1 - 1/tau, the input divided by tau and reset_mechanism="zero", snn.Leaky is spiketide's LIF (Eq. 1,
# threshold 1, hard reset to 0, reset detached); its membrane `mem` is U_t before the reset. TAU = 2 makes the
# division by tau (snnTorch side) and the product with 1/tau (spiketide side) the same float operation.

TAU = 2.0


def test_snntorch_default_surrogate_is_eq2():
    """snn.Leaky's default spike_grad, surrogate.atan(alpha=2): (alpha/2) / (1 + (pi alpha x / 2)^2) = Eq. 2."""
    x = torch.linspace(-3, 3, 600, dtype=torch.float64)  # 0 is not on this grid
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    sa, sb = snn.Leaky(beta=0.5).spike_grad(a), neuron.spike(b)
    assert sa.dtype == torch.float32  # snnTorch 1.0.0: float32 spikes whatever the input dtype
    torch.testing.assert_close(sa.double(), sb, rtol=0, atol=0)
    sa.sum().backward()
    sb.sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)
    zero = torch.zeros(1, dtype=torch.float64)  # the one difference: exactly at the threshold, x > 0 against x >= 0
    assert snn.Leaky(beta=0.5).spike_grad(zero).item() == 0.0 and neuron.spike(zero).item() == 1.0


def membrane_before_reset(cur):
    """Eq. 1 over [T, ...] (as neuron.lif_step), returning U_t before the reset: what snnTorch's Leaky returns."""
    u, out = torch.zeros_like(cur[0]), []
    for c in cur:
        u = u * (1.0 - 1.0 / TAU) + c * (1.0 / TAU)
        out.append(u)
        u = u * (1.0 - neuron.spike(u - 1.0).detach())
    return torch.stack(out)


class SnnHidden(nn.Module):
    """snnTorch, init_hidden=True: one timestep per call; the last Leaky returns (spk, mem)."""

    def __init__(self, init_hidden=True):
        super().__init__()
        torch.manual_seed(3)
        self.fc1, self.fc2 = nn.Linear(D, H), nn.Linear(H, C)
        self.lif1 = snn.Leaky(beta=1 - 1 / TAU, reset_mechanism="zero", init_hidden=init_hidden)
        self.lif2 = snn.Leaky(beta=1 - 1 / TAU, reset_mechanism="zero", init_hidden=init_hidden, output=init_hidden)
        with torch.no_grad():  # so that both layers spike (and reset) on pixels in [0, 1]
            self.fc1.weight.mul_(8)
            self.fc2.weight.mul_(12)

    def forward(self, x):
        spk1 = self.lif1(self.fc1(x.flatten(1)) / TAU)
        return self.lif2(self.fc2(spk1.to(x.dtype)) / TAU)  # snnTorch's spikes are float32


class SnnLoop(SnnHidden):
    """snnTorch tutorial style, init_hidden=False: explicit mem from init_leaky(), the loop over time in forward."""

    def __init__(self):
        super().__init__(init_hidden=False)

    def forward(self, x):  # [T, B, ...] -> ([T, B, C] spikes, [T, B, C] membranes)
        mem1, mem2 = self.lif1.init_leaky(), self.lif2.init_leaky()
        spk_rec, mem_rec = [], []
        for t in range(x.shape[0]):
            spk1, mem1 = self.lif1(self.fc1(x[t].flatten(1)) / TAU, mem1)
            spk2, mem2 = self.lif2(self.fc2(spk1.to(x.dtype)) / TAU, mem2)
            spk_rec.append(spk2)
            mem_rec.append(mem2)
        return torch.stack(spk_rec), torch.stack(mem_rec)


class SpiketideEquivalent(nn.Module):
    """SnnHidden / SnnLoop written stateless with spiketide's LIF, sharing their Linear layers."""

    def __init__(self, net):
        super().__init__()
        self.fc1, self.fc2, self.lif = net.fc1, net.fc2, neuron.LIF(tau=TAU, fast=False)

    def forward(self, x):
        xs = x if x.dim() == 5 else x.expand(T, *x.shape)
        spikes = self.lif(self.fc1(xs.flatten(2)))
        return membrane_before_reset(self.fc2(spikes))

    def spike_rates(self, x):
        with torch.no_grad():
            s1 = self.lif(self.fc1(x.expand(T, *x.shape).flatten(2)))
            return s1.mean().item(), neuron.lif_scan(self.fc2(s1), TAU).mean().item()


SNNTORCH = {
    "init_hidden-step": lambda net: Stateless(net, T, output="membrane"),
    "init_hidden-step-utils.reset": lambda net: Stateless(net, T, output="membrane", reset=snn_utils.reset),
    "init_leaky-loop-multistep": lambda net: Stateless(net, T, mode="multistep", output="membrane"),
}


# float64 networks: snnTorch's spikes are float32, so gradients through them are rounded to float32, beyond the
# hook engine's float64 check (1e-8); temporal_fisher then warns and uses its exact per-sample loop.
NO_HOOKS_WARNING = "ignore:spiketide.fisher. per-sample gradients:RuntimeWarning"


@pytest.mark.filterwarnings(NO_HOOKS_WARNING)
@pytest.mark.parametrize("case", SNNTORCH)
def test_snntorch_leaky_equals_spiketide_lif(case):
    net = (SnnLoop() if "loop" in case else SnnHidden()).double()
    adapted, reference = SNNTORCH[case](net), SpiketideEquivalent(net)
    x, y = data()
    rate1, rate2 = reference.spike_rates(x)
    assert 0.1 < rate1 < 0.9 and 0.05 < rate2 < 0.9  # both layers spike and reset
    out = adapted(x)
    assert out.dtype == torch.float64 and out.shape == (T, 6, C)
    torch.testing.assert_close(out, reference(x), rtol=0, atol=0)
    torch.testing.assert_close(adapted(x), out, rtol=0, atol=0)  # a second call: no state leaks between calls
    torch.testing.assert_close(adapted(x[:4]), out[:, :4], rtol=0, atol=0)  # another batch size
    torch.testing.assert_close(adapted(x.unsqueeze(0).expand(T, *x.shape)), out, rtol=0, atol=0)  # [T, B, ...]
    got = temporal_fisher(adapted, x, y, batch_size=4)
    want = temporal_fisher(reference, x, y, batch_size=4)
    assert bool((want.trace > 0).all())
    torch.testing.assert_close(got.trace, want.trace, rtol=1e-6, atol=0)
    grads = []  # the input gradient, what FGSM and PGD follow
    for model in (adapted, reference):
        xg = x.clone().requires_grad_()
        nn.functional.cross_entropy(model(xg).mean(0), y).backward()
        grads.append(xg.grad)
    assert grads[1].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-6, atol=1e-12)


@pytest.mark.filterwarnings(NO_HOOKS_WARNING)
def test_snntorch_utils_reset_misses_nested_neurons_the_default_reset_does_not():
    """snntorch.utils.reset looks only at the model's direct children: neurons one level down keep their state."""
    net = nn.Sequential(SnnHidden()).double()
    x, y = data()
    with_utils_reset = Stateless(net, T, output="membrane", reset=snn_utils.reset)
    assert not torch.equal(with_utils_reset(x), with_utils_reset(x))
    with pytest.raises(ModelOutputError, match="keeps state"):
        temporal_fisher(with_utils_reset, x, y, batch_size=4)
    default = Stateless(net, T, output="membrane")
    assert len(find_resets(net)) == 2  # the two Leaky's reset_mem, at any depth
    torch.testing.assert_close(default(x), SpiketideEquivalent(net[0])(x), rtol=0, atol=0)
    torch.testing.assert_close(default(x), default(x), rtol=0, atol=0)


def readme_example(marker):
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    (code,) = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if marker in b]
    return code


def test_readme_snntorch_example_runs_and_equals_spiketide_lif():
    """The README's snnTorch example, run as written (float32): same outputs and I_t as spiketide's LIF."""
    g = torch.Generator().manual_seed(4)
    images = 3 * torch.randn(8, 1, 28, 28, generator=g)  # the untrained network barely spikes on [0, 1] pixels
    labels = torch.randint(0, 10, (8,), generator=g)
    torch.manual_seed(0)
    scope = {"images": images, "labels": labels}
    exec(compile(readme_example("import torch, snntorch as snn"), "README.md", "exec"), scope)
    model, profile = scope["model"], scope["profile"]
    net = model.model
    assert isinstance(net.lif, snn.Leaky) and model.timesteps == 6 and net.tau == TAU

    class Reference(nn.Module):  # the README's Net written stateless with spiketide's LIF
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2, self.lif = net.fc1, net.fc2, neuron.LIF(tau=net.tau, fast=False)

        def forward(self, x):
            cur = self.fc1(x.flatten(1))
            return self.fc2(self.lif(cur.expand(6, *cur.shape)))

    reference = Reference()
    with torch.no_grad():
        rate = reference.lif(net.fc1(images.flatten(1)).expand(6, 8, 100)).mean().item()
    assert 0.1 < rate < 0.5
    out = model(images)
    assert out.shape == (6, 8, 10)
    torch.testing.assert_close(out, reference(images), rtol=0, atol=0)
    torch.testing.assert_close(model(images), out, rtol=0, atol=0)  # a second call: no state leaks between calls
    want = temporal_fisher(reference, images, labels)
    assert profile.trace.shape == (6,) and bool((want.trace > 0).all())
    torch.testing.assert_close(profile.trace, want.trace, rtol=1e-6, atol=0)


def test_snntorch_tic_example_trains_and_tracks_fisher(tmp_path):
    """examples/snntorch_tic.py, shortened: spiketide's Trainer on a real snnTorch model, Fisher tracked."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "examples" / "snntorch_tic.py"
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, str(script), "--out", str(out), "--epochs", "2"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    fisher = [r["fisher"] for r in rows if r.get("fisher")]
    assert [r["epoch"] for r in rows] == [0, 1, 2] and len(fisher) == 2  # at epoch 0 and at the end
    assert len(fisher[-1]["trace"]) == 6 and "IC" in done.stdout
    assert json.loads((out / "config.json").read_text())["model_class"] == "spiketide.adapters.Stateless"
