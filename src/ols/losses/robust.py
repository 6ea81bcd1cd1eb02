"""Noise-robust losses.

Symmetric CE (Wang et al., ICCV 2019) and generalised CE (Zhang & Sabuncu, NeurIPS 2018).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import ClassificationLoss, Rows


class SymmetricCrossEntropy(ClassificationLoss):
    r"""Symmetric cross-entropy: ``alpha * CE + beta * RCE``.

    The reverse cross-entropy swaps prediction and label,
    ``RCE = -sum_k p_k log t_k``, with ``log 0`` replaced by the constant ``A``
    (Wang et al. set ``A = -4``), giving ``RCE = -A * (1 - p_y)``. The defaults
    ``alpha=6.0, beta=0.1`` are those the official OLS code uses for CIFAR-100; it uses
    ``alpha=0.1, beta=1.0`` for CIFAR-10.
    """

    def __init__(self, num_classes: int, alpha: float = 6.0, beta: float = 0.1,
                 log_zero: float = -4.0, ignore_index: int = -100, reduction: str = "mean",
                 validate: bool = True):
        super().__init__(num_classes, ignore_index, reduction, validate)
        if alpha < 0 or beta < 0:
            raise ValueError(f"alpha and beta must be non-negative, got {alpha} and {beta}")
        if log_zero >= 0:
            raise ValueError(f"log_zero (A) must be negative, got {log_zero}")
        self.alpha, self.beta, self.log_zero = float(alpha), float(beta), float(log_zero)

    def per_sample(self, logits: Tensor, rows: Rows) -> Tensor:
        target = rows.labels
        logp = torch.log_softmax(logits.float(), dim=1)
        logp_y = logp.gather(1, target.unsqueeze(1)).squeeze(1)
        rce = -self.log_zero * (1.0 - logp_y.exp())
        return self.alpha * (-logp_y) + self.beta * rce


class GeneralizedCrossEntropy(ClassificationLoss):
    r"""Generalised cross-entropy: ``(1 - p_y^q) / q``, ``q=0.7`` (Zhang & Sabuncu, 2018).

    ``q -> 0`` recovers CE and ``q = 1`` the mean absolute error.
    """

    def __init__(self, num_classes: int, q: float = 0.7, ignore_index: int = -100,
                 reduction: str = "mean", validate: bool = True):
        super().__init__(num_classes, ignore_index, reduction, validate)
        q = float(q)
        if not 0.0 < q <= 1.0:
            raise ValueError(f"q must be in (0, 1], got {q}")
        self.q = q

    def per_sample(self, logits: Tensor, rows: Rows) -> Tensor:
        target = rows.labels
        logp_y = torch.log_softmax(logits.float(), dim=1).gather(1, target.unsqueeze(1))
        return ((1.0 - torch.exp(self.q * logp_y)) / self.q).squeeze(1)
