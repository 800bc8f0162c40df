"""Tests for spiketide.stats: firing rates, SOPs and MACs against a hand-counted network, no kept activations,
the energy constants, and the `spiketide stats` command."""

from __future__ import annotations

import gc
import json
import weakref

import pytest
import torch
from torch import nn

from spiketide import cli
from spiketide.errors import ConfigError
from spiketide.neuron import LIF, lif_step
from spiketide.stats import EnergyModel, _events_times_fanout, spike_stats, stats_figure, summarize
from conftest import train_tiny_run

T = 2
# Two 2x2 images, flattened [x0, x1, x2, x3]. fc1 gives currents (4 x0, 3 x1, 0).
IMAGES = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.25, 1.0, 0.0, 0.0]]).view(2, 1, 2, 2)
# LIF, tau 2, threshold 1, hard reset: u_t = u_{t-1} / 2 + c / 2; a constant current c spikes at t = 1 iff c >= 2,
# and at t = 2 iff c >= 2 (reset, same again) or 4/3 <= c < 2 (u_2 = 3c/4).
#   image A: currents (2, 1.5, 0) -> t=1: [1, 0, 0], t=2: [1, 1, 0]
#   image B: currents (1, 3, 0)   -> t=1: [0, 1, 0], t=2: [0, 1, 0]
# spikes: t=1: 2 of 6, t=2: 3 of 6. fc2 (3 -> 2) fans each spike out to 2 outputs: SOPs 4 and 6, per image 2 and 3.
# MACs: fc1 4 x 3 = 12 (once per image: the current is repeated over T), fc2 3 x 2 = 6.
RATES = [2 / 6, 3 / 6]
SOPS = [2.0, 3.0]


def _fc(w: list[list[float]]) -> nn.Linear:
    fc = nn.Linear(len(w[0]), len(w), bias=False)
    with torch.no_grad():
        fc.weight.copy_(torch.tensor(w))
    return fc


class HandNet(nn.Module):
    """Linear(4 -> 3) once (direct encoding) -> LIF over T -> Linear(3 -> 2), folded or on [T, B, 3] directly."""

    def __init__(self, layout: str = "folded"):
        super().__init__()
        self.layout = layout
        self.fc1 = _fc([[4, 0, 0, 0], [0, 3, 0, 0], [0, 0, 0, 0]])
        self.lif = LIF(tau=2.0, v_threshold=1.0, fast=False)
        self.fc2 = _fc([[1, 1, 1], [1, -1, 0]])

    def forward(self, x):
        z = self.fc1(x.flatten(1))
        s = self.lif(z.unsqueeze(0).expand(T, *z.shape))
        if self.layout == "folded":
            return self.fc2(s.flatten(0, 1)).view(T, x.shape[0], 2)
        return self.fc2(s)  # nn.Linear on [T, B, 3]


class StepNeuron(nn.Module):
    """A single-step neuron as other libraries write them: (current, membrane) -> (spikes, membrane)."""

    def forward(self, x, u):
        return lif_step(x, u, 2.0, 1.0, True)


class StepNet(HandNet):
    """The same network written step by step: fc1, the neuron and fc2 run once per timestep."""

    def __init__(self):
        super().__init__()
        self.neuron = StepNeuron()

    def forward(self, x):
        u, outs = torch.zeros(x.shape[0], 3), []
        for _ in range(T):
            s, u = self.neuron(self.fc1(x.flatten(1)), u)
            outs.append(self.fc2(s))
        return torch.stack(outs)


def _check_hand_counts(r, snn_macs):
    assert r["T"] == T and r["n_images"] == 2
    assert list(r["firing_rate"].values()) == [pytest.approx(RATES)]
    assert r["overall_rate"] == pytest.approx(5 / 12)
    assert r["sops_per_image"] == {"fc2": pytest.approx(SOPS)}
    assert r["snn_macs_per_image"] == {"fc1": pytest.approx(snn_macs)}
    assert r["macs_per_image"] == {"fc1": 12, "fc2": 6}
    assert r["totals"] == {"sops_per_image": 5.0, "snn_macs_per_image": sum(snn_macs), "ann_macs_per_image": 18}
    assert r["nonbinary_inputs"] == []
    json.dumps(r)


@pytest.mark.parametrize("layout", ["folded", "multistep"])
@pytest.mark.parametrize("batch_size", [1, 2, 64])
def test_counts_match_hand_count(layout, batch_size):
    r = spike_stats(HandNet(layout), IMAGES, batch_size=batch_size)
    assert list(r["firing_rate"]) == ["lif"]
    _check_hand_counts(r, [12.0, 0.0])  # fc1 runs once per image; its output is shared by both timesteps
    e = r["energy"]
    assert e["snn_pj_per_image"] == pytest.approx(0.9 * 5 + 4.6 * 12)
    assert e["ann_pj_per_image"] == pytest.approx(4.6 * 18)
    assert e["ratio"] == pytest.approx((0.9 * 5 + 4.6 * 12) / (4.6 * 18))


