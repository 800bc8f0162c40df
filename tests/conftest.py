"""Test-wide settings: CPU, offline, and the plain LIF loop unless a test asks for the compiled scan
(compiling once per shape would dominate the suite's time)."""

import os

os.environ.setdefault("SPIKETIDE_NO_COMPILE", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


def train_tiny_run(path, *extra: str) -> None:
    """A one-epoch convnet run on 20 Fashion-MNIST images at T = 2, through the CLI (for command tests)."""
    from spiketide import cli

    assert cli.main(["train", "--model", "convnet", "--dataset", "fashion-mnist", "--subset", "20", "--test-subset",
                     "20", "-T", "2", "--epochs", "1", "-b", "20", "--no-compile", "--no-progress",
                     "--out", str(path), *extra]) == 0
