"""Mixup and CutMix with timm's semantics, batched on the training device.

Every random choice of a batch (whether to mix, Mixup or CutMix, λ, the box) is drawn on
the CPU from ``numpy.random.default_rng((seed, epoch, rank, batch))``, so it depends on
nothing but the batch's position: a resumed run replays it exactly, and no value is read
back from the device.

Semantics (timm ``timm/data/mixup.py``): λ ~ Beta(α, α); the partner of sample ``i`` is
sample ``B - 1 - i`` (the batch flipped); CutMix pastes the partner's box of area about
``1 - λ`` and then corrects λ to the clipped box's area. ``mode`` is ``"batch"`` (one draw
for the batch), ``"pair"`` (one draw per pair ``i, B - 1 - i``) or ``"elem"`` (one draw per
sample). ``prob`` is the chance that mixing applies (per batch, pair or sample) and
``switch_prob`` the chance of CutMix when both α are set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

MODES = ("batch", "pair", "elem")


class MixedBatch(NamedTuple):
    """A mixed batch: ``x`` ``(B, C, H, W)`` and its labels.

    Sample ``i`` is ``lam[i]`` of class ``y_a[i]`` and ``1 - lam[i]`` of class ``y_b[i]``
    (``lam`` ``(B,)`` float32, 1 where nothing was mixed).
    """

    x: Tensor
    y_a: Tensor
    y_b: Tensor
    lam: Tensor


@dataclass(frozen=True)
class Mixer:
    """Mixup (``mixup_alpha``) and CutMix (``cutmix_alpha``); both 0 turns mixing off."""

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    prob: float = 1.0
    switch_prob: float = 0.5
    mode: str = "batch"

    def __post_init__(self) -> None:
        for name in ("mixup_alpha", "cutmix_alpha"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite α >= 0 of Beta(α, α) (0: off), got {value}")
        for name in ("prob", "switch_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"mix {name} must be in [0, 1], got {getattr(self, name)}")
        if self.mode not in MODES:
            raise ValueError(f"mix mode must be one of {', '.join(MODES)}, got {self.mode!r}")

    @property
    def active(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def draw(self, batch: int, height: int, width: int, rng: np.random.Generator):
        """The batch's choices: ``(lam (B,), cut (B,) bool, boxes (B, 4) int as y0, y1, x0, x1)``."""
        groups = {"batch": 1, "pair": (batch + 1) // 2, "elem": batch}[self.mode]
        apply = rng.random(groups) < self.prob
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            cut = rng.random(groups) < self.switch_prob
        else:
            cut = np.full(groups, self.cutmix_alpha > 0)
        alpha = np.where(cut, self.cutmix_alpha, self.mixup_alpha)
        lam = np.where(apply, rng.beta(np.maximum(alpha, 1e-12), np.maximum(alpha, 1e-12)), 1.0)
        boxes = np.zeros((groups, 4), dtype=np.int64)
        for g in np.nonzero(apply & cut)[0]:  # a box of area ~ (1 - lam), clipped to the image
            ch, cw = int(height * math.sqrt(1 - lam[g])), int(width * math.sqrt(1 - lam[g]))
            cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
            y0, y1 = np.clip([cy - ch // 2, cy + ch // 2], 0, height)
            x0, x1 = np.clip([cx - cw // 2, cx + cw // 2], 0, width)
            boxes[g] = (y0, y1, x0, x1)
            lam[g] = 1.0 - (y1 - y0) * (x1 - x0) / (height * width)  # timm's correct_lam
        per_sample = {"batch": np.zeros(batch, dtype=np.int64), "elem": np.arange(batch),
                      "pair": np.minimum(np.arange(batch), batch - 1 - np.arange(batch))}[self.mode]
        return lam[per_sample], (apply & cut)[per_sample], boxes[per_sample]

    def __call__(self, x: Tensor, y: Tensor, rng: np.random.Generator) -> MixedBatch:
        """Mix ``x`` ``(B, C, H, W)`` with labels ``y`` ``(B,)`` by the choices ``rng`` draws."""
        b, _, h, w = x.shape
        lam, cut, boxes = self.draw(b, h, w, rng)
        partner = x.flip(0)
        lam_t = torch.as_tensor(lam, dtype=torch.float32).to(x.device, non_blocking=True)
        mixed = x * lam_t.view(-1, 1, 1, 1) + partner * (1 - lam_t).view(-1, 1, 1, 1)
        if cut.any():  # CutMix rows: the partner's pixels inside the box, the sample's outside
            bx = torch.as_tensor(boxes).to(x.device, non_blocking=True)
            rows = torch.arange(h, device=x.device).view(1, h, 1)
            cols = torch.arange(w, device=x.device).view(1, 1, w)
            inside = ((rows >= bx[:, 0, None, None]) & (rows < bx[:, 1, None, None])
                      & (cols >= bx[:, 2, None, None]) & (cols < bx[:, 3, None, None]))  # (B, H, W)
            pasted = torch.where(inside.unsqueeze(1), partner, x)
            is_cut = torch.as_tensor(cut).to(x.device, non_blocking=True).view(-1, 1, 1, 1)
            mixed = torch.where(is_cut, pasted, mixed)
        return MixedBatch(mixed, y, y.flip(0), lam_t)
