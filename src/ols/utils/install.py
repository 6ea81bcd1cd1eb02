"""Install hints for the optional extras that need a torchvision built for the installed torch."""

from __future__ import annotations

import torch


def pin_torch_hint(extra: str) -> str:
    """``pip install 'ols[EXTRA]' torch==X.Y.Z`` for the torch installed here.

    Pinning the installed torch makes pip keep it and choose the torchvision release built
    for it, instead of replacing torch with the newest (CUDA) build.
    """
    version = torch.__version__.split("+")[0]
    return (f"pip install 'ols[{extra}]' torch=={version} (pins your torch, so pip picks the matching "
            "torchvision)")
