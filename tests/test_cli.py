import pytest

from spiketide import cli


def run(capsys, *argv):
    try:
        code = cli.main(list(argv))
    except SystemExit as e:  # argparse exits on usage errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


COMMANDS = ["train", "demo", "plot", "fisher", "deficits", "robustness", "early-exit", "stats", "prune", "export-nir",
            "reproduce", "report"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(capsys, command):
    code, out, _ = run(capsys, command, "--help")
    assert code == 0 and "usage: spiketide" in out
    # argparse %-formats help= strings but not a description without %(prog): a "50%%" there is printed as is
    assert "%%" not in out and "%(" not in out
    # the description is the handler's docstring (cli._command): every command says what it does
    description = out.split("\n\n")[1]
    assert not description.startswith(("positional arguments", "options")) and len(description) > 40


def test_top_level_help(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in COMMANDS:
        assert command in out


@pytest.mark.parametrize("argv,message", [
    (["--tau", "0"], "tau must be a finite non-zero number"),
    (["-T", "0"], "must be >= 1"),
    (["--model", "lenet"], "unknown model 'lenet'"),
    (["--dataset", "mnist"], "mnist"),
    (["--epochs", "3", "--checkpoint-epochs", "2,7"], "checkpoint epochs [7]"),
    (["--loss", "alpha"], "needs --alpha"),
    (["--loss", "alpha", "--alpha", "imagenet:low"], "unknown alpha preset"),
    (["--dataset", "fashion-mnist", "--model", "convnet", "--subset", "70000", "--epochs", "1"], "60000"),
])
def test_train_errors_are_one_clear_line(capsys, tmp_path, argv, message):
    code, _, err = run(capsys, "train", "--out", str(tmp_path / "r"), "--no-progress", *argv)
    assert code == 2
    assert message in err
    assert "Traceback" not in err
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


def test_alpha_preset_resolves(tmp_path):
    from spiketide.losses import resolve_alpha

    assert resolve_alpha("cifar10:low") == 1e-3
    assert resolve_alpha("svhn:high") == 7e-2
    assert resolve_alpha("0.05") == 0.05


@pytest.mark.parametrize("command", ["fisher", "robustness", "deficits", "early-exit"])
def test_analysis_commands_reject_missing_and_corrupt_checkpoints(capsys, tmp_path, command):
    code, _, err = run(capsys, command, str(tmp_path / "nope.pt"))
    assert code == 2 and "does not exist" in err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    code, _, err = run(capsys, command, str(bad))
    assert code == 2 and "bad.pt" in err and "Traceback" not in err


def test_resume_without_run(capsys, tmp_path):
    code, _, err = run(capsys, "train", "--resume", "--out", str(tmp_path / "none"))
    assert code == 2 and "not a run directory" in err


def test_list_options_name_what_they_hold_and_refuse_empty_items():
    import argparse

    assert cli._int_list("seeds", "0,1,2")("0, 1,2") == [0, 1, 2]
    for bad, message in [("1,,2", "an empty item"), ("1,2,", "an empty item"), ("a,b", "comma-separated seeds"),
                         ("", "an empty item"), ("-1", "seeds must be >= 0")]:
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            cli._int_list("seeds", "0,1,2")(bad)
    assert cli._thresholds("0,0.5,1") == [0.0, 0.5, 1.0]
    for bad in ("1.5", "-0.1", "nan"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"probabilities in \[0, 1\]"):
            cli._thresholds(bad)
    assert cli._t_retrain("auto") == "auto" and cli._t_retrain("2,3") == (2, 3)
    with pytest.raises(argparse.ArgumentTypeError, match="must be >= 1"):
        cli._t_retrain("0,2")
    assert cli._seed("4294967295") == 4294967295


def test_an_os_error_on_a_given_path_is_one_line(capsys):
    # As root /proc passes the permission check, and the folder cannot be made: the OSError itself is reported
    code, _, err = run(capsys, "train", "--model", "convnet", "--dataset", "fashion-mnist", "--subset", "20",
                       "--test-subset", "20", "-T", "2", "--epochs", "1", "--no-progress", "--no-compile",
                       "--out", "/proc/self/spiketide-run")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "/proc" in err
