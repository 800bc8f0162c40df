"""Fig. 2 over training: time-window noise deficits of each saved checkpoint of a run."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch

from spiketide import data, robustness
from spiketide.errors import ConfigError
from spiketide.train import load_model

__all__ = ["deficits_over_checkpoints"]


def deficits_over_checkpoints(
    checkpoints: Sequence[str | os.PathLike],
    *,
    window: int = 3,
    noise_ratio: float = 0.5,
    samples: int | None = 1000,
    batch_size: int = 256,
    seed: int = 0,
    data_root: str | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    model_factory: str | None = None,
) -> dict[str, Any]:
    """`robustness.time_window_deficits` (Fig. 2) for every checkpoint, in order.

    Each checkpoint is evaluated on the same seeded class-balanced subset of `samples` test images
    of its dataset (`data_root` overrides the folder stored in the checkpoint). `on_result(entry)`
    is called after each checkpoint, so a caller can report progress. `model_factory`: as `train.load_model`. Returns `window`,
    `noise_ratio` and `checkpoints`: one deficits result per checkpoint, with `checkpoint` and `epoch` added.
    """
    if not checkpoints:
        raise ConfigError("no checkpoints to evaluate")
    entries = []
    for ckpt in checkpoints:
        model, config, state = load_model(ckpt, device, model_factory)
        test = data.load(config.dataset, "test", root=data_root or config.data_root, subset=samples, seed=seed,
                         device=device)
        entry = robustness.time_window_deficits(model, test.images, test.labels, window=window,
                                                noise_ratio=noise_ratio, batch_size=batch_size, seed=seed,
                                                progress=progress)
        entry.update(checkpoint=str(ckpt), epoch=state.get("epoch"))
        entries.append(entry)
        if on_result is not None:
            on_result(entry)
    return {"window": window, "noise_ratio": noise_ratio, "checkpoints": entries}
