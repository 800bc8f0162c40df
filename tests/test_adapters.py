"""spiketide.adapters.Stateless: stateful SpikingJelly-, snnTorch- and Norse-style models measured exactly like
hand-written stateless equivalents, then against the real packages: snnTorch 1.0.0, SpikingJelly 2.0.0 and Norse
1.1.0 (the test install puts all three in; SpikingJelly and Norse without their declared dependencies, see the
README's Install), each wrapped model's I_t against an independent brute-force Eq. 6 in float64, and the README's
examples run as written. The packages are imported directly: a missing one fails these tests instead of skipping
them."""

from __future__ import annotations

import re
from pathlib import Path

import norse.torch as norse
import pytest
import snntorch as snn
import torch
from norse.torch.functional.threshold import threshold
from snntorch import utils as snn_utils
from spikingjelly.activation_based import functional as sj_functional
from spikingjelly.activation_based import layer as sj_layer
from spikingjelly.activation_based import neuron as sj_neuron
from spikingjelly.activation_based import surrogate as sj_surrogate
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


# --- SpikingJelly 2.0.0 and Norse 1.1.0 themselves -------------------------------------------------------------
# Each wrapped model's I_t is checked against Eq. 6 written out below, on the network run by the library's own loop
# (no Stateless, no spiketide.fisher): I_t = (1/N) sum_n ||grad_theta log softmax(mean_{s<=t} o_s(x_n))[y_n]||^2.

def brute_force_eq6(run, net, x, y):
    """Eq. 6, one sample and one horizon at a time; `run(x) -> [T, b, C]` is the library's own loop over time.
    In eval mode (BatchNorm running statistics), as temporal_fisher measures."""
    params = [p for p in net.parameters() if p.requires_grad]
    was = net.training
    net.eval()
    try:
        steps = len(run(x[:1]))
        trace = torch.zeros(steps, dtype=torch.float64)
        for n in range(len(x)):
            for t in range(1, steps + 1):
                horizon = run(x[n:n + 1])[:t].mean(0)
                lp = torch.log_softmax(horizon, -1)[0, y[n]]
                grads = torch.autograd.grad(lp, params, allow_unused=True)
                trace[t - 1] += sum(g.double().pow(2).sum() for g in grads if g is not None)
    finally:
        net.train(was)
    return trace / len(x)


def _scaled(*pairs):
    with torch.no_grad():  # so that every spiking layer fires on pixels in [0, 1]
        for lin, factor in pairs:
            lin.weight.mul_(factor)


def _sj_lif():
    return sj_neuron.LIFNode(tau=TAU, surrogate_function=sj_surrogate.ATan(), detach_reset=True)


def sj_real(step_mode="s", conv=False):
    """SpikingJelly 2.0.0: Linear-LIF-Linear-LIF-Linear, or Conv2d-BatchNorm2d-LIF-Linear-LIF-Linear; float64."""
    torch.manual_seed(5)
    if conv:
        net = nn.Sequential(sj_layer.Conv2d(1, 4, 3, padding=1), sj_layer.BatchNorm2d(4), _sj_lif(), sj_layer.Flatten(),
                            sj_layer.Linear(4 * 16, H), _sj_lif(), sj_layer.Linear(H, C))
        with torch.no_grad():
            net[1].running_mean.uniform_(-0.2, 0.2)
            net[1].running_var.uniform_(0.5, 2.0)
            net[1].weight.uniform_(0.5, 1.5)
        _scaled((net[0], 6), (net[4], 10))
    else:
        net = nn.Sequential(sj_layer.Flatten(), sj_layer.Linear(D, H), _sj_lif(), sj_layer.Linear(H, H), _sj_lif(),
                            sj_layer.Linear(H, C))
        _scaled((net[1], 6), (net[3], 9))
    net = net.double()
    if step_mode == "m":
        sj_functional.set_step_mode(net, "m")
    return net


def sj_loop(net, steps=T):
    """SpikingJelly's own way: reset_net, T single-step calls (or one multi-step call on [T, B, ...]), reset_net."""
    def run(x):
        sj_functional.reset_net(net)
        multi = net[-1].step_mode == "m"
        seq = x.unsqueeze(0).repeat(steps, *[1] * x.dim())
        out = net(seq) if multi else torch.stack([net(x) for _ in range(steps)])
        sj_functional.reset_net(net)
        return out
    return run


def _box():
    """Norse's LIF without a current term; dt * tau_mem_inv = 1 / tau makes its Euler step Eq. 1."""
    return norse.LIFBoxCell(norse.LIFBoxParameters(tau_mem_inv=torch.tensor(1 / TAU)), dt=1.0)