@pytest.mark.parametrize("spec", [["neuron"], [StepNeuron], lambda name, m: name == "neuron"])
def test_step_mode_model_with_named_spiking_modules(spec):
    r = spike_stats(StepNet(), IMAGES, torch.tensor([0, 1]), batch_size=2, spiking_modules=spec)
    assert list(r["firing_rate"]) == ["neuron"]
    _check_hand_counts(r, [12.0, 12.0])  # here fc1 runs at every timestep


class PoolNet(HandNet):
    """HandNet with the spikes average-pooled (window 2, stride 1) before fc2: fc2's input is not binary.
    Pooled spikes per image: A t=1 [0.5, 0], t=2 [1, 0.5]; B t=1 [0.5, 0.5], t=2 [0.5, 0.5]."""

    def __init__(self):
        super().__init__()
        self.pool = nn.AvgPool1d(2, stride=1)
        self.fc2 = _fc([[1, 1], [1, -1]])

    def forward(self, x):
        z = self.fc1(x.flatten(1))
        s = self.lif(z.unsqueeze(0).expand(T, *z.shape)).flatten(0, 1)
        return self.fc2(self.pool(s.unsqueeze(1)).squeeze(1)).view(T, x.shape[0], 2)


def test_nonbinary_inputs_count_as_sops_or_as_the_peers_macs():
    """Default: fc2 (2 -> 2) fed pooled spikes counts non-zero inputs x fan-out 2: t=1 (1 + 2) x 2 / 2 images = 3,
    t=2 (2 + 2) x 2 / 2 = 4 per image. nonbinary="macs": its dense MACs, 2 x 2 per image and timestep, no SOPs."""
    default = spike_stats(PoolNet(), IMAGES)
    assert default["nonbinary"] == "sops" and default["nonbinary_inputs"] == ["fc2"]
    assert default["sops_per_image"] == {"fc2": pytest.approx([3.0, 4.0])}
    assert default["snn_macs_per_image"] == {"fc1": pytest.approx([12.0, 0.0])}
    macs = spike_stats(PoolNet(), IMAGES, nonbinary="macs", batch_size=1)
    assert macs["nonbinary"] == "macs" and macs["nonbinary_inputs"] == ["fc2"]
    assert macs["sops_per_image"] == {}
    assert macs["snn_macs_per_image"] == {"fc1": pytest.approx([12.0, 0.0]), "fc2": pytest.approx([4.0, 4.0])}
    assert macs["totals"] == {"sops_per_image": 0.0, "snn_macs_per_image": 20.0, "ann_macs_per_image": 16}
    assert macs["energy"]["snn_pj_per_image"] == pytest.approx(4.6 * 20)
    assert macs["firing_rate"] == default["firing_rate"] and macs["macs_per_image"] == default["macs_per_image"]
    # binary inputs count the same either way
    assert spike_stats(HandNet(), IMAGES, nonbinary="macs") == {**spike_stats(HandNet(), IMAGES), "nonbinary": "macs"}
    with pytest.raises(ConfigError, match="nonbinary"):
        spike_stats(PoolNet(), IMAGES, nonbinary="mac")


