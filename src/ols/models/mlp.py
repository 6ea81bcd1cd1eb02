"""Flat-feature classifiers: ``linear`` (one layer) and ``mlp`` (one hidden layer).

For feature sets stored as ``(N, d, 1, 1)`` (``--dataset manyclass``): the input width is the
channel count ``d``. An image input (``H, W > 1``) is refused with one line.
"""

from __future__ import annotations

from torch import Tensor, nn


class MLP(nn.Module):
    """``(B, d, 1, 1) -> (B, K)``: flatten, then ``hidden`` ReLU units (none: a linear classifier)."""

    def __init__(self, num_classes: int, in_channels: int = 1, hidden: int = 0):
        super().__init__()
        width = hidden or in_channels
        layers = (nn.Linear(in_channels, hidden), nn.ReLU()) if hidden else ()
        self.body = nn.Sequential(nn.Flatten(), *layers)
        self.head = nn.Linear(width, num_classes)
        self.in_channels = in_channels

    def features(self, x: Tensor) -> Tensor:
        """``(B, d, 1, 1) -> (B, hidden or d)`` penultimate features."""
        if x.shape[2:].numel() != 1:
            raise ValueError(f"the linear/mlp models take feature sets of shape (N, d, 1, 1), got images of "
                             f"{tuple(x.shape[1:])}; use --model cnn or a ResNet for images")
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))
