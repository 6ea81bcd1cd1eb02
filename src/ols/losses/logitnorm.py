"""LogitNorm: cross-entropy on L2-normalised logits.

Wei et al., "Mitigating Neural Network Overconfidence with Logit Normalization", ICML 2022
(official code ``hongxin001/logitnorm_ood``, ``common/loss_function.py``).
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

from .base import ClassificationLoss, Rows
from .functional import reduce_rows, upcast


class LogitNorm(ClassificationLoss):
    r"""``CE(z / (tau * (||z||_2 + eps)), y)``, ``tau = 0.04``, ``eps = 1e-7``.

    As the official code, ``eps`` is added to the norm before ``tau`` divides (the paper
    writes ``tau * ||z||``). The network's logits keep their scale: the normalisation lives
    in the loss only, so evaluation reads the raw logits. Linear in the target (a
    cross-entropy), so Mixup works.

    Example:
        >>> import torch
        >>> z = torch.tensor([[3.0, 4.0]])  # ||z|| = 5: CE of (0.6, 0.8) / tau
        >>> crit = LogitNorm(2, tau=1.0)
        >>> bool(torch.isclose(crit(z, torch.tensor([1])), F.cross_entropy(z / 5, torch.tensor([1]))))
        True
    """

    linear_in_target = True

    def __init__(self, num_classes: int, tau: float = 0.04, eps: float = 1e-7, ignore_index: int = -100,
                 reduction: str = "mean", validate: bool = True):
        super().__init__(num_classes, ignore_index, reduction, validate)
        if not (math.isfinite(tau) and tau > 0) or not (math.isfinite(eps) and eps >= 0):
            raise ValueError(f"tau must be positive and eps non-negative, got tau={tau}, eps={eps}")
        self.tau, self.eps = float(tau), float(eps)

    def normalised(self, logits: Tensor) -> Tensor:
        """``(B, K) -> (B, K)``: each row divided by ``tau * (||row|| + eps)``."""
        z = logits
        return z / (self.tau * (z.norm(dim=1, keepdim=True) + self.eps))

    def per_sample(self, logits: Tensor, rows: Rows) -> Tensor:
        return F.cross_entropy(self.normalised(logits), rows.labels, reduction="none")

    def forward_probs(self, logits: Tensor, target: Tensor) -> Tensor:
        """Against a ``(B, K)`` probability target: ``CE(normalised(z), t)``, ``"mean"`` over ``B``."""
        t, bad = self.probability_target(logits, target)
        per = F.cross_entropy(self.normalised(upcast(logits)), t, reduction="none")
        return reduce_rows(per, ~bad, float("nan"), self.reduction)
