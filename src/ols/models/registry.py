"""Model registry: ``create_model(name, num_classes, in_channels=...)``."""

from __future__ import annotations

import importlib.util
from functools import partial
from typing import Any, Callable, Dict

import torch
from torch import nn

from ..utils.install import pin_torch_hint
from ..utils.names import unknown_name
from .cnn import SmallCNN
from .exits import with_exits
from .mlp import MLP
from .mobilenetv2 import MobileNetV2
from .resnet import resnet
from .resnet_cifar import CifarResNet
from .resnext import ResNeXt29


def _cifar_resnet(depth: int, num_classes: int, in_channels: int = 3) -> nn.Module:
    return CifarResNet(depth, num_classes, in_channels)


#: name -> constructor ``(num_classes, in_channels=...) -> nn.Module``
MODELS: Dict[str, Callable[..., nn.Module]] = {
    "cnn": SmallCNN,
    "cnn16": partial(SmallCNN, width=16),
    **{f"resnet{d}": partial(_cifar_resnet, d) for d in (20, 29, 32, 44, 56, 74, 110)},
    **{f"resnet{d}": partial(resnet, d) for d in (18, 34, 50, 101)},
    **{f"resnet{d}_imagenet": partial(resnet, d, imagenet_stem=True) for d in (18, 34, 50, 101)},
    "resnext29_2x64d": partial(ResNeXt29, 2, 64),
    "resnext29_32x4d": partial(ResNeXt29, 32, 4),
    "mobilenetv2": MobileNetV2,
    "linear": MLP,
    "mlp": partial(MLP, hidden=256),
}


def _timm_model(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    if importlib.util.find_spec("timm") is None:
        raise ValueError(f"model 'timm:{name}' needs timm (and a torchvision built for your torch): "
                         f"{pin_torch_hint('timm')}")
    try:
        import timm
    except Exception as err:  # installed, but its torchvision was built for another torch (C ops missing)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"timm is installed but does not import beside torch {torch.__version__} ({first}); timm needs a "
            f"torchvision built for this exact torch: {pin_torch_hint('timm')}, or drop --model timm:..."
        ) from None
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels)
    except RuntimeError as err:  # timm's "Unknown model"
        raise ValueError(f"timm cannot build {name!r}: {err}") from None


def create_model(name: str, num_classes: int, exits: str = "none", **kw: Any) -> nn.Module:
    """Build model ``name`` (or ``timm:<name>``); an unknown name gets an error listing the known ones.

    ``exits="byot"`` adds a self-distillation exit after every non-final stage
    (:class:`~ols.models.exits.MultiExit`; ResNets and ResNeXt only).
    """
    if name.startswith("timm:"):
        net = _timm_model(name[len("timm:"):], num_classes, **kw)
    else:
        try:
            ctor = MODELS[name]
        except KeyError:
            raise unknown_name("model", name, MODELS, ", or timm:<name>") from None
        net = ctor(num_classes, **kw)
    return with_exits(net, exits, num_classes, name)
