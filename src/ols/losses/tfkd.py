"""Teacher-free knowledge distillation with a hand-designed teacher (Tf-KD_reg).

Yuan et al., "Revisiting Knowledge Distillation via Label Smoothing Regularization"
(CVPR 2020); Eq. (9) of Zhang et al.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import ClassificationLoss, Rows, check_unit_interval


class TeacherFreeKD(ClassificationLoss):
    r"""Tf-KD_reg: ``(1 - alpha) * CE + alpha * T^2 * KL(softmax(u / T) || softmax(z / T))``.

    The virtual teacher is Eq. (9): ``u_k = a`` for the correct class and
    ``(1 - a) / (K - 1)`` for the others; as in Yuan et al.'s code it is tempered with
    ``softmax(u / T)``. The KL is summed over classes (a true per-sample KL). Defaults
    ``a=0.99, T=40, alpha=0.95`` follow the official OLS fine-grained code; that code
    averages the KL over classes as well (PyTorch's ``KLDivLoss`` default), i.e. it
    weights the KL term ``K`` times less than here.
    """

    def __init__(self, num_classes: int, alpha: float = 0.95, temperature: float = 40.0,
                 correct_prob: float = 0.99, ignore_index: int = -100,
                 reduction: str = "mean", validate: bool = True):
        super().__init__(num_classes, ignore_index, reduction, validate)
        if num_classes < 2:
            raise ValueError("Tf-KD_reg needs num_classes >= 2")
        self.alpha = check_unit_interval("alpha", alpha)
        self.correct_prob = check_unit_interval("correct_prob", correct_prob)
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)

    def teacher(self, target: Tensor) -> Tensor:
        """``(B, K)`` tempered teacher distribution ``softmax(u / T)``, Eq. (9)."""
        k, a = self.num_classes, self.correct_prob
        u = torch.full((target.shape[0], k), (1.0 - a) / (k - 1), device=target.device)
        u.scatter_(1, target.unsqueeze(1), a)
        return torch.softmax(u / self.temperature, dim=1)

    def per_sample(self, logits: Tensor, rows: Rows) -> Tensor:
        target = rows.labels
        z = logits.float()
        t = self.temperature
        ce = F.cross_entropy(z, target, reduction="none")
        teacher = self.teacher(target)
        log_student = torch.log_softmax(z / t, dim=1)
        kl = (teacher * (teacher.log() - log_student)).sum(1)
        return (1.0 - self.alpha) * ce + self.alpha * t * t * kl
