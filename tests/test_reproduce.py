"""The reproduction suite end to end at smoke scale, through a real local Ray instance (one per module, 2 CPUs)."""

import json
import os
import pickle
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from spiketide import callbacks
from spiketide.cli import main
from spiketide.errors import ConfigError
from spiketide.experiments import reproduce as rp
from spiketide.experiments.suite import EXPERIMENTS, trial_seconds
from spiketide.experiments.trials import RunResult, Trial, trial_id
from spiketide.runs import RunDir
from spiketide.checkpoints import build_model
from spiketide.config import TrainConfig
from spiketide.train import Trainer

ray = pytest.importorskip("ray")  # the test extra installs it; without it reproduce says how to


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    report, outcomes = rp.reproduce(["fig1", "table1"], "smoke", [0, 1], root, show_progress=False)
    return root, report, outcomes


def _reports(root):
    return {p.relative_to(root).as_posix(): p.read_text() for p in [root / "REPORT.md", *root.glob("*/report.md")]}


def test_smoke_sweep_writes_ordinary_runs_and_a_verdict_per_claim(sweep):
    root, report, outcomes = sweep
    assert not [o for o in outcomes.values() if "error" in o]
    text = report.read_text()
    for name in ("fig1", "table1"):
        for c in EXPERIMENTS[name].claims("smoke"):
            row = next(line for line in text.splitlines() if c.claim.text in line)
            assert any(f"**{v}" in row for v in ("holds", "contradicted", "inconclusive", "untestable")), row
            assert "(n=2" in row  # two seeds measured, none filled in
    spec = json.loads((root / "table1" / "spec.json").read_text())
    fig1 = json.loads((root / "fig1" / "spec.json").read_text())
    for seed in ("0", "1"):  # the CE row of Table 1 is the Fig. 1 run: identical config, one run directory
        assert spec["runs"][seed]["ce"] == fig1["runs"][seed]["base"]
        run = RunDir(root / "runs" / spec["runs"][seed]["alpha-low"])
        assert run.read_config()["loss"] == "alpha" and run.checkpoint_path().is_file()
        assert (run.path / "robustness.json").is_file()
    assert len(list((root / "runs").iterdir())) == 2 * 4  # 4 distinct runs per seed
    assert (root / "table1" / "table1.png").is_file() and (root / "table1" / "table1.pdf").is_file()
    assert "rule and test" in (root / "table1" / "report.md").read_text()
    # every existing command works on a trial's run directory
    assert main(["plot", str(root / "runs" / fig1["runs"]["0"]["base"])]) == 0


def test_rerun_repeats_nothing_and_reports_are_rebuilt_without_training(sweep):
    root, report, _ = sweep
    before = _reports(root)
    metrics = {p: p.read_text() for p in root.glob("runs/*/metrics.jsonl")}
    _, outcomes = rp.reproduce(["fig1", "table1"], "smoke", [0, 1], root, show_progress=False)
    assert all(o.get("skipped") for o in outcomes.values())
    assert {p: p.read_text() for p in metrics} == metrics
    for p in [root / "REPORT.md", *root.glob("*/report.md")]:
        p.unlink()
    assert main(["report", str(root)]) == 0
    assert _reports(root) == before


def test_interrupted_sweep_resumes_and_reports_the_same(sweep, tmp_path):
    root, _, _ = sweep
    trials, specs = rp.plan(["fig1"], "smoke", [0])
    (trial,) = trials.values()

    class Stop(Exception):
        pass

    class KillAt2:
        key = "kill"

        def on_fit_start(self, trainer):
            pass

        def on_epoch_end(self, trainer, record):
            if record["epoch"] == 2:
                raise Stop  # as if the trial's process died mid-run

        def on_fit_end(self, trainer):
            pass

        def state_dict(self):
            return {}

    cfg = TrainConfig.from_dict({**trial.config, "progress": False})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a 1-CPU trial: another thread count sums floats in another order
    try:
        with pytest.raises(Stop):
            Trainer(cfg, callbacks=[*callbacks.from_config(cfg), KillAt2()], run_dir=trial.run_dir(tmp_path)).fit()
    finally:
        torch.set_num_threads(threads)
    report, outcomes = rp.reproduce(["fig1"], "smoke", [0], tmp_path, show_progress=False)
    epochs = [r["epoch"] for r in RunResult(trial.run_dir(tmp_path)).metrics]
    assert epochs == [0, 1, 2, 3]  # resumed after epoch 1, no line written twice
    fresh = tmp_path / "fresh"
    rp.reproduce(["fig1"], "smoke", [0], fresh, show_progress=False)
    assert (tmp_path / "fig1" / "report.md").read_text() == (fresh / "fig1" / "report.md").read_text()


