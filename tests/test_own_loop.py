"""An own training loop: `tracking.RunTracker` writes a run directory that `spiketide plot` and the analysis
commands read, and `--model-factory` rebuilds its Python-built model (a SpikingJelly 2.0.0 network here).

Data: scikit-learn's 8x8 digits (no download), a few dozen images; the model runs T = 3 timesteps.
"""

import json

import pytest
import torch
from spikingjelly.activation_based import functional, layer, neuron, surrogate
from torch import nn

from spiketide import cli, data, plots
from spiketide.adapters import Stateless, is_library_neuron
from spiketide.errors import CheckpointError, ConfigError, RunInUse
from spiketide.factory import build, is_python_model, reference_of
from spiketide.tracking import RunTracker
from spiketide.checkpoints import build_model, read_run
from spiketide.config import TrainConfig

T = 3
FACTORY = f"{__file__}:make_model"


def make_model() -> nn.Module:
    """The factory `--model-factory tests/test_own_loop.py:make_model` names: SpikingJelly, step mode."""
    torch.manual_seed(0)
    net = nn.Sequential(layer.Conv2d(1, 4, 3, padding=1),
                        neuron.LIFNode(tau=2.0, surrogate_function=surrogate.ATan(), detach_reset=True),
                        layer.Flatten(), layer.Linear(4 * 8 * 8, 10))
    with torch.no_grad():
        net[0].weight.mul_(4)  # strong enough currents that the untrained layer spikes
    return Stateless(net, T, reset=functional.reset_net)


def make_linear() -> nn.Module:  # another class than the run's
    return nn.Linear(64, 10)


def make_nothing():
    return None


NOT_CALLABLE = 3


def train_own_loop(out, epochs: int = 2):
    """A plain PyTorch loop on 40 digits, tracked each epoch; returns the tracker's records."""
    train = data.load("digits", "train", subset=40, seed=0)
    x, y = data.to_float(train.images), train.labels
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    records = []
    with RunTracker(model, train.images[:20], y[:20], out, dataset="digits", factory=make_model, epochs=epochs,
                    checkpoint_epochs=[0], settings={"optimizer": "adam", "lr": 0.01}) as tracker:
        records.append(tracker.epoch(0))
        for epoch in range(1, epochs + 1):
            for idx in torch.arange(len(x)).split(20):
                loss = nn.functional.cross_entropy(model(x[idx]).mean(0), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            records.append(tracker.epoch(epoch, train_loss=loss.detach(), test_acc=0.5, note="mine"))
    return records, model


@pytest.fixture(scope="module")
def own_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("own") / "run"
    records, model = train_own_loop(out)
    return out, records, model


def run_cli(capsys, *argv):
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_tracker_writes_a_run_that_validates_and_plots(own_run):
    out, records, model = own_run
    run, config = read_run(out)  # the strict TrainConfig schema, unchanged
    assert is_python_model(config.model) and config.model == "python:" + reference_of(make_model)
    assert config.dataset == "digits" and config.timesteps == T and config.epochs == 2
    assert config.optimizer == "adam" and config.lr == 0.01 and config.fisher_samples == 20
    recorded = run.read_config()
    assert recorded["model_class"] == "spiketide.adapters.Stateless" and "lr" in recorded["settings_given"]
    assert "momentum" not in recorded["settings_given"]  # a default the loop did not say it used
    metrics = run.read_metrics()
    assert [r["epoch"] for r in metrics] == [0, 1, 2] and metrics[2]["note"] == "mine"
    assert metrics == json.loads(json.dumps(records))
    for r in metrics:
        assert len(r["fisher"]["trace"]) == T and all(v >= 0 for v in r["fisher"]["trace"])
    assert isinstance(metrics[1]["train_loss"], float) and metrics[0]["train_loss"] is None
    assert metrics[1]["fisher"] != metrics[0]["fisher"]  # measured on the trained weights
    assert run.saved_epochs() == [0, 2] and config.checkpoint_epochs == [0, 2]
    assert [p.name for p in plots.plot_run(out)] == ["fig1_temporal_fisher.png", "fig1_temporal_fisher.pdf"]
    assert not (out / ".lock.owner").exists()  # released by the with block


def test_analysis_commands_rebuild_the_model_from_the_named_factory(own_run, capsys):
    out, records, model = own_run
    code, stdout, err = run_cli(capsys, "fisher", out, "--model-factory", FACTORY, "--samples", 20, "--device", "cpu",
                                "--no-progress")
    assert code == 0, err
    result = json.loads((out / "fisher.json").read_text())["results"]
    assert [r["epoch"] for r in result] == [0, 2]
    code, _, err = run_cli(capsys, "fisher", out / "checkpoints" / "epoch_0002.pt", "--model-factory", FACTORY,
                           "--samples", 20, "--device", "cpu", "--no-progress", "--out", out / "f2.json")
    assert code == 0, err
    code, stdout, err = run_cli(capsys, "stats", out, "--model-factory", FACTORY, "--samples", 20, "--device", "cpu",
                                "--no-progress")
    assert code == 0, err
    stats = json.loads((out / "stats.json").read_text())
    assert list(stats["firing_rate"]) == ["model.1"] and len(stats["firing_rate"]["model.1"]) == T
    assert stats["totals"]["sops_per_image"] > 0 and stats["epoch"] == 2
    code, _, err = run_cli(capsys, "robustness", out, "--model-factory", FACTORY, "--samples", 20, "--pgd-iters", 1,
                           "--device", "cpu", "--no-progress")
    assert code == 0, err
    code, _, err = run_cli(capsys, "early-exit", out, "--model-factory", FACTORY, "--samples", 20,
                           "--fisher-samples", 20, "--device", "cpu", "--no-progress")
    assert code == 0, err
    assert {"robustness.json", "early_exit.json"} <= {p.name for p in out.iterdir()}
    code, stdout, err = run_cli(capsys, "plot", out)
    assert code == 0 and "fig1_temporal_fisher.png" in stdout


def test_the_rebuilt_model_has_the_trained_weights(own_run):
    out, records, model = own_run
    from spiketide.checkpoints import load_model

    rebuilt, config, state = load_model(out / "checkpoints" / "last.pt", "cpu", FACTORY)
    x = data.to_float(data.load("digits", "test", subset=10, seed=0).images)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), model.eval()(x))