def norse_sequential():
    """Norse 1.1.0: SequentialState of LIFBoxCells, net(x, state) -> (out, list of states)."""
    torch.manual_seed(6)
    net = norse.SequentialState(nn.Flatten(), nn.Linear(D, H), _box(), nn.Linear(H, H), _box(), nn.Linear(H, C))
    _scaled((net[1], 6), (net[3], 4))
    return net.double()


class NorseOwn(nn.Module):
    """A Norse model written by hand, as Norse's tutorials do: the state a tuple of the cells' states, threaded
    through forward; a leaky-integrator readout (LICell), so the logits carry state too."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(7)
        self.fc1, self.lif1, self.fc2, self.lif2 = nn.Linear(D, H), _box(), nn.Linear(H, H), _box()
        self.fc3 = nn.Linear(H, C)
        self.li = norse.LICell(norse.LIParameters(tau_syn_inv=torch.tensor(0.5), tau_mem_inv=torch.tensor(0.5)), dt=1.0)
        _scaled((self.fc1, 6), (self.fc2, 9))

    def forward(self, x, state=None):
        s1, s2, s3 = (None, None, None) if state is None else state
        z1, s1 = self.lif1(self.fc1(x.flatten(1)), s1)
        z2, s2 = self.lif2(self.fc2(z1), s2)
        v, s3 = self.li(self.fc3(z2), s3)
        return v, (s1, s2, s3)


def norse_multistep():
    """Norse's multi-step LIF module (current-based) over [T, B, ...]: net(seq) -> (out [T, B, C], end state)."""
    torch.manual_seed(8)
    p = norse.LIFParameters(tau_syn_inv=torch.tensor(0.8), tau_mem_inv=torch.tensor(0.5))
    net = norse.SequentialState(nn.Flatten(2), nn.Linear(D, H), norse.LIF(p, dt=1.0), nn.Linear(H, C))
    _scaled((net[1], 6))
    return net.double()


def norse_loop(net, steps=T):
    """Norse's own way: the state starts as None and goes from each step into the next."""
    def run(x):
        state, outs = None, []
        for _ in range(steps):
            out, state = net(x, state)
            outs.append(out)
        return torch.stack(outs)
    return run


def norse_sequence(net):
    def run(x):
        return net(x.unsqueeze(0).repeat(T, *[1] * x.dim()))[0]
    return run


def spike_rates(net, kinds, run, x):
    """Mean output of each spiking module (element 0 of Norse's (z, state)) over one no-grad run, in eval mode."""
    rates = {}

    def hook(m, args, out):
        rates.setdefault(id(m), []).append(float((out[0] if isinstance(out, tuple) else out).mean()))

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, kinds)]
    was = net.training
    net.eval()
    try:
        with torch.no_grad():
            run(x)
    finally:
        net.train(was)
        for h in handles:
            h.remove()
    return [sum(r) / len(r) for r in rates.values()]


REAL = {  # name: (network, the library's own loop, Stateless of it, spiking module types)
    "spikingjelly-step": (sj_real, sj_loop, lambda net: Stateless(net, T), sj_neuron.LIFNode),
    "spikingjelly-step-reset_net": (sj_real, sj_loop, lambda net: Stateless(net, T, reset=sj_functional.reset_net),
                                    sj_neuron.LIFNode),
    "spikingjelly-multistep": (lambda: sj_real("m"), sj_loop, lambda net: Stateless(net, T, mode="multistep"),
                               sj_neuron.LIFNode),
    "spikingjelly-conv-bn-multistep": (lambda: sj_real("m", conv=True), sj_loop,
                                       lambda net: Stateless(net, T, mode="multistep"), sj_neuron.LIFNode),
    "norse-SequentialState": (norse_sequential, norse_loop, lambda net: Stateless(net, T), norse.LIFBoxCell),
    "norse-own-module": (lambda: NorseOwn().double(), norse_loop, lambda net: Stateless(net, T, state=True),
                         norse.LIFBoxCell),
    "norse-multistep-LIF": (norse_multistep, norse_sequence, lambda net: Stateless(net, T, mode="multistep"),
                            norse.LIF),
}