class SJCompared(nn.Module):
    """stem conv (pixels) -> LIF -> conv2 (binary spikes) -> LIF -> avgpool -> conv3 (pooled: non-binary) -> LIF -> fc
    (binary spikes), timesteps folded into the batch as the built-in models do."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem, self.lif0 = nn.Conv2d(1, 4, 3, padding=1, bias=False), LIF(2.0, fast=False)
        self.conv2, self.lif1 = nn.Conv2d(4, 6, 3, padding=1), LIF(2.0, fast=False)
        self.pool, self.conv3, self.lif2 = nn.AvgPool2d(2), nn.Conv2d(6, 6, 3, padding=1), LIF(2.0, fast=False)
        self.fc = nn.Linear(6 * 16, 10)
        with torch.no_grad():  # so that every layer fires
            for conv in (self.stem, self.conv2, self.conv3):
                conv.weight.mul_(8 if conv is not self.conv3 else 10)

    def forward(self, x):
        B, T4 = x.shape[0], 4
        z = self.stem(x)
        s = self.lif0(z.unsqueeze(0).expand(T4, *z.shape)).flatten(0, 1)
        s = self.lif1(self.conv2(s).unflatten(0, (T4, B))).flatten(0, 1)
        s = self.lif2(self.conv3(self.pool(s)).unflatten(0, (T4, B))).flatten(0, 1)
        return self.fc(s.flatten(1)).unflatten(0, (T4, B))


def test_counts_equal_spikingjelly_op_counters():
    """SpikingJelly 2.0.0's SynOpCounter and MACCounter on the same forward pass: the same SOPs on layers fed binary
    spikes (conv2 and fc, borders included) and the same stem MACs; on conv3, fed pooled spikes, SpikingJelly counts
    no SOPs and its dense MACs, which is what nonbinary="macs" counts (the default counts events x fan-out)."""
    from spikingjelly.activation_based.op_counter import DispatchCounterMode, MACCounter, SynOpCounter

    net = SJCompared().eval()
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    syn, mac = SynOpCounter(), MACCounter()
    with torch.no_grad(), DispatchCounterMode([syn, mac]):
        net(x)
    sj_sops = {k.split(".", 1)[1]: sum(v.values()) / 5 for k, v in syn.get_counts().items() if "." in k}
    sj_macs = {k.split(".", 1)[1]: sum(v.values()) / 5 for k, v in mac.get_counts().items() if "." in k}
    default, macs = spike_stats(net, x), spike_stats(net, x, nonbinary="macs")
    assert all(r > 0.01 for r in map(lambda v: sum(v) / len(v), default["firing_rate"].values()))
    assert default["nonbinary_inputs"] == ["conv3"] and sj_sops["conv3"] == 0 and sj_macs["conv3"] > 0
    for layer in ("conv2", "fc"):
        assert sum(default["sops_per_image"][layer]) == pytest.approx(sj_sops[layer], rel=1e-12) and sj_sops[layer] > 0
        assert sj_macs[layer] == 0
    assert sum(default["sops_per_image"]["conv3"]) > 0  # spiketide's default: events x fan-out
    for r in (default, macs):
        assert sum(r["snn_macs_per_image"]["stem"]) == sj_macs["stem"]
    assert {k: sum(v) for k, v in macs["sops_per_image"].items()} == pytest.approx({k: sj_sops[k] for k in ("conv2", "fc")})
    assert {k: sum(v) for k, v in macs["snn_macs_per_image"].items()} == {k: sj_macs[k] for k in ("stem", "conv3")}


def test_conv_sops_are_input_events_times_exact_fanout():
    torch.manual_seed(0)
    for conv in [nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2), nn.Conv2d(2, 3, (3, 2), padding=(0, 1),
                 dilation=2), nn.Conv2d(2, 4, 3, padding=1, padding_mode="circular"), nn.Conv1d(3, 5, 3, stride=2)]:
        x = (torch.rand(2, conv.in_channels, *[7] * len(conv.kernel_size)) < 0.3).float()
        # brute force: an all-ones conv's input gradient is each element's fan-out (output positions x channels)
        ones = type(conv)(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                          conv.dilation, conv.groups, bias=False, padding_mode=conv.padding_mode)
        nn.init.ones_(ones.weight)
        xg = x.clone().requires_grad_(True)
        ones(xg).sum().backward()
        want = (xg.grad * x).flatten(1).sum(1)  # per image, summed over its spikes
        assert torch.equal(_events_times_fanout(conv, x).float(), want[:, None])  # one column: no batch axis in a conv


def test_hooks_keep_no_activations_and_modes_are_restored():
    model = HandNet()
    model.train()
    model.fc2.eval()  # a submodule's own mode must come back too
    seen, alive_at_next_batch, modes = [], [], []

    def remember(mod, args, out):  # weak references only: this test must not keep them alive itself
        seen.append(weakref.ref(out))
        modes.append(mod.training)

    def check(mod, args):
        gc.collect()
        alive_at_next_batch.append(sum(r() is not None for r in seen))

    h1 = model.lif.register_forward_hook(remember)
    h2 = model.register_forward_pre_hook(check)
    try:
        spike_stats(model, IMAGES, batch_size=1)
    finally:
        h1.remove(), h2.remove()
    assert alive_at_next_batch == [0, 0]  # no spike tensor of batch 1 survived into batch 2
    assert modes == [False, False]
    assert model.training and model.lif.training and model.fc1.training and not model.fc2.training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_energy_follows_the_constants():
    base = spike_stats(HandNet(), IMAGES)["energy"]
    more = spike_stats(HandNet(), IMAGES, energy=EnergyModel(e_ac_pj=1.8))["energy"]
    assert more["constants"]["e_ac_pj"] == 1.8 and more["constants"]["source"] == "user"
    assert more["snn_pj_per_image"] - base["snn_pj_per_image"] == pytest.approx(0.9 * 5)  # only the AC part moves
    assert more["ann_pj_per_image"] == base["ann_pj_per_image"]
    no_mac = spike_stats(HandNet(), IMAGES, energy=EnergyModel(e_mac_pj=0.0))["energy"]
    assert no_mac["snn_pj_per_image"] == pytest.approx(0.9 * 5) and no_mac["ratio"] is None


def test_figure_and_summary():
    r = spike_stats(HandNet(), IMAGES)
    fig = stats_figure(r)
    assert len(fig.axes) == 3  # two panels and the colour bar
    assert "5 SOPs + 12 MACs" in summarize(r)


@pytest.mark.parametrize("kwargs,match", [
    ({"batch_size": 0}, "batch_size"),
    ({"energy": EnergyModel}, "EnergyModel"),
    ({"spiking_modules": ["nope"]}, "nope"),
    ({"spiking_modules": [3]}, "names"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        spike_stats(HandNet(), IMAGES, **kwargs)


def test_bad_inputs():
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        spike_stats(HandNet(), IMAGES * 3)
    with pytest.raises(ConfigError, match="no spiking layers"):
        spike_stats(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), IMAGES)
    with pytest.raises(ConfigError, match="e_ac_pj"):
        EnergyModel(e_ac_pj=-1)


def test_stats_command(tmp_path, capsys):
    run = tmp_path / "run"
    train_tiny_run(run)
    capsys.readouterr()
    assert cli.main(["stats", str(run), "--samples", "10", "--batch-size", "4", "--e-ac", "1.0", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "overall firing rate" in out and "SNN / ANN" in out
    r = json.loads((run / "stats.json").read_text())
    assert r["T"] == 2 and r["n_images"] == 10 and r["energy"]["constants"]["e_ac_pj"] == 1.0
    assert set(r["firing_rate"]) == {"lif0", "lif1", "lif2"}
    assert set(r["snn_macs_per_image"]) == {"stem.0"} and set(r["sops_per_image"]) == {"block1.0", "block2.0", "fc"}
    assert r["snn_macs_per_image"]["stem.0"][1] == 0  # the stem runs once; its output is repeated over T
    assert (run / "figures" / "stats.png").exists() and (run / "figures" / "stats.pdf").exists()
    graded = r["nonbinary_inputs"]  # layers after pooling, unless the spikes pooled were all zero (barely trained)
    assert r["nonbinary"] == "sops" and "block1.0" in graded and set(graded) <= {"block1.0", "block2.0", "fc"}

    out = tmp_path / "macs.json"
    assert cli.main(["stats", str(run), "--samples", "10", "--nonbinary", "macs", "--out", str(out), "--no-progress"]) == 0
    m = json.loads(out.read_text())
    assert m["nonbinary"] == "macs" and m["nonbinary_inputs"] == graded  # one batch: one call per layer
    assert set(m["snn_macs_per_image"]) == {"stem.0", *graded}
    assert set(m["sops_per_image"]) == {"block1.0", "block2.0", "fc"} - set(graded)
    assert m["snn_macs_per_image"]["block1.0"] == [m["macs_per_image"]["block1.0"]] * 2  # dense, at both timesteps
    assert m["totals"]["snn_macs_per_image"] > r["totals"]["snn_macs_per_image"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        cli.main(["stats", str(run), "--nonbinary", "events"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--nonbinary" in err

    assert cli.main(["stats", str(run), "--e-mac", "-1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "e_mac_pj" in err
    assert cli.main(["stats", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_spikingjelly_multistep_convs_count_as_their_single_step_twin():
    """SpikingJelly's step_mode="m" layers take [T, B, C, H, W] in one call; its counts equal those of the same
    network run step by step (per timestep, per layer and per image)."""
    from spikingjelly.activation_based import functional, layer, neuron, surrogate

    from spiketide.adapters import Stateless

    def net(mode):
        torch.manual_seed(0)
        m = nn.Sequential(layer.Conv2d(1, 4, 3, padding=1), neuron.LIFNode(surrogate_function=surrogate.ATan()),
                          layer.Conv2d(4, 6, 3, stride=2, padding=1), neuron.LIFNode(surrogate_function=surrogate.ATan()),
                          layer.Flatten(), layer.Linear(6 * 4 * 4, 3))
        with torch.no_grad():
            m[0].weight.mul_(4), m[2].weight.mul_(12)  # so that both spiking layers fire
        functional.set_step_mode(m, mode)
        return m

    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    step = spike_stats(Stateless(net("s"), 3, reset=functional.reset_net), x)
    multi = spike_stats(Stateless(net("m"), 3, mode="multistep", reset=functional.reset_net), x)
    assert all(sum(v) > 0 for v in step["sops_per_image"].values())  # the conv and the linear layer both counted
    for key in ("sops_per_image", "snn_macs_per_image", "firing_rate"):
        assert multi[key].keys() == step[key].keys(), key
        for name, values in step[key].items():
            assert multi[key][name] == pytest.approx(values, rel=1e-12), (key, name)
