"""MaxSup: max-logit suppression.

Zhou et al., "MaxSup: Overcoming Representation Collapse in Label Smoothing", NeurIPS 2025
(official code ``ZhouYuxuanYX/Maximum-Suppression-Regularization``, ``Conv/ffcv/losses.py``,
class ``MaxSuppression``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import check_unit_interval
from .penalised import PenalisedCrossEntropy


class MaxSup(PenalisedCrossEntropy):
    r"""``CE(z, y) + lambda_t * (max_k z_k - mean_k z_k)`` for logits ``z`` ``(B, K)``.

    Label smoothing penalises ``z_y - mean_k z_k``; MaxSup penalises the largest logit
    instead, whatever its class, so a confident wrong prediction is also pulled down.
    ``lambda_t`` rises linearly from ``begin_lambda`` (0.1) to ``end_lambda`` (0.2) over
    training, as the official code: ``lambda_t = begin + (end - begin) * t / T`` at epoch
    ``t = 0 .. T-1``. The run's progress ``t / T`` reaches the loss through
    :meth:`set_progress` (the engine, ``OLSCallback`` and ``OLSTrainerHook`` call it at every
    epoch start); a loss never told starts at ``begin_lambda``. ``lambda_t`` is a device
    buffer written in place, so ``torch.compile`` and CUDA graphs see the schedule.

    Example:
        >>> crit = MaxSup(3)
        >>> z = torch.tensor([[2.0, 0.0, 1.0]])
        >>> y = torch.tensor([0])
        >>> round(float(crit(z, y) - torch.nn.functional.cross_entropy(z, y)), 6)  # 0.1 * (2 - 1)
        0.1
    """

    lam: Tensor

    def __init__(self, num_classes: int, begin_lambda: float = 0.1, end_lambda: float = 0.2,
                 ignore_index: int = -100, reduction: str = "mean", validate: bool = True):
        super().__init__(num_classes, ignore_index, reduction, validate)
        if not all(math.isfinite(v) and v >= 0 for v in (begin_lambda, end_lambda)):
            raise ValueError(f"begin_lambda and end_lambda must be finite and non-negative, got "
                             f"{begin_lambda} and {end_lambda}")
        self.begin_lambda, self.end_lambda = float(begin_lambda), float(end_lambda)
        self.register_buffer("lam", torch.tensor(self.begin_lambda), persistent=False)

    def set_progress(self, fraction: float) -> None:
        """Training is ``fraction`` in ``[0, 1]`` done (``epoch / epochs`` at an epoch's start)."""
        fraction = check_unit_interval("fraction", fraction)
        self.lam.fill_(self.begin_lambda + (self.end_lambda - self.begin_lambda) * fraction)

    def penalty(self, logits: Tensor) -> Tensor:
        return self.lam * (logits.amax(dim=1) - logits.mean(dim=1))

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, begin_lambda={self.begin_lambda}, "
                f"end_lambda={self.end_lambda}, reduction={self.reduction!r}")
