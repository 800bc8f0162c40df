"""Every analysis command, end to end, on one tiny trained run (as a new user would chain them)."""

import json

import pytest

from spiketide import cli
from spiketide.runs import RunDir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e") / "run"
    code = cli.main(["train", "--model", "convnet", "--dataset", "fashion-mnist", "--subset", "40", "--test-subset", "20",
                     "-T", "3", "--epochs", "2", "-b", "20", "--lr", "0.1", "--checkpoint-epochs", "0,1",
                     "--fisher-every", "1", "--fisher-samples", "12", "--fisher-per-layer", "--no-progress",
                     "--device", "cpu", "--out", str(out)])
    assert code == 0
    return out


def test_train_tracks_fisher_and_draws_figures(run_dir):
    records = RunDir(run_dir).read_metrics()
    assert [r["epoch"] for r in records] == [0, 1, 2]
    for r in records:
        f = r["fisher"]
        assert len(f["trace"]) == 3 and len(f["stderr"]) == 3 and f["num_samples"] == 12
        assert f["estimator"] == "empirical" and 1 <= f["centroid"] <= 3
        assert set(f["per_layer"]) == {"stem", "block1", "block2", "fc"}
        total = [sum(v[t] for v in f["per_layer"].values()) for t in range(3)]
        assert total == pytest.approx(f["trace"], rel=1e-5)
    figures = {p.name for p in (run_dir / "figures").iterdir()}
    assert {"fig1_temporal_fisher.png", "fig1_temporal_fisher.pdf", "fig3_per_block_fisher.png"} <= figures


def test_plot_redraws(run_dir, capsys):
    (run_dir / "figures" / "fig1_temporal_fisher.png").unlink()
    assert cli.main(["plot", str(run_dir)]) == 0
    assert (run_dir / "figures" / "fig1_temporal_fisher.png").stat().st_size > 1000


def test_fisher_command_on_every_checkpoint(run_dir, capsys):
    assert cli.main(["fisher", str(run_dir), "--samples", "10", "--estimator", "true", "--no-progress"]) == 0
    result = json.loads((run_dir / "fisher.json").read_text())
    assert [r["epoch"] for r in result["results"]] == [0, 1, 2]
    assert all(r["fisher"]["estimator"] == "true" for r in result["results"])
    assert "centroid" in capsys.readouterr().out


def test_deficits_command(run_dir):
    assert cli.main(["deficits", str(run_dir), "--window", "2", "--samples", "20", "--no-progress"]) == 0
    result = json.loads((run_dir / "deficits.json").read_text())
    assert len(result["checkpoints"]) == 3
    for entry in result["checkpoints"]:
        assert entry["window_starts"] == [1, 2] and entry["relative_accuracy"][-1] == 0.0
    assert (run_dir / "figures" / "fig2_deficits.png").exists()


def test_robustness_command(run_dir, capsys):
    assert cli.main(["robustness", str(run_dir), "--samples", "20", "--pgd-iters", "2", "--window-k", "1",
                     "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "random start on" in out and "| convnet |" in out
    result = json.loads((run_dir / "robustness.json").read_text())
    for key in ("clean", "gaussian", "blur", "fgsm", "pgd"):
        assert 0.0 <= result[key] <= 1.0
    assert result["settings"]["pgd_random_start"] is True
    assert (run_dir / "robustness.md").read_text().startswith("|")


def test_early_exit_command(run_dir, capsys):
    assert cli.main(["early-exit", str(run_dir), "--samples", "20", "--fisher-samples", "10"]) == 0
    curve = json.loads((run_dir / "early_exit.json").read_text())
    assert curve["T"] == 3 and curve["mean_timesteps"][0] == 1.0 and curve["mean_timesteps"][-1] == 3.0
    assert len(curve["fisher"]["trace"]) == 3
    assert (run_dir / "figures" / "early_exit.png").exists()


def test_prune_command(run_dir, capsys):
    assert cli.main(["prune", str(run_dir), "--rounds", "2", "--rate", "0.5", "--retrain-epochs", "1",
                     "--t-retrain", "2,3", "--no-progress", "--device", "cpu"]) == 0
    result = json.loads((run_dir / "pruning" / "pruning.json").read_text())
    assert set(result["curves"]) == {"2", "3"}
    assert result["curves"]["2"]["sparsity"] == pytest.approx([0.0, 0.5, 0.75], abs=1e-3)
    assert (run_dir / "figures" / "fig7_pruning.png").exists()
