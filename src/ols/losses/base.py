"""Input checks and the base class every loss in the registry shares."""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .functional import REDUCTIONS, compiling, reduce_loss, upcast


def check_inputs(
    logits: Tensor,
    target: Tensor,
    num_classes: int,
    ignore_index: int,
    validate: bool = True,
    none_if_all_valid: bool = False,
) -> Tuple[Tensor, Optional[Tensor]]:
    """Check ``logits`` ``(B, K)`` and ``target`` ``(B,)``; raise a ``ValueError`` that says why.

    Returns:
        ``(safe_target, valid)``: ``(B,)`` int64 targets with ignored rows replaced by 0,
        and the ``(B,)`` bool mask of rows that are not ``ignore_index``. With
        ``none_if_all_valid`` (and ``validate``), ``valid`` is ``None`` when no row is
        ignored, which spares the caller its masking work.
    """
    if not isinstance(logits, Tensor) or not isinstance(target, Tensor):
        raise ValueError(
            f"logits and target must be tensors, got {type(logits).__name__} and "
            f"{type(target).__name__}"
        )
    if logits.dim() != 2:
        raise ValueError(
            f"logits must have shape (B, K) = (batch, {num_classes}), got shape "
            f"{tuple(logits.shape)}; flatten extra dimensions first"
        )
    if not logits.is_floating_point():
        raise ValueError(f"logits must be a floating-point tensor, got dtype {logits.dtype}")
    if logits.shape[1] != num_classes:
        raise ValueError(
            f"logits have {logits.shape[1]} columns but num_classes is {num_classes}; "
            "the model's output width must equal the loss's num_classes"
        )
    if target.dim() != 1:
        raise ValueError(
            f"target must have shape (B,) of class indices, got shape {tuple(target.shape)}; "
            "soft or one-hot targets are not accepted"
        )
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(
            f"target must hold integer class indices (int64), got dtype {target.dtype}; "
            "use target.long()"
        )
    if target.shape[0] != logits.shape[0]:
        raise ValueError(
            f"logits have batch size {logits.shape[0]} but target has {target.shape[0]}"
        )
    target = target.long()
    if compiling():
        validate = False  # reading the labels back would break the graph
    if validate and none_if_all_valid and target.numel():
        low, high = torch.aminmax(target)
        if 0 <= int(low) and int(high) < num_classes:
            return target, None  # common case: every label in range, none ignored
    valid = target != ignore_index
    safe = target.masked_fill(~valid, 0)
    if validate and safe.numel():
        low, high = torch.aminmax(safe)
        if int(low) < 0 or int(high) >= num_classes:
            value = int(low) if int(low) < 0 else int(high)
            raise ValueError(
                f"target contains {value} but num_classes is {num_classes} "
                f"(ignore_index is {ignore_index}); labels must lie in [0, {num_classes})"
            )
    return safe, valid


def check_mixed_inputs(logits: Tensor, y_a: Tensor, y_b: Tensor, num_classes: int, ignore_index: int,
                       validate: bool = True) -> Tuple[Tensor, Tensor, Tensor]:
    """:func:`check_inputs` for a mixed target: ``(safe y_a, safe y_b, valid)``; a row counts if both do."""
    safe_a, valid_a = check_inputs(logits, y_a, num_classes, ignore_index, validate)
    safe_b, valid_b = check_inputs(logits, y_b, num_classes, ignore_index, validate)
    return safe_a, safe_b, valid_a & valid_b


def check_probability_target(logits: Tensor, target: Tensor, validate: bool = True) -> Tensor:
    """Check a ``(B, K)`` probability target for ``logits`` ``(B, K)``; return it as float32.

    Entries must be non-negative and each row must sum to one (within 1e-3), as Mixup,
    CutMix and timm's ``mixup_target`` produce. ``validate`` reads one flag to the host.
    """
    if not isinstance(logits, Tensor) or logits.dim() != 2 or not logits.is_floating_point():
        raise ValueError(f"logits must be a floating (B, K) tensor, got {getattr(logits, 'shape', logits)!r}")
    if target.shape != logits.shape:
        raise ValueError(f"a probability target must have the logits' shape {tuple(logits.shape)}, got "
                         f"{tuple(target.shape)}; pass class indices (B,) as int64 otherwise")
    t = target.detach().float()
    if validate and not compiling() and t.numel():
        bad = (t < 0).any() | ((t.sum(1) - 1).abs() > 1e-3).any() | ~torch.isfinite(t).all()
        if bool(bad):
            raise ValueError("a probability target must hold finite, non-negative rows that each sum to 1 "
                             "(Mixup/CutMix targets do); normalise it, or pass class indices as int64")
    return t


def over_positions(forward: Callable[[Tensor, Tensor], Tensor], logits: Tensor, target: Tensor,
                   reduction: str) -> Tensor:
    """``F.cross_entropy``'s extra dimensions: ``logits`` ``(B, K, d1, ...)`` as ``B * d1 * ...`` samples.

    ``target`` is ``(B, d1, ...)`` int64 or ``(B, K, d1, ...)`` probabilities; each position
    counts as one sample (also for OLS's statistics). ``"none"`` gives ``(B, d1, ...)``.
    """
    k = logits.shape[1]
    positions = logits.shape[:1] + logits.shape[2:]
    if target.is_floating_point():
        if target.shape != logits.shape:
            raise ValueError(f"a probability target must have the logits' shape {tuple(logits.shape)}, "
                             f"got {tuple(target.shape)}")
        flat_target = target.movedim(1, -1).reshape(-1, k)
    else:
        if target.shape != positions:
            raise ValueError(f"logits of shape {tuple(logits.shape)} need a target of shape "
                             f"{tuple(positions)} (one class per position), got {tuple(target.shape)}")
        flat_target = target.reshape(-1)
    out = forward(logits.movedim(1, -1).reshape(-1, k), flat_target)
    return out.reshape(positions) if reduction == "none" else out


