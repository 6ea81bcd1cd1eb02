"""Online Label Smoothing, Algorithm 1 of Zhang et al. (IEEE TIP 2021): a store plus a cross-entropy."""

from __future__ import annotations

from typing import Any, Optional, Union

from torch import Tensor

from .base import (
    ClassificationLoss,
    check_class_weight,
    check_inputs,
    check_several_classes,
    check_unit_interval,
    over_positions,
)
from .functional import upcast
from .legacy_state import upgrade_ols_state
from .ols_mixed import MixedTargets, check_mixed_update
from .period import PeriodSchedule
from .rank_local import RankLocalState
from .soft_labels import SoftLabels
from .topk_soft_labels import TopKSoftLabels, refuse_class_weight


class OnlineLabelSmoothing(MixedTargets, PeriodSchedule, RankLocalState, ClassificationLoss):
    r"""Online Label Smoothing (OLS): class-level soft labels learned from the model itself.

    ``loss = alpha * CE(z, y) + (1 - alpha) * CE(z, soft_labels[y])``, Eq. (3)-(4), for ``logits``
    ``(B, K)`` of any float dtype and ``target`` ``(B,)`` int64; also ``(B, K, d1, ...)`` logits,
    ``(B, K)`` probability targets (:meth:`forward_probs`) and Mixup pairs (:meth:`forward_mixed`).
    A training-mode forward adds the detached softmax of each correctly classified row to the
    ``store``'s sums, Eq. (5); :meth:`step` closes the period, Eq. (6), at each epoch end or by
    itself every ``update_every`` forwards. The full contract (state, DDP, casts, compile) is the
    README's "The loss in your own training loop".

    Args:
        num_classes: ``K`` (at least 2).
        alpha: weight of the hard-label term in Eq. (4), in ``[0, 1]``; 0.5 in the paper.
        init, zero_count, freeze_above, frozen_empty, freeze: the store's ``S^0`` and update rules
            (:class:`~ols.losses.soft_labels.SoftLabels`).
        update_every, warn_unstepped_after: the period (:mod:`~ols.losses.period`).
        mixed_update, mixed_threshold: which Mixup/CutMix rows count (:mod:`~ols.losses.ols_mixed`).
        weight, label_smoothing, ignore_index, reduction: as in ``F.cross_entropy``; the smoothing
            is on the hard term only, the weights are not applied to the statistics.
        validate: check that targets lie in ``[0, K)`` (a device sync; skipped when compiled).
        topk, leftover, slots, feed: a :class:`~ols.losses.topk_soft_labels.TopKSoftLabels` store,
            at most ``k`` entries per class, for 10^4 to 10^6 classes. ``None``: dense.

    Example:
        >>> import torch
        >>> crit = OnlineLabelSmoothing(num_classes=3, alpha=0.5)
        >>> logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
        >>> loss = crit(logits, torch.tensor([0, 1]))
        >>> crit.step()
        >>> crit.soft_labels[0]  # class 0 saw one correct sample: its softmax
        tensor([0.7870, 0.1065, 0.1065])
        >>> crit.soft_labels[2]  # class 2 saw none: uniform
        tensor([0.3333, 0.3333, 0.3333])
    """

    linear_in_target = True  # Eq. (4) is a cross-entropy: Mixup/CutMix targets mix linearly

    def __init__(self, num_classes: int, alpha: float = 0.5, init: Union[str, Tensor] = "uniform",
                 zero_count: str = "uniform", update_every: Optional[int] = None,
                 freeze_above: Optional[float] = None, frozen_empty: str = "keep", freeze: bool = False,
                 mixed_update: str = "unmixed", mixed_threshold: float = 0.5, weight: Optional[Tensor] = None,
                 label_smoothing: float = 0.0, ignore_index: int = -100, reduction: str = "mean",
                 validate: bool = True, warn_unstepped_after: Optional[int] = 100_000,
                 topk: Optional[int] = None, leftover: str = "uniform", slots: Optional[int] = None,
                 feed: Optional[int] = None):
        super().__init__(num_classes, ignore_index, reduction)
        check_several_classes("OnlineLabelSmoothing", num_classes)
        self.alpha = check_unit_interval("alpha", alpha)
        self.label_smoothing = check_unit_interval("label_smoothing", label_smoothing)
        self.mixed_threshold = check_mixed_update(mixed_update, mixed_threshold)
        self.mixed_update = mixed_update
        self.init = init if isinstance(init, str) else "prior"
        self.validate, self.topk = validate, topk
        self.register_buffer("weight", check_class_weight(weight, num_classes))
        options = (init, zero_count, freeze_above, frozen_empty, freeze)
        if topk is None:
            self.store = SoftLabels(num_classes, *options)
        else:
            refuse_class_weight(weight)
            self.store = TopKSoftLabels(num_classes, topk, *options, leftover, slots, feed)
        self._init_schedule(update_every, warn_unstepped_after)
        if hasattr(self, "register_load_state_dict_pre_hook"):  # public since torch 2.5
            self.register_load_state_dict_pre_hook(upgrade_ols_state)

    @property
    def soft_labels(self) -> Optional[Tensor]:
        """``(K, K)`` float32, row ``c`` the target of class ``c`` (``None`` for a large top-k store)."""
        return self.store.soft_labels

    def forward(self, logits: Tensor, target: Tensor, *, observe: bool = True,
                alpha: Optional[float] = None) -> Tensor:
        """Eq. (4) for ``logits`` ``(B, K)`` and ``target`` ``(B,)``; accumulates if training.

        ``observe=False`` reads the soft labels without adding to them (a self-distilled network's
        shallow exits); ``alpha`` overrides the hard-label weight for this call (one per exit).
        """
        if alpha is not None:
            check_unit_interval("alpha", alpha)
        if isinstance(logits, Tensor) and logits.dim() > 2:
            return over_positions(lambda z, y: self.forward(z, y, observe=observe, alpha=alpha), logits,
                                  target, self.reduction)
        if isinstance(target, Tensor) and target.is_floating_point() and target.dim() == 2:
            if alpha is not None or not observe:
                raise ValueError("observe= and alpha= apply to class-index targets; a (B, K) probability "
                                 "target takes neither")
            return self.forward_probs(logits, target)
        safe, valid = check_inputs(logits, target, self.num_classes, self.ignore_index, self.validate,
                                   none_if_all_valid=True)
        z = upcast(logits)  # (B, K) float32 or float64
        observing = observe and self._observing()
        shared = self.store.prepare(z, valid, observing)  # dense: log_softmax, read by loss and statistics
        loss = self._cross_entropy(z, safe, valid, self.reduction, shared, alpha)
        if observing:
            self.store.observe(z, safe, valid, shared=shared)
            self._count_forward()
        return loss

    def _cross_entropy(self, z: Tensor, y: Tensor, valid: Optional[Tensor], reduction: str, shared: Any,
                       alpha: Optional[float] = None) -> Tensor:
        """Eq. (4) for int64 classes ``y`` ``(B,)`` against the store's soft labels."""
        a = self.alpha if alpha is None else alpha
        return self.store.cross_entropy(z, y, shared, a, valid, reduction, self.weight, self.label_smoothing)

    def _close(self) -> None:
        self.store.step()  # Eq. (6); see SoftLabels.step

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, alpha={self.alpha}, init={self.init!r}, "
                f"update_every={self.update_every}, reduction={self.reduction!r}, topk={self.topk}")

