"""Multi-exit networks for self-distillation (BYOT, Zhang et al., ICCV 2019): a classifier after every stage.

:class:`MultiExit` takes a :class:`~ols.models.resnet_cifar.Backbone` (the CIFAR ResNets,
the CIFAR- and ImageNet-stem ResNets, ResNeXt-29) and adds one exit after every
non-final stage. An exit (:func:`exit_branch`) is the bottleneck of the OLS authors'
BYOT model (``cifar/models/iccv19_resnet_ds.py:11-25`` of zhangchbin/OnlineLabelSmoothing):
a 1x1 convolution to ``C/4`` channels, a ``k x k`` convolution of stride ``k``, a 1x1
convolution to ``C``, each followed by batch norm and ReLU, then global average pooling
and a linear layer. ``C`` is the last stage's width and ``k`` the stride from the exit's
stage to the last one (8, 4, 2 with four stages; 4, 2 with three), so every exit's map
matches the last stage's. Convolutions carry no bias (batch norm follows each).

Unlike the official model, every module built is used in ``forward`` (its unused
``downsample*`` layers fail DDP's unused-parameter check).
"""

from __future__ import annotations

import math
from typing import List

from torch import Tensor, nn

from .resnet_cifar import Backbone, init_weights

#: the ``--exits`` choices
EXIT_KINDS = ("none", "byot")


def exit_branch(c_in: int, width: int, kernel: int, num_classes: int) -> nn.Sequential:
    """``(B, c_in, H, W) -> (B, K)``: bottleneck to ``width`` channels at ``H / kernel``, pool, linear."""
    mid = width // 4

    def conv_bn_relu(a: int, b: int, k: int) -> List[nn.Module]:
        return [nn.Conv2d(a, b, k, stride=k, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True)]

    return nn.Sequential(*conv_bn_relu(c_in, mid, 1), *conv_bn_relu(mid, mid, kernel),
                         *conv_bn_relu(mid, width, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(width, num_classes))


class MultiExit(nn.Module):
    """A backbone with an exit after each non-final stage.

    ``forward(x (B, C, H, W))`` in training mode gives a list of ``num_exits`` logits
    ``(B, K)``, **deepest first**: ``[backbone head, exit after the second-last stage, ...,
    exit after the first stage]``. In ``eval()`` it gives the deepest logits ``(B, K)``
    only, so evaluation, attacks and ensembles see a plain classifier;
    :meth:`forward_exits` gives every exit in either mode.
    """

    def __init__(self, backbone: Backbone, num_classes: int):
        super().__init__()
        layout = getattr(backbone, "stage_layout", ())
        if len(layout) < 2:
            raise ValueError(f"{type(backbone).__name__} has no stages to attach exits to; --exits byot "
                             "works with the ResNets (resnet20...resnet110, resnet34/50/101, "
                             "resnetN_imagenet) and resnext29_*")
        self.backbone = backbone
        width = layout[-1].channels
        self.exit_after = [stage.end for stage in layout[:-1]]
        self.exits = nn.ModuleList(
            exit_branch(stage.channels, width, math.prod(s.stride for s in layout[i + 1:]), num_classes)
            for i, stage in enumerate(layout[:-1]))  # shallowest first
        init_weights(self.exits)

    @property
    def num_exits(self) -> int:
        """Classifiers in all, the backbone's own head included."""
        return len(self.exits) + 1

    def forward_exits(self, x: Tensor) -> List[Tensor]:
        """Every exit's ``(B, K)`` logits, deepest first."""
        h = self.backbone.stem(x)
        shallow = []
        for i, block in enumerate(self.backbone.stages):
            h = block(h)
            if i in self.exit_after:
                shallow.append(self.exits[len(shallow)](h))
        return [self.backbone.head(self.backbone.pool(h)), *reversed(shallow)]

    def forward(self, x: Tensor):
        return self.forward_exits(x) if self.training else self.backbone(x)

    def features(self, x: Tensor) -> Tensor:
        """The backbone's ``(B, D)`` pooled penultimate features."""
        return self.backbone.features(x)


def with_exits(net: nn.Module, kind: str, num_classes: int, name: str = "") -> nn.Module:
    """``net`` (model ``name``) with the exits ``--exits kind`` names (``"none"``: ``net`` itself)."""
    if kind not in EXIT_KINDS:
        raise ValueError(f"--exits must be one of {', '.join(EXIT_KINDS)}, got {kind!r}")
    if kind == "none":
        return net
    if not isinstance(net, Backbone):
        raise ValueError(f"--exits {kind}: the model {name or type(net).__name__} has no stages to attach "
                         "exits to; use a ResNet (resnet20...resnet110, resnet34/50/101, resnetN_imagenet) "
                         "or resnext29_*, or drop --exits")
    return MultiExit(net, num_classes)
