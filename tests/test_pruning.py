"""Tests for spiketide.pruning (masks, compute saving, T_retrain) and experiments.pruning (Fig. 7 runs)."""

from __future__ import annotations

import gzip
import json
import struct
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from spiketide import models, pruning
from spiketide.errors import CheckpointError, ConfigError
from spiketide.experiments import pruning as experiment
from spiketide.experiments.pruning import iterative_prune
from spiketide.pruning import (
    choose_t_retrain,
    compute_saving,
    prunable,
    prune_round,
    rewind_weights,
    sparsity,
)
from spiketide.runs import RunDir, atomic_write_json, load_checkpoint, save_checkpoint
from spiketide.checkpoints import apply_masks_from_state, load_model
from spiketide.config import TrainConfig
from spiketide.train import train


def tiny_convnet(T: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return models.create("convnet", num_classes=10, timesteps=T, in_channels=1, image_size=28, fast_lif=False)


# ----------------------------------------------------------------------------- a tiny run directory


def write_idx(path: Path, array: np.ndarray) -> None:
    array = np.asarray(array, dtype=np.uint8)
    magic = 2051 if array.ndim == 3 else 2049
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def make_fmnist(folder: Path, n_train: int = 20, n_test: int = 10, seed: int = 0) -> None:
    """Fashion-MNIST-format IDX files whose class is visible (a bright horizontal band per class)."""
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 60, (n, 28, 28), dtype=np.uint8)
        for i, c in enumerate(labels):
            images[i, 2 + 2 * c: 4 + 2 * c, :] = 250
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """convnet trained 1 epoch at T=3 on 20 images (checkpoints at epochs 0 and 1)."""
    base = tmp_path_factory.mktemp("pruning_run")
    make_fmnist(base / "data")
    cfg = TrainConfig(model="convnet", dataset="fashion-mnist", data_root=str(base / "data"), timesteps=3, epochs=1,
                      batch_size=20, eval_batch_size=20, lr=0.1, device="cpu", amp=False, fast_lif=False,
                      augment=False, checkpoint_epochs=[0], out=str(base / "run"), progress=False)
    train(cfg)
    return base / "run"


# ----------------------------------------------------------------------------- pruning rounds


def test_prunable_lists_conv_and_linear_weights():
    m = tiny_convnet()
    names = {n for n, mod in m.named_modules() if any(mod is p for p, _ in prunable(m))}
    assert names == {"stem.0", "block1.0", "block2.0", "fc"}
    assert all(name == "weight" for _, name in prunable(m))
    assert sparsity(m) == 0.0


@pytest.mark.parametrize("rate,rounds", [(0.5, 3), (0.3, 4), (0.8, 2)])
def test_sparsity_after_rounds(rate, rounds):
    m = tiny_convnet()
    values = [prune_round(m, rate) for _ in range(rounds)]
    assert values == sorted(values)
    assert sparsity(m) == pytest.approx(1 - (1 - rate) ** rounds, abs=1e-3)
    assert values[-1] == sparsity(m)


def test_pruning_is_global_by_magnitude_and_keeps_pruned_weights_pruned():
    m = tiny_convnet()
    prune_round(m, 0.5)
    first = {id(mod): mod.weight_mask.clone() for mod, _ in prunable(m)}
    with torch.no_grad():  # perturb the survivors, as retraining would
        for mod, _ in prunable(m):
            mod.weight_orig.add_(0.01 * torch.randn_like(mod.weight_orig))
    prune_round(m, 0.5)
    pruned, alive = [], []
    for mod, _ in prunable(m):
        mask = mod.weight_mask.bool()
        assert not (mask & ~first[id(mod)].bool()).any(), "a pruned weight came back"
        w = (mod.weight_orig * first[id(mod)]).abs()  # magnitudes the second round ranked
        pruned.append(w[first[id(mod)].bool() & ~mask])
        alive.append(w[mask])
    assert torch.cat(pruned).max() <= torch.cat(alive).min()  # one global threshold over all layers
    assert sparsity(m) == pytest.approx(0.75, abs=1e-4)


