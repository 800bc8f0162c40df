"""Tests for spiketide.early_exit on toy models with known per-timestep outputs, and the operations and energy
early exit saves on a hand-counted spiking network."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from spiketide import cli
from spiketide import early_exit as ee
from spiketide.errors import ConfigError, ModelOutputError
from spiketide.neuron import LIF, lif_step
from spiketide.stats import EnergyModel, spike_stats
from conftest import train_tiny_run

T = 4


class TableModel(nn.Module):
    """Returns pre-set logits ``table[:, i]`` for the image whose first pixel encodes i/255."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.register_buffer("table", table)  # [T, N, C]

    def forward(self, x):
        idx = (x[:, 0, 0, 0] * 255).round().long()
        return self.table[:, idx]


def table_images(n: int) -> torch.Tensor:
    x = torch.zeros(n, 1, 2, 2, dtype=torch.uint8)
    x[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    return x


class TinyLIF(nn.Module):
    def __init__(self, d_in: int = 12, n_cls: int = 3, hidden: int = 16):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d_in, hidden), nn.Linear(hidden, n_cls)

    def forward(self, x):
        u = torch.zeros(x.shape[0], self.fc1.out_features)
        outs = []
        for _ in range(T):
            u = 0.5 * u + 0.5 * self.fc1(x.flatten(1))
            s = (u > 0.2).float()
            u = u * (1 - s)
            outs.append(self.fc2(s) + 0.1 * self.fc2.bias)
        return torch.stack(outs)


def known_curve():
    # Sample 0: confident and right from t=1. Sample 1: wrong at t=1, becomes confident and
    # right at horizon 3. Sample 2: never confident (uniform-ish), right only by argmax at T.
    big, zero = 8.0, 0.0
    table = torch.zeros(T, 3, 2)
    table[:, 0] = torch.tensor([zero, big])                     # label 1, p ~ 0.9997 throughout
    table[0, 1] = torch.tensor([1.0, zero])                     # label 1: horizon 1 wrong (p 0.73)
    table[1:, 1] = torch.tensor([zero, big])                    # horizon 2 mean [0.5, 4] -> p 0.97
    table[:, 2] = torch.tensor([zero, 0.1])                     # label 1, p ~ 0.525
    labels = torch.tensor([1, 1, 1])
    return ee.exit_curve(TableModel(table), table_images(3), labels, thresholds=[0, 0.6, 0.9, 0.99, 1.0, 1.5])


def test_exit_curve_known_exits():
    c = known_curve()
    assert c["T"] == T and c["n"] == 3
    # horizon accuracies: t=1 -> samples 0, 2 right; t>=2 -> all right.
    assert c["fixed_T_accuracy"] == pytest.approx([2 / 3, 1, 1, 1])
    # th 0: everyone exits at t=1.
    assert c["mean_timesteps"][0] == 1.0 and c["accuracy"][0] == pytest.approx(2 / 3)
    assert c["exit_histogram"][0] == [3, 0, 0, 0]
    # th 0.6: sample 1 exits at t=1 (p=0.73, wrong); sample 2 never confident -> T.
    assert c["exit_histogram"][1] == [2, 0, 0, 1]
    assert c["accuracy"][1] == pytest.approx(2 / 3)
    # th 0.9: sample 1 waits until horizon 2 (p 0.97) and is right.
    assert c["exit_histogram"][2] == [1, 1, 0, 1]
    assert c["accuracy"][2] == 1.0 and c["mean_timesteps"][2] == pytest.approx((1 + 2 + 4) / 3)
    # th >= 1: no early exit, identical to the fixed-T result.
    for i in (4, 5):
        assert c["mean_timesteps"][i] == T
        assert c["accuracy"][i] == c["fixed_T_accuracy"][-1]


def test_exit_curve_extremes_on_lif():
    torch.manual_seed(0)
    model = TinyLIF()
    x = torch.rand(50, 3, 2, 2)
    y = torch.randint(0, 3, (50,))
    model.train()
    c = ee.exit_curve(model, x, y, batch_size=16)
    assert model.training
    assert c["thresholds"] == list(ee.DEFAULT_THRESHOLDS)
    assert c["mean_timesteps"][0] == 1.0
    assert c["accuracy"][0] == pytest.approx(c["fixed_T_accuracy"][0])
    assert c["mean_timesteps"][-1] == T
    assert c["accuracy"][-1] == pytest.approx(c["fixed_T_accuracy"][-1])
    assert all(a <= b for a, b in zip(c["mean_timesteps"], c["mean_timesteps"][1:]))
    assert all(sum(h) == 50 for h in c["exit_histogram"])


