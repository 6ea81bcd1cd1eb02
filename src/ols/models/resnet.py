"""ImageNet-shape ResNets (He et al., CVPR 2016, Table 1), with a CIFAR or an ImageNet stem.

ResNet-34 (basic blocks, 3-4-6-3), ResNet-50 (bottleneck, 3-4-6-3) and ResNet-101
(bottleneck, 3-4-23-3). ``resnetN`` has the CIFAR stem of the OLS paper's Table II: one
3x3 stride-1 convolution instead of the 7x7 stride-2 convolution and max pooling, which
``resnetN_imagenet`` keeps (Tables IV and VI). Everything else follows the torchvision
layout: ``resnetN_imagenet`` has torchvision's parameter count, and loads its weight
files (see :func:`ols.models.wrapper.load_pretrained`).
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from .resnet_cifar import Backbone, BasicBlock, Block, Bottleneck, Stage, conv_bn, make_stage

LAYOUTS = {18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)),
           50: (Bottleneck, (3, 4, 6, 3)), 101: (Bottleneck, (3, 4, 23, 3))}


class ResNet(Backbone):
    """Four stages of 64-512 channels; ``features`` gives ``(B, 512 * expansion)``."""

    def __init__(self, block: Block, blocks: Sequence[int], num_classes: int, in_channels: int = 3,
                 imagenet_stem: bool = False):
        if imagenet_stem:
            stem = nn.Sequential(conv_bn(in_channels, 64, 7, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        else:
            stem = nn.Sequential(conv_bn(in_channels, 64, 3), nn.ReLU(inplace=True))
        stages, layout, c = [], [], 64
        for i, (width, n) in enumerate(zip((64, 128, 256, 512), blocks)):
            stage, c = make_stage(block, c, width, n, 1 if i == 0 else 2)
            stages.append(stage)
            layout.append(Stage(i, c, 1 if i == 0 else 2))
        super().__init__(stem, nn.Sequential(*stages), c, num_classes, layout)


def resnet(depth: int, num_classes: int, in_channels: int = 3, imagenet_stem: bool = False) -> ResNet:
    """ResNet-``depth`` (18, 34, 50 or 101), with a CIFAR stem unless ``imagenet_stem``."""
    block, blocks = LAYOUTS[depth]
    return ResNet(block, blocks, num_classes, in_channels, imagenet_stem)
