import json
import os
import subprocess
import sys

import pytest
import torch

from spiketide.errors import CheckpointError, ConfigError, TrainingDiverged
from spiketide.runs import RunDir, load_checkpoint
from spiketide.callbacks import Callback
from spiketide.checkpoints import load_model
from spiketide.config import TrainConfig
from spiketide.train import Trainer, train

VOLATILE = {"seconds", "images_per_second"}


def tiny(tmp_path, name="run", **kw):
    base = dict(model="convnet", dataset="fashion-mnist", subset=40, test_subset=20, timesteps=2, epochs=3,
                batch_size=20, lr=0.1, out=str(tmp_path / name), progress=False, fast_lif=False)
    base.update(kw)
    return TrainConfig(**base)


def stable(records):
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in records]


def test_run_directory_contents(tmp_path):
    trainer = train(tiny(tmp_path, checkpoint_epochs=[1]))
    run = RunDir(tmp_path / "run")
    config = json.loads(run.config_path.read_text())
    assert config["model"] == "convnet" and config["timesteps"] == 2 and config["spiketide_version"]
    assert "git_commit" in config and config["train_size"] == 40
    records = run.read_metrics()
    assert [r["epoch"] for r in records] == [0, 1, 2, 3]
    for r in records[1:]:
        for key in ("train_loss", "train_acc", "test_acc", "lr", "seconds", "images_per_second"):
            assert isinstance(r[key], float), key
        assert len(r["horizon_loss"]) == 2
    assert records[1]["lr"] > records[3]["lr"]  # cosine schedule
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["epoch_0001.pt", "epoch_0003.pt", "last.pt"]
    state = load_checkpoint(run.checkpoint_path())
    assert state["epoch"] == 3 and state["config"]["lr"] == 0.1
    assert set(state) >= {"model", "optimizer", "scheduler", "rng", "config"}
    model, cfg, _ = load_model(run.checkpoint_path(1))
    assert cfg.epochs == 3 and model(torch.rand(2, 1, 28, 28)).shape == (2, 2, 10)
    assert trainer.history[-1]["epoch"] == 3


class KillAt(Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, trainer, record):
        if record["epoch"] == self.epoch:
            raise KeyboardInterrupt  # killed before this epoch's line and checkpoint were written


def test_resume_matches_uninterrupted_run(tmp_path):
    full = train(tiny(tmp_path, "full"))
    with pytest.raises(KeyboardInterrupt):
        train(tiny(tmp_path, "killed"), callbacks=[KillAt(2)])
    killed = RunDir(tmp_path / "killed")
    assert [r["epoch"] for r in killed.read_metrics()] == [0, 1]
    resumed = train(tiny(tmp_path, "killed"), resume=True)
    assert stable(killed.read_metrics()) == stable(RunDir(tmp_path / "full").read_metrics())
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def test_existing_run_needs_resume(tmp_path):
    train(tiny(tmp_path, epochs=1))
    with pytest.raises(ConfigError, match="--resume"):
        train(tiny(tmp_path, epochs=1))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    class NaNAfter(Callback):
        def on_epoch_end(self, trainer, record):
            if record["epoch"] == 1:
                trainer.loss_fn = lambda out, y, mean: out.sum() * float("nan")

    with pytest.raises(TrainingDiverged, match="epoch 2"):
        train(tiny(tmp_path), callbacks=[NaNAfter()])
    state = load_checkpoint(RunDir(tmp_path / "run").checkpoint_path())
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


@pytest.mark.parametrize("change,match", [
    (dict(tau=0.0), "tau"), (dict(timesteps=0), "timesteps"), (dict(model="lenet"), "unknown model"),
    (dict(dataset="mnist"), "mnist"), (dict(checkpoint_epochs=[5]), "checkpoint epochs"),
    (dict(loss="alpha"), "alpha"), (dict(lr=0.0), "learning rate"),
])
def test_config_validation(tmp_path, change, match):
    with pytest.raises(ConfigError, match=match):
        tiny(tmp_path, **change).validate()


def test_subset_larger_than_split(tmp_path):
    with pytest.raises(ConfigError, match="60000"):
        Trainer(tiny(tmp_path, subset=70000))
    assert not (tmp_path / "run").exists()  # nothing half-written


