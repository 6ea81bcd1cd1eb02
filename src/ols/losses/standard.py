"""Hard-label cross-entropy and label smoothing (Szegedy et al., CVPR 2016)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .base import ClassificationLoss, Rows, check_unit_interval


class CrossEntropy(ClassificationLoss):
    """Hard-label cross-entropy, ``-log p_y``: the paper's "Hard Label" baseline."""

    linear_in_target = True

    def per_sample(self, logits: Tensor, rows: Rows) -> Tensor:
        target = rows.labels
        return F.cross_entropy(logits.float(), target, reduction="none")


class LabelSmoothing(ClassificationLoss):
    r"""Label smoothing, Eq. (2) of Zhang et al. (from Szegedy et al., CVPR 2016).

    With ``non_target_only=False`` (the default, torch's convention) the target is
    ``(1 - eps) * onehot + eps / K``, exactly ``F.cross_entropy(..., label_smoothing=eps)``.
    With ``non_target_only=True`` it is ``1 - eps`` on the target and ``eps / (K - 1)`` on
    each other class (the convention of Tf-KD's code). ``eps=0.1`` as in the paper.
    Under Mixup/CutMix the smoothing sits inside the mixed target, once (timm's rule).
    """

    linear_in_target = True

    def __init__(
        self,
        num_classes: int,
        eps: float = 0.1,
        non_target_only: bool = False,
        ignore_index: int = -100,
        reduction: str = "mean",
        validate: bool = True,
    ):
        super().__init__(num_classes, ignore_index, reduction, validate)
        self.eps = check_unit_interval("eps", eps)
        self.non_target_only = bool(non_target_only)
        if self.non_target_only and num_classes < 2:
            raise ValueError("non_target_only label smoothing needs num_classes >= 2")

    def torch_eps(self) -> float:
        """The ``label_smoothing`` of ``F.cross_entropy`` that gives this target."""
        if self.non_target_only:
            # (1 - eps) on y, eps/(K-1) elsewhere == torch's form with eps' = eps*K/(K-1)
            return self.eps * self.num_classes / (self.num_classes - 1)
        return self.eps

    def per_sample(self, logits: Tensor, rows: Rows) -> Tensor:
        target = rows.labels
        return F.cross_entropy(logits.float(), target, reduction="none", label_smoothing=self.torch_eps())

    def target_distribution(self, probs: Tensor) -> Tensor:
        """Smoothing applied once to a label distribution: ``(1 - eps) * t + eps / K`` (timm's Mixup rule)."""
        eps = self.torch_eps()
        return probs * (1.0 - eps) + eps / self.num_classes