def test_prune_round_rejects_bad_amounts():
    m = tiny_convnet()
    for bad in (0, 1, 1.5, -0.1, True, "0.5"):
        with pytest.raises(ConfigError):
            prune_round(m, bad)
    with pytest.raises(ConfigError, match="no Conv1d"):
        prune_round(nn.Sequential(nn.ReLU()), 0.5)


def test_conv1d_is_prunable():
    m = nn.Sequential(nn.Conv1d(2, 4, 3), nn.Linear(4, 2))
    assert len(prunable(m)) == 2
    prune_round(m, 0.5)
    assert sparsity(m) == pytest.approx(0.5, abs=0.02)


# ----------------------------------------------------------------------------- masks in checkpoints


def test_masks_survive_save_and_load(tmp_path):
    m = tiny_convnet()
    prune_round(m, 0.5)
    prune_round(m, 0.5)
    # One SGD step on the pruned model: gradients reach weight_orig, the masks keep pruned weights at 0.
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    x = torch.rand(2, 1, 28, 28)
    m(x).mean(0).sum().backward()
    opt.step()
    cfg = TrainConfig(model="convnet", dataset="fashion-mnist", timesteps=3, device="cpu")
    save_checkpoint({"model": m.state_dict(), "config": cfg.to_dict(), "timesteps": 3}, tmp_path / "p.pt")
    state = load_checkpoint(tmp_path / "p.pt")
    assert any(k.endswith("weight_mask") for k in state["model"])

    fresh = tiny_convnet()
    names = apply_masks_from_state(fresh, state["model"])
    assert sorted(names) == ["block1.0.weight", "block2.0.weight", "fc.weight", "stem.0.weight"]
    fresh.load_state_dict(state["model"])
    loaded, _, _ = load_model(tmp_path / "p.pt")
    m.eval()
    expected = m(x)
    for other in (fresh, loaded):
        other.eval()
        assert torch.equal(other(x), expected)
        assert sparsity(other) == pytest.approx(0.75, abs=1e-4)
        for mod, _ in prunable(other):
            assert (mod.weight[mod.weight_mask == 0] == 0).all()
    # The mask stays in force when the loaded model is trained further.
    opt = torch.optim.SGD(loaded.parameters(), lr=0.5)
    loaded.train()
    loaded(x).mean(0).sum().backward()
    opt.step()
    loaded(x)
    for mod, _ in prunable(loaded):
        assert (mod.weight[mod.weight_mask == 0] == 0).all()


def test_apply_masks_on_already_pruned_model_and_errors():
    a, b = tiny_convnet(), tiny_convnet()
    prune_round(a, 0.5)
    prune_round(b, 0.2)
    apply_masks_from_state(b, a.state_dict())
    b.load_state_dict(a.state_dict())
    assert sparsity(b) == pytest.approx(sparsity(a))
    sd = dict(a.state_dict())
    sd["nothere.weight_orig"] = sd["fc.weight_orig"]
    sd["nothere.weight_mask"] = sd["fc.weight_mask"]
    with pytest.raises(CheckpointError, match="nothere"):
        apply_masks_from_state(tiny_convnet(), sd)
    sd = {"fc.weight_orig": torch.zeros(3, 3), "fc.weight_mask": torch.ones(3, 3)}
    with pytest.raises(CheckpointError, match="shape"):
        apply_masks_from_state(tiny_convnet(), sd)


def test_rewind_weights_keeps_masks_and_copies_early_values():
    early = tiny_convnet()
    early_state = {k: v.clone() for k, v in early.state_dict().items()}
    m = tiny_convnet()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)
        m.stem[1].running_mean.add_(3.0)
    prune_round(m, 0.5)
    masks = {k: v.clone() for k, v in m.state_dict().items() if k.endswith("_mask")}
    rewind_weights(m, early_state)
    sd = m.state_dict()
    for k, v in masks.items():
        assert torch.equal(sd[k], v)
    assert torch.equal(sd["fc.weight_orig"], early_state["fc.weight"])
    assert torch.equal(sd["fc.bias"], early_state["fc.bias"])
    assert torch.equal(sd["stem.1.running_mean"], early_state["stem.1.running_mean"])
    with pytest.raises(CheckpointError):
        rewind_weights(m, {"fc.weight": early_state["fc.weight"]})


