r"""Data-distortion guided self-distillation (Xu and Liu, AAAI 2019), the "Xu et al." row of Table II.

Each image is seen as two independently augmented views ``a`` and ``b`` through one
network. With ``p = softmax(z / T)``:

.. math::

    L = \mathrm{CE}(z_a, y) + \mathrm{CE}(z_b, y)
        + \lambda T^2 \big[\mathrm{KL}(p_a \| p_b) + \mathrm{KL}(p_b \| p_a)\big]
        + \mu \, \big\| \bar h_a - \bar h_b \big\|^2

(batch means; ``\bar h`` the batch mean of the penultimate features, the linear-kernel
MMD). The OLS paper uses the class-label-only variant, ``mu = 0``, the default here. The
choices the sources leave open, and where each default comes from:

* ``lam = 1``: the weight the paper's summaries report for the KL pair.
* ``T = 1``: the paper names no temperature (an unofficial code, winycg's, uses 4).
* ``detach = False``: mutual distillation, gradients through both sides of each KL, as the
  symmetric loss is written (youngerous/ddgsd-pytorch does this; winycg detaches the target).
* the KL sums over classes and averages over the batch (youngerous averages over classes too).

The engine feeds the two views as one concatenated ``2B`` batch, so batch norm sees both
(:class:`~ols.tasks.two_view.TwoViewTask`); evaluation uses one clean view.
"""

from __future__ import annotations

import math
from typing import Optional

import torch.nn.functional as F
from torch import Tensor

from .base import ClassificationLoss
from .functional import reduce_rows


class DataDistortionSelfDistillation(ClassificationLoss):
    """``forward(logits_a, logits_b, target, features_a=None, features_b=None) -> L`` (module docstring).

    ``logits_*`` ``(B, K)`` of the two views of the same ``B`` images, ``target`` ``(B,)``;
    ``features_*`` ``(B, D)``, needed only when ``mu > 0``.

    Args:
        num_classes: ``K``.
        lam: weight of the symmetric KL (>= 0).
        T: temperature of the KL (> 0).
        detach: detach the target side of each KL.
        mu: weight of the feature MMD term (>= 0; 0 in the OLS paper).
    """

    views = 2  # the run's set-up builds a two-view batch source and task for it
    needs_index = False

    def __init__(self, num_classes: int, lam: float = 1.0, T: float = 1.0, detach: bool = False,
                 mu: float = 0.0, validate: bool = True):
        super().__init__(num_classes, validate=validate)
        for name, value in (("lam", lam), ("mu", mu)):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite weight >= 0, got {value}")
        if not math.isfinite(T) or T <= 0:
            raise ValueError(f"T (the temperature) must be > 0, got {T}")
        self.lam, self.T = float(lam), float(T)
        self.detach, self.mu = bool(detach), float(mu)

    def forward(self, logits_a: Tensor, logits_b: Tensor, target: Tensor, features_a: Optional[Tensor] = None,
                features_b: Optional[Tensor] = None) -> Tensor:
        za, zb = logits_a.float(), logits_b.float()
        rows = self.rows(za, target)
        ce = F.cross_entropy(za, rows.labels, reduction="none") + F.cross_entropy(zb, rows.labels,
                                                                                reduction="none")
        loss = reduce_rows(ce, rows.keep, rows.fill, "mean")
        if self.lam:
            la, lb = F.log_softmax(za / self.T, 1), F.log_softmax(zb / self.T, 1)
            ta, tb = (la.detach(), lb.detach()) if self.detach else (la, lb)
            kl = (F.kl_div(lb, ta, reduction="batchmean", log_target=True)  # KL(p_a || p_b)
                  + F.kl_div(la, tb, reduction="batchmean", log_target=True))  # KL(p_b || p_a)
            loss = loss + self.lam * self.T * self.T * kl
        if self.mu:
            if features_a is None or features_b is None:
                raise ValueError("mu > 0 needs both views' penultimate features (features_a, features_b)")
            loss = loss + self.mu * (features_a.float().mean(0) - features_b.float().mean(0)).pow(2).sum()
        return loss

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, lam={self.lam}, T={self.T}, detach={self.detach}, "
                f"mu={self.mu}")