def test_exit_curve_validation():
    model = TinyLIF()
    x, y = torch.rand(4, 3, 2, 2), torch.randint(0, 3, (4,))
    with pytest.raises(ConfigError):
        ee.exit_curve(model, x, y, thresholds=[])
    with pytest.raises(ConfigError):
        ee.exit_curve(model, x, y[:2])

    class Bad(nn.Module):
        def forward(self, x):
            return torch.full((T, x.shape[0], 3), float("nan"))

    with pytest.raises(ModelOutputError, match="non-finite"):
        ee.exit_curve(Bad(), x, y)


def test_summarize_with_fisher():
    c = known_curve()
    text = ee.summarize(c, fisher_trace=[0.7, 0.2, 0.05, 0.05])
    assert "t=3" in text  # 0.7 + 0.2 + 0.05 = 95%
    assert "IC=1.45" in text  # (0.7 + 0.4 + 0.15 + 0.2) / 1
    assert "confidence > 0.9" in text  # cheapest threshold keeping full-T accuracy
    plain = ee.summarize(c)
    assert "Fisher" not in plain
    with pytest.raises(ConfigError):
        ee.summarize(c, fisher_trace=[1.0, 0.0])
    with pytest.raises(ConfigError):
        ee.summarize(c, fisher_trace=[0, 0, 0, 0])


def test_exit_curve_figure(tmp_path):
    from spiketide import plots

    paths = plots.save(ee.exit_curve_figure(known_curve()), tmp_path / "sub" / "exit.v1")
    assert [p.name for p in paths] == ["exit.v1.png", "exit.v1.pdf"]
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)


# ---- operations and energy saved by early exit, against a hand-counted network -------------------------------------
# fc1 (4 -> 3) gives currents (4 x0, 3 x1, 2.4 x2). LIF, tau 2, threshold 1, hard reset: u_t = u_{t-1} / 2 + c / 2.
# fc2 (3 -> 2) adds 3 to class 0 per spike of neuron 0 or 1; neuron 2 reaches both outputs with weight 0 (still
# two synapses, so two SOPs per spike) and never moves the logits.
#   A = [0.75, 0, 0, 0]: currents (3, 0, 0)     neuron 0 fires at t = 1, 2, 3; horizon p = sigmoid(3) = 0.953 always
#   B = [0, 0.5, 0.5, 0]: currents (0, 1.5, 1.2) neuron 1 fires at t = 2 (u 0.75, 1.125), neuron 2 at t = 3
#                          (u 0.6, 0.9, 1.05); horizon logit gaps 0, 1.5, 1: p = 0.5, 0.818, 0.731
#   C = [0, 0, 1, 0]:     currents (0, 0, 2.4)   neuron 2 fires at t = 1, 2, 3; p = 0.5 always
# SOPs per timestep (spikes x fan-out 2): A (2, 2, 2), B (0, 2, 2), C (2, 2, 2). fc1: 12 MACs per image, once
# (direct encoding) or at every timestep (step mode).
HT = 3
HAND_IMAGES = torch.tensor([[0.75, 0, 0, 0], [0, 0.5, 0.5, 0], [0, 0, 1.0, 0]]).view(3, 1, 2, 2)
HAND_LABELS = torch.tensor([0, 0, 0])
HAND_THRESHOLDS = [0, 0.6, 0.9, 0.96, 1.0]
# exit horizons per threshold: (A, B, C)
HAND_EXITS = [(1, 1, 1), (1, 2, 3), (1, 3, 3), (3, 3, 3), (3, 3, 3)]
SOPS_BY_SAMPLE = [(2, 2, 2), (0, 2, 2), (2, 2, 2)]


def _fc(w):
    fc = nn.Linear(len(w[0]), len(w), bias=False)
    with torch.no_grad():
        fc.weight.copy_(torch.tensor(w))
    return fc


