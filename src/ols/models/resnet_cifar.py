"""CIFAR ResNets (He et al., CVPR 2016, Sec. 4.2): three stages of 16/32/64 channels on 32x32 input.

Depth decides the block, in the convention of the CIFAR code the OLS authors build on:
``depth = 6n + 2`` uses ``n`` basic blocks per stage (ResNet-20/32/44/56/74/110) and,
failing that, ``depth = 9n + 2`` uses ``n`` bottleneck blocks (ResNet-29). Downsampling
shortcuts are 1x1 convolutions with batch norm (He et al.'s option B).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence, Type, Union

from torch import Tensor, nn


def conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """``kernel x kernel`` convolution (no bias, 'same' padding) followed by batch norm."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
    )


def shortcut(c_in: int, c_out: int, stride: int) -> nn.Module:
    """Identity when shapes match, else a strided 1x1 projection (option B)."""
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    return conv_bn(c_in, c_out, 1, stride)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a residual connection; ``expansion = 1``."""

    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int = 1):
        super().__init__()
        c_out = width * self.expansion
        self.body = nn.Sequential(
            conv_bn(c_in, width, 3, stride), nn.ReLU(inplace=True), conv_bn(width, c_out, 3)
        )
        self.shortcut = shortcut(c_in, c_out, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4; residual connection."""

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int = 1):
        super().__init__()
        c_out = width * self.expansion
        self.body = nn.Sequential(
            conv_bn(c_in, width, 1), nn.ReLU(inplace=True),
            conv_bn(width, width, 3, stride), nn.ReLU(inplace=True),
            conv_bn(width, c_out, 1),
        )
        self.shortcut = shortcut(c_in, c_out, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


Block = Type[Union[BasicBlock, Bottleneck]]


def block_for_depth(depth: int) -> tuple:
    """``(block, blocks_per_stage)`` for a CIFAR ResNet of ``depth`` layers."""
    if depth >= 8 and (depth - 2) % 6 == 0:
        return BasicBlock, (depth - 2) // 6
    if depth >= 11 and (depth - 2) % 9 == 0:
        return Bottleneck, (depth - 2) // 9
    raise ValueError(f"a CIFAR ResNet needs depth 6n+2 (basic) or 9n+2 (bottleneck), got {depth}")


def make_stage(block: Block, c_in: int, width: int, blocks: int, stride: int) -> tuple:
    """``(stage, c_out)``: ``blocks`` blocks, the first one strided."""
    layers = []
    for i in range(blocks):
        layers.append(block(c_in, width, stride if i == 0 else 1))
        c_in = width * block.expansion
    return nn.Sequential(*layers), c_in


class Stage(NamedTuple):
    """Where one stage of a :class:`Backbone` ends.

    After child ``end`` of ``stages``, with ``channels`` output channels, having
    downsampled its input by ``stride``.
    """

    end: int
    channels: int
    stride: int


class Backbone(nn.Module):
    """``stem -> stages -> global average pooling -> linear head``, the shape of every ResNet here.

    ``forward(x (B, C, H, W)) -> (B, num_classes)``; ``features`` gives the ``(B, width)``
    pooled penultimate representation. Weights are initialised by :func:`init_weights`.
    ``stage_layout`` says where each stage ends (:class:`Stage`); self-distillation exits
    (:mod:`ols.models.exits`) attach there.
    """

    def __init__(self, stem: nn.Module, stages: nn.Module, width: int, num_classes: int,
                 stage_layout: Sequence[Stage] = ()):
        super().__init__()
        self.stem, self.stages = stem, stages
        self.stage_layout = tuple(stage_layout)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(width, num_classes)
        init_weights(self)

    def features(self, x: Tensor) -> Tensor:
        return self.pool(self.stages(self.stem(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class CifarResNet(Backbone):
    """He et al.'s CIFAR ResNet of ``depth`` layers; ``features`` gives ``(B, 64 * expansion)``."""

    def __init__(self, depth: int, num_classes: int, in_channels: int = 3):
        block, n = block_for_depth(depth)
        stages, layout, c = [], [], 16
        for i, (width, stride) in enumerate(((16, 1), (32, 2), (64, 2))):
            stage, c = make_stage(block, c, width, n, stride)
            stages.append(stage)
            layout.append(Stage(i, c, stride))
        stem = nn.Sequential(conv_bn(in_channels, 16, 3), nn.ReLU(inplace=True))
        super().__init__(stem, nn.Sequential(*stages), c, num_classes, layout)


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal convolutions (fan-out), unit batch norm, default linear layers."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
