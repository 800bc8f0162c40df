"""Settings have one home (`spiketide.config`): the registries cover exactly its names, and a trial's identity and
`train --resume` follow the one list of options that do not change what a run computes."""

import dataclasses
import json

import pytest
from conftest import train_tiny_run

from spiketide import cli, config, losses, models, nir
from spiketide.config import RUN_INVARIANT, RUN_SETTINGS, TrainConfig
from spiketide.errors import ConfigError
from spiketide.experiments import suite
from spiketide.experiments.trials import trial_id


def test_registries_cover_the_names_of_config():
    assert tuple(models.available()) == config.MODELS
    assert tuple(suite.SCALES) == config.SCALES
    assert (nir.DEFAULT_DT, nir.POOLINGS) == (config.NIR_DT, config.NIR_POOLINGS)
    params = {"alpha": {"alpha": 0.01}, "tet": {"tet_lambda": 0.05}}
    assert [losses.make_loss(name, **params.get(name, {})).name for name in config.LOSSES] == list(config.LOSSES)
    for ds in config.DATASETS:
        assert config.dataset_info(ds.upper()).name == ds


def _other(value, name):
    """A valid value of field `name` other than `value`."""
    other = {"model": "convnet", "dataset": "svhn", "encoding": "poisson", "optimizer": "adam", "schedule": "constant",
             "loss": "per-timestep", "fisher_estimator": "true", "device": "cpu", "data_root": "/data",
             "out": "elsewhere", "checkpoint_epochs": [1]}
    if name in other:
        return other[name]
    if isinstance(value, bool):
        return not value
    if value is None:
        return 3
    return value + 1 if isinstance(value, int) else value * 0.5


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(TrainConfig) if f.name not in ("alpha", "tet_lambda")])
def test_trial_identity_follows_run_invariant(name):
    base = TrainConfig(epochs=10).validate().to_dict()
    changed = {**base, name: _other(base[name], name)}
    TrainConfig(**changed).validate()
    assert (trial_id(changed) == trial_id(base)) == (name in RUN_INVARIANT)


def test_run_settings_and_invariant_split_the_fields():
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    assert set(RUN_SETTINGS) | RUN_INVARIANT == set(names) and not set(RUN_SETTINGS) & RUN_INVARIANT
    assert RUN_INVARIANT == {"out", "progress", "device", "data_root", "eval_batch_size"}


def test_resume_refuses_exactly_what_changes_the_run(tmp_path, capsys):
    run = tmp_path / "run"
    train_tiny_run(run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    for option in (["--seed", "3"], ["--tau", "4"], ["--epochs", "2"], ["-T", "3"], ["--no-amp"], ["--no-augment"]):
        assert cli.main(["train", "--resume", "--out", str(run), *option]) == 2, option
        err = capsys.readouterr().err
        assert "cannot change" in err and err.count("\n") == 1
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    # the options of RUN_INVARIANT may accompany a resume (a finished run: nothing left to train)
    assert cli.main(["train", "--resume", "--out", str(run), "--device", "cpu", "--no-progress",
                     "--data-root", "/usr/share/datasets/fashion-mnist"]) == 0
    assert json.loads((run / "config.json").read_text())["epochs"] == 1


def test_config_checks_name_the_option():
    for bad, words in (({"lr": float("nan")}, "learning rate"), ({"epochs": 0}, "--epochs"), ({"seed": 2**32}, "--seed"),
                       ({"alpha": 0.1}, "applies only to --loss alpha"), ({"model": "lenet"}, "unknown model"),
                       ({"loss": "alpha", "alpha": float("inf")}, "finite number >= 0")):
        with pytest.raises(ConfigError, match=words):
            TrainConfig(**bad).validate()
