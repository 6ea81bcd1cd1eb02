"""Pairwise Confusion.

Dubey et al., "Pairwise Confusion for Fine-Grained Visual Classification" (ECCV 2018).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import ClassificationLoss, Rows


class PairwiseConfusion(ClassificationLoss):
    r"""Cross-entropy plus the Euclidean confusion between paired predictions.

    The batch is split in halves and sample ``i`` of the first half is paired with
    sample ``i`` of the second (the last sample of an odd batch has no partner). For a
    pair with *different* labels, the Euclidean confusion is ``||p_i - p_j||_2^2``
    between the softmax outputs. Each sample's loss is
    ``CE_i + lambda * D_i`` with ``D_i`` the confusion of its pair (0 for same-label,
    ignored or unpaired samples), so the batch mean is
    ``mean(CE) + lambda * sum_pairs D / (B / 2)`` for an even batch. ``lambda=10``.
    """

    def __init__(self, num_classes: int, lam: float = 10.0, ignore_index: int = -100,
                 reduction: str = "mean", validate: bool = True):
        super().__init__(num_classes, ignore_index, reduction, validate)
        if lam < 0:
            raise ValueError(f"lam must be non-negative, got {lam}")
        self.lam = float(lam)

    def per_sample(self, logits: Tensor, rows: Rows) -> Tensor:
        target = rows.labels
        z = logits.float()
        ce = F.cross_entropy(z, target, reduction="none")
        half = z.shape[0] // 2
        if half == 0:
            return ce
        p = torch.softmax(z, dim=1)
        a, b = slice(0, half), slice(half, 2 * half)
        dist = (p[a] - p[b]).pow(2).sum(1)  # (half,)
        counts = (target[a] != target[b]) & rows.keep[a] & rows.keep[b]
        dist = torch.where(counts, dist, torch.zeros_like(dist))
        confusion = torch.zeros_like(ce)
        confusion = confusion.index_add(0, torch.arange(half, device=z.device), dist)
        confusion = confusion.index_add(0, torch.arange(half, 2 * half, device=z.device), dist)
        return ce + self.lam * confusion
