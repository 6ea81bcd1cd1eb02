"""Label relaxation: a set of targets instead of one smoothed target.

Lienen & Hüllermeier, "From Label Smoothing to Label Relaxation", AAAI 2021 (official code
``julilien/LabelRelaxation``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import ClassificationLoss, Rows


class LabelRelaxation(ClassificationLoss):
    r"""Zero where ``p_y >= 1 - alpha``, else ``KL(r || p)`` to the nearest target ``r``; ``alpha = 0.1``.

    ``r_y = 1 - alpha`` and ``r_k = alpha * p_k / (1 - p_y)`` for ``k != y``.

    Instead of one smoothed target, the target is the set of distributions with at least
    ``1 - alpha`` on the label; the loss is the KL divergence to the nearest of them (the
    projection ``r`` above), so a prediction inside the set costs nothing. In closed form,
    ``(1 - alpha) * log((1 - alpha) / p_y) + alpha * log(alpha / (1 - p_y))``; the gradient
    equals that of the official code, which treats ``r`` as a constant. Not linear in its
    target: Mixup is refused.

    Example:
        >>> z = torch.tensor([[0.0, 0.0], [5.0, 0.0]])  # p_y = 0.5, then 0.993 > 1 - alpha
        >>> LabelRelaxation(2, reduction="none")(z, torch.tensor([0, 0]))
        tensor([0.3681, 0.0000])
    """

    def __init__(self, num_classes: int, alpha: float = 0.1, ignore_index: int = -100,
                 reduction: str = "mean", validate: bool = True):
        super().__init__(num_classes, ignore_index, reduction, validate)
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        self.alpha = float(alpha)

    def per_sample(self, logits: Tensor, rows: Rows) -> Tensor:
        a = self.alpha
        logp = torch.log_softmax(logits, dim=1)
        logp_y = logp.gather(1, rows.labels.unsqueeze(1)).squeeze(1)
        # log(1 - p_y) as the log-sum-exp of the other classes: finite and exact when p_y -> 1
        others = logp.scatter(1, rows.labels.unsqueeze(1), float("-inf")).logsumexp(dim=1)
        kl = (1 - a) * (math.log(1 - a) - logp_y) + a * (math.log(a) - others)
        return torch.where(logp_y.exp() >= 1 - a, torch.zeros_like(kl), kl)
