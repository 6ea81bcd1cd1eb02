"""Model registry."""

from __future__ import annotations

from typing import Any, Callable, Dict

from torch import nn

from .cnn import SmallCNN

#: name -> constructor ``(num_classes, **kw) -> nn.Module``
MODELS: Dict[str, Callable[..., nn.Module]] = {"cnn": SmallCNN}


def create_model(name: str, num_classes: int, **kw: Any) -> nn.Module:
    """Build model ``name``; an unknown name gets an error listing the known ones."""
    try:
        ctor = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}") from None
    return ctor(num_classes, **kw)