# ----------------------------------------------------------------------------- compute saving, T_retrain choice


def test_compute_saving_paper_example_and_errors():
    assert compute_saving(300, 60, 5, 5, 3) == 20.0
    assert compute_saving(300, 60, 5, 5, 5) == 0.0
    assert compute_saving(300, 60, 5, 5, 2) == pytest.approx(30.0)
    assert compute_saving(10, 2, 1, 4, 1) == pytest.approx(100 * 2 * 3 / (40 + 8))
    for args in [(0, 60, 5, 5, 3), (300, 0, 5, 5, 3), (300, 60, 0, 5, 3), (300, 60, 5, 0, 3), (300, 60, 5, 5, 0),
                 (300, 60, 5, 5, 6), (300.5, 60, 5, 5, 3), (300, 60, 5, True, 1), (300, -1, 5, 5, 3)]:
        with pytest.raises(ConfigError):
            compute_saving(*args)


def test_choose_t_retrain_hand_traces():
    # [10, 1, 1, 1]: cumulative 10/13 = 76.9%, 11/13 = 84.6%, 12/13 = 92.3%, 100%.
    t, why = choose_t_retrain([10, 1, 1, 1], q=0.95)
    assert t == 4
    for frac in ("76.9%", "84.6%", "92.3%", "100.0%"):
        assert frac in why
    assert choose_t_retrain([10, 1, 1, 1], q=0.9)[0] == 3
    assert choose_t_retrain([10, 1, 1, 1], q=0.75)[0] == 1
    assert choose_t_retrain([1, 1, 1, 1], q=0.95)[0] == 4
    assert choose_t_retrain([1, 1, 1, 1], q=0.5)[0] == 2  # exactly reaching q counts
    assert choose_t_retrain(torch.tensor([5.0, 0.0, 0.0]), q=1.0)[0] == 1
    assert choose_t_retrain([3.0], q=0.95)[0] == 1
    t, why = choose_t_retrain([0, 0, 0])
    assert t == 3 and "zero" in why
    t, why = choose_t_retrain([8, 1.5, 0.4, 0.1], q=0.95)  # 80%, 95%, 99%, 100%
    assert t == 2 and "timesteps 3..4 carry 5.0%" in why


@pytest.mark.parametrize("trace,q", [([], 0.95), ([1, -1], 0.95), ([1, float("nan")], 0.95), ([[1, 2]], 0.95),
                                     ([1, 2], 0), ([1, 2], 1.5), ("abc", 0.95)])
def test_choose_t_retrain_errors(trace, q):
    with pytest.raises(ConfigError):
        choose_t_retrain(trace, q)


# ----------------------------------------------------------------------------- iterative pruning end to end


