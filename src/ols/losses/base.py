"""Input checks and the base class every loss in the registry shares.

**Checks that never wait.** Shapes and dtypes are checked on the host, where they are known.
Values (labels in ``[0, K)``, probability rows, Mixup's ``lam``) live on the device, and
reading them back in every forward would stall a GPU and forbid CUDA graphs. So a loss
records what it saw in a small rank-local tensor, with no host read, and turns a row with a
bad value into a NaN loss (its gradient is zero). The record is read, and a bad value
raised with one line, at once where reading is free (a CPU tensor outside ``torch.compile``)
and otherwise at the next ``step()`` of OLS or OLS-Single, or when the engine closes an epoch
(:func:`raise_bad_inputs`). ``validate=False`` skips the checks.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..utils.tracing import reads_are_free
from .functional import REDUCTIONS, reduce_rows, upcast
from .rank_local import RankLocalState

#: the bits of a loss's ``input_flags``: which check failed
BAD_PROBABILITIES, BAD_LAM, BAD_INDEX, BAD_SHARD = 1, 2, 4, 8

_MESSAGES = {
    BAD_PROBABILITIES: "a probability target must hold finite, non-negative rows that each sum to 1 "
                       "(Mixup/CutMix targets do); normalise it, or pass class indices as int64",
    BAD_LAM: "lam (the share of y_a in each mixed sample) must lie in [0, 1], and was outside it or NaN",
    BAD_INDEX: "index (each sample's position in the training set) must lie in [0, num_samples)",
    BAD_SHARD: "a sharded per-sample loss (sharded=True) got a sample of another rank's shard: rank r "
               "must see only the samples with index % world_size == r (ols.run_setup.sharded_epoch_order "
               "gives such an order); or build the loss with sharded=False",
}


class Rows(NamedTuple):
    """A batch's checked class targets: what the loss indexes with and which rows count.

    ``labels`` ``(B,)`` int64 in ``[0, K)`` (0 at ignored rows, clamped at bad ones); ``keep``
    ``(B,)`` bool, the rows that count; ``fill``: what a row that does not count adds to the
    loss (0 for ``ignore_index``, NaN for a label outside ``[0, K)``).
    """

    labels: Tensor
    keep: Tensor
    fill: Union[float, Tensor]


def check_logits(logits: Tensor, num_classes: int) -> None:
    """``logits`` must be a floating ``(B, K)`` tensor (host-side shape checks only)."""
    if not isinstance(logits, Tensor):
        raise ValueError(f"logits must be a tensor, got {type(logits).__name__}")
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (B, K) = (batch, {num_classes}), got shape "
                         f"{tuple(logits.shape)}; flatten extra dimensions first")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be a floating-point tensor, got dtype {logits.dtype}")
    if logits.shape[1] != num_classes:
        raise ValueError(f"logits have {logits.shape[1]} columns but num_classes is {num_classes}; the "
                         "model's output width must equal the loss's num_classes")


def check_target(logits: Tensor, target: Tensor, num_classes: int) -> None:
    """``target`` must be ``(B,)`` integer class indices for ``logits`` ``(B, K)`` (host-side checks)."""
    check_logits(logits, num_classes)
    if not isinstance(target, Tensor):
        raise ValueError(f"target must be a tensor, got {type(target).__name__}")
    if target.dim() != 1:
        hint = "; an integer one-hot target must be passed as .float() probabilities" if (
            target.dim() == 2 and not target.is_floating_point()) else "; soft targets are (B, K) floats"
        raise ValueError("target must have shape (B,) of class indices, got shape "
                         f"{tuple(target.shape)}{hint}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(f"target must hold integer class indices (int64), got dtype {target.dtype}; use "
                         "target.long()")
    if target.shape[0] != logits.shape[0]:
        raise ValueError(f"logits have batch size {logits.shape[0]} but target has {target.shape[0]}")


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
            raise ValueError(f"a probability target must have the logits' shape {tuple(logits.shape)}, got "
                             f"{tuple(target.shape)}")
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
    """Return ``value`` as a float, or raise if it is outside ``[0, 1]`` (NaN included)."""
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def raise_bad_inputs(module: nn.Module) -> None:
    """Raise the first bad input that any loss in ``module`` recorded (one device read per loss).

    The engine calls it at each epoch end; OLS and OLS-Single call their own at ``step()``.
    """
    for sub in module.modules():
        if isinstance(sub, ClassificationLoss):
            sub.raise_bad_inputs()


class ClassificationLoss(RankLocalState):
    """Base for the registry's losses: ``forward(logits (B, K), target (B,)) -> loss``.

    Subclasses implement :meth:`per_sample`, which receives float logits and :class:`Rows`
    and returns a ``(B,)`` loss. ``ignore_index`` and ``reduction`` behave as in
    ``torch.nn.functional.cross_entropy``; ``validate`` checks input values without a device
    sync (module docstring).
    """

    #: True for losses whose forward also needs the dataset index of every sample.
    needs_index = False
    #: True when the loss is linear in its target, so a Mixup/CutMix sample's loss is
    #: ``lam * loss(y_a) + (1 - lam) * loss(y_b)`` (cross-entropy, label smoothing, OLS)
    linear_in_target = False

    label_max: Tensor
    label_min: Tensor
    input_flags: Tensor

    def __init__(self, num_classes: int, ignore_index: int = -100, reduction: str = "mean",
                 validate: bool = True):
        super().__init__()
        check_common_args(num_classes, reduction)
        self.num_classes = num_classes
        self.ignore_index = int(ignore_index)
        self.reduction = reduction
        self.validate = bool(validate)
        # what the checks saw since they were last read: the largest and smallest label, the failed checks
        for name in ("label_max", "label_min", "input_flags"):
            self.register_rank_local(name, torch.zeros((), dtype=torch.long), persistent=False)

    def rows(self, logits: Tensor, target: Tensor) -> Rows:
        """Check ``target`` ``(B,)`` against ``logits`` ``(B, K)`` and return its :class:`Rows`."""
        check_target(logits, target, self.num_classes)
        self.check_devices(logits, target=target)
        target = target.long()
        valid = target != self.ignore_index
        if not self.validate:
            return Rows(target * valid, valid, 0.0)  # 0 at the ignored rows
        labels = target.clamp(0, self.num_classes - 1)
        keep = target == labels  # False at a bad label, and at ignore_index when it lies outside [0, K)
        if 0 <= self.ignore_index < self.num_classes:
            keep = keep & valid
        if target.numel():
            low, high = torch.aminmax(target * valid)  # the labels of the rows that are not ignored
            torch.maximum(self.label_max, high, out=self.label_max)
            torch.minimum(self.label_min, low, out=self.label_min)
            self._report_now(target)
        return Rows(labels, keep, torch.where(valid, float("nan"), 0.0))

    def check_devices(self, logits: Tensor, **others: Tensor) -> None:
        """One line naming the argument on another device than ``logits``, or the loss itself there."""
        for name, t in others.items():
            if isinstance(t, Tensor) and t.device != logits.device:
                raise ValueError(f"logits are on {logits.device} but {name} is on {t.device}; move it with "
                                 f"{name}.to(logits.device)")
        if self.label_max.device != logits.device:
            raise ValueError(f"the loss's state is on {self.label_max.device} but the logits are on "
                             f"{logits.device}; move the loss with crit.to({str(logits.device)!r})")

    def flag(self, check: int, bad: Tensor) -> None:
        """Record that ``check`` (a bit of ``input_flags``) failed where ``bad`` ``(B,)`` is True."""
        if self.validate and bad.numel():
            self.input_flags.bitwise_or_(bad.any().long() * check)
            self._report_now(bad)

    def refuse(self, rows: Rows, ok: Tensor, check: int) -> Rows:
        """``rows`` where ``ok`` ``(B,)`` is False refused (not kept, a NaN loss), and ``check`` recorded."""
        self.flag(check, ~ok)
        return Rows(rows.labels, rows.keep & ok, torch.where(ok, rows.fill, float("nan")))

    def indexed_rows(self, logits: Tensor, target: Tensor, index: Optional[Tensor], num_samples: int,
                     name: str) -> Tuple[Rows, Tensor]:
        """``(rows, index)`` for a loss with per-sample state: ``index`` ``(B,)`` checked, as int64.

        A missing or misshapen ``index`` is one line naming ``name``; an index outside
        ``[0, num_samples)`` refuses its row (a NaN loss, reported as a bad input) and is
        clamped, so the state is never read out of range. No host read.
        """
        rows = self.rows(logits, target)
        if index is None:
            raise ValueError(f"{name} needs each sample's dataset index: call crit(logits, target, "
                             "index=idx)")
        if index.shape != target.shape or index.is_floating_point():
            raise ValueError(f"index must be an integer tensor of shape {tuple(target.shape)}, got "
                             f"{index.dtype} of shape {tuple(index.shape)}")
        index = index.long()
        if self.validate:
            rows = self.refuse(rows, (index >= 0) & (index < num_samples), BAD_INDEX)
            index = index.clamp(0, num_samples - 1)
        return rows, index

    def _report_now(self, seen: Tensor) -> None:
        if reads_are_free(seen):
            self.raise_bad_inputs()

    def raise_bad_inputs(self) -> None:
        """Raise a bad input recorded since the last call (labels first), then clear the record (one read)."""
        high, low, flags = torch.stack([self.label_max, self.label_min, self.input_flags]).tolist()
        if not (high >= self.num_classes or low < 0 or flags):
            return
        for record in (self.label_max, self.label_min, self.input_flags):
            record.zero_()
        if high >= self.num_classes or low < 0:
            value = high if high >= self.num_classes else low
            raise ValueError(f"target contains {value} but num_classes is {self.num_classes} (ignore_index "
                             f"is {self.ignore_index}); labels must lie in [0, {self.num_classes})")
        raise ValueError(next(text for bit, text in _MESSAGES.items() if flags & bit))

    def probability_target(self, logits: Tensor, target: Tensor) -> Tuple[Tensor, Tensor]:
        """A ``(B, K)`` probability target as float32, and ``(B,)`` True at its bad rows.

        Entries must be non-negative and each row must sum to one (within 1e-3), as Mixup,
        CutMix and timm's ``mixup_target`` produce; checked without a device sync.
        """
        check_logits(logits, self.num_classes)
        if target.shape != logits.shape:
            raise ValueError(f"a probability target must have the logits' shape {tuple(logits.shape)}, got "
                             f"{tuple(target.shape)}; pass class indices (B,) as int64 otherwise")
        t = target.detach().float()
        if not self.validate:
            return t, torch.zeros(t.shape[0], dtype=torch.bool, device=t.device)
        bad = (t.amin(dim=1) < 0) | ~((t.sum(dim=1) - 1.0).abs() <= 1e-3)  # NaN and inf fail the second test
        self.flag(BAD_PROBABILITIES, bad)
        return t, bad

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Loss of ``logits`` ``(B, K)`` against int64 ``target`` ``(B,)``.

        As ``F.cross_entropy``, also ``(B, K, d1, ...)`` logits (each position a sample) and,
        for the losses linear in their target, a ``(B, K)`` probability ``target``.
        """
        if isinstance(logits, Tensor) and logits.dim() > 2:
            return over_positions(self.forward, logits, target, self.reduction)
        if isinstance(target, Tensor) and target.is_floating_point() and target.dim() == 2:
            return self.forward_probs(logits, target)
        rows = self.rows(logits, target)
        return reduce_rows(self.per_sample(upcast(logits), rows), rows.keep, rows.fill, self.reduction)

    def forward_probs(self, logits: Tensor, target: Tensor) -> Tensor:
        """The loss against a ``(B, K)`` probability target (Mixup/CutMix, timm's ``mixup_target``).

        By linearity, ``sum_c t_c * loss(z, c)``: the cross-entropy against
        :meth:`target_distribution` ``(t)``; ``"mean"`` divides by ``B``, as ``F.cross_entropy``.
        """
        self._require_linear("probability targets")
        t, bad = self.probability_target(logits, target)
        per = F.cross_entropy(upcast(logits), self.target_distribution(t), reduction="none")
        return reduce_rows(per, ~bad, float("nan"), self.reduction)

    def target_distribution(self, probs: Tensor) -> Tensor:
        """The ``(B, K)`` distribution this loss trains towards for label distribution ``probs``."""
        return probs

    def _require_linear(self, what: str) -> None:
        if not self.linear_in_target:
            raise ValueError(f"{type(self).__name__} cannot take {what}: it is not linear in its target; use "
                             "a loss that is (ce, ls, ols, maxsup, logit_penalty, logitnorm, nls), or pass "
                             "class indices")

    def mixing(self, logits: Tensor, y_a: Tensor, y_b: Tensor, lam) -> Tuple[Rows, Rows, Tensor, Rows]:
        """Check a Mixup/CutMix batch: the :class:`Rows` of ``y_a`` and ``y_b``, ``lam`` ``(B,)``, and both.

        ``lam`` is a Python float (timm's) or a ``(B,)``/scalar tensor in ``[0, 1]``; a row of
        ``lam`` outside it (or NaN) gets a NaN loss and is reported as a bad input. A row
        counts where both labels do; the last :class:`Rows` says so (its ``labels`` are ``y_a``'s).
        """
        self._require_linear("Mixup/CutMix targets")
        rows_a, rows_b = self.rows(logits, y_a), self.rows(logits, y_b)
        # a row counts where both labels do; its fill is NaN where either label is bad
        both = Rows(rows_a.labels, rows_a.keep & rows_b.keep, rows_a.fill + rows_b.fill)
        dtype = upcast(logits).dtype
        if isinstance(lam, Tensor):
            if lam.dim() > 1 or (lam.dim() == 1 and lam.shape[0] != logits.shape[0]):
                raise ValueError(f"lam must be a float, a scalar tensor or a (B,) = ({logits.shape[0]},) "
                                 f"tensor of each sample's share of y_a, got shape {tuple(lam.shape)}")
            lam = lam.to(device=logits.device, dtype=dtype).expand(logits.shape[0])
            if self.validate:
                both = self.refuse(both, (lam >= 0) & (lam <= 1), BAD_LAM)  # False for NaN too
        else:
            lam = torch.full((logits.shape[0],), check_unit_interval("lam", lam), device=logits.device,
                             dtype=dtype)
        return rows_a, rows_b, lam, both

    def forward_mixed(self, logits: Tensor, y_a: Tensor, y_b: Tensor, lam) -> Tensor:
        """The loss of mixed samples, ``lam`` ``(B,)`` of class ``y_a`` and ``1 - lam`` of ``y_b``.

        For a loss linear in its target this is exactly the loss against the mixed target
        ``lam * t(y_a) + (1 - lam) * t(y_b)``: label smoothing sits inside it once.
        """
        rows_a, rows_b, lam, both = self.mixing(logits, y_a, y_b, lam)
        z = upcast(logits)
        per = lam * self.per_sample(z, rows_a) + (1 - lam) * self.per_sample(z, rows_b)
        return reduce_rows(per, both.keep, both.fill, self.reduction)

    def per_sample(self, logits: Tensor, rows: Rows) -> Tensor:
        """``(B,)`` loss of each sample for the classes ``rows.labels``."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, reduction={self.reduction!r}"

