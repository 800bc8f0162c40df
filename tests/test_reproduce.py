"""The reproduction suite end to end at smoke scale, through a real local Ray instance (one per module, 2 CPUs)."""

import json

import pytest
import torch

from spiketide import callbacks
from spiketide.cli import main
from spiketide.experiments import reproduce as rp
from spiketide.experiments.suite import EXPERIMENTS
from spiketide.experiments.trials import RunResult, Trial, trial_id
from spiketide.runs import RunDir
from spiketide.train import Trainer, TrainConfig

ray = pytest.importorskip("ray")  # the test extra installs it; without it reproduce says how to


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
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
            assert any(f"**{v}**" in row for v in ("holds", "contradicted", "inconclusive")), row
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


def test_a_failing_trial_is_reported_and_the_others_go_on(tmp_path, capsys):
    trials, _ = rp.plan(["fig5"], "smoke", [0])
    broken = sorted(trials.values(), key=lambda t: t.config["alpha"])[0]  # alpha-low
    broken.run_dir(tmp_path).parent.mkdir(parents=True)
    broken.run_dir(tmp_path).write_text("not a folder")  # training cannot open this run directory
    code = main(["reproduce", "fig5", "--scale", "smoke", "--seeds", "0", "--out", str(tmp_path), "--no-progress"])
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


def test_trial_identity_ignores_where_and_how_it_runs():
    cfg = EXPERIMENTS["fig1"].grid("cpu", 0)["base"]
    assert Trial(cfg).id == Trial({**cfg, "out": "elsewhere", "device": "cuda", "progress": False}).id
    assert Trial(cfg).id != Trial({**cfg, "seed": 1}).id
    assert Trial(cfg).id == Trial({**cfg, "weight_decay": 5e-4}).id  # a default written out is the same run
    assert Trial(cfg).id == trial_id(Trial(cfg).config)
