"""`vgg16`: CIFAR-size spiking VGG-16 (13 conv3x3-BN-LIF layers, average pooling, linear head)."""

from __future__ import annotations

import torch
from torch import nn

from spiketide.models.base import AvgPool2d, SpikingModel, conv_bn, fold, register, scale_width
from spiketide.neuron import LIF

__all__ = ["VGG16", "VGG16_CFG"]

#: Channel widths; "M" is a 2x2 average pool.
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


@register("vgg16")
class VGG16(SpikingModel):
    """Spiking VGG-16, CIFAR variant (the usual ``[64, 64, M, 128, 128, M, 256 x3, M, 512 x3, M, 512 x3, M]``
    feature stack with a single linear classifier, as in the common CIFAR VGG-16 and SNN pruning work).

    Layer k (k = 1..13) is conv3x3(stride 1, no bias)+BN (shared across timesteps) followed by the LIF
    neuron ``lif{k}``. Layer 1 is the direct-encoding ``stem`` (computed once on a static image); layers
    2..13 are the modules ``conv2`` .. ``conv13``. The first four "M" are ``AvgPool2d(2, ceil_mode=True)``
    (32 -> 16 -> 8 -> 4 -> 2; 28 -> 14 -> 7 -> 4 -> 2) and the last "M" is a global adaptive average pool
    (equal to a 2x2 average pool on the 2x2 map), then the linear head ``fc`` (512 -> num_classes) on
    the per-timestep features. Blocks for per-block Fisher information: ``stem``, ``conv2`` .. ``conv13``,
    ``fc``.
    3 input channels, 10 classes: 14,724,042 parameters (1 input channel: 14,722,890).
    `width` scales every conv width (and so the head's input).
    """

    block_names = ("stem",) + tuple(f"conv{k}" for k in range(2, 14)) + ("fc",)

    def __init__(self, *, num_classes: int, timesteps: int, tau: float = 2.0, in_channels: int = 3,
                 image_size: int = 32, **kw):
        super().__init__(num_classes=num_classes, timesteps=timesteps, in_channels=in_channels,
                         image_size=image_size, **kw)
        self.pool = AvgPool2d(ceil_mode=True)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self._pool_after: list[bool] = []  # per conv layer: is an "M" right after it (last one -> gap)
        cin, k = in_channels, 0
        for v in VGG16_CFG:
            if v == "M":
                self._pool_after[-1] = True
                continue
            k += 1
            v = scale_width(v, self.width)
            setattr(self, "stem" if k == 1 else f"conv{k}", conv_bn(cin, v))
            setattr(self, f"lif{k}", LIF(tau))
            self._pool_after.append(False)
            cin = v
        self.num_convs = k
        self.fc = nn.Linear(cin, num_classes)

    def forward_features(self, z: torch.Tensor) -> torch.Tensor:
        s = self.lif1(z)
        for k in range(1, self.num_convs + 1):
            if k > 1:
                s = getattr(self, f"lif{k}")(fold(getattr(self, f"conv{k}"), s))
            if self._pool_after[k - 1] and k < self.num_convs:
                s = fold(self.pool, s)
        return fold(lambda a: self.fc(self.gap(a).flatten(1)), s)
