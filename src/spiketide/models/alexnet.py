"""`alexnet`: CIFAR-size spiking AlexNet (five conv3x3-BN-LIF layers 96/256/384/384/256, two hidden FC layers)."""

from __future__ import annotations

import torch
from torch import nn

from spiketide.models.base import AvgPool2d, SpikingModel, conv_bn, fold, register, scale_width
from spiketide.neuron import LIF

__all__ = ["AlexNet"]


@register("alexnet")
class AlexNet(SpikingModel):
    """Spiking AlexNet for 28x28 / 32x32 images, the small-image AlexNet variant common in SNN work
    (AlexNet's 96/256/384/384/256 channel plan with 3x3 kernels and a 1024-1024 classifier).

    stem conv3x3(in->96)+BN (direct encoding) -> LIF -> avgpool2
    -> conv2 (96->256)+BN -> LIF -> avgpool2
    -> conv3 (256->384)+BN -> LIF -> conv4 (384->384)+BN -> LIF -> conv5 (384->256)+BN -> LIF -> avgpool2
    -> adaptive avgpool to 2x2 (32: 32->16->8->4->2; 28: 28->14->7->4->2, pools use ceil_mode)
    -> fc1 (1024->1024)+BN -> LIF -> fc2 (1024->1024)+BN -> LIF -> fc (1024->num_classes, plain linear head).
    Convolutions and hidden FC layers have no bias and are followed by BN (BatchNorm1d for the FC layers),
    shared across timesteps. Blocks: ``stem``, ``conv2`` .. ``conv5``,
    ``fc1``, ``fc2``, ``fc``.
    3 input channels, 10 classes: 5,434,602 parameters (1 input channel: 5,432,874).
    `width` scales every conv width and both hidden FC sizes.
    """

    block_names = ("stem", "conv2", "conv3", "conv4", "conv5", "fc1", "fc2", "fc")

    def __init__(self, *, num_classes: int, timesteps: int, tau: float = 2.0, in_channels: int = 3,
                 image_size: int = 32, **kw):
        super().__init__(num_classes=num_classes, timesteps=timesteps, in_channels=in_channels,
                         image_size=image_size, **kw)
        c1, c2, c3, c4, c5, h = (scale_width(c, self.width) for c in (96, 256, 384, 384, 256, 1024))
        self.stem = conv_bn(in_channels, c1)
        self.conv2 = conv_bn(c1, c2)
        self.conv3 = conv_bn(c2, c3)
        self.conv4 = conv_bn(c3, c4)
        self.conv5 = conv_bn(c4, c5)
        for k in range(1, 8):
            setattr(self, f"lif{k}", LIF(tau))
        self.pool = AvgPool2d(ceil_mode=True)
        self.gap = nn.AdaptiveAvgPool2d(2)
        # Hidden FC layers carry BN (shared across timesteps) like the convs: with plain Linear init their
        # currents stay far below threshold and the classifier would receive no spikes at initialisation.
        self.fc1 = nn.Sequential(nn.Linear(c5 * 4, h, bias=False), nn.BatchNorm1d(h))
        self.fc2 = nn.Sequential(nn.Linear(h, h, bias=False), nn.BatchNorm1d(h))
        self.fc = nn.Linear(h, num_classes)

    def forward_features(self, z: torch.Tensor) -> torch.Tensor:
        s = fold(self.pool, self.lif1(z))
        s = fold(self.pool, self.lif2(fold(self.conv2, s)))
        s = self.lif3(fold(self.conv3, s))
        s = self.lif4(fold(self.conv4, s))
        s = fold(self.pool, self.lif5(fold(self.conv5, s)))
        s = self.lif6(fold(lambda a: self.fc1(self.gap(a).flatten(1)), s))
        s = self.lif7(fold(self.fc2, s))
        return fold(self.fc, s)
