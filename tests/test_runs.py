import json
import os
import pickle

import pytest
import torch

from spiketide import runs
from spiketide.errors import CheckpointError
from spiketide.runs import RunDir, atomic_write_text, load_checkpoint, save_checkpoint


def test_atomic_write_keeps_old_file_when_interrupted(tmp_path, monkeypatch):
    p = tmp_path / "metrics.jsonl"
    atomic_write_text(p, "old\n")

    def boom(src, dst):
        raise KeyboardInterrupt  # a kill between writing and renaming

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(p, "new\n" * 1000)
    assert p.read_text() == "old\n"
    assert [f.name for f in tmp_path.iterdir()] == ["metrics.jsonl"]  # no temp file left behind


def test_checkpoint_interrupted_save_keeps_previous(tmp_path, monkeypatch):
    p = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.ones(2)}, "config": {}}, p)

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"model": {"w": torch.zeros(2)}, "config": {}}, p)
    assert torch.equal(load_checkpoint(p)["model"]["w"], torch.ones(2))
    assert len(list(tmp_path.iterdir())) == 1


def test_metrics_roundtrip_and_nan_as_null(tmp_path):
    run = RunDir(tmp_path / "r").create({"a": 1})
    run.append_metrics({"epoch": 0, "x": float("nan")})
    run.append_metrics({"epoch": 1, "x": 0.5, "t": torch.tensor([1.0, 2.0])})
    assert run.read_metrics() == [{"epoch": 0, "x": None}, {"epoch": 1, "x": 0.5, "t": [1.0, 2.0]}]
    assert run.read_config() == {"a": 1}


def test_corrupt_and_foreign_checkpoints_give_clear_errors(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.ones(1)}, other)
    with pytest.raises(CheckpointError, match="not a spiketide checkpoint"):
        load_checkpoint(other)


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_checkpoint_loading_never_executes_code(tmp_path):
    p = tmp_path / "evil.pt"
    with open(p, "wb") as f:
        pickle.dump({"model": Evil(), "config": {}}, f)
    with pytest.raises(CheckpointError):
        load_checkpoint(p)


def test_damaged_run_directory(tmp_path):
    run = RunDir(tmp_path / "r").create({"a": 1})
    run.metrics_path.write_text('{"epoch": 0}\n{"epoch": 1, "trunc')
    with pytest.raises(CheckpointError, match="line 2"):
        run.read_metrics()
    with pytest.raises(CheckpointError, match="not a run directory"):
        RunDir(tmp_path / "nothing").read_config()
    with pytest.raises(CheckpointError):
        runs.resolve_checkpoint(tmp_path / "r")  # no checkpoints/last.pt yet


def test_read_config_checks_a_schema_without_filling_in_defaults(tmp_path):
    from dataclasses import dataclass, field
    from typing import ClassVar

    @dataclass
    class Schema:
        epochs: int = 3
        lr: float = 0.1
        name: str | None = None
        epochs_kept: list[int] = field(default_factory=list)
        ADDED_LATER: ClassVar[dict] = {"name": None}

    run = RunDir(tmp_path / "r").create({"epochs": 2, "lr": 1, "epochs_kept": [0, 2], "extra": "kept"})
    # an int is a float; a field added later takes its recorded value; keys the schema lacks are kept
    assert run.read_config(Schema) == {"epochs": 2, "lr": 1, "epochs_kept": [0, 2], "extra": "kept", "name": None}
    for config, match in [({"lr": 0.1, "epochs_kept": []}, "lacks 'epochs'"),
                          ({"epochs": "2", "lr": 0.1, "epochs_kept": []}, "'epochs' is \"2\", not a whole number"),
                          ({"epochs": True, "lr": 0.1, "epochs_kept": []}, "'epochs' is true"),
                          ({"epochs": 2, "lr": 0.1, "epochs_kept": [1.5]}, "not a list of whole numbers"),
                          ([1, 2], "holds a JSON list")]:
        run.config_path.write_text(json.dumps(config))
        with pytest.raises(CheckpointError, match=match):
            run.read_config(Schema)
    with pytest.raises(CheckpointError, match="holds a JSON list"):
        run.read_config()  # without a schema it must still be an object


@pytest.mark.parametrize("lines,match", [
    ('{"epoch": 0}\n3\n', "line 2 is a JSON number, not an epoch record"),
    ('{"epoch": 0}\n{"loss": 1}\n', "line 2 has no 'epoch'"),
    ('{"epoch": 0}\n{"epoch": "1"}\n', "line 2 has 'epoch' \"1\", not a whole number"),
    ('{"epoch": 1}\n{"epoch": 1}\n', "line 2 has epoch 1 after epoch 1"),
    ('{"epoch": 0, "test_acc": "high"}\n', "line 1: 'test_acc' is \"high\", not a number or null"),
    ('{"epoch": 0, "fisher": [1]}\n', "line 1: 'fisher' is not an object"),
])
def test_metrics_records_are_checked(tmp_path, lines, match):
    run = RunDir(tmp_path / "r").create({})
    run.metrics_path.write_text(lines)
    with pytest.raises(CheckpointError, match=match):
        run.read_metrics()


def test_check_creatable_creates_nothing(tmp_path):
    from spiketide.errors import ConfigError

    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="afile is a file, not a folder"):
        runs.check_creatable(tmp_path / "afile" / "a" / "b")
    runs.check_creatable(tmp_path / "new" / "deeper")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_run_of_a_checkpoint(tmp_path):
    run = RunDir(tmp_path / "r").create({})
    assert runs.run_of(run.checkpoint_path()).path == run.path
    assert runs.run_of(run.path / "x.pt").path == run.path
    assert runs.run_of(tmp_path / "loose.pt") is None
