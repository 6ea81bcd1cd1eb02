"""CS-KD: class-wise self-knowledge distillation, each sample taught by another sample of its class.

Yun et al., "Regularizing Class-wise Predictions via Self-knowledge Distillation", CVPR 2020
(official code ``alinlab/cs-kd``, ``train.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import ClassificationLoss
from .functional import reduce_rows, upcast


class ClassWiseSelfKD(ClassificationLoss):
    r"""``CE(z, y) + lam * T^2 * KL(softmax(z'/T) || softmax(z/T))`` over a batch of pairs.

    ``z`` are the logits of a batch, ``z'`` those of another training sample of the same
    class for each row, computed without gradient (the teacher). Defaults as the official
    CIFAR runs: ``T = 4``, ``lam = 1`` (3 on the fine-grained sets). The KL term is a sum
    over classes and a mean over the rows (``KLDivLoss(reduction="sum") / B`` in the
    official code).

    **How the pairs arrive.** In ``ols train`` the class-pair task
    (:class:`~ols.tasks.ClassPairTask`) builds every batch as ``B`` samples followed by one
    same-class partner for each, drawn from the labels trained on with the epoch's seed,
    as the official ``PairBatchSampler`` does, and calls ``crit(z, z_partner, y)``. In your
    own loop, pass the partner logits the same way (``forward(z, z_partner, y)``); they are
    detached here.

    Not linear in its target, so Mixup is refused.
    """

    views = 1
    pairs_by_class = True
    linear_in_target = False

    def __init__(self, num_classes: int, temperature: float = 4.0, lam: float = 1.0, ignore_index: int = -100,
                 reduction: str = "mean", validate: bool = True):
        super().__init__(num_classes, ignore_index, reduction, validate)
        if not temperature > 0 or not lam >= 0:
            raise ValueError(f"temperature must be positive and lam non-negative, got "
                             f"temperature={temperature}, lam={lam}")
        self.temperature, self.lam = float(temperature), float(lam)

    def forward(self, logits: Tensor, partner_logits: Tensor, target: Tensor) -> Tensor:  # type: ignore[override]
        """``logits`` and ``partner_logits`` ``(B, K)``, ``target`` ``(B,)``: the batch's loss."""
        if partner_logits.shape != logits.shape:
            raise ValueError(f"partner_logits must have the logits' shape {tuple(logits.shape)}, got "
                             f"{tuple(partner_logits.shape)}")
        rows = self.rows(logits, target)
        z = upcast(logits)
        t = self.temperature
        log_p = F.log_softmax(z / t, dim=1)
        teacher = F.softmax(partner_logits.detach().to(log_p.dtype) / t, dim=1)
        kl = (teacher * (torch.log(teacher.clamp_min(1e-30)) - log_p)).sum(1)
        per_sample = F.cross_entropy(z, rows.labels, reduction="none") + self.lam * t * t * kl
        return reduce_rows(per_sample, rows.keep, rows.fill, self.reduction)
