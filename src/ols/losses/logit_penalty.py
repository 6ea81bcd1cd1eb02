"""The logit penalty: cross-entropy plus the logits' squared norm.

Dauphin & Cubuk, "Deconstructing the regularization of BatchNorm", ICLR 2021; as re-run in
MaxSup's Table 4 (official code ``ZhouYuxuanYX/Maximum-Suppression-Regularization``,
``Conv/ffcv/losses.py``, ``LogitPenalty``).
"""

from __future__ import annotations

import math

from torch import Tensor

from .penalised import PenalisedCrossEntropy


class LogitPenalty(PenalisedCrossEntropy):
    r"""``CE(z, y) + beta * ||z||^2 / 2`` per sample, ``beta = 2e-3``.

    Example:
        >>> import torch
        >>> z, y = torch.tensor([[3.0, 4.0]]), torch.tensor([1])
        >>> round(float(LogitPenalty(2)(z, y) - torch.nn.functional.cross_entropy(z, y)), 6)  # 2e-3 * 25 / 2
        0.025
    """

    def __init__(self, num_classes: int, beta: float = 2e-3, ignore_index: int = -100,
                 reduction: str = "mean", validate: bool = True):
        super().__init__(num_classes, ignore_index, reduction, validate)
        if not (math.isfinite(beta) and beta >= 0):
            raise ValueError(f"beta must be finite and non-negative, got {beta}")
        self.beta = float(beta)

    def penalty(self, logits: Tensor) -> Tensor:
        return self.beta * logits.pow(2).sum(dim=1) / 2
