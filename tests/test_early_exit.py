"""Tests for spiketide.early_exit on toy models with known per-timestep outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spiketide import early_exit as ee
from spiketide.errors import ConfigError, ModelOutputError

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