@pytest.mark.parametrize("case", REAL)
def test_real_library_models_give_eq6_exactly(case):
    make, loop, wrap, kinds = REAL[case]
    net = make().eval()  # BatchNorm's running statistics: outputs that do not depend on the batch
    run, adapted = loop(net), wrap(net)
    x, y = data()
    rates = spike_rates(net, kinds, run, x)
    assert rates and all(0.05 < r < 0.95 for r in rates), rates  # every spiking layer fires, and resets
    out = adapted(x)
    assert out.dtype == torch.float64 and out.shape == (T, 6, C)
    with torch.no_grad():
        torch.testing.assert_close(out, run(x), rtol=0, atol=0)
    torch.testing.assert_close(adapted(x), out, rtol=0, atol=0)  # a second call: no state survives
    torch.testing.assert_close(adapted(x[:4]), out[:, :4], rtol=0, atol=0)  # another batch size
    torch.testing.assert_close(adapted(x.unsqueeze(0).expand(T, *x.shape)), out, rtol=0, atol=0)  # [T, B, ...]
    got = temporal_fisher(adapted, x, y, batch_size=4)
    want = brute_force_eq6(run, net, x, y)
    assert bool((want > 0).all()) and not torch.allclose(want, want[0].expand(T))  # I_t depends on t
    torch.testing.assert_close(got.trace, want, rtol=1e-10, atol=0)


@pytest.mark.parametrize("case", ["spikingjelly-multistep", "norse-SequentialState", "norse-own-module"])
def test_robustness_evaluate_runs_on_real_library_models(case):
    make, _, wrap, _ = REAL[case]
    x, y = data()
    res = robustness.evaluate(wrap(make()), x, y, batch_size=4, pgd_iters=2, attack_timesteps=[0], progress=False)
    for k in ("clean", "gaussian", "blur", "fgsm", "pgd"):
        assert 0.0 <= res[k] <= 1.0


def test_norse_state_is_threaded_never_dropped():
    """The issue's path: a Norse model whose state cannot go back is refused (never run with its state dropped);
    dropping it on purpose (state=False) gives the same output at every step, far from the threaded run."""
    net = norse_sequential()
    x, _ = data()
    threaded = Stateless(net, T)(x)

    class Forgetful(nn.Module):  # forward takes no state: each call would start from a fresh state
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x)

    with pytest.raises(ConfigError, match="can be reset.*state argument"):
        Stateless(Forgetful(), T)
    for kwargs in ({"reset": lambda m: None}, {"reset": lambda m: None, "output": 0},
                   {"reset": lambda m: None, "output": lambda out: out[0]}):
        with pytest.raises(ModelOutputError, match=r"\(Tensor, list\).*takes no state"):
            Stateless(Forgetful(), T, **kwargs)(x)
    with pytest.raises(ModelOutputError, match="element 1 is the state"):
        Stateless(net, T, output="membrane")(x)
    with pytest.raises(ConfigError, match="state=True"):
        Stateless(sj_real(), T, state=True)
    dropped = Stateless(net, T, state=False, reset=lambda m: None, output=0)(x)  # explicitly asked for
    torch.testing.assert_close(dropped, dropped[0].expand_as(dropped), rtol=0, atol=0)
    assert (dropped - threaded).abs().max() > 0.1

    class NoState(nn.Module):  # takes a state argument but returns a bare tensor, and nothing can be reset
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(D, C)

        def forward(self, x, state=None):
            return self.fc(x.flatten(1))

    with pytest.raises(ModelOutputError, match="not \\(output, state\\)"):
        Stateless(NoState().double(), T)(x)


def test_norse_lifbox_forward_is_spiketide_lif():
    """LIFBoxCell with dt * tau_mem_inv = 1 / tau: spiketide's LIF forward, except exactly at the threshold, where
    Norse does not spike (v > theta) and spiketide does (v >= theta). Its gradients differ: SuperSpike surrogate,
    1 / (1 + |x|)^2 in Norse 1.1.0, and a reset that is not detached."""
    g = torch.Generator().manual_seed(9)
    cur = 2 * torch.rand(T, 50, 7, generator=g, dtype=torch.float64)
    cell, state, spikes = _box(), None, []
    for c in cur:
        z, state = cell(c, state)
        spikes.append(z)
    ours = neuron.LIF(tau=TAU, fast=False)(cur)
    assert 0.1 < float(ours.mean()) < 0.9
    torch.testing.assert_close(torch.stack(spikes), ours, rtol=0, atol=0)
    at_threshold = torch.full((1, 1), 2.0, dtype=torch.float64)  # u_1 = 2 / tau = 1 = theta exactly
    with torch.no_grad():
        assert cell(at_threshold)[0].item() == 0.0 and neuron.LIF(tau=TAU, fast=False)(at_threshold[None]).item() == 1.0
    v = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0], dtype=torch.float64, requires_grad=True)
    threshold(v, "super", 100.0).sum().backward()
    torch.testing.assert_close(v.grad, 1 / (1 + v.detach().abs()) ** 2)


def _pixels(n=8):
    g = torch.Generator().manual_seed(4)
    return 3 * torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


class LIFReference(nn.Module):
    """fc1 -> spiketide LIF -> fc2 of the README examples, written stateless: logits at every step."""

    def __init__(self, fc1, fc2, tau):
        super().__init__()
        self.fc1, self.fc2, self.lif = fc1, fc2, neuron.LIF(tau=tau, fast=False)

    def forward(self, x):
        cur = self.fc1(x.flatten(1))
        return self.fc2(self.lif(cur.expand(6, *cur.shape)))


