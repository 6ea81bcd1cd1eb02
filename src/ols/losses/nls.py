"""Generalised label smoothing, negative smoothing rates included.

Wei et al., "To Smooth or Not? When Label Smoothing Meets Noisy Labels", ICML 2022 (official
code ``UCSC-REAL/negative-label-smoothing``, ``loss.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import ClassificationLoss, Rows


class NegativeLabelSmoothing(ClassificationLoss):
    r"""``(1 - r) * CE(z, y) + r * (-mean_k log p_k)``: smoothing with rate ``r <= 1``, negative allowed.

    The target is ``(1 - r) * onehot(y) + r / K`` (torch's convention): ``r = 0.1`` is
    ``ls`` at ``eps = 0.1``; ``r < 0`` puts weight above one on the label and negative weight
    on the others (negative label smoothing), which the paper finds better at high noise.
    The default ``r = -0.2`` is the first negative value of the official grid (which runs
    from 0.8 to -8.0); pick ``r`` by validation. Linear in the target, so Mixup works.

    Example:
        >>> z, y = torch.tensor([[1.0, 0.0, -1.0]]), torch.tensor([0])
        >>> crit = NegativeLabelSmoothing(3, r=0.1)
        >>> bool(torch.isclose(crit(z, y), torch.nn.functional.cross_entropy(z, y, label_smoothing=0.1)))
        True
    """

    linear_in_target = True

    def __init__(self, num_classes: int, r: float = -0.2, ignore_index: int = -100, reduction: str = "mean",
                 validate: bool = True):
        super().__init__(num_classes, ignore_index, reduction, validate)
        if not r <= 1.0:
            raise ValueError(f"r must be at most 1 (negative values are negative smoothing), got {r}")
        self.r = float(r)

    def per_sample(self, logits: Tensor, rows: Rows) -> Tensor:
        logp = torch.log_softmax(logits, dim=1)
        ce = -logp.gather(1, rows.labels.unsqueeze(1)).squeeze(1)
        return (1.0 - self.r) * ce + self.r * (-logp.mean(dim=1))

    def target_distribution(self, probs: Tensor) -> Tensor:
        """``(1 - r) * t + r / K`` for label distributions ``t`` ``(B, K)``."""
        return (1.0 - self.r) * probs + self.r / self.num_classes
