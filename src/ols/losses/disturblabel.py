"""DisturbLabel: Xie et al., "DisturbLabel: Regularizing CNN on the loss layer" (CVPR 2016)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import ClassificationLoss, Rows, check_unit_interval


class DisturbLabel(ClassificationLoss):
    r"""Cross-entropy against labels disturbed at random in training mode.

    Each training label is, with probability ``alpha``, replaced by a class drawn
    uniformly from all ``K`` classes (so it stays correct with probability
    ``1 - alpha * (K - 1) / K``), as in Xie et al. Evaluation mode uses the labels as
    given. Draws use torch's global RNG, so ``torch.manual_seed`` makes them repeatable.
    ``alpha=0.1`` as in the OLS paper's comparison.
    """

    def __init__(self, num_classes: int, alpha: float = 0.1, ignore_index: int = -100,
                 reduction: str = "mean", validate: bool = True):
        super().__init__(num_classes, ignore_index, reduction, validate)
        self.alpha = check_unit_interval("alpha", alpha)

    def disturb(self, target: Tensor) -> Tensor:
        """``(B,)`` labels, each replaced by a uniform class with probability ``alpha``."""
        flip = torch.rand(target.shape, device=target.device) < self.alpha
        random_class = torch.randint(0, self.num_classes, target.shape, device=target.device)
        return torch.where(flip, random_class, target)

    def per_sample(self, logits: Tensor, rows: Rows) -> Tensor:
        target = rows.labels
        if self.training:
            target = self.disturb(target)
        return F.cross_entropy(logits.float(), target, reduction="none")
