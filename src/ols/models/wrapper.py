"""The model the engine trains: a network behind a fixed input normalisation.

Images travel through the engine in pixel units, ``[0, 1]``; normalisation is the model's
first layer. Attacks (``--eps 8/255``) and augmentation then work in pixel space and a
checkpoint carries its own normalisation.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import List, Sequence, Tuple

import torch
from torch import Tensor, nn


class Classifier(nn.Module):
    """``forward(x (B, C, H, W) in [0, 1]) -> logits (B, K)``: ``net((x - mean) / std)``."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def normalise(self, x: Tensor) -> Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.normalise(x))

    @property
    def num_exits(self) -> int:
        """Classifiers the network ends in: 1, or more for a :class:`~ols.models.exits.MultiExit`."""
        return int(getattr(self.net, "num_exits", 1))

    def forward_exits(self, x: Tensor) -> List[Tensor]:
        """Every exit's ``(B, K)`` logits, deepest first, in either mode (one for a plain network)."""
        if hasattr(self.net, "forward_exits"):
            return self.net.forward_exits(self.normalise(x))
        return [self.net(self.normalise(x))]

    def features(self, x: Tensor) -> Tensor:
        """``(B, D)`` penultimate-layer features (used for t-SNE)."""
        x = self.normalise(x)
        if hasattr(self.net, "features"):
            return self.net.features(x)
        if hasattr(self.net, "forward_head"):  # timm
            return self.net.forward_head(self.net.forward_features(x), pre_logits=True)
        raise ValueError(f"{type(self.net).__name__} has no features() method")


def torchvision_resnet_name(name: str) -> str:
    """A torchvision/timm ResNet tensor name in this package's layout (other names unchanged).

    ``conv1``/``bn1`` -> ``stem.0.{0,1}``; ``layerI.J.convK``/``bnK`` ->
    ``stages.(I-1).J.body.(2K-2).{0,1}``; ``downsample.{0,1}`` -> ``shortcut.{0,1}``; ``fc`` -> ``head``.
    """
    m = re.fullmatch(r"(conv1|bn1)\.(\w+)", name)
    if m:
        return f"stem.0.{0 if m[1] == 'conv1' else 1}.{m[2]}"
    m = re.fullmatch(r"layer(\d)\.(\d+)\.(conv|bn)(\d)\.(\w+)", name)
    if m:
        return f"stages.{int(m[1]) - 1}.{m[2]}.body.{2 * int(m[4]) - 2}.{0 if m[3] == 'conv' else 1}.{m[5]}"
    m = re.fullmatch(r"layer(\d)\.(\d+)\.downsample\.([01])\.(\w+)", name)
    if m:
        return f"stages.{int(m[1]) - 1}.{m[2]}.shortcut.{m[3]}.{m[4]}"
    m = re.fullmatch(r"fc\.(\w+)", name)
    return f"head.{m[1]}" if m else name


def load_pretrained(net: nn.Module, path: str) -> Tuple[list, list]:
    """Copy every tensor of the file at ``path`` whose name and shape match into ``net``.

    The file may hold a bare ``state_dict``, or a dict with it under ``"model"`` or
    ``"state_dict"`` (an ``ols`` checkpoint works too); ``module.`` and ``net.`` prefixes
    are dropped, and torchvision/timm ResNet names are translated, so torchvision's
    ImageNet files load into ``resnetN_imagenet``. A classifier head of another width is
    skipped, so ImageNet weights can start a fine-grained run. Returns ``(loaded, skipped)`` key lists.
    """
    if not Path(path).is_file():
        raise ValueError(f"--pretrained: no such file {path!r}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as err:
        raise ValueError(f"--pretrained: cannot read {path}: {err.strerror or err}") from None
    except Exception as err:  # not a torch file, or one that needs arbitrary code to load
        raise ValueError(f"--pretrained: {path} is not a loadable weights file ({type(err).__name__}); "
                         "give a state_dict saved with torch.save") from None
    for key in ("model", "state_dict"):
        if isinstance(blob, dict) and isinstance(blob.get(key), dict):
            blob = blob[key]
    own = net.state_dict()
    loaded, skipped, matched = [], [], {}
    for name, value in blob.items():
        for prefix in ("module.", "net."):
            name = name[len(prefix):] if name.startswith(prefix) else name
        name = torchvision_resnet_name(name)
        if name in own and own[name].shape == value.shape:
            matched[name] = value
            loaded.append(name)
        else:
            skipped.append(name)
    if not loaded:
        raise ValueError(
            f"--pretrained {path!r}: no tensor matches the model by name and shape; "
            "is it a checkpoint of the same architecture?"
        )
    net.load_state_dict(matched, strict=False)
    return loaded, skipped