@pytest.mark.parametrize("factory,says", [
    (None, "--model-factory " + "MODULE:FUNCTION"),  # replaced below by the recorded reference
    ("nocolon", "is not a factory reference"),
    ("no_such_module_xyz:make", "cannot import no_such_module_xyz"),
    ("missing_file_xyz.py:make", "there is no file missing_file_xyz.py"),
    (f"{__file__}:no_such_function", "has no 'no_such_function'"),
    (f"{__file__}:NOT_CALLABLE", "is a int, not a function or class"),
    (f"{__file__}:make_nothing", "returned a NoneType, not a torch nn.Module"),
    (f"{__file__}:make_linear", "but the run's model is a spiketide.adapters.Stateless"),
])
@pytest.mark.parametrize("command", ["fisher", "stats"])
def test_bad_factories_are_one_line_exit_2(own_run, capsys, command, factory, says):
    out, _, _ = own_run
    before = sorted(p.name for p in out.iterdir())
    argv = [command, out, "--samples", 20, "--device", "cpu", "--no-progress"]
    code, stdout, err = run_cli(capsys, *argv, *(["--model-factory", factory] if factory else []))
    if factory is None:  # without the flag: the hint names the factory the run recorded (never imported)
        says = f"--model-factory {reference_of(make_model)}"
    assert code == 2 and says in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert sorted(p.name for p in out.iterdir()) == before


def test_tracker_refuses_bad_use(tmp_path, own_run):
    train = data.load("digits", "train", subset=20, seed=0)
    x, y = train.images, train.labels
    with pytest.raises(ConfigError, match="already holds a run"):
        RunTracker(make_model(), x, y, own_run[0], dataset="digits")
    with pytest.raises(ConfigError, match=r"fashion-mnist images are \[1, 28, 28\]"):
        RunTracker(make_model(), x, y, tmp_path / "a", dataset="fashion-mnist")
    with pytest.raises(ConfigError, match="set by the tracker: epochs"):
        RunTracker(make_model(), x, y, tmp_path / "b", dataset="digits", settings={"epochs": 3})
    with pytest.raises(ConfigError, match="unknown: learning_rate"):
        RunTracker(make_model(), x, y, tmp_path / "b", dataset="digits", settings={"learning_rate": 3})
    with pytest.raises(ConfigError, match="model must be a torch nn.Module"):
        RunTracker(lambda x: x, x, y, tmp_path / "b", dataset="digits")
    with RunTracker(make_model(), x, y, tmp_path / "c", dataset="digits", every=2) as tracker:
        assert "fisher" in tracker.epoch(0) and "fisher" not in tracker.epoch(1, train_loss=1.0)
        with pytest.raises(ConfigError, match="epochs must increase"):
            tracker.epoch(1)
        with pytest.raises(ConfigError, match="train_loss must be a number"):
            tracker.epoch(2, train_loss="low")
        with pytest.raises(RunInUse, match="is being written by pid"):  # one writer at a time
            RunTracker(make_model(), x, y, tmp_path / "c", dataset="digits", resume=True)
    assert read_run(tmp_path / "c")[1].epochs == 1  # the epochs run so far
    with RunTracker(make_model(), x, y, tmp_path / "c", dataset="digits", resume=True) as tracker:
        tracker.epoch(2)
    assert [r["epoch"] for r in read_run(tmp_path / "c")[0].read_metrics()] == [0, 1, 2]


def test_validation_stays_strict_for_registry_runs(tmp_path):
    with pytest.raises(ConfigError, match="unknown model 'resnet1000'"):
        TrainConfig(model="resnet1000").validate()
    python = TrainConfig(model="python:pkg.mod:make", dataset="digits").validate()
    with pytest.raises(ConfigError, match="built in Python"):  # nothing is imported from a config
        build_model(python)
    (tmp_path / "config.json").write_text(json.dumps({"model": "python:pkg.mod:make"}))
    with pytest.raises(CheckpointError, match="lacks 'dataset'"):  # every field still required
        read_run(tmp_path)


def test_factory_builds_and_library_neurons_are_recognised():
    import norse.torch as norse
    import snntorch as snn

    assert isinstance(build(FACTORY, "spiketide.adapters.Stateless"), Stateless)
    assert is_library_neuron(neuron.LIFNode()) and is_library_neuron(snn.Leaky(beta=0.5))
    assert is_library_neuron(norse.LIFBoxCell()) and is_library_neuron(norse.LIF())
    assert not is_library_neuron(norse.LICell()) and not is_library_neuron(nn.ReLU())


def test_commands_for_spiketide_models_refuse_a_python_model_in_one_line(own_run, capsys, tmp_path):
    out, _, _ = own_run
    code, _, err = run_cli(capsys, "export-nir", out)
    assert code == 2 and "built in Python" in err and err.count("\n") == 1
    assert not (out / "model.nir").exists()
    code, _, err = run_cli(capsys, "train", "--model", "python:pkg.mod:make", "--out", tmp_path / "new")
    assert code == 2 and "RunTracker" in err and err.count("\n") == 1 and not (tmp_path / "new").exists()
