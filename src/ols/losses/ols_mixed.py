"""OLS on mixed targets: Mixup/CutMix pairs and ``(B, K)`` probability targets.

Eq. (4) is a cross-entropy, linear in its target, so a sample that is ``lam`` of class
``y_a`` and ``1 - lam`` of ``y_b`` trains on ``lam * q(y_a) + (1 - lam) * q(y_b)``, and a
probability target ``t`` on ``alpha * t + (1 - alpha) * t @ S``. What such a sample should
add to the statistics is a choice, ``mixed_update``:

* ``"unmixed"`` (default): only rows whose target is one class (``lam`` 0 or 1, ``y_a ==
  y_b``, a one-hot ``t``). A mixed softmax puts mass on a random partner class and would
  wash ``S`` towards uniform;
* ``"dominant"``: rows whose largest share is at least ``mixed_threshold``, for that
  class, weighted by the share;
* ``"all"``: every row, for its largest class.

A row still counts only if it is classified correctly.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import check_mixed_inputs, check_probability_target, check_unit_interval
from .functional import mean_denominator, upcast

#: which Mixup/CutMix samples update the soft labels (module docstring)
MIXED_UPDATES = ("unmixed", "dominant", "all")


def check_mixed_update(mixed_update: str, mixed_threshold: float) -> float:
    """Refuse an unknown ``mixed_update``; return ``mixed_threshold`` checked to lie in ``[0, 1]``."""
    if mixed_update not in MIXED_UPDATES:
        raise ValueError(f"unknown mixed_update {mixed_update!r}; use one of {', '.join(MIXED_UPDATES)}")
    return check_unit_interval("mixed_threshold", mixed_threshold)


class MixedTargets:
    """Mixin for :class:`~ols.losses.ols.OnlineLabelSmoothing`: the mixed-target forwards."""

    def forward_mixed(self, logits: Tensor, y_a: Tensor, y_b: Tensor, lam: Tensor) -> Tensor:
        """Mixup/CutMix: Eq. (4) against ``lam * q(y_a) + (1 - lam) * q(y_b)`` (CE is linear in q).

        ``logits`` ``(B, K)``, ``y_a``/``y_b`` ``(B,)`` int64, ``lam`` ``(B,)``. Rows update the
        soft labels per ``mixed_update``; a row whose target is one class counts as unmixed.
        """
        safe_a, safe_b, valid = check_mixed_inputs(logits, y_a, y_b, self.num_classes, self.ignore_index,
                                                   self.validate)
        z = upcast(logits)
        lam = lam.to(z.dtype)
        observing = self._observing()
        shared = self.store.prepare(z, valid, observing)
        per_a, per_b = (self._cross_entropy(z, y, valid, "none", shared) for y in (safe_a, safe_b))
        per = lam * per_a + (1 - lam) * per_b  # (B,)
        if observing:
            label = torch.where(lam >= 0.5, safe_a, safe_b)
            share = torch.where(safe_a == safe_b, torch.ones_like(lam), torch.maximum(lam, 1 - lam))
            self._observe_shares(z, label, share.float(), valid, shared)
        if self.reduction == "none":
            return per
        total = per.sum()
        if self.reduction == "sum":
            return total
        if self.weight is None:
            return total / mean_denominator(safe_a, valid, dtype=total.dtype)
        w = self.weight.float()
        return total / (valid.float() * (lam * w[safe_a] + (1 - lam) * w[safe_b])).sum()

    def forward_probs(self, logits: Tensor, target: Tensor) -> Tensor:
        """Eq. (4) against a ``(B, K)`` probability target ``t``: ``alpha * t + (1 - alpha) * t @ S``.

        Costs a ``(B, K) @ (K, K)`` product; with two labels per row (Mixup) :meth:`forward_mixed`
        is cheaper. Rows are observed for their largest class under ``mixed_update``.
        """
        if self.topk is not None:
            raise ValueError("a (B, K) probability target needs the dense soft labels (t @ S); with topk= "
                             "pass class indices, or Mixup pairs via forward_mixed(logits, y_a, y_b, lam)")
        t = check_probability_target(logits, target, self.validate)
        z = upcast(logits)
        loss = F.cross_entropy(z, self.target_distribution(t).to(z.dtype), weight=self.weight,
                               reduction=self.reduction)
        if self._observing():
            share, label = t.max(dim=1)
            self._observe_shares(z, label, share, None)
        return loss

    def target_distribution(self, probs: Tensor) -> Tensor:
        """``alpha * smooth(t) + (1 - alpha) * t @ S`` for label distributions ``probs`` ``(B, K)``."""
        eps = self.label_smoothing
        hard = probs * (1.0 - eps) + eps / self.num_classes if eps else probs
        return self.alpha * hard + (1.0 - self.alpha) * (probs @ self.store.soft_labels)

    def _observe_shares(self, z: Tensor, label: Tensor, share: Tensor, valid: Optional[Tensor],
                        shared: Any = None) -> None:
        """Observe rows for ``label`` ``(B,)``, their target's share ``share`` on it, per ``mixed_update``."""
        if self.mixed_update == "unmixed":
            weight = share == 1
        elif self.mixed_update == "dominant":
            weight = torch.where(share >= self.mixed_threshold, share, torch.zeros_like(share))
        else:  # "all": every sample, for its largest label
            weight = torch.ones_like(share, dtype=torch.bool)
        if valid is not None:
            weight = weight & valid if weight.dtype == torch.bool else weight * valid
        self.store.observe(z, label, weight, shared=shared)
        self._count_forward()