def test_a_failing_trial_is_reported_and_the_others_go_on(tmp_path, capsys, monkeypatch):
    trials, _ = rp.plan(["fig5"], "smoke", [0])
    broken = sorted(trials.values(), key=lambda t: t.config["alpha"])[0]  # alpha-low
    broken.run_dir(tmp_path).parent.mkdir(parents=True)
    broken.run_dir(tmp_path).write_text("not a folder")  # training cannot open this run directory
    # A relative --out: the Ray workers run in the folder where Ray started, so it must reach them absolute.
    monkeypatch.chdir(tmp_path.parent)
    code = main(["reproduce", "fig5", "--scale", "smoke", "--seeds", "0", "--out", tmp_path.name, "--no-progress"])
    assert code == 1
    err = capsys.readouterr().err
    assert broken.id in err and "trial.log" in err
    others = [t for t in trials.values() if t is not broken]
    assert all(RunResult(t.run_dir(tmp_path)).trained for t in others)
    report = (tmp_path / "fig5" / "report.md").read_text()
    assert "alpha-low: failed" in report and "trial.log" in report
    assert "missing (0 of 1 seeds)" in report  # the claims that need it are marked missing, never filled in


@pytest.mark.parametrize("argv,message", [
    (["reproduce", "fig99", "--scale", "smoke"], "unknown experiment 'fig99'"),
    (["reproduce", "fig1", "--scale", "huge"], "invalid choice: 'huge'"),
    (["reproduce", "--scale", "smoke"], "name the experiments"),
    (["reproduce", "fig1", "--seeds", "0,0"], "distinct seeds"),
    (["report", "/nonexistent/experiments"], "holds no experiments"),
])
def test_bad_names_and_scales_give_one_line(capsys, argv, message):
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own checks
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_list_names_every_experiment_with_claims_and_costs(capsys):
    assert main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    for name in EXPERIMENTS:
        assert f"{name}:" in out
    assert "GPU-h" in out and "ResNet19 shows performance saturation at timestep 4" in out
    assert "requires: run base fits its training set" in out  # each claim's preconditions are listed


def test_list_costs_follow_the_seeds_and_count_shared_runs_once(capsys):
    assert main(["reproduce", "--list", "--seeds", "0,1,2,3,4"]) == 0
    out = capsys.readouterr().out
    assert out.count("for 5 seed(s)") == len(EXPERIMENTS)
    cpu, _ = rp.plan(["all"], "cpu", [0, 1, 2, 3, 4])
    total = out.strip().splitlines()[-1]
    assert total.startswith(f"all, 5 seed(s): {len(cpu)} distinct runs at cpu scale")
    minutes = sum(trial_seconds("cpu", t.config, t.analyses) for t in cpu.values()) / 60
    assert f"about {minutes:.0f} trial-min" in total and f"about {minutes / 2:.0f} min of wall time" in total
    assert main(["reproduce", "--list", "--seeds", "0"]) == 0
    assert "for 1 seed(s)" in capsys.readouterr().out


def test_trial_identity_ignores_where_and_how_it_runs():
    cfg = EXPERIMENTS["fig1"].grid("cpu", 0)["base"]
    assert Trial(cfg).id == Trial({**cfg, "out": "elsewhere", "device": "cuda", "progress": False}).id
    assert Trial(cfg).id != Trial({**cfg, "seed": 1}).id
    assert Trial(cfg).id == Trial({**cfg, "weight_decay": 5e-4}).id  # a default written out is the same run
    assert Trial(cfg).id == trial_id(Trial(cfg).config)


def test_a_trial_another_driver_is_running_is_not_a_failure(tmp_path, capsys):
    (trial,) = rp.plan(["fig1"], "smoke", [0])[0].values()
    with RunDir(trial.run_dir(tmp_path)).lock("another spiketide reproduce"):  # as a second driver would hold it
        code = main(["reproduce", "fig1", "--scale", "smoke", "--seeds", "0", "--out", str(tmp_path), "--no-progress"])
    captured = capsys.readouterr()
    assert code == rp.INCOMPLETE == 3
    assert f"running elsewhere {trial.id}" in captured.out and "another spiketide reproduce" in captured.out
    assert "report is incomplete" in captured.err and "failed" not in captured.err
    assert not (tmp_path / "failed").exists() and not list(tmp_path.glob("**/failed*"))
    assert main(["reproduce", "fig1", "--scale", "smoke", "--seeds", "0", "--out", str(tmp_path), "--no-progress"]) == 0


