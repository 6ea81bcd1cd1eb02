"""ResNeXt-29 for CIFAR (Xie et al., CVPR 2017, Sec. 5.3): ``C x d`` = cardinality x group width.

Three stages of three aggregated-transformation blocks on a 64-channel 3x3 stem. In stage
``s`` (0, 1, 2) a block is 1x1 (to ``C*d*2^s``), grouped 3x3 with ``C`` groups, 1x1 (to
``2*C*d*2^s``): 256, 512 and 1024 output channels for 2x64d and 32x4d alike.
"""

from __future__ import annotations

from torch import Tensor, nn

from .resnet_cifar import Backbone, Stage, conv_bn, shortcut


class ResNeXtBlock(nn.Module):
    """Bottleneck with a grouped 3x3 convolution; output ``2 * inner`` channels."""

    def __init__(self, c_in: int, inner: int, cardinality: int, stride: int):
        super().__init__()
        c_out = 2 * inner
        self.body = nn.Sequential(
            conv_bn(c_in, inner, 1), nn.ReLU(inplace=True),
            conv_bn(inner, inner, 3, stride, groups=cardinality), nn.ReLU(inplace=True),
            conv_bn(inner, c_out, 1),
        )
        self.shortcut = shortcut(c_in, c_out, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class ResNeXt29(Backbone):
    """Three stages of three blocks; ``features`` gives ``(B, 8 * C * d)``."""

    def __init__(self, cardinality: int, group_width: int, num_classes: int, in_channels: int = 3):
        layers, layout, c, inner = [], [], 64, cardinality * group_width
        for s in range(3):
            for i in range(3):
                layers.append(ResNeXtBlock(c, inner, cardinality, 2 if (s > 0 and i == 0) else 1))
                c = 2 * inner
            layout.append(Stage(len(layers) - 1, c, 2 if s > 0 else 1))  # one flat Sequential of 9 blocks
            inner *= 2
        stem = nn.Sequential(conv_bn(in_channels, 64, 3), nn.ReLU(inplace=True))
        super().__init__(stem, nn.Sequential(*layers), c, num_classes, layout)
