"""Online Label Smoothing, Algorithm 1 of Zhang et al. (IEEE TIP 2021): a store plus a cross-entropy."""

from __future__ import annotations

import warnings
from typing import Any, Dict, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import (
    ClassificationLoss,
    check_class_weight,
    check_inputs,
    check_mixed_inputs,
    check_probability_target,
    check_several_classes,
    check_unit_interval,
    compiling,
    over_positions,
)
from .functional import (
    mean_denominator,
    mixed_target_nll,
    row_softmax,
    sparse_target_cross_entropy,
    upcast,
)
from .rank_local import RankLocalState
from .soft_labels import SoftLabels
from .topk_soft_labels import TopKSoftLabels

#: the largest K for which a top-k loss still offers its soft labels as a dense (K, K) matrix
DENSE_VIEW_MAX = 4096

#: which Mixup/CutMix samples update the soft labels (see :meth:`OnlineLabelSmoothing.forward_mixed`)
MIXED_UPDATES = ("unmixed", "dominant", "all")

#: buffers that sat on the loss itself before the store existed (checkpoints of ols <= 0.1 main)
_OLD_STORE_KEYS = ("soft_labels", "sums", "num_updates")


class OnlineLabelSmoothing(RankLocalState, ClassificationLoss):
    r"""Online Label Smoothing (OLS): class-level soft labels learned from the model itself.

    ``loss = alpha * CE(z, y) + (1 - alpha) * CE(z, soft_labels[y])``, Eq. (3)-(4): ``logits``
    ``(B, K)`` of any floating dtype, ``target`` ``(B,)`` int64. ``soft_labels`` ``(K, K)``
    float32, row ``c`` the target of class ``c`` (column ``c`` of the paper's ``S``).

    **State** (``state_dict()`` saves it, also mid-period; ``.to()`` moves it):
    ``store``, a :class:`~ols.losses.soft_labels.SoftLabels` (soft labels, the period's
    sums of Eq. 5, ``num_updates``), and ``num_iterations``, the training forwards so far.

    **When it changes.** Each training-mode forward adds the detached float32 softmax of
    every correctly classified row (its target has the largest probability; not ignored;
    no NaN or ``+inf`` logit) to its class's sums; repeated labels all count. Eval mode
    never accumulates. :meth:`step` closes the period with Eq. (6).

    **Who calls what.** :meth:`step` once at the end of every epoch; or ``update_every=N``
    and the loss steps itself every ``N`` training forwards (Fig. 7b), and must then not be
    stepped at epoch end. Under ``torch.distributed``, :meth:`step` is a collective (it
    all-reduces the sums) that every rank calls. The loss may sit outside
    ``DistributedDataParallel`` or inside the wrapped module (a LightningModule attribute):
    the sums are rank-local state that DDP's buffer broadcast never overwrites. Cast the
    module as you like (``.half()``, ``bf16-true``): the soft labels and sums stay float32.
    A loss computed before a :meth:`step` backpropagates with
    the soft labels it used. Under ``torch.compile`` the training forward and backward have
    no graph break (``update_every`` adds one), and ``validate`` is skipped. A training-mode
    forward under ``torch.no_grad()`` (a validation loop that forgot ``eval()``) is not
    observed and warns once.

    Args:
        num_classes: ``K`` (at least 2).
        alpha: weight of the hard-label term in Eq. (4), in ``[0, 1]``; 0.5 in the paper.
        init, zero_count, freeze_above, frozen_empty, freeze: the soft labels before the
            first step (a name, or a ``(K, K)`` prior as a tensor or ``.npy`` path), for a class
            with no correct sample, and the freeze rules: see
            :class:`~ols.losses.soft_labels.SoftLabels`. ``freeze=True`` with a prior trains on
            that fixed prior.
        update_every: if set, step after every ``N`` training forwards instead of per epoch.
        mixed_update: which Mixup/CutMix samples update the soft labels: ``"unmixed"``
            (default: only samples left unmixed, since a mixed softmax puts mass on a random
            partner class and washes ``S`` towards uniform), ``"dominant"`` (``max(lam, 1 - lam)
            >= mixed_threshold``, for the dominant label, weighted by that share) or ``"all"``
            (every sample, for its dominant label). A row still counts only if correct.
        weight: ``(K,)`` class weights, as in ``F.cross_entropy``: each row's loss is
            ``-sum_c weight_c q_c log p_c`` and ``"mean"`` divides by ``sum_i weight[y_i]``
            (with uniform soft labels, exactly ``F.cross_entropy(weight=...,
            label_smoothing=1 - alpha)``). The statistics are not weighted.
        label_smoothing: ``F.cross_entropy``'s smoothing, applied to the hard term of Eq. (4)
            only: ``onehot(y)`` becomes ``(1 - eps) * onehot(y) + eps / K``. 0 in the paper.
        ignore_index, reduction: as in ``F.cross_entropy``.
        validate: check that targets lie in ``[0, K)`` (one device sync per call on GPUs).
        warn_unstepped_after: warn once when this many training forwards pass without a
            :meth:`step` (the soft labels would never update); ``None`` never warns. Not
            counted under ``torch.compile``.
        topk: keep at most ``k`` soft-label entries per class (a
            :class:`~ols.losses.topk_soft_labels.TopKSoftLabels` store, for 10^4 to 10^6
            classes); the loss then never builds a ``(B, K)`` target. ``None``: dense.
        leftover, slots, feed: the top-k store's options (see there).

    **Inputs beyond** ``(B, K)`` **and** ``(B,)``, as ``F.cross_entropy``: ``(B, K, d1, ...)``
    logits with ``(B, d1, ...)`` targets (segmentation; each position is a sample, also for
    the statistics); a ``(B, K)`` probability target ``t`` (timm's ``Mixup``, soft labels
    from elsewhere), trained on ``alpha * t + (1 - alpha) * t @ S`` by linearity, observed
    for each row's largest class under ``mixed_update`` (``"unmixed"``: one-hot rows only).
    An empty batch gives NaN under ``"mean"``.

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

    num_iterations: Tensor
    linear_in_target = True  # Eq. (4) is a cross-entropy: Mixup/CutMix targets mix linearly

    def __init__(
        self,
        num_classes: int,
        alpha: float = 0.5,
        init: Union[str, Tensor] = "uniform",
        zero_count: str = "uniform",
        update_every: Optional[int] = None,
        freeze_above: Optional[float] = None,
        frozen_empty: str = "keep",
        freeze: bool = False,
        mixed_update: str = "unmixed",
        mixed_threshold: float = 0.5,
        weight: Optional[Tensor] = None,
        label_smoothing: float = 0.0,
        ignore_index: int = -100,
        reduction: str = "mean",
        validate: bool = True,
        warn_unstepped_after: Optional[int] = 100_000,
        topk: Optional[int] = None,
        leftover: str = "uniform",
        slots: Optional[int] = None,
        feed: Optional[int] = None,
    ):
        super().__init__(num_classes, ignore_index, reduction)
        check_several_classes("OnlineLabelSmoothing", num_classes)
        self.alpha = check_unit_interval("alpha", alpha)
        if update_every is not None and (
            not isinstance(update_every, int) or isinstance(update_every, bool) or update_every < 1
        ):
            raise ValueError(f"update_every must be a positive integer or None, got {update_every!r}")
        if mixed_update not in MIXED_UPDATES:
            raise ValueError(f"unknown mixed_update {mixed_update!r}; use one of {', '.join(MIXED_UPDATES)}")
        self.mixed_update = mixed_update
        self.mixed_threshold = check_unit_interval("mixed_threshold", mixed_threshold)
        self.init = init if isinstance(init, str) else "prior"
        self.update_every = update_every
        self.validate = validate
        self.label_smoothing = check_unit_interval("label_smoothing", label_smoothing)
        self.register_buffer("weight", check_class_weight(weight, num_classes))
        self.warn_unstepped_after = warn_unstepped_after
        self.topk = topk
        if topk is None:
            self.store = SoftLabels(num_classes, init, zero_count, freeze_above, frozen_empty, freeze)
        else:
            if weight is not None:
                raise ValueError("weight= is not supported with topk= (the sparse loss has no class "
                                 "weights); drop one of them")
            self.store = TopKSoftLabels(num_classes, topk, init, zero_count, freeze_above, frozen_empty,
                                        freeze, leftover, slots, feed)
        self.register_buffer("num_iterations", torch.zeros((), dtype=torch.long))
        self._warned_no_grad = False
        self._unstepped = [0]  # mutated in place: no nn.Module.__setattr__ on every forward
        if hasattr(self, "register_load_state_dict_pre_hook"):  # public since torch 2.5
            self.register_load_state_dict_pre_hook(_upgrade_old_state)

    @property
    def soft_labels(self) -> Optional[Tensor]:
        """``(K, K)`` float32: row ``c`` is the current target of class ``c``.

        With ``topk`` it is built from the sparse rows, and ``None`` above ``K =
        DENSE_VIEW_MAX`` (4096); read ``crit.store.rows(classes)`` there.
        """
        if self.topk is None:
            return self.store.soft_labels
        return self.store.dense() if self.num_classes <= DENSE_VIEW_MAX else None

    def _cross_entropy(self, z: Tensor, y: Tensor, valid: Optional[Tensor], reduction: str,
                       shared: Any, alpha: Optional[float] = None) -> Tensor:
        """Eq. (4) for int64 classes ``y`` ``(B,)`` against the store's soft labels, dense or sparse."""
        alpha = self.alpha if alpha is None else alpha
        if self.topk is None:
            return mixed_target_nll(shared, y, self.store.targets(y), alpha, valid, reduction,
                                    self.weight, self.label_smoothing)
        index, value, rest = self.store.rows(y)
        return sparse_target_cross_entropy(z, y, index, value, rest, alpha, valid, reduction,
                                           self.label_smoothing, shared[:2])

    def _shared(self, z: Tensor, valid: Optional[Tensor], observing: bool) -> Any:
        """What the loss and the store share, computed once per forward.

        Dense: ``F.log_softmax(z)`` ``(B, K)`` (the store reads the softmax as its ``exp``).
        Top-k: ``(probs, lse, largest)``, :func:`row_softmax`, and when ``observing`` the store's
        :meth:`~ols.losses.topk_soft_labels.TopKSoftLabels.largest` logits (else ``None``),
        whose first column gives the row maxima (two ``(B, K)`` passes fewer). The log-sum-exp
        read at any column is exact, so an ignored row, zeroed inside :func:`row_softmax`, may
        take its column from the unmasked logits.
        """
        if self.topk is None:
            return F.log_softmax(z, dim=1)
        largest = self.store.largest(z) if observing else None
        return (*row_softmax(z, valid, None if largest is None else largest[1][:, 0]), largest)

    def _observe(self, z: Tensor, y: Tensor, weight: Optional[Tensor], shared: Any) -> None:
        if shared is None:
            self.store.observe(z, y, weight)
        elif self.topk is None:
            self.store.observe(z, y, weight, log_probs=shared)
        else:
            self.store.observe(z, y, weight, lse=shared[1], largest=shared[2])

    def forward(self, logits: Tensor, target: Tensor, *, observe: bool = True,
                alpha: Optional[float] = None) -> Tensor:
        """Eq. (4) for ``logits`` ``(B, K)`` and ``target`` ``(B,)``; accumulates if training.

        ``observe=False`` reads the soft labels without adding to the statistics (the
        shallow exits of a self-distilled network); ``alpha`` overrides the hard-label
        weight for this call (deep supervision gives each exit its own).
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
        shared = self._shared(z, valid, observing)
        loss = self._cross_entropy(z, safe, valid, self.reduction, shared, alpha)
        if observing:
            self._observe(z, safe, valid, shared)
            self._count_forward()
        return loss

    def forward_mixed(self, logits: Tensor, y_a: Tensor, y_b: Tensor, lam: Tensor) -> Tensor:
        """Mixup/CutMix: Eq. (4) against ``lam * q(y_a) + (1 - lam) * q(y_b)`` (CE is linear in q).

        ``lam`` ``(B,)``. Which rows update the soft labels follows ``mixed_update``; a row
        whose target is one class (``lam`` 0 or 1, or ``y_a == y_b``) counts as unmixed.
        """
        safe_a, safe_b, valid = check_mixed_inputs(logits, y_a, y_b, self.num_classes, self.ignore_index,
                                                   self.validate)
        z = upcast(logits)
        lam = lam.to(z.dtype)
        observing = self._observing()
        shared = self._shared(z, valid, observing)
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
            return total / mean_denominator(safe_a, valid)
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
        if self.mixed_update == "unmixed":  # a mixed softmax would pull S towards the partner
            weight = share == 1
        elif self.mixed_update == "dominant":
            weight = torch.where(share >= self.mixed_threshold, share, torch.zeros_like(share))
        else:  # "all": every sample, for its largest label
            weight = torch.ones_like(share, dtype=torch.bool)
        if valid is not None:
            weight = weight & valid if weight.dtype == torch.bool else weight * valid
        self._observe(z, label, weight, shared)
        self._count_forward()

    def _observing(self) -> bool:
        if self.training and not torch.is_grad_enabled():
            self._warn_no_grad()  # almost always a validation loop that forgot eval(): not observed
            return False
        return self.training

    def _count_forward(self) -> None:
        self.num_iterations.add_(1)
        if self.update_every is not None:
            if int(self.num_iterations) % self.update_every == 0:
                self.step()
        elif self.warn_unstepped_after is not None and not compiling():
            self._unstepped[0] += 1
            unstepped = self._unstepped[0]
            if unstepped == self.warn_unstepped_after:
                warnings.warn(
                    f"OnlineLabelSmoothing: {unstepped} training forwards without a step(), so the "
                    "soft labels never update. Call crit.step() at the end of every epoch (the adapters "
                    "ols.integrations.lightning.OLSCallback and ols.integrations.hf.OLSTrainerHook do), or "
                    "pass update_every=N; warn_unstepped_after=None silences this", stacklevel=4)

    def _warn_no_grad(self) -> None:
        if not self._warned_no_grad:
            self._warned_no_grad = True
            warnings.warn("OnlineLabelSmoothing: a training-mode forward under torch.no_grad() is not added "
                          "to the soft-label statistics (a validation loop that forgot crit.eval()?); call "
                          "crit.eval() for evaluation", stacklevel=3)

    def step(self) -> None:
        """Close the update period, Eq. (6); see :meth:`SoftLabels.step`. A collective under DDP."""
        self.store.step()
        self._unstepped = [0]

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, alpha={self.alpha}, init={self.init!r}, "
                f"update_every={self.update_every}, reduction={self.reduction!r}, topk={self.topk}")


def _upgrade_old_state(module: OnlineLabelSmoothing, state: Dict[str, Any], prefix: str, *args: Any) -> None:
    """Map a checkpoint written before the store existed (``soft_labels`` on the loss) to ``store.*``."""
    for name in _OLD_STORE_KEYS:
        if prefix + name in state and prefix + "store." + name not in state:
            state[prefix + "store." + name] = state.pop(prefix + name)
    state.pop(prefix + "counts", None)  # derived from the sums since (each softmax row sums to one)