@pytest.mark.parametrize("argv,message", [
    (["--gpus-per-trial", "-1"], "GPUs per trial must be a finite number >= 0"),
    (["--gpus-per-trial", "nan"], "GPUs per trial must be a finite number >= 0"),
    (["--gpus-per-trial", "1.5"], "above 1 a trial takes whole GPUs"),
    (["--workers", "-1"], "argument --workers: must be >= 1"),
    (["--cpus-per-trial", "nan"], "expected a whole number"),
    (["--cpus-per-trial", "3", "--workers", "2"], "no trial could ever start"),
    (["--workers", "2", "--address", "auto"], "pass one of them"),
    (["--address", "ray://head:10001"], "ray:// (Ray Client) is not supported"),
    (["--address", "127.0.0.1:1"], "no Ray cluster answers at 127.0.0.1:1"),
    (["--address", "head"], "expected auto or HOST:PORT"),
    (["--gpus-per-trial", "1"], "asks for 1 CPUs and 1 GPUs"),  # this machine has no GPU: it would wait forever
])
def test_requests_that_cannot_run_are_refused_in_one_line_before_anything_is_written(tmp_path, capsys, argv,
                                                                                      message):
    start = time.monotonic()
    try:
        code = main(["reproduce", "fig1", "--scale", "smoke", "--seeds", "0", "--out", str(tmp_path / "exp"), *argv])
    except SystemExit as e:  # argparse's own checks
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert time.monotonic() - start < 30
    assert not (tmp_path / "exp").exists()


def test_check_request_refuses_what_ray_would_wait_on():
    for bad in (dict(cpus_per_trial=0), dict(cpus_per_trial=1.5), dict(gpus_per_trial=float("inf")),
                dict(gpus_per_trial=True), dict(workers=0)):
        with pytest.raises(ConfigError):
            rp.check_request(**bad)
    rp.check_request(workers=4, cpus_per_trial=2, gpus_per_trial=0.25)


# -- the dry run: no Ray, nothing written, every trial checked ----------------------------------------------------

def _write_cifar10(folder, per_batch=4, test=10, seed=0):
    """CIFAR-10 in its own format (python pickles of uint8 rows), as tests/test_data.py writes it."""
    rng = np.random.default_rng(seed)
    d = folder / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for name, n in [*((f"data_batch_{i}", per_batch) for i in range(1, 6)), ("test_batch", test)]:
        rows = rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)
        d.joinpath(name).write_bytes(pickle.dumps({b"batch_label": name.encode(), b"data": rows,
                                                   b"labels": [i % 10 for i in range(n)]}, protocol=2))


_WITHOUT_RAY = "import sys; sys.modules['ray'] = None; from spiketide.cli import main; sys.exit(main(sys.argv[1:]))"


def test_paper_dry_run_checks_each_trial_on_cifar_files_without_ray_and_writes_nothing(tmp_path):
    _write_cifar10(tmp_path / "data" / "cifar10")
    out = tmp_path / "exp"
    env = {**os.environ, "SPIKETIDE_DATA": str(tmp_path / "data"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    r = subprocess.run([sys.executable, "-c", _WITHOUT_RAY, "reproduce", "fig1", "--scale", "paper", "--seeds", "0,1",
                        "--dry-run", "--out", str(out)], env=env, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr
    (trial,) = rp.plan(["fig1"], "paper", [0])[0].values()
    params = sum(p.numel() for p in build_model(TrainConfig(**trial.config)).parameters())
    assert "1 distinct trial(s) x 2 seed(s) = 2 runs" in r.stdout
    assert f"data cifar10: train {tmp_path / 'data' / 'cifar10'}" in r.stdout
    row = next(line for line in r.stdout.splitlines() if line.startswith(trial.id)).split()
    assert row[1:4] == ["resnet19", "cifar10", "10"] and row[4] == f"{params / 1e6:.2f}M"
    step, fisher, act_mb = float(row[5]), float(row[6]), float(row[7])
    assert step > 0 and fisher > 0 and act_mb > 1  # a ResNet19 at T = 10 keeps megabytes per image for backward
    assert float(row[9]) == pytest.approx(round(trial_seconds("paper", trial.config, trial.analyses) / 3600, 2))
    assert "estimated GPU-h for 2 seed(s)" in r.stdout and not out.exists()


def test_dry_run_runs_every_analysis_and_names_missing_data_in_one_line(tmp_path, monkeypatch, capsys):
    lines = []
    rows = rp.dry_run(["fig2", "fig7", "tic-vs-encoding"], "smoke", [0, 1], say=lines.append)
    analyses = {name for row in rows for name in row["analyses"]}
    assert analyses == {"deficits", "prune", "robustness"}
    trials, _ = rp.plan(["fig2", "fig7", "tic-vs-encoding"], "smoke", [0])
    assert {r["id"] for r in rows} == set(trials)  # one row per config, checked with the first seed
    assert all(r["step_seconds"] > 0 and r["activation_bytes_per_image"] > 0 for r in rows)
    # Paper-scale data that is not there: one line naming each missing split and where it was looked for.
    monkeypatch.setenv("SPIKETIDE_DATA", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    code = main(["reproduce", "fig4-dataset", "--scale", "paper", "--dry-run", "--out", str(tmp_path / "exp")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "cifar10 train split not found" in err and "svhn train split not found" in err
    assert str(tmp_path) in err and "data_batch_1" in err and "train_32x32.mat" in err
    assert not (tmp_path / "exp").exists() and not (tmp_path / "cache").exists()  # nothing downloaded
