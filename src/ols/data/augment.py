"""Batched augmentation on the training device: random crop with padding, horizontal flip, CutOut.

Each function takes a whole batch ``(B, C, H, W)`` in pixel units and a
``torch.Generator`` on the batch's device; no per-sample Python. With the generator's
state saved in the checkpoint, a resumed run draws the same augmentations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

OPS = ("crop", "flip", "cutout")


def random_crop(x: Tensor, padding: int, gen: torch.Generator) -> Tensor:
    """Zero-pad by ``padding`` and crop back to ``H x W`` at an independent offset per image."""
    if padding <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding)).permute(0, 2, 3, 1)  # (B, H+2p, W+2p, C)
    dy = torch.randint(0, 2 * padding + 1, (b, 1), generator=gen, device=x.device)
    dx = torch.randint(0, 2 * padding + 1, (b, 1), generator=gen, device=x.device)
    rows = dy + torch.arange(h, device=x.device)  # (B, H)
    cols = dx + torch.arange(w, device=x.device)  # (B, W)
    batch = torch.arange(b, device=x.device).view(b, 1, 1)
    return padded[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


def random_flip(x: Tensor, gen: torch.Generator) -> Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], generator=gen, device=x.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)


def cutout(x: Tensor, size: int, fill: Tensor, gen: torch.Generator) -> Tensor:
    """CutOut (DeVries & Taylor, 2017): one ``size x size`` square per image set to ``fill`` ``(C,)``.

    The centre is uniform over the image, so a square may be clipped at the border;
    ``fill`` is the data mean (what zero is after normalisation in the original).
    """
    if size <= 0:
        return x
    b, _, h, w = x.shape
    cy = torch.randint(0, h, (b, 1, 1), generator=gen, device=x.device)
    cx = torch.randint(0, w, (b, 1, 1), generator=gen, device=x.device)
    ys = torch.arange(h, device=x.device).view(1, h, 1) - cy + size // 2
    xs = torch.arange(w, device=x.device).view(1, 1, w) - cx + size // 2
    hole = ((ys >= 0) & (ys < size) & (xs >= 0) & (xs < size)).unsqueeze(1)  # (B, 1, H, W)
    return torch.where(hole, fill.view(1, -1, 1, 1).to(x.dtype), x)


def parse_ops(spec: str) -> tuple:
    """``"crop,flip"`` -> ``("crop", "flip")``; ``"none"`` -> ``()``; unknown names are errors."""
    if spec in ("none", ""):
        return ()
    ops = tuple(s.strip() for s in spec.split(","))
    unknown = [o for o in ops if o not in OPS]
    if unknown:
        raise ValueError(f"unknown augmentation {unknown[0]!r} in {spec!r}; use none, auto or a "
                         f"comma list of {', '.join(OPS)}")
    return ops


@dataclass
class BatchAugment:
    """The device-side pipeline: ``ops`` applied in the order crop, flip, cutout."""

    ops: Sequence[str]
    crop_padding: int = 4
    cutout_size: int = 8
    fill: Sequence[float] = (0.5,)

    def __call__(self, x: Tensor, gen: torch.Generator) -> Tensor:
        if "crop" in self.ops:
            x = random_crop(x, self.crop_padding, gen)
        if "flip" in self.ops:
            x = random_flip(x, gen)
        if "cutout" in self.ops:
            x = cutout(x, self.cutout_size, torch.tensor(self.fill, device=x.device), gen)
        return x
