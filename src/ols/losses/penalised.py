"""Cross-entropy plus a penalty on the logits alone: the shape of MaxSup and the logit penalty.

A penalty that does not read the target keeps the loss linear in its target, so Mixup,
CutMix and ``(B, K)`` probability targets work as for cross-entropy.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .base import ClassificationLoss, Rows
from .functional import reduce_rows, upcast


class PenalisedCrossEntropy(ClassificationLoss):
    """``CE(z, t) + penalty(z)`` per sample; subclasses define :meth:`penalty` ``(B, K) -> (B,)``."""

    linear_in_target = True

    def penalty(self, logits: Tensor) -> Tensor:
        raise NotImplementedError

    def per_sample(self, logits: Tensor, rows: Rows) -> Tensor:
        return F.cross_entropy(logits, rows.labels, reduction="none") + self.penalty(logits)

    def forward_probs(self, logits: Tensor, target: Tensor) -> Tensor:
        """Against a ``(B, K)`` probability target ``t``: ``CE(z, t) + penalty(z)``, ``"mean"`` over ``B``."""
        t, bad = self.probability_target(logits, target)
        z = upcast(logits)
        per = F.cross_entropy(z, t, reduction="none") + self.penalty(z)
        return reduce_rows(per, ~bad, float("nan"), self.reduction)