def _ddp_run(tmp_path, name, nproc):
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_port", str(29600 + nproc),
           "-m", "spiketide.cli", "train", "--model", "convnet", "--dataset", "fashion-mnist", "--subset", "40",
           "--test-subset", "20", "-T", "2", "--epochs", "1", "-b", "20", "--lr", "0.1", "--no-progress",
           "--checkpoint-epochs", "0",
           "--device", "cpu", "--out", str(tmp_path / name)]
    env = {**os.environ, "SPIKETIDE_NO_COMPILE": "1", "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    ckpt = tmp_path / name / "checkpoints"
    return load_checkpoint(ckpt / "epoch_0000.pt")["model"], load_checkpoint(ckpt / "last.pt")["model"]


def test_ddp_two_processes_match_one_process(tmp_path):
    init1, one = _ddp_run(tmp_path, "one", 1)
    init2, two = _ddp_run(tmp_path, "two", 2)
    assert json.loads((tmp_path / "two" / "config.json").read_text())["world_size"] == 2
    for k, v in init1.items():
        assert torch.equal(init2[k], v), k
    # Same updates up to float summation order: BN statistics summed across ranks can flip a spike
    # that sits on the threshold, so compare against how far the weights moved. (Per-rank BN
    # statistics instead of global ones give ~30% on the stem.)
    rel = []
    for k, w0 in init1.items():
        if k.endswith("weight") or k.endswith("bias"):
            moved = (one[k] - w0).norm()
            assert moved > 0, k
            rel.append(((two[k] - one[k]).norm() / moved).item())
    assert max(rel) < 0.05, rel
    assert sorted(rel)[len(rel) // 2] < 0.01, rel
    m1 = RunDir(tmp_path / "one").read_metrics()[-1]
    m2 = RunDir(tmp_path / "two").read_metrics()[-1]
    assert m1["train_acc"] == m2["train_acc"]
    assert abs(m1["train_loss"] - m2["train_loss"]) < 1e-4


# --- bugs found in the architecture pass ------------------------------------------------------

def _lifs(model):
    from spiketide.neuron import LIF

    return [m for m in model.modules() if isinstance(m, LIF)]


def test_fast_path_is_per_model_not_per_process(tmp_path):
    slow = Trainer(tiny(tmp_path, "slow", fast_lif=False))
    fast = Trainer(tiny(tmp_path, "fast", fast_lif=True))
    assert not any(m.fast for m in _lifs(slow.model))
    assert all(m.fast for m in _lifs(fast.model))  # one fast_lif=False run no longer switches it off for good


class Recorder(Callback):
    def __init__(self, key, log):
        self.key, self.log, self.count = key, log, 0

    def on_fit_start(self, trainer):
        self.log.append(("start", self.key))

    def on_epoch_end(self, trainer, record):
        self.count += 1

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = state["count"]


def test_resume_runs_callback_setup_and_restores_state_by_key(tmp_path):
    log = []
    with pytest.raises(KeyboardInterrupt):
        train(tiny(tmp_path), callbacks=[Recorder("a", log), Recorder("b", log), KillAt(2)])
    a, b = Recorder("a", log), Recorder("b", log)
    log.clear()
    train(tiny(tmp_path), callbacks=[b, a], resume=True)  # handed in the other order
    assert sorted(log) == [("start", "a"), ("start", "b")]
    assert a.count == b.count == 4  # epochs 0, 1 before the kill (restored), then 2, 3


def test_evaluation_keeps_submodule_modes():
    from spiketide.evaluation import accuracy
    from spiketide.models import create

    model = create("convnet", num_classes=10, timesteps=2, in_channels=1, image_size=28, fast_lif=False).train()
    model.stem[1].eval()  # a BatchNorm deliberately frozen
    accuracy(model, torch.zeros(4, 1, 28, 28, dtype=torch.uint8), torch.zeros(4, dtype=torch.long), 2)
    assert model.training and not model.stem[1].training and model.block1[1].training


@pytest.mark.parametrize("change,match", [
    (dict(fisher_batch_size=0), "fisher_batch_size"), (dict(momentum=-1.0), "momentum"),
    (dict(weight_decay=-1.0), "weight-decay"), (dict(lr=float("nan")), "learning rate"),
    (dict(eval_every=0), "eval-every"),
])
def test_more_config_validation(tmp_path, change, match):
    with pytest.raises(ConfigError, match=match):
        Trainer(tiny(tmp_path, **change))
    assert not (tmp_path / "run").exists()  # caught before anything is written


def test_eval_every_leaves_unmeasured_epochs_null_and_always_tests_the_last(tmp_path):
    train(tiny(tmp_path, epochs=5, eval_every=2))
    acc = [r["test_acc"] for r in RunDir(tmp_path / "run").read_metrics()]
    assert [a is not None for a in acc] == [True, False, True, False, True, True]


def _ddp_worker(rank, world, init, out):
    import torch.distributed as dist
    from torch import nn

    from spiketide.losses import alpha_loss, mean_output_ce
    from spiketide.train import _global_mean, _GlobalBatchNorm2d

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.manual_seed(0)
    lin = nn.Linear(4, 3).double()
    x, y = torch.randn(7, 4, dtype=torch.float64), torch.randint(0, 3, (7,))  # 7 does not divide by 2
    xs, ys = x[rank::world], y[rank::world]
    res = {}
    for name, fn in (("ce", mean_output_ce), ("alpha", lambda o, t, m: alpha_loss(o, t, 0.5, m))):
        lin.zero_grad()
        loss = fn(lin(xs).unsqueeze(0).expand(2, -1, -1), ys, _global_mean(len(y)))
        loss.backward()
        g = lin.weight.grad.clone()
        dist.all_reduce(g)
        res[name] = (loss.item(), (g / world).tolist())  # DDP averages gradients over ranks
    bn = nn.BatchNorm2d(2)
    bn.__class__ = _GlobalBatchNorm2d
    z = (torch.randn(7, 2, 3, 3) * 40 + 300).bfloat16()
    res["bn"] = bn(z[rank::world]).dtype == torch.float32 and torch.allclose(
        bn.running_mean, 0.9 * 0 + 0.1 * z.float().mean((0, 2, 3)), rtol=1e-5)
    if rank == 0:
        torch.save(res, out)
    dist.destroy_process_group()


def test_ddp_loss_is_the_global_batch_mean(tmp_path):
    import torch.multiprocessing as mp
    from torch import nn

    from spiketide.losses import alpha_loss, mean_output_ce

    out = tmp_path / "res.pt"
    mp.spawn(_ddp_worker, args=(2, f"file://{tmp_path / 'init'}", str(out)), nprocs=2)
    res = torch.load(out)
    torch.manual_seed(0)
    lin = nn.Linear(4, 3).double()
    x, y = torch.randn(7, 4, dtype=torch.float64), torch.randint(0, 3, (7,))
    for name, fn in (("ce", mean_output_ce), ("alpha", lambda o, t: alpha_loss(o, t, 0.5))):
        lin.zero_grad()
        loss = fn(lin(x).unsqueeze(0).expand(2, -1, -1), y)
        loss.backward()
        # (the losses compute in float32; the mean of per-rank means would be off by ~1e-2 here)
        assert res[name][0] == pytest.approx(loss.item(), rel=1e-5), name
        torch.testing.assert_close(torch.tensor(res[name][1], dtype=torch.float64), lin.weight.grad, rtol=1e-5, atol=1e-7)
    assert res["bn"]  # statistics in float32 under bf16 inputs, and those of the global batch


class _Wrapped(torch.nn.Module):
    """A model built in Python, outside spiketide's registry (as with adapters.Stateless)."""

    def __init__(self):
        super().__init__()
        from spiketide.models import create

        self.inner = create("convnet", num_classes=10, timesteps=2, in_channels=1, image_size=28, fast_lif=False)
        self.timesteps = 2

    def forward(self, x):
        return self.inner(x)


def test_a_python_built_model_is_refused_by_load_model_in_one_line(tmp_path, capsys):
    from spiketide import cli

    train_config = tiny(tmp_path, epochs=1)
    Trainer(train_config, model=_Wrapped()).fit()
    run = RunDir(tmp_path / "run")
    assert json.loads(run.config_path.read_text())["model_class"].endswith("test_train._Wrapped")
    with pytest.raises(CheckpointError, match=r"built in Python \(.*_Wrapped\)"):
        load_model(run.checkpoint_path())
    capsys.readouterr()
    assert cli.main(["robustness", str(run.path), "--samples", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert "built in Python" in err and len(err.splitlines()) == 1


# --- run directories checked before they are trusted (issue 17) ---------------------------------------------

def test_a_checkpoint_records_its_identity_and_is_refused_in_another_run(tmp_path):
    import shutil

    train(tiny(tmp_path, epochs=1))
    run = RunDir(tmp_path / "run")
    state = load_checkpoint(run.checkpoint_path())
    assert state["identity"] == {"model_class": "spiketide.models.convnet.ConvNet", "model": "convnet",
                                 "dataset": "fashion-mnist", "in_channels": 1, "num_classes": 10, "image_size": 28,
                                 "width": 1.0, "timesteps": 2, "tau": 2.0, "encoding": "direct"}
    config = json.loads(run.config_path.read_text())
    config["timesteps"] = 3  # the run says T = 3: its T = 2 checkpoints are not its own
    run.config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="its timesteps T is 2, the run's is 3"):
        load_model(run.checkpoint_path())
    loose = tmp_path / "loose"
    loose.mkdir()
    shutil.copy(run.checkpoint_path(), loose / "model.pt")
    model, cfg, _ = load_model(loose / "model.pt")  # on its own it is what it says it is
    assert cfg.timesteps == 2 and model.timesteps == 2
    # an edited checkpoint whose identity no longer matches its own config is refused too
    state["config"]["tau"] = 3.0
    torch.save(state, loose / "edited.pt")
    with pytest.raises(CheckpointError, match="inconsistent: it records tau 2.0, but its config builds 3.0"):
        load_model(loose / "edited.pt")


def test_a_checkpoint_without_identity_is_checked_by_its_config(tmp_path):
    train(tiny(tmp_path, epochs=1))
    run = RunDir(tmp_path / "run")
    state = load_checkpoint(run.checkpoint_path())
    del state["identity"], state["config"]["width"]  # as spiketide 0.1 wrote them
    state["config"]["tau"] = 4.0
    torch.save(state, run.checkpoint_path())
    with pytest.raises(CheckpointError, match="its tau is 4.0, the run's is 2.0"):
        load_model(run.checkpoint_path())


def test_resume_from_python_with_other_options_is_refused_before_anything_is_written(tmp_path):
    train(tiny(tmp_path, epochs=1))
    run = tmp_path / "run"
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match="records timesteps = 2, but the run is resumed with 3"):
        train(tiny(tmp_path, epochs=1, timesteps=3), resume=True)
    config = json.loads((run / "config.json").read_text())
    del config["epochs"]
    (run / "config.json").write_text(json.dumps(config))
    before[run / "config.json"] = (run / "config.json").read_bytes()
    with pytest.raises(CheckpointError, match="lacks 'epochs'"):
        Trainer(tiny(tmp_path, epochs=1), resume=True)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("change,match", [
    (dict(alpha=0.1), "--alpha 0.1 applies only to --loss alpha"),
    (dict(tet_lambda=0.5), "--tet-lambda 0.5 applies only to --loss tet"),
    (dict(loss="alpha", alpha=float("inf")), "--alpha A, a finite number >= 0"),
    (dict(seed=2**64), "--seed must be a whole number from 0 to 4294967295"), (dict(seed=-1), "--seed"),
    (dict(data_root=""), "--data-root is empty"), (dict(epochs="3"), "field 'epochs' is \"3\", not a whole number"),
    (dict(augment=1), "field 'augment' is 1, not true or false"),
])
def test_options_that_do_not_apply_or_do_not_fit_are_refused(tmp_path, change, match):
    with pytest.raises(ConfigError, match=match):
        Trainer(tiny(tmp_path, **change))
    assert not (tmp_path / "run").exists()


def test_a_path_given_in_python_is_recorded_as_a_string(tmp_path):
    config = tiny(tmp_path, out=tmp_path / "run").validate()
    assert config.out == str(tmp_path / "run")


def test_read_run_returns_the_checked_config(tmp_path):
    from spiketide.checkpoints import read_run

    train(tiny(tmp_path, epochs=1))
    run, config = read_run(tmp_path / "run")
    assert config.timesteps == 2 and run.path == tmp_path / "run"
    (run.metrics_path).write_text(run.metrics_path.read_text() + '{"epoch": 1}\n')
    with pytest.raises(CheckpointError, match="line 3 has epoch 1 after epoch 1"):
        read_run(tmp_path / "run")
