"""A run directory under faults: killed at any point, moved, copied, shared or given bad input.

Each kill runs `spiketide train` in a child process that SIGKILLs itself at one point (the test
patches a function in that child only; nothing in the package knows about it), then resumes the
run with `spiketide train --resume` and compares it with an uninterrupted run.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from spiketide.cli import main
from spiketide.runs import RunDir, load_checkpoint

VOLATILE = {"seconds", "images_per_second"}
TRAIN = ["train", "--model", "convnet", "--dataset", "fashion-mnist", "--subset", "40", "--test-subset", "20",
         "-T", "2", "--epochs", "3", "-b", "20", "--lr", "0.1", "--no-compile", "--no-progress",
         "--fisher-every", "1", "--fisher-samples", "8", "--checkpoint-epochs", "1"]

# Each kill point: what to patch in the child and on which call to die (2 steps per epoch).
KILLS = {
    "epoch": ("torch.optim", "SGD.step", 4),  # epoch 2, second step
    "checkpoint": ("torch", "save", 3),  # half of epoch 1's last.pt written
    "fisher": ("spiketide.callbacks", "temporal_fisher", 3),  # inside epoch 2's measurement
    "metrics": ("os", "replace", 4),  # epoch 2's metrics line written to a temp file, not yet renamed
}

CHILD = textwrap.dedent("""
    import importlib, os, signal, sys
    module, path, at, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    *parents, name = path.split(".")
    target = importlib.import_module(module)
    for p in parents:
        target = getattr(target, p)
    orig, calls = getattr(target, name), [0]

    def patched(*a, **k):
        if name == "replace" and not str(a[1]).endswith("metrics.jsonl"):
            return orig(*a, **k)
        calls[0] += 1
        if calls[0] == at:
            if name == "save":  # leave a half-written temp file behind, as a kill mid-write would
                orig(*a, **k)
                with open(a[1], "r+b") as f:
                    f.truncate(os.path.getsize(a[1]) // 2)
            os.kill(os.getpid(), signal.SIGKILL)
        return orig(*a, **k)

    setattr(target, name, patched)
    from spiketide.cli import main
    sys.exit(main(sys.argv[5:] + ["--out", out]))
""")


def _stable(records):
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in records]


def _weights(path):
    return load_checkpoint(RunDir(path).checkpoint_path())["model"]


def _assert_complete(path):
    """Every named file is whole: JSON parses, each checkpoint loads. Temporaries are dot-files ending .tmp."""
    run = RunDir(path)
    run.read_config()
    run.read_metrics()
    for p in run.checkpoints.glob("*.pt"):
        load_checkpoint(p)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    assert main(TRAIN + ["--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("point", list(KILLS))
def test_kill_at_any_point_then_resume_equals_uninterrupted(tmp_path, reference, point):
    owner, name, at = KILLS[point]
    out = tmp_path / "run"
    res = subprocess.run([sys.executable, "-c", CHILD, owner, name, str(at), str(out)] + TRAIN,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    _assert_complete(out)
    assert main(["train", "--resume", "--out", str(out), "--no-progress"]) == 0
    assert _stable(RunDir(out).read_metrics()) == _stable(RunDir(reference).read_metrics())
    for k, v in _weights(reference).items():
        assert torch.equal(v, _weights(out)[k]), k
    assert not [p for p in out.rglob("*.tmp")]  # temporaries of the killed writer are cleaned up on resume


def test_moved_and_copied_runs_resume_in_place(tmp_path, monkeypatch, capsys):
    a = tmp_path / "a"
    assert main(TRAIN[:-4] + ["--epochs", "1", "--out", str(a)]) == 0  # no Fisher: quicker
    before = (a / "metrics.jsonl").read_text()
    # the copy resumes itself, not the original recorded in its config.json
    cfg = json.loads((a / "config.json").read_text())
    b = tmp_path / "b"
    shutil.copytree(a, b)
    os.remove(b / "checkpoints" / "last.pt")
    shutil.copy(a / "checkpoints" / "epoch_0001.pt", b / "checkpoints" / "last.pt")
    assert main(["train", "--resume", "--out", str(b), "--no-progress"]) == 0
    assert (a / "metrics.jsonl").read_text() == before and cfg == json.loads((a / "config.json").read_text())
    # a run written with a relative --out resumes from another working directory, and analyses work after a move
    monkeypatch.chdir(tmp_path)
    assert main(TRAIN[:-4] + ["--epochs", "1", "--out", "rel/run"]) == 0
    moved = tmp_path / "elsewhere"
    shutil.move(tmp_path / "rel" / "run", moved)
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["fisher", str(moved), "--samples", "8", "--no-progress"]) == 0
    assert (moved / "fisher.json").is_file() and (moved / "figures" / "fisher_fig1.png").is_file()
    assert not (moved / "fisher_fig1.png").exists()


def test_second_writer_fails_at_once_and_a_stale_lock_does_not_block(tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from spiketide.runs import RunDir
        with RunDir({str(out)!r}).lock("spiketide train"):
            print("locked", flush=True)
            time.sleep(120)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        start = time.monotonic()
        assert main(TRAIN[:-4] + ["--epochs", "1", "--seed", "1", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert f"pid {holder.pid}" in err and "host" in err and len(err.splitlines()) == 1
        assert time.monotonic() - start < 30
        assert main(["fisher", str(out), "--samples", "8"]) == 2  # analyses do not write beside a writer either
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert main(TRAIN[:-4] + ["--epochs", "1", "--out", str(out)]) == 0  # the killed holder's lock is gone
    assert [r["epoch"] for r in RunDir(out).read_metrics()] == [0, 1]


def test_a_lock_being_taken_is_not_a_run(tmp_path):
    # Under DDP rank 1 checks the folder while rank 0 takes the lock and writes its owner file through a
    # temporary; seeing that temporary as "part of a run" failed one rank in ~2 of 5 loaded runs.
    run = RunDir(tmp_path / "run")
    with run.lock():
        (run.path / "..lock.owner.abc123.tmp").write_text("{}")
        assert run.is_empty()
        (run.path / "metrics.jsonl").write_text("")
        assert not run.is_empty()


def test_partial_run_directory_is_never_trained_over(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(TRAIN[:-4] + ["--epochs", "2", "--checkpoint-epochs", "1,2", "--out", str(out)]) == 0
    (out / "metrics.jsonl").unlink()
    stamp = (out / "checkpoints" / "last.pt").stat().st_mtime_ns
    assert main(TRAIN[:-4] + ["--epochs", "2", "--out", str(out)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "--resume", "--out", str(out)]) == 2
    assert "damaged" in capsys.readouterr().err
    assert (out / "checkpoints" / "last.pt").stat().st_mtime_ns == stamp


def test_options_given_with_resume_are_refused_not_ignored(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(TRAIN[:-4] + ["--epochs", "1", "--out", str(out)]) == 0
    assert main(["train", "--resume", "--out", str(out), "--epochs", "8", "--lr", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "--epochs 8" in err and "--lr 0.5" in err and len(err.strip().splitlines()) == 1
    # the same values as recorded, and options that do not change results, are fine
    assert main(["train", "--resume", "--out", str(out), "--epochs", "1", "--no-progress", "--device", "cpu"]) == 0


def test_foreign_checkpoint_in_a_run_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(TRAIN[:-4] + ["--epochs", "1", "--out", str(out)]) == 0
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    state["config"]["model"] = "vgg16"
    torch.save(state, out / "checkpoints" / "epoch_0005.pt")
    for cmd in (["fisher", str(out)], ["robustness", str(out / "checkpoints" / "epoch_0005.pt")],
                ["early-exit", str(out / "checkpoints" / "epoch_0005.pt")]):
        assert main(cmd + ["--samples", "8", "--no-progress"]) == 2, cmd
        assert "vgg16" in capsys.readouterr().err
    assert not (out / "fisher.json").exists() and not (out / "robustness.json").exists()


@pytest.mark.parametrize("argv,match", [
    (["--momentum", "-1"], "momentum"), (["--weight-decay", "-1"], "weight-decay"),
    (["--lr", "nan"], "learning rate"), (["--tau", "0"], "tau"),
])
def test_bad_training_options_give_one_line(tmp_path, capsys, argv, match):
    assert main(TRAIN + argv + ["--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_out_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(TRAIN + ["--out", str(f)]) == 2
    assert "is a file" in capsys.readouterr().err and f.read_text() == "x"


def test_garbage_checkpoint_never_advises_weights_only_false(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x80\x04garbage")
    assert main(["fisher", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.pt" in err and "weights_only=False" not in err and "will likely succeed" not in err


def test_a_run_directory_of_spiketide_0_1_still_loads_and_resumes(tmp_path):
    """The format before this change: no `width` in the config, callback states kept as a list by position."""
    out = tmp_path / "run"
    assert main(TRAIN[:-4] + ["--fisher-every", "1", "--fisher-samples", "8", "--epochs", "1", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    del config["width"]
    config["epochs"] = 2  # so there is something left to resume
    (out / "config.json").write_text(json.dumps(config))
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    del state["config"]["width"], state["identity"]  # 0.1 checkpoints record no identity: their config is checked
    state["config"]["epochs"] = 2  # as a 0.1 run of 2 epochs killed after its first
    state["callbacks"] = [{}]
    torch.save(state, out / "checkpoints" / "last.pt")
    assert main(["train", "--resume", "--out", str(out), "--no-progress"]) == 0
    assert [r["epoch"] for r in RunDir(out).read_metrics()] == [0, 1, 2]
    assert main(["fisher", str(out), "--samples", "8", "--no-progress"]) == 0
