"""Training callbacks: the hooks of the one training loop, and Fisher tracking (Fig. 1, Fig. 3).

The loop (`train.Trainer`) calls these; it builds none itself. The caller composes the list
(`from_config` gives the ones a `TrainConfig`'s flags ask for, as the CLI does).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from spiketide import data
from spiketide.fisher import temporal_fisher

if TYPE_CHECKING:
    from spiketide.train import Trainer

__all__ = ["Callback", "FisherTracker", "from_config"]


class Callback:
    """Hooks into the training loop. `record` is the epoch's metrics line; add keys to it before it is written.

    `on_fit_start` runs on a fresh start and on a resume alike, before the callback's saved state is
    restored. Saved state is matched to a callback by `key` (its class name unless set), not by position.
    """

    key: str | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        pass

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        pass

    def on_fit_end(self, trainer: Trainer) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class FisherTracker(Callback):
    """Temporal Fisher information (Eq. 6) at epoch 0, every `every` epochs and at the last epoch.

    Measures on a fixed, seeded, class-balanced subset of the training split without augmentation
    and adds a `fisher` object (`FisherProfile.to_dict()`) to that epoch's metrics line. Under DDP
    only rank 0 measures.
    """

    def __init__(self, every: int, samples: int = 128, estimator: str = "empirical", per_layer: bool = False,
                 batch_size: int = 64, seed: int = 0):
        self.every, self.samples, self.estimator = int(every), int(samples), estimator
        self.per_layer, self.batch_size, self.seed = bool(per_layer), int(batch_size), int(seed)
        self._data: tuple[Tensor, Tensor] | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        ds = trainer.train_set
        idx = data.balanced_subset_indices(ds.labels.cpu(), ds.num_classes, min(self.samples, len(ds)),
                                           seed=self.seed).to(ds.labels.device)
        self.use(ds.images[idx], ds.labels[idx])

    def use(self, images: Tensor, labels: Tensor) -> None:
        """Measure on these images (pixels, uint8 or float in [0, 1]) and labels from now on."""
        self._data = (data.to_float(images), labels)

    def due(self, epoch: int, last: int | None = None) -> bool:
        """Whether epoch `epoch` is measured: epoch 0, every `every`-th, and the last (`last`, when known)."""
        return epoch % self.every == 0 or epoch == last

    def measure(self, model, epoch: int) -> dict:
        """The Fisher profile of `model` on the measurement set (`FisherProfile.to_dict()`), seeded by `epoch`."""
        x, y = self._data
        return temporal_fisher(model, x, y, estimator=self.estimator, per_layer=self.per_layer,
                               batch_size=self.batch_size, seed=self.seed + epoch).to_dict()

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        if trainer.is_main and self.due(record["epoch"], trainer.config.epochs):
            record["fisher"] = self.measure(trainer.model, record["epoch"])


def from_config(config) -> list[Callback]:
    """The callbacks a `TrainConfig`'s flags ask for: Fisher tracking when `fisher_every > 0`."""
    return [FisherTracker(config.fisher_every, config.fisher_samples, config.fisher_estimator, config.fisher_per_layer,
                          config.fisher_batch_size, config.seed)] if config.fisher_every > 0 else []
