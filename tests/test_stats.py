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

    assert cli.main(["stats", str(run), "--e-mac", "-1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "e_mac_pj" in err
    assert cli.main(["stats", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