class HandSNN(nn.Module):
    """Linear -> LIF -> Linear over HT timesteps: fc1 once and repeated (direct encoding), fc2 folded [T*B, 3] or
    multi-step [T, B, 3]; or, in step mode, fc1, a single-step neuron and fc2 once per timestep."""

    def __init__(self, layout: str):
        super().__init__()
        self.layout = layout
        self.fc1 = _fc([[4, 0, 0, 0], [0, 3, 0, 0], [0, 0, 2.4, 0]])
        self.lif = LIF(tau=2.0, v_threshold=1.0, fast=False)
        self.fc2 = _fc([[3, 3, 0], [0, 0, 0]])

    def forward(self, x):
        if self.layout == "stepwise":
            u, outs = torch.zeros(x.shape[0], 3), []
            for _ in range(HT):
                s, u = self.neuron(self.fc1(x.flatten(1)), u)
                outs.append(self.fc2(s))
            return torch.stack(outs)
        z = self.fc1(x.flatten(1))
        s = self.lif(z.unsqueeze(0).expand(HT, *z.shape))
        if self.layout == "folded":
            return self.fc2(s.flatten(0, 1)).view(HT, x.shape[0], 2)
        return self.fc2(s)


class StepNeuron(nn.Module):
    def forward(self, x, u):
        return lif_step(x, u, 2.0, 1.0, True)


def hand_model(layout):
    model = HandSNN(layout)
    if layout == "stepwise":
        model.neuron = StepNeuron()
    return model, (["neuron"] if layout == "stepwise" else None)


def expected_costs(macs_per_step):
    """Per threshold (SOPs, MACs) per sample, summed over each sample's own timesteps 1..t."""
    sops = [sum(sum(SOPS_BY_SAMPLE[i][:t]) for i, t in enumerate(exits)) / 3 for exits in HAND_EXITS]
    macs = [sum(sum(macs_per_step[:t]) for t in exits) / 3 for exits in HAND_EXITS]
    return sops, macs


@pytest.mark.parametrize("layout", ["folded", "multistep", "stepwise"])
@pytest.mark.parametrize("batch_size", [1, 2, 64])
def test_operations_saved_match_hand_count(layout, batch_size):
    model, spiking = hand_model(layout)
    c = ee.exit_curve(model, HAND_IMAGES, HAND_LABELS, thresholds=HAND_THRESHOLDS, batch_size=batch_size,
                      spiking_modules=spiking)
    assert c["exit_histogram"] == [[e.count(t) for t in (1, 2, 3)] for e in HAND_EXITS]
    macs_per_step = [12, 12, 12] if layout == "stepwise" else [12, 0, 0]
    sops, macs = expected_costs(macs_per_step)
    assert sops == pytest.approx([4 / 3, 10 / 3, 4, 16 / 3, 16 / 3])  # the hand count, spelled out
    ops = c["operations"]
    assert ops["sops_per_sample"] == pytest.approx(sops)
    assert ops["macs_per_sample"] == pytest.approx(macs)
    energy = [0.9 * s + 4.6 * m for s, m in zip(sops, macs)]
    assert ops["energy_pj_per_sample"] == pytest.approx(energy)
    full_pj = 0.9 * 16 / 3 + 4.6 * sum(macs_per_step)
    assert ops["full_T"] == pytest.approx({"sops_per_sample": 16 / 3, "macs_per_sample": sum(macs_per_step),
                                           "energy_pj_per_sample": full_pj})
    assert ops["sops_saved_per_sample"] == pytest.approx([16 / 3 - s for s in sops])
    assert ops["sops_saving"] == pytest.approx([1 - s / (16 / 3) for s in sops])
    assert ops["energy_saved_pj_per_sample"] == pytest.approx([full_pj - e for e in energy])
    assert ops["energy_saving"] == pytest.approx([1 - e / full_pj for e in energy])
    # threshold 1: nobody exits early, nothing saved (exactly); threshold 0: everyone pays for t = 1 only
    assert ops["energy_saving"][-1] == 0.0 and ops["sops_saved_per_sample"][-1] == 0.0
    assert c["mean_timesteps"][0] == 1.0 and ops["sops_per_sample"][0] == pytest.approx(4 / 3)
    assert ops["per_timestep"] == {"sops_per_sample": pytest.approx([4 / 3, 2, 2]),
                                   "macs_per_sample": pytest.approx(macs_per_step)}
    assert ops["energy_constants"]["e_ac_pj"] == 0.9 and ops["energy_constants"]["e_mac_pj"] == 4.6
    assert ops["nonbinary_inputs"] == []
    assert all(not m._forward_hooks for m in model.modules())
    json.dumps(c)
    # the full-T reference is what `spike_stats` counts
    totals = spike_stats(model, HAND_IMAGES, batch_size=batch_size, spiking_modules=spiking)["totals"]
    assert ops["full_T"]["sops_per_sample"] == pytest.approx(totals["sops_per_image"])
    assert ops["full_T"]["macs_per_sample"] == pytest.approx(totals["snn_macs_per_image"])


