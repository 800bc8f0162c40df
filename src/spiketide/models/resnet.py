"""Spiking ResNets: `resnet19` (the paper's baseline, authors' public layout) and a CIFAR-size `resnet34`.

Both share one structure:

* `stem`: conv3x3 (stride 1) + BN, run once on the static image (direct encoding, see
  `SpikingModel.encode`), followed by the input neuron `lif_in`;
* stages `layer1`, `layer2`, ... of `BasicBlock`s named `layerS.i`;
* global average pooling (adaptive, so 28x28 and 32x32 inputs both work) and a plain
  linear head `fc` on the per-timestep features (no output neuron).

The `width` multiplier (see `models.create`) scales the stem and every stage width.

`BasicBlock`: conv3x3-BN-LIF-conv3x3-BN, plus the shortcut (identity, or conv1x1+BN when the
shape changes), then a LIF neuron after the addition. All BatchNorms are plain `nn.BatchNorm2d`
on the folded [T*B, ...] batch, i.e. shared across timesteps. Convolutions have no bias.
No state survives a forward call.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from spiketide.models.base import SpikingModel, conv_bn, fold, register, scale_width
from spiketide.neuron import LIF

__all__ = ["BasicBlock", "SpikingResNet", "ResNet19", "ResNet34"]


class BasicBlock(nn.Module):
    """conv3x3(stride)-BN-LIF-conv3x3-BN + shortcut -> LIF, on [T, B, C, H, W]."""

    def __init__(self, cin: int, cout: int, stride: int, tau: float):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.lif1 = LIF(tau)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())
        self.lif2 = LIF(tau)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.lif1(fold(lambda a: self.bn1(self.conv1(a)), x))
        out = fold(lambda a: self.bn2(self.conv2(a)), out)
        return self.lif2(out + fold(self.shortcut, x))


def _block_names(blocks: Sequence[int]) -> tuple[str, ...]:
    layers = [f"layer{s}.{i}" for s, n in enumerate(blocks, start=1) for i in range(n)]
    return ("stem", *layers, "fc")


class SpikingResNet(SpikingModel):
    """Generic spiking ResNet; use `ResNet19` / `ResNet34` (or `create("resnet19", ...)`)."""

    def __init__(self, *, num_classes: int, timesteps: int, tau: float = 2.0, in_channels: int = 3,
                 image_size: int = 32, stem_width: int, widths: Sequence[int], strides: Sequence[int],
                 blocks: Sequence[int], **kw):
        super().__init__(num_classes=num_classes, timesteps=timesteps, in_channels=in_channels,
                         image_size=image_size, **kw)
        if not (len(widths) == len(strides) == len(blocks)):
            raise ValueError("widths, strides and blocks need one entry per stage")
        cin = scale_width(stem_width, self.width)
        widths = [scale_width(w, self.width) for w in widths]
        self.stem = conv_bn(in_channels, cin)
        self.lif_in = LIF(tau)
        for s, (w, st, n) in enumerate(zip(widths, strides, blocks), start=1):
            layers = []
            for i in range(n):
                layers.append(BasicBlock(cin, w, st if i == 0 else 1, tau))
                cin = w
            setattr(self, f"layer{s}", nn.Sequential(*layers))
        self.num_stages = len(blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward_features(self, z: torch.Tensor) -> torch.Tensor:
        s = self.lif_in(z)
        for k in range(1, self.num_stages + 1):
            s = getattr(self, f"layer{k}")(s)
        return fold(lambda a: self.fc(self.pool(a).flatten(1)), s)


@register("resnet19")
class ResNet19(SpikingResNet):
    """ResNet-19 as in the authors' public code (Kim et al.; tdBN-style stem width 128).

    stem conv3x3(in->128)+BN (direct encoding) -> LIF -> BasicBlock stages [3, 3, 2] with
    256 / 512 / 512 channels, each stage starting with stride 2 (32x32 -> 16 -> 8 -> 4;
    28x28 -> 14 -> 7 -> 4) -> global avgpool -> linear(512 -> num_classes).
    3 input channels, 10 classes: 26,108,042 parameters (1 input channel: 26,105,738).
    """

    block_names = _block_names((3, 3, 2))

    def __init__(self, *, num_classes: int, timesteps: int, tau: float = 2.0, in_channels: int = 3,
                 image_size: int = 32, **kw):
        super().__init__(num_classes=num_classes, timesteps=timesteps, tau=tau, in_channels=in_channels,
                         image_size=image_size, stem_width=128, widths=(256, 512, 512), strides=(2, 2, 2),
                         blocks=(3, 3, 2), **kw)


@register("resnet34")
class ResNet34(SpikingResNet):
    """CIFAR-size spiking ResNet-34 (He et al. 2016 BasicBlock layout, no max-pool).

    stem conv3x3(in->64)+BN (direct encoding) -> LIF -> BasicBlock stages [3, 4, 6, 3] with
    64 / 128 / 256 / 512 channels and first strides 1 / 2 / 2 / 2 -> global avgpool ->
    linear(512 -> num_classes).
    3 input channels, 10 classes: 21,282,122 parameters (1 input channel: 21,280,970).
    """

    block_names = _block_names((3, 4, 6, 3))

    def __init__(self, *, num_classes: int, timesteps: int, tau: float = 2.0, in_channels: int = 3,
                 image_size: int = 32, **kw):
        super().__init__(num_classes=num_classes, timesteps=timesteps, tau=tau, in_channels=in_channels,
                         image_size=image_size, stem_width=64, widths=(64, 128, 256, 512), strides=(1, 2, 2, 2),
                         blocks=(3, 4, 6, 3), **kw)
