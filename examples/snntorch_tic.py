"""TIC in an snnTorch model: spiketide's training loop and Fisher tracking on a network built with snnTorch.

    pip install snntorch==1.0.0
    python examples/snntorch_tic.py --out runs/snntorch-tic      # then: spiketide plot runs/snntorch-tic

The network is snnTorch's own (`snn.Leaky`, init_hidden=True); `adapters.Stateless` makes it the stateless
[B, ...] -> [T, B, C] model that the Trainer, `temporal_fisher` and every analysis command take.
"""

import argparse

import snntorch as snn
import torch

from spiketide import callbacks, train
from spiketide.adapters import Stateless


class Net(torch.nn.Module):
    """One timestep: [B, 1, 28, 28] -> logits [B, 10]. beta = 1 - 1/tau and input / tau make snn.Leaky Eq. 1."""

    def __init__(self, tau: float = 2.0, hidden: int = 256):
        super().__init__()
        self.tau, self.fc1, self.fc2 = tau, torch.nn.Linear(784, hidden), torch.nn.Linear(hidden, 10)
        self.lif = snn.Leaky(beta=1 - 1 / tau, reset_mechanism="zero", init_hidden=True)

    def forward(self, x):
        return self.fc2(self.lif(self.fc1(x.flatten(1)) / self.tau))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/snntorch-tic")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    config = train.TrainConfig(model="convnet", dataset="fashion-mnist", subset=500, test_subset=500, augment=False,
                               timesteps=6, epochs=a.epochs, batch_size=25, lr=0.1, seed=a.seed, fisher_every=5,
                               fisher_samples=128, eval_every=5, out=a.out)
    torch.manual_seed(a.seed)
    model = Stateless(Net(), config.timesteps)
    trainer = train.Trainer(config, callbacks=callbacks.from_config(config), model=model,
                            extra_config={"model_source": "snntorch Net (examples/snntorch_tic.py)"})
    history = trainer.fit()
    for r in history:
        if r.get("fisher"):
            f = r["fisher"]
            print(f"epoch {r['epoch']:3d}  IC {f['centroid']:.2f}  I_t " + " ".join(f"{v:.3g}" for v in f["trace"]))
    print(f"final: train loss {history[-1]['train_loss']:.4f}, test accuracy {history[-1]['test_acc']:.3f}")


if __name__ == "__main__":
    main()