def test_iterative_prune_end_to_end(trained_run):
    result = iterative_prune(trained_run, rounds=2, rate=0.5, t_retrain=(2, 1), retrain_epochs=1, progress=False)
    out = trained_run / "pruning"
    for p in (out / "pruning.json", out / "pruning.md", trained_run / "figures" / "fig7_pruning.png",
              trained_run / "figures" / "fig7_pruning.pdf"):
        assert p.is_file(), p
    saved = json.loads((out / "pruning.json").read_text())
    assert saved["curves"] == json.loads(json.dumps(result["curves"]))
    assert result["T"] == 3 and result["rounds"] == 2 and result["rate"] == 0.5 and result["retrain_epochs"] == 1
    assert result["auto"] is None
    assert sorted(result["curves"]) == ["1", "2"]
    assert result["compute_saving"] == {"1": compute_saving(1, 1, 2, 3, 1), "2": compute_saving(1, 1, 2, 3, 2)}
    assert result["settings"]["lr"] == pytest.approx(0.1 * 0.1)  # default: run lr x 0.1
    for t, curve in result["curves"].items():
        assert len(curve["sparsity"]) == len(curve["test_acc"]) == 3
        assert curve["sparsity"][0] == 0.0
        assert curve["sparsity"] == sorted(curve["sparsity"])
        assert curve["sparsity"][-1] == pytest.approx(0.75, abs=1e-3)
        assert all(0 <= a <= 1 for a in curve["test_acc"])
        assert curve["test_acc"][0] == result["round0"]["test_acc"][t]
        # Retrained rounds: pruned weights are still exactly zero, and stay pruned in later rounds.
        prev = None
        for r in (1, 2):
            ckpt = out / f"T{t}" / f"round{r}" / "checkpoints" / "last.pt"
            assert curve["checkpoint"][r] == str(ckpt)
            model, cfg, _ = load_model(ckpt)
            assert model.timesteps == int(t) and cfg.timesteps == int(t) and cfg.epochs == 1
            model(torch.rand(2, 1, 28, 28))  # refresh the masked weights
            masks = {}
            for name, mod in model.named_modules():
                if isinstance(mod, (nn.Conv2d, nn.Linear)):
                    assert (mod.weight[mod.weight_mask == 0] == 0).all()
                    masks[name] = mod.weight_mask.bool()
            if prev is not None:
                assert all(not (masks[n] & ~prev[n]).any() for n in masks)
            prev = masks
            assert sparsity(model) == pytest.approx(curve["sparsity"][r])
    md = (out / "pruning.md").read_text()
    assert "| T_retrain |" in md and "75.0%" in md
    # A second run into the same folder is refused unless overwrite is asked for.
    with pytest.raises(ConfigError, match="overwrite"):
        iterative_prune(trained_run, rounds=1, t_retrain=(1,), retrain_epochs=1, progress=False)


def test_iterative_prune_auto_records_its_choice(trained_run, tmp_path, monkeypatch):
    seen = {}

    def fake_fisher(model, inputs, targets, estimator, batch_size):
        seen.update(shape=tuple(inputs.shape), dtype=inputs.dtype, max=float(inputs.max()), T=model.timesteps,
                    classes=torch.bincount(targets, minlength=10).tolist(), estimator=estimator)
        return [5.0, 1.0, 0.01]  # cumulative 83.2%, 99.8%, 100% -> t = 2 at q = 0.95

    monkeypatch.setattr(experiment, "_measure_fisher", fake_fisher)
    result = iterative_prune(trained_run, rounds=1, t_retrain="auto", retrain_epochs=1, fisher_samples=10,
                             out=tmp_path / "auto", progress=False)
    assert seen["shape"] == (10, 1, 28, 28) and seen["dtype"] == torch.float32 and seen["max"] <= 1.0
    assert seen["T"] == 3 and seen["classes"] == [1] * 10 and seen["estimator"] == "empirical"
    auto = result["auto"]
    assert auto["chosen"] == 2 and auto["q"] == 0.95 and auto["trace"] == [5.0, 1.0, 0.01]
    assert auto["cumulative_fraction"][1] == pytest.approx(6 / 6.01)
    assert "T_retrain = 2" in auto["explanation"]
    assert list(result["curves"]) == ["2"] and result["settings"]["t_retrain"] == "auto"
    assert len(result["curves"]["2"]["sparsity"]) == 2
    assert (tmp_path / "auto" / "fig7_pruning.png").is_file()
    assert "chosen automatically" in (tmp_path / "auto" / "pruning.md").read_text()
    saved = json.loads((tmp_path / "auto" / "pruning.json").read_text())
    assert saved["auto"]["chosen"] == 2