def test_operations_follow_the_energy_constants_and_can_be_off():
    model, _ = hand_model("folded")
    c = ee.exit_curve(model, HAND_IMAGES, HAND_LABELS, thresholds=HAND_THRESHOLDS, energy=EnergyModel(2.0, 0.0))
    sops, _ = expected_costs([12, 0, 0])
    assert c["operations"]["energy_pj_per_sample"] == pytest.approx([2.0 * s for s in sops])
    assert c["operations"]["energy_constants"]["source"] == "user"
    text = ee.summarize(c)
    assert "e_ac 2 pJ, e_mac 0 pJ" in text and "energy saved" in text
    assert text.count("\n") >= len(HAND_THRESHOLDS) + 3  # a row per threshold
    off = ee.exit_curve(model, HAND_IMAGES, HAND_LABELS, thresholds=HAND_THRESHOLDS, energy=None)
    assert off["operations"] is None and off["exit_histogram"] == c["exit_histogram"]
    assert "not counted" in ee.summarize(off)
    assert known_curve()["operations"] is None  # no spiking layers to count
    with pytest.raises(ConfigError, match="EnergyModel"):
        ee.exit_curve(model, HAND_IMAGES, HAND_LABELS, energy=EnergyModel)


def test_summary_names_the_energy_saved_by_the_chosen_threshold():
    model, _ = hand_model("folded")
    c = ee.exit_curve(model, HAND_IMAGES, HAND_LABELS, thresholds=HAND_THRESHOLDS)
    c["accuracy"] = [1.0] * len(HAND_THRESHOLDS)  # every threshold keeps accuracy: the cheapest, 0, is chosen
    line = [ln for ln in ee.summarize(c).splitlines() if ln.startswith("Exiting")][0]
    assert "confidence > 0 " in line and "5.64e-05 uJ per sample (6% less energy than all T)" in line


def test_early_exit_command_reports_operations(tmp_path, capsys):
    run = tmp_path / "run"
    train_tiny_run(run)
    capsys.readouterr()
    assert cli.main(["early-exit", str(run), "--samples", "10", "--fisher-samples", "4", "--batch-size", "4",
                     "--e-ac", "1.0", "--thresholds", "0,0.9,1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "Per sample, all T:" in out and "e_ac 1 pJ, e_mac 4.6 pJ" in out
    ops = json.loads((run / "early_exit.json").read_text())["operations"]
    per_threshold = ["sops_per_sample", "macs_per_sample", "energy_pj_per_sample", "sops_saved_per_sample",
                     "sops_saving", "energy_saved_pj_per_sample", "energy_saving"]
    assert set(ops) == set(per_threshold) | {"full_T", "per_timestep", "nonbinary_inputs", "energy_constants"}
    assert all(len(ops[k]) == 3 for k in per_threshold)
    assert ops["energy_constants"]["e_ac_pj"] == 1.0 and ops["energy_saving"][-1] == 0.0
    assert ops["sops_per_sample"][-1] == ops["full_T"]["sops_per_sample"] > ops["sops_per_sample"][0] > 0
    assert ops["per_timestep"]["macs_per_sample"][1] == 0  # the stem runs once per image

    assert cli.main(["early-exit", str(run), "--e-mac", "-1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "e_mac_pj" in err


def test_a_layer_without_a_batch_axis_cannot_be_split_into_images():
    class Pooled(HandSNN):
        """fc2 sees [T, 3], the spikes summed over the batch: its SOPs have a total per timestep, no per image."""

        def forward(self, x):
            z = self.fc1(x.flatten(1))
            s = self.lif(z.unsqueeze(0).expand(HT, *z.shape))
            return self.fc2(s.sum(1)).unsqueeze(1).expand(HT, x.shape[0], 2)

    model = Pooled("folded")
    assert spike_stats(model, HAND_IMAGES, batch_size=2)["sops_per_image"]["fc2"]  # totals are still counted
    with pytest.raises(ConfigError, match="cannot tell the images of layer 'fc2' apart.*energy=None"):
        ee.exit_curve(model, HAND_IMAGES, HAND_LABELS, batch_size=2)
    assert all(not m._forward_hooks for m in model.modules())
    assert ee.exit_curve(model, HAND_IMAGES, HAND_LABELS, batch_size=2, energy=None)["operations"] is None
