"""Bootstrapping losses.

Reed et al., "Training deep neural networks on noisy labels with bootstrapping"
(ICLR workshop 2015).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import ClassificationLoss, Rows, check_unit_interval


class BootstrapSoft(ClassificationLoss):
    r"""Soft bootstrapping: ``-sum_k (beta * t_k + (1 - beta) * p_k) log p_k``.

    ``t`` is the one-hot label and ``p = softmax(z)``; equivalently
    ``beta * CE + (1 - beta) * H(p)``. The prediction in the target is not detached, so
    the second term acts as the entropy regulariser of Reed et al. ``beta=0.95``.
    """

    def __init__(self, num_classes: int, beta: float = 0.95, ignore_index: int = -100,
                 reduction: str = "mean", validate: bool = True):
        super().__init__(num_classes, ignore_index, reduction, validate)
        self.beta = check_unit_interval("beta", beta)

    def per_sample(self, logits: Tensor, rows: Rows) -> Tensor:
        target = rows.labels
        logp = torch.log_softmax(logits.float(), dim=1)  # (B, K)
        ce = -logp.gather(1, target.unsqueeze(1)).squeeze(1)
        entropy = -(logp.exp() * logp).sum(1)
        return self.beta * ce + (1.0 - self.beta) * entropy


class BootstrapHard(ClassificationLoss):
    r"""Hard bootstrapping: ``-sum_k (beta * t_k + (1 - beta) * z_k) log p_k``.

    ``z`` is the one-hot of the model's own argmax prediction, so the loss is
    ``beta * CE(y) + (1 - beta) * CE(argmax p)``. ``beta=0.8`` as in Reed et al.
    """

    def __init__(self, num_classes: int, beta: float = 0.8, ignore_index: int = -100,
                 reduction: str = "mean", validate: bool = True):
        super().__init__(num_classes, ignore_index, reduction, validate)
        self.beta = check_unit_interval("beta", beta)

    def per_sample(self, logits: Tensor, rows: Rows) -> Tensor:
        target = rows.labels
        logp = torch.log_softmax(logits.float(), dim=1)  # (B, K)
        ce = -logp.gather(1, target.unsqueeze(1)).squeeze(1)
        self_ce = -logp.max(dim=1).values  # -log p at the predicted class
        return self.beta * ce + (1.0 - self.beta) * self_ce