def test_readme_spikingjelly_example_runs_and_equals_spiketide_lif():
    """The README's SpikingJelly example, run as written (float32): spiketide's LIF forward and gradients, so the
    same I_t as the network written with spiketide's LIF; and Eq. 6 brute force on SpikingJelly's own loop."""
    images, labels = _pixels()
    torch.manual_seed(0)
    scope = {"images": images, "labels": labels}
    exec(compile(readme_example("from spikingjelly.activation_based import"), "README.md", "exec"), scope)
    model, profile, net = scope["model"], scope["profile"], scope["net"]
    assert isinstance(model, Stateless) and model.timesteps == 6
    reference = LIFReference(net[1], net[3], net[2].tau)
    with torch.no_grad():
        rate = reference.lif(net[1](images.flatten(1)).expand(6, 8, 100)).mean().item()
    assert 0.1 < rate < 0.5
    out = model(images)
    torch.testing.assert_close(out, reference(images), rtol=0, atol=0)
    torch.testing.assert_close(model(images), out, rtol=0, atol=0)
    want = temporal_fisher(reference, images, labels)
    assert profile.trace.shape == (6,) and bool((want.trace > 0).all())
    torch.testing.assert_close(profile.trace, want.trace, rtol=1e-5, atol=0)
    torch.testing.assert_close(profile.trace, brute_force_eq6(sj_loop(net, 6), net, images, labels), rtol=1e-5, atol=0)


def test_readme_norse_example_runs_threads_the_state_and_gives_eq6():
    """The README's Norse example, run as written (float32): spiketide's LIF forward (no input lands exactly on the
    threshold here), and I_t equal to Eq. 6 brute force on Norse's own state-threading loop."""
    images, labels = _pixels()
    torch.manual_seed(0)
    scope = {"images": images, "labels": labels}
    exec(compile(readme_example("import torch, norse.torch as norse"), "README.md", "exec"), scope)
    model, profile, net = scope["model"], scope["profile"], scope["net"]
    assert isinstance(model, Stateless) and model.timesteps == 6 and isinstance(net[2], norse.LIFBoxCell)
    reference = LIFReference(net[1], net[3], scope["tau"])
    out = model(images)
    assert out.shape == (6, 8, 10)
    torch.testing.assert_close(out, reference(images))  # float32: Norse's Euler step rounds differently
    with torch.no_grad():
        cur = net[1](images.flatten(1))
        assert 0.1 < float(reference.lif(cur.expand(6, *cur.shape)).mean()) < 0.5
    want = brute_force_eq6(norse_loop(net, 6), net, images, labels)
    assert bool((want > 0).all())
    torch.testing.assert_close(profile.trace, want, rtol=1e-5, atol=0)  # float32: measured 3e-7


@pytest.mark.parametrize("marker,kind", [("from spikingjelly.activation_based import", sj_neuron.LIFNode),
                                         ("import torch, norse.torch as norse", norse.LIFBoxCell),
                                         ("import torch, snntorch as snn", snn.Leaky)])
def test_spike_stats_of_the_readme_models(marker, kind):
    """`stats.spike_stats(model, images, spiking_modules=[<the library's neuron>])` on each README example: firing
    rates per timestep of spiketide's LIF on the same currents, and SOPs = spikes x fan-out 10 of the last layer."""
    from spiketide.stats import spike_stats

    images, labels = _pixels()
    torch.manual_seed(0)
    scope = {"images": images, "labels": labels}
    exec(compile(readme_example(marker), "README.md", "exec"), scope)
    model = scope["model"]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    fc1 = linears[0]
    with torch.no_grad():
        fc1.weight.mul_(10)  # the untrained network barely spikes on pixels in [0, 1]
    pixels = images.clamp(0, 1)
    r = spike_stats(model, pixels, labels, spiking_modules=[kind])
    (rates,) = r["firing_rate"].values()
    with torch.no_grad():
        cur = fc1(pixels.flatten(1))
        want = neuron.LIF(tau=TAU, fast=False)(cur.expand(6, *cur.shape)).mean((1, 2))
    assert 0.05 < float(want.mean()) < 0.5
    assert rates == pytest.approx(want.tolist(), abs=1e-3)  # float32: a rare tie at the threshold may differ
    (sops,) = r["sops_per_image"].values()
    assert sops == pytest.approx([rate * 100 * 10 for rate in rates])
    assert r["nonbinary_inputs"] == [] and list(r["snn_macs_per_image"]) == [next(
        n for n, m in model.named_modules() if m is fc1)]