def test_measure_fisher_calls_the_fisher_engine(monkeypatch):
    calls = {}

    def temporal_fisher(model, inputs, targets, estimator="empirical", batch_size=64):
        calls.update(estimator=estimator, batch_size=batch_size, n=len(inputs))
        return types.SimpleNamespace(trace=torch.tensor([3.0, 2.0, 1.0]), centroid=1.67)

    monkeypatch.setattr(experiment, "temporal_fisher", temporal_fisher)
    trace = experiment._measure_fisher(tiny_convnet(), torch.rand(4, 1, 28, 28), torch.arange(4), "true", 16)
    assert trace == [3.0, 2.0, 1.0] and all(isinstance(v, float) for v in trace)
    assert calls == {"estimator": "true", "batch_size": 16, "n": 4}


def test_auto_choice_with_the_real_fisher_engine(trained_run):
    from spiketide import data

    model, cfg, _ = load_model(trained_run / "checkpoints" / "last.pt")
    train_set = data.load(cfg.dataset, "train", root=cfg.data_root)
    trace = experiment._measure_fisher(model, data.to_float(train_set.images[:10]), train_set.labels[:10],
                                    "empirical", 10)
    assert len(trace) == 3 and all(v >= 0 for v in trace)
    t, why = choose_t_retrain(trace, 0.95)
    assert 1 <= t <= 3 and f"T_retrain = {t}" in why


def test_iterative_prune_rewind(trained_run, tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="epoch 7"):
        iterative_prune(trained_run, rounds=1, t_retrain=(2,), rewind_epoch=7, out=tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()
    seen = []
    real = pruning.rewind_weights

    def spy(model, early_state):
        real(model, early_state)
        seen.append({k: v.clone() for k, v in model.state_dict().items()})

    monkeypatch.setattr(pruning, "rewind_weights", spy)  # experiments call it through the module
    result = iterative_prune(trained_run, rounds=1, t_retrain=(1,), retrain_epochs=1, rewind_epoch=0,
                             out=tmp_path / "r", progress=False)
    assert result["settings"]["rewind_epoch"] == 0 and len(seen) == 1
    init = load_checkpoint(trained_run / "checkpoints" / "epoch_0000.pt")["model"]
    for state in seen:  # right after pruning + rewinding: surviving weights are the epoch-0 ones, masks kept
        assert torch.equal(state["fc.weight_orig"], init["fc.weight"])
        assert torch.equal(state["stem.1.running_var"], init["stem.1.running_var"])
    assert seen[0]["fc.weight_mask"].mean() < 1
    assert result["curves"]["1"]["sparsity"][-1] == pytest.approx(0.5, abs=1e-3)
    first = json.loads((tmp_path / "r" / "T1" / "round1" / "config.json").read_text())
    assert first["pruning"]["rewind_epoch"] == 0 and first["pruning"]["T_retrain"] == 1


def test_t_retrain_list():
    assert experiment._t_retrain_list(None, 5) == [2, 3, 4, 5]  # the paper's Fig. 7
    assert experiment._t_retrain_list(None, 1) == [1]
    assert experiment._t_retrain_list((3, 1, 3), 4) == [1, 3]
    assert experiment._t_retrain_list(2, 4) == [2]
    for bad in ((5,), (0,), (), (1.5,), "2"):
        with pytest.raises(ConfigError):
            experiment._t_retrain_list(bad, 4)


def test_iterative_prune_argument_errors(trained_run, tmp_path):
    kw = dict(out=tmp_path / "x", progress=False)
    for bad in (dict(t_retrain=(4,)), dict(t_retrain=(0, 2)), dict(t_retrain=()), dict(t_retrain="fast"),
                dict(rate=0), dict(rate=1), dict(rate=1.2), dict(rounds=0), dict(retrain_epochs=0), dict(q=0),
                dict(lr=-1.0), dict(fisher_samples=0)):
        with pytest.raises(ConfigError):
            iterative_prune(trained_run, **kw, **bad)
    with pytest.raises(CheckpointError, match="not a run directory"):
        iterative_prune(tmp_path / "nothing", **kw)
    empty = RunDir(tmp_path / "empty")
    atomic_write_json(empty.config_path, {"model": "convnet"})
    with pytest.raises(CheckpointError, match="last.pt"):
        iterative_prune(empty.path, **kw)
    assert not (tmp_path / "x").exists()
