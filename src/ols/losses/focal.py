"""Softmax focal loss and FLSD-53, its sample-dependent form for calibration.

Lin et al., ICCV 2017; Mukhoti et al., "Calibrating Deep Neural Networks using Focal Loss",
NeurIPS 2020 (official code ``torrvision/focal_calibration``, ``Losses/focal_loss_adaptive_gamma.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import ClassificationLoss, Rows


def focal_term(logp_y: Tensor, gamma: Tensor) -> Tensor:
    """``-(1 - p_y)^gamma * log p_y`` for ``(B,)`` log-probabilities and ``(B,)`` or scalar ``gamma``."""
    return -(1.0 - logp_y.exp()).clamp(min=0.0).pow(gamma) * logp_y


class FocalLoss(ClassificationLoss):
    r"""``-(1 - p_y)^gamma * log p_y`` (softmax, multi-class), ``gamma = 3``.

    ``gamma = 0`` is cross-entropy. Mukhoti et al. train with ``gamma = 3`` (FL-3) on CIFAR;
    their code sums over the batch by default, ours averages like every loss here
    (``reduction="sum"`` gives theirs). Not linear in its target: Mixup is refused.

    Example:
        >>> import torch
        >>> z = torch.tensor([[0.0, 0.0]])  # p_y = 1/2
        >>> round(float(FocalLoss(2, gamma=1)(z, torch.tensor([0]))), 6)  # 0.5 * log 2
        0.346574
    """

    def __init__(self, num_classes: int, gamma: float = 3.0, ignore_index: int = -100,
                 reduction: str = "mean", validate: bool = True):
        super().__init__(num_classes, ignore_index, reduction, validate)
        if not gamma >= 0:
            raise ValueError(f"gamma must be non-negative, got {gamma}")
        self.gamma = float(gamma)

    def per_sample(self, logits: Tensor, rows: Rows) -> Tensor:
        logp_y = torch.log_softmax(logits, dim=1).gather(1, rows.labels.unsqueeze(1)).squeeze(1)
        return focal_term(logp_y, torch.tensor(self.gamma, device=logp_y.device))


class FLSD53(ClassificationLoss):
    r"""FLSD-53: focal loss with ``gamma = 5`` where ``p_y < 0.2``, else ``gamma = 3``.

    The official ``gamma_dic = {0.2: 5, 0.5: 3}`` with ``gamma = 3`` above 0.5 gives these
    two values. ``p_y`` only picks ``gamma`` (a step function: no gradient flows through the
    choice). ``threshold``, ``gamma_low`` and ``gamma_high`` name the three numbers.
    """

    def __init__(self, num_classes: int, threshold: float = 0.2, gamma_low: float = 5.0,
                 gamma_high: float = 3.0, ignore_index: int = -100, reduction: str = "mean",
                 validate: bool = True):
        super().__init__(num_classes, ignore_index, reduction, validate)
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        if not (gamma_low >= 0 and gamma_high >= 0):
            raise ValueError(f"gamma_low and gamma_high must be non-negative, got {gamma_low}, {gamma_high}")
        self.threshold = float(threshold)
        self.gamma_low, self.gamma_high = float(gamma_low), float(gamma_high)

    def per_sample(self, logits: Tensor, rows: Rows) -> Tensor:
        logp_y = torch.log_softmax(logits, dim=1).gather(1, rows.labels.unsqueeze(1)).squeeze(1)
        low = logp_y.detach().exp() < self.threshold
        gamma = torch.where(low, self.gamma_low, self.gamma_high).to(logp_y.dtype)
        return focal_term(logp_y, gamma)