def check_common_args(num_classes: int, reduction: str) -> None:
    """Reject a non-positive ``num_classes`` or an unknown ``reduction``."""
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; use one of {', '.join(REDUCTIONS)}")


def check_several_classes(name: str, num_classes: int) -> None:
    """A class-relation loss (OLS, OLS-Single) is meaningless with one class: refuse it."""
    if num_classes < 2:
        raise ValueError(f"{name} needs at least 2 classes (its soft labels spread mass over the other "
                         f"classes), got num_classes={num_classes}")


def check_class_weight(weight: Optional[Tensor], num_classes: int) -> Optional[Tensor]:
    """``F.cross_entropy``'s ``weight``: ``None``, or ``(K,)`` finite non-negative, returned as float32."""
    if weight is None:
        return None
    w = torch.as_tensor(weight, dtype=torch.float32)
    if w.shape != (num_classes,) or not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError(f"weight must hold {num_classes} finite, non-negative class weights (one per class, "
                         f"as in F.cross_entropy), got shape {tuple(w.shape)}")
    return w


def check_unit_interval(name: str, value: float) -> float:
    """Return ``value`` as a float, or raise if it is outside ``[0, 1]``."""
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


class ClassificationLoss(nn.Module):
    """Base for the registry's losses: ``forward(logits (B, K), target (B,)) -> loss``.

    Subclasses implement :meth:`per_sample`, which receives validated float logits and
    int64 targets in ``[0, K)`` (ignored rows hold 0) and returns a ``(B,)`` loss.
    ``ignore_index`` and ``reduction`` behave as in ``torch.nn.functional.cross_entropy``.
    """

    #: True for losses whose forward also needs the dataset index of every sample.
    needs_index = False
    #: True when the loss is linear in its target, so a Mixup/CutMix sample's loss is
    #: ``lam * loss(y_a) + (1 - lam) * loss(y_b)`` (cross-entropy, label smoothing, OLS)
    linear_in_target = False

    def __init__(self, num_classes: int, ignore_index: int = -100, reduction: str = "mean"):
        super().__init__()
        check_common_args(num_classes, reduction)
        self.num_classes = num_classes
        self.ignore_index = int(ignore_index)
        self.reduction = reduction

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Loss of ``logits`` ``(B, K)`` against int64 ``target`` ``(B,)``.

        As ``F.cross_entropy``, also ``(B, K, d1, ...)`` logits (each position a sample) and,
        for the losses linear in their target, a ``(B, K)`` probability ``target``.
        """
        if isinstance(logits, Tensor) and logits.dim() > 2:
            return over_positions(self.forward, logits, target, self.reduction)
        if isinstance(target, Tensor) and target.is_floating_point() and target.dim() == 2:
            return self.forward_probs(logits, target)
        safe, valid = check_inputs(logits, target, self.num_classes, self.ignore_index)
        return reduce_loss(self.per_sample(logits, safe, valid), valid, self.reduction)

    def forward_probs(self, logits: Tensor, target: Tensor) -> Tensor:
        """The loss against a ``(B, K)`` probability target (Mixup/CutMix, timm's ``mixup_target``).

        By linearity, ``sum_c t_c * loss(z, c)``: the cross-entropy against
        :meth:`target_distribution` ``(t)``; ``"mean"`` divides by ``B``, as ``F.cross_entropy``.
        """
        self._require_linear("probability targets")
        t = check_probability_target(logits, target)
        return F.cross_entropy(upcast(logits), self.target_distribution(t), reduction=self.reduction)

    def target_distribution(self, probs: Tensor) -> Tensor:
        """The ``(B, K)`` distribution this loss trains towards for label distribution ``probs``."""
        return probs

    def _require_linear(self, what: str) -> None:
        if not self.linear_in_target:
            raise ValueError(f"{type(self).__name__} cannot take {what}: it is not linear in its target; "
                             "use ce, ls or ols, or pass class indices")

    def forward_mixed(self, logits: Tensor, y_a: Tensor, y_b: Tensor, lam: Tensor) -> Tensor:
        """The loss of mixed samples, ``lam`` ``(B,)`` of class ``y_a`` and ``1 - lam`` of ``y_b``.

        For a loss linear in its target this is exactly the loss against the mixed target
        ``lam * t(y_a) + (1 - lam) * t(y_b)``: label smoothing sits inside it once.
        """
        self._require_linear("Mixup/CutMix targets")
        safe_a, safe_b, valid = check_mixed_inputs(logits, y_a, y_b, self.num_classes, self.ignore_index)
        lam = lam.to(logits.dtype)
        per = (lam * self.per_sample(logits, safe_a, valid)
               + (1 - lam) * self.per_sample(logits, safe_b, valid))
        return reduce_loss(per, valid, self.reduction)

    def per_sample(self, logits: Tensor, target: Tensor, valid: Tensor) -> Tensor:
        """``(B,)`` loss of each sample; ``valid`` marks rows that are not ignored."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, reduction={self.reduction!r}"
