"""`convnet`: a small spiking CNN sized for CPU work (conv-BN-LIF x3, 32/64/64 channels)."""

from __future__ import annotations

import torch
from torch import nn

from spiketide.models.base import AvgPool2d, SpikingModel, conv_bn, fold, register, scale_width
from spiketide.neuron import LIF


@register("convnet")
class ConvNet(SpikingModel):
    """stem conv3x3(32)+BN (direct encoding) -> LIF -> avgpool2 -> conv(64)+BN -> LIF -> avgpool2
    -> conv(64)+BN -> LIF -> adaptive avgpool 4x4 -> flatten -> linear. BN is shared across timesteps.

    The 4x4 spatial map before the head (rather than a global pool) lets this small net fit a
    few thousand images to near-zero loss within minutes, which is where TIC appears.
    28x28x1 input, 10 classes: 66,154 parameters (66,730 for 32x32x3).
    `width` scales `widths` (all three).
    """

    block_names = ("stem", "block1", "block2", "fc")

    def __init__(self, *, num_classes: int, timesteps: int, tau: float = 2.0, in_channels: int = 3,
                 image_size: int = 32, widths: tuple[int, int, int] = (32, 64, 64), **kw):
        super().__init__(num_classes=num_classes, timesteps=timesteps, in_channels=in_channels,
                         image_size=image_size, **kw)
        w1, w2, w3 = (scale_width(w, self.width) for w in widths)
        self.stem = conv_bn(in_channels, w1)
        self.lif0 = LIF(tau)
        self.block1 = conv_bn(w1, w2)
        self.lif1 = LIF(tau)
        self.block2 = conv_bn(w2, w3)
        self.lif2 = LIF(tau)
        self.pool = AvgPool2d()
        self.head_pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Linear(w3 * 16, num_classes)

    def forward_features(self, z: torch.Tensor) -> torch.Tensor:
        s = fold(self.pool, self.lif0(z))
        s = fold(self.pool, self.lif1(fold(self.block1, s)))
        s = self.lif2(fold(self.block2, s))
        return fold(lambda z: self.fc(self.head_pool(z).flatten(1)), s)
