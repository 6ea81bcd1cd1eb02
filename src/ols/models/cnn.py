"""A small CNN for small images (the digits' 8x8, or CIFAR-sized inputs)."""

from __future__ import annotations

from torch import Tensor, nn


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()
    )


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU stages (32, 64, 128 channels), global pooling, a linear head.

    ``forward(x (B, C, H, W)) -> logits (B, num_classes)``; ``features`` gives the
    ``(B, 128)`` penultimate representation.
    """

    def __init__(self, num_classes: int, in_channels: int = 1, width: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            _block(in_channels, width),
            _block(width, 2 * width),
            nn.MaxPool2d(2),
            _block(2 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(4 * width, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """``(B, C, H, W) -> (B, 4 * width)`` penultimate features."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))
