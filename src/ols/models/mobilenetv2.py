"""MobileNetV2 (Sandler et al., CVPR 2018, Table 2) adapted to 32x32 input.

The layer table is the paper's; for CIFAR the stem and the first stride-2 stage run at
stride 1 (so a 32x32 image ends at 4x4), which leaves the parameter count unchanged:
3,504,872 with a 1000-way head, as torchvision's ImageNet model.
"""

from __future__ import annotations

from torch import Tensor, nn

from .resnet_cifar import init_weights

#: (expansion t, output channels c, repeats n, stride s), paper Table 2, CIFAR strides
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
            (6, 160, 3, 2), (6, 320, 1, 1))


def conv_bn_relu6(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Convolution, batch norm, ReLU6."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """Expand (1x1, skipped when t = 1), depthwise 3x3, linear 1x1 projection; residual if shapes match."""

    def __init__(self, c_in: int, c_out: int, stride: int, expansion: int):
        super().__init__()
        hidden = c_in * expansion
        layers = [] if expansion == 1 else [conv_bn_relu6(c_in, hidden, 1)]
        layers += [
            conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class MobileNetV2(nn.Module):
    """``forward(x (B, C, H, W)) -> (B, num_classes)``; ``features`` gives ``(B, 1280)``."""

    def __init__(self, num_classes: int, in_channels: int = 3):
        super().__init__()
        layers, c = [conv_bn_relu6(in_channels, 32, 3)], 32
        for t, c_out, n, s in SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(c, c_out, s if i == 0 else 1, t))
                c = c_out
        layers.append(conv_bn_relu6(c, 1280, 1))
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(1280, num_classes)
        init_weights(self)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))
