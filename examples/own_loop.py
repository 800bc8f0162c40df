"""Your own training loop: a SpikingJelly (or Norse, or snnTorch) network trained in plain PyTorch, Fisher tracked.

    python examples/own_loop.py --framework spikingjelly --out runs/own-sj
    spiketide plot runs/own-sj                                                    # Fig. 1 from metrics.jsonl
    spiketide fisher runs/own-sj --model-factory examples/own_loop.py:spikingjelly_model
    spiketide stats runs/own-sj --model-factory examples/own_loop.py:spikingjelly_model

The loop below is ordinary PyTorch (an optimizer, the mean output's cross-entropy, backward, step); spiketide only
watches: `tracking.RunTracker` measures the temporal Fisher information (Eq. 6) once per epoch on a fixed set of
training images and writes a run directory in the format `spiketide train` writes. The functions named
`<framework>_model` build each network with no arguments, so `--model-factory` can rebuild it for the analysis
commands. Each network is conv 1->8 (3x3) -> LIF (tau 2, threshold 1, hard reset) -> max-pool 2 -> linear
1568->10, run for T = 6 timesteps on Fashion-MNIST pixels in [0, 1]. After training the script runs
`spiketide plot`, `fisher` and `stats` on the run, as a user would.
"""

import argparse
import os
import subprocess
import sys
import time

import torch
from torch import nn

from spiketide import data
from spiketide.adapters import Stateless
from spiketide.factory import reference_of
from spiketide.tracking import RunTracker

T, TAU = 6, 2.0


def spikingjelly_model() -> nn.Module:
    """SpikingJelly 2.0.0, one timestep per call: LIFNode with the ATan surrogate and a detached reset (spiketide's
    LIF). (Step mode here; `spiketide stats` counts a multi-step network, step_mode="m", exactly the same.)"""
    from spikingjelly.activation_based import functional, layer, neuron, surrogate

    net = nn.Sequential(layer.Conv2d(1, 8, 3, padding=1), layer.BatchNorm2d(8),
                        neuron.LIFNode(tau=TAU, surrogate_function=surrogate.ATan(), detach_reset=True),
                        layer.MaxPool2d(2), layer.Flatten(), layer.Linear(8 * 14 * 14, 10))
    return Stateless(net, T, reset=functional.reset_net)


def norse_model() -> nn.Module:
    """Norse 1.1.0: LIFBoxCell with dt * tau_mem_inv = 1/tau (Eq. 1), its state threaded step by step."""
    import norse.torch as norse

    net = norse.SequentialState(nn.Conv2d(1, 8, 3, padding=1),
                                norse.LIFBoxCell(norse.LIFBoxParameters(tau_mem_inv=torch.tensor(1 / TAU)), dt=1.0),
                                nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 14 * 14, 10))
    return Stateless(net, T)


class SnnTorchNet(nn.Module):
    """snnTorch 1.0.0, one timestep per call: snn.Leaky with beta = 1 - 1/tau on input / tau is Eq. 1."""

    def __init__(self):
        super().__init__()
        import snntorch as snn

        self.conv, self.fc = nn.Conv2d(1, 8, 3, padding=1), nn.Linear(8 * 14 * 14, 10)
        self.lif = snn.Leaky(beta=1 - 1 / TAU, reset_mechanism="zero", init_hidden=True)

    def forward(self, x):
        return self.fc(nn.functional.max_pool2d(self.lif(self.conv(x) / TAU), 2).flatten(1))


def snntorch_model() -> nn.Module:
    return Stateless(SnnTorchNet(), T)


FACTORIES = {"spikingjelly": spikingjelly_model, "norse": norse_model, "snntorch": snntorch_model}


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return int((model(x).mean(0).argmax(1) == y).sum()) / len(y)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--framework", choices=FACTORIES, default="spikingjelly")
    p.add_argument("--out", default=None, help="run directory (default runs/own-<framework>)")
    p.add_argument("--train", type=int, default=500, help="class-balanced Fashion-MNIST training images")
    p.add_argument("--test", type=int, default=500, help="class-balanced test images")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-analysis", dest="analysis", action="store_false", help="skip spiketide plot/fisher/stats")
    a = p.parse_args()
    out = a.out or f"runs/own-{a.framework}"
    torch.manual_seed(a.seed)
    train = data.load("fashion-mnist", "train", subset=a.train, seed=a.seed)
    test = data.load("fashion-mnist", "test", subset=a.test, seed=a.seed)
    x, y = data.to_float(train.images), train.labels
    x_test, y_test = data.to_float(test.images), test.labels

    make = FACTORIES[a.framework]
    model = make()
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    batch = 25
    settings = {"optimizer": "adam", "lr": a.lr, "batch_size": batch, "augment": False, "subset": a.train,
                "test_subset": a.test, "tau": TAU, "weight_decay": 0.0, "schedule": "constant"}
    # The fixed measurement set: the first 128 training images (all ten classes), the same at every epoch.
    with RunTracker(model, train.images[:128], y[:128], out, dataset="fashion-mnist", factory=make,
                    epochs=a.epochs, checkpoint_epochs=[0], seed=a.seed, settings=settings) as tracker:
        tracker.epoch(0, test_acc=accuracy(model, x_test, y_test))
        for epoch in range(1, a.epochs + 1):
            start, total, correct = time.perf_counter(), 0.0, 0
            model.train()
            for idx in torch.randperm(len(x)).split(batch):
                out_t = model(x[idx])                    # [T, B, 10]
                loss = nn.functional.cross_entropy(out_t.mean(0), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
                correct += int((out_t.mean(0).argmax(1) == y[idx]).sum())
            r = tracker.epoch(epoch, train_loss=total / len(x), train_acc=correct / len(x),
                              test_acc=accuracy(model, x_test, y_test), lr=a.lr, seconds=time.perf_counter() - start)
            f = r["fisher"]
            print(f"epoch {epoch}: loss {r['train_loss']:.3f}, test acc {r['test_acc']:.3f}, IC {f['centroid']:.2f}, "
                  "I_t " + " ".join(f"{v:.3g}" for v in f["trace"]))
    if a.analysis:
        ref = reference_of(make)  # this file's function, e.g. examples/own_loop.py:spikingjelly_model
        for argv in (["plot", out], ["fisher", out, "--model-factory", ref, "--no-progress"],
                     ["stats", out, "--model-factory", ref, "--no-progress"]):
            print("$ spiketide " + " ".join(argv), flush=True)
            subprocess.run([sys.executable, "-m", "spiketide.cli", *argv], check=True, env=os.environ)


if __name__ == "__main__":
    main()
