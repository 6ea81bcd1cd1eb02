"""Online Label Smoothing, Algorithm 1 of Zhang et al. (IEEE TIP 2021): a store plus Eq. (4)."""

from __future__ import annotations

import functools
import warnings
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..utils.tracing import compiling, count_on_host
from .base import (
    ClassificationLoss,
    check_class_weight,
    check_several_classes,
    check_unit_interval,
    over_positions,
)
from .functional import reduce_rows, soft_target_nll, upcast
from .rank_local import VersionedState
from .soft_labels import SoftLabels
from .step_reminder import StepReminder

#: which Mixup/CutMix rows update the soft labels (see OnlineLabelSmoothing)
MIXED_UPDATES = ("unmixed", "dominant", "all")
#: the store options' defaults: (init, zero_count, freeze_above, frozen_empty, freeze)
_DEFAULT_STORE = ("uniform", "uniform", None, "keep", False)


class OnlineLabelSmoothing(StepReminder, VersionedState, ClassificationLoss):
    r"""Online Label Smoothing: class-level soft labels learned from the model's own correct predictions.

    ``loss = alpha * CE(z, y) + (1 - alpha) * CE(z, S[y])``, Eq. (3)-(4), for ``logits`` ``(B, K)``
    of any float dtype and ``target`` ``(B,)`` int64, ``(B, K, d1, ...)`` logits, ``(B, K)``
    probability targets, or Mixup pairs (:meth:`forward_mixed`). A training-mode forward with
    gradients on adds each correct row's detached softmax to the ``store``, Eq. (5);
    :meth:`step` closes the period, Eq. (6). The contract (state, DDP, casts, compile, bad
    inputs) is the README's "The loss in your own training loop".

    Args:
        num_classes: ``K`` (at least 2).
        alpha: weight of the hard-label term, in ``[0, 1]``; 0.5 in the paper.
        store: a :class:`~ols.losses.soft_labels.SoftLabels` or :class:`~ols.losses.topk.TopKSoftLabels`;
            ``None`` builds one from ``topk`` and the store options.
        topk, init, zero_count, freeze_above, frozen_empty, freeze: the store to build: top-k with
            ``topk`` entries per class (10^4 to 10^6 classes) or dense, with ``S^0`` and Eq. (6)'s rules.
        update_every: step every ``N`` observed forwards instead of at each epoch end (Fig. 7b).
        mixed_update, mixed_threshold: which mixed rows feed the store, each for its largest class (a tie:
            the lower index): ``"unmixed"`` (one-class targets), ``"dominant"`` (share ``>= mixed_threshold``,
            weighted by it) or ``"all"``.
        weight, label_smoothing, ignore_index, reduction: as in ``F.cross_entropy`` (smoothing on the hard
            term only; weights not applied to the statistics).
        validate: check input values, with no device sync (:mod:`~ols.losses.base`).
        warn_unstepped_after: warn once after this many observed forwards without a step.

    Example:
        >>> crit = OnlineLabelSmoothing(num_classes=3, alpha=0.5)
        >>> loss = crit(torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0]]), torch.tensor([0, 1]))
        >>> crit.step()
        >>> crit.soft_labels[0]  # class 0 saw one correct sample: its softmax
        tensor([0.7870, 0.1065, 0.1065])
        >>> crit.soft_labels[2]  # class 2 saw none: uniform
        tensor([0.3333, 0.3333, 0.3333])
    """

    linear_in_target = True  # Eq. (4) is a cross-entropy: Mixup/CutMix targets mix linearly
    num_iterations: Tensor

    def __init__(self, num_classes: int, alpha: float = 0.5, store: Optional[Any] = None, *,
                 topk: Optional[int] = None, init: Union[str, Tensor] = "uniform",
                 zero_count: str = "uniform", freeze_above: Optional[float] = None,
                 frozen_empty: str = "keep", freeze: bool = False, update_every: Optional[int] = None,
                 mixed_update: str = "unmixed", mixed_threshold: float = 0.5, weight: Optional[Tensor] = None,
                 label_smoothing: float = 0.0, ignore_index: int = -100, reduction: str = "mean",
                 validate: bool = True, warn_unstepped_after: Optional[int] = 100_000):
        super().__init__(num_classes, ignore_index, reduction, validate)
        check_several_classes("OnlineLabelSmoothing", num_classes)
        self.alpha = check_unit_interval("alpha", alpha)
        self.label_smoothing = check_unit_interval("label_smoothing", label_smoothing)
        if mixed_update not in MIXED_UPDATES:
            raise ValueError(f"unknown mixed_update {mixed_update!r}; use one of {', '.join(MIXED_UPDATES)}")
        self.mixed_update, self.mixed_threshold = mixed_update, check_unit_interval("mixed_threshold",
                                                                                   mixed_threshold)
        if update_every is not None and (type(update_every) is not int or update_every < 1):
            raise ValueError(f"update_every must be a positive integer or None, got {update_every!r}")
        self.update_every, self.warn_unstepped_after = update_every, warn_unstepped_after
        self.register_buffer("weight", check_class_weight(weight, num_classes))
        if store is None:
            store = make_store(num_classes, topk, init=init, zero_count=zero_count, freeze_above=freeze_above,
                               frozen_empty=frozen_empty, freeze=freeze)
        elif topk is not None or not isinstance(init, str) or (init, zero_count, freeze_above, frozen_empty,
                                                                freeze) != _DEFAULT_STORE:
            raise ValueError("store= was given with topk=, init=, zero_count=, freeze_above=, frozen_empty= "
                             "or freeze=; those build a store: pass them to the store instead")
        self.store = store
        if not callable(getattr(self.store, "targets", None)) or self.store.num_classes != num_classes:
            raise ValueError(f"store must be a soft-label store for {num_classes} classes (SoftLabels or "
                             f"TopKSoftLabels), got {self.store!r}")
        if weight is not None and not getattr(self.store, "class_weights", True):
            raise ValueError(f"weight= is not supported by {type(self.store).__name__} (its sparse loss has "
                             "no class weights); drop one of them")
        self.register_buffer("num_iterations", torch.zeros((), dtype=torch.long))
        self._since_step, self._warned_no_grad = 0, False  # host side: never read from the device

    @property
    def soft_labels(self) -> Optional[Tensor]:
        """``(K, K)`` float32, row ``c`` the target of class ``c`` (``None`` for a large top-k store)."""
        return self.store.soft_labels

    def forward(self, logits: Tensor, target: Tensor, *, observe: bool = True,
                alpha: Optional[float] = None) -> Tensor:
        """Eq. (4) for ``logits`` ``(B, K)`` and ``target`` ``(B,)`` (or ``(B, K)`` probabilities).

        ``observe=False`` reads the soft labels without adding to them (a self-distilled
        network's shallow exits); ``alpha`` overrides the hard-label weight for this call.
        """
        if isinstance(logits, Tensor) and logits.dim() > 2:
            return over_positions(lambda z, y: self.forward(z, y, observe=observe, alpha=alpha), logits,
                                  target, self.reduction)
        if isinstance(target, Tensor) and target.is_floating_point() and target.dim() == 2:
            if alpha is not None or not observe:
                raise ValueError("observe= and alpha= apply to class-index targets; a (B, K) probability "
                                 "target takes neither")
            return self.forward_probs(logits, target)
        rows = self.rows(logits, target)
        logp = F.log_softmax(upcast(logits), dim=1)  # (B, K)
        a = self.alpha if alpha is None else check_unit_interval("alpha", alpha)
        per = self._eq4(logp, rows.labels, a)
        if observe and self._observing():
            self._observe(logp, rows.labels, rows.keep)
        return reduce_rows(per, rows.keep, rows.fill, self.reduction, self._mass(rows.labels))

    def forward_mixed(self, logits: Tensor, y_a: Tensor, y_b: Tensor, lam: Union[float, Tensor]) -> Tensor:
        """Mixup/CutMix: Eq. (4) against ``lam * q(y_a) + (1 - lam) * q(y_b)`` (CE is linear in ``q``).

        ``logits`` ``(B, K)``, ``y_a``/``y_b`` ``(B,)`` int64, ``lam`` a float or ``(B,)``. The same loss,
        and the same rows observed, as ``crit(logits, lam * onehot(y_a) + (1 - lam) * onehot(y_b))``,
        without its ``(B, K) @ (K, K)`` product.
        """
        rows_a, rows_b, lam, both = self.mixing(logits, y_a, y_b, lam)
        a, b = rows_a.labels, rows_b.labels
        logp = F.log_softmax(upcast(logits), dim=1)
        per = lam * self._eq4(logp, a, self.alpha) + (1 - lam) * self._eq4(logp, b, self.alpha)
        if self._observing():  # the larger share's class; a tie: the lower index, as argmax of the target
            label = torch.where(lam > 0.5, a, torch.where(lam < 0.5, b, torch.minimum(a, b)))
            share = torch.where(a == b, torch.ones_like(lam), torch.maximum(lam, 1 - lam))
            self._observe_shares(logp, label, share, both.keep)
        mass = None if self.weight is None else lam * self._mass(a) + (1 - lam) * self._mass(b)  # <t, w>
        return reduce_rows(per, both.keep, both.fill, self.reduction, mass)

    def forward_probs(self, logits: Tensor, target: Tensor) -> Tensor:
        """Eq. (4) against a ``(B, K)`` probability target ``t``: ``alpha * t + (1 - alpha) * t @ S``.

        Rows feed the store for their largest class under ``mixed_update``. Under ``weight=``,
        ``"mean"`` divides by ``sum_i <t_i, weight>``, as a class index divides by ``sum_i weight[y_i]``
        (``F.cross_entropy`` divides a probability target by ``B``).
        """
        if not isinstance(self.store, SoftLabels):
            raise ValueError("a (B, K) probability target needs the dense soft labels (t @ S); with a top-k "
                             "store pass class indices, or Mixup pairs via forward_mixed(logits, y_a, y_b, "
                             "lam)")
        t, bad = self.probability_target(logits, target)
        logp = F.log_softmax(upcast(logits), dim=1)
        q = self.target_distribution(t).to(logp.dtype)  # (B, K)
        per = -(q * (logp if self.weight is None else logp * self.weight.to(logp.dtype))).sum(dim=1)
        if self._observing():
            share, label = t.max(dim=1)
            self._observe_shares(logp, label, share, ~bad)
        mass = None if self.weight is None else t @ self.weight  # (B,) <t_i, w>
        return reduce_rows(per, ~bad, float("nan"), self.reduction, mass)

    def observe(self, logits: Tensor, target: Tensor, weight: Optional[Tensor] = None) -> None:
        """Eq. (5) from a forward that is not this loss's own: add the correct rows of ``logits`` ``(B, K)``.

        For a method that computes its loss on one forward and takes OLS's statistics from another
        (a noisy-label method's un-mixed images, its corrected labels): ``target`` ``(B,)`` int64 is
        the class each row counts for, ``weight`` ``(B,)`` a bool mask or float weights, as
        :meth:`~ols.losses.soft_labels.SoftLabels.observe` takes them. Only in training mode; the
        grad mode does not matter (the statistics are detached). No host read.
        """
        if not self.training:
            return
        rows = self.rows(logits, target)
        keep = rows.keep if weight is None else torch.where(rows.keep, weight, torch.zeros_like(weight))
        self._observe(F.log_softmax(upcast(logits.detach()), dim=1), rows.labels, keep)

    def target_distribution(self, probs: Tensor) -> Tensor:
        """``alpha * smooth(t) + (1 - alpha) * t @ S`` for label distributions ``probs`` ``(B, K)``."""
        eps = self.label_smoothing
        hard = probs * (1.0 - eps) + eps / self.num_classes if eps else probs
        return self.alpha * hard + (1.0 - self.alpha) * (probs @ self.store.soft_labels)

    def _eq4(self, logp: Tensor, y: Tensor, alpha: float) -> Tensor:
        return soft_target_nll(logp, y, self.store.targets(y), alpha, self.label_smoothing, self.weight)

    def _mass(self, y: Tensor) -> Optional[Tensor]:
        """``weight[y]`` ``(B,)``: what ``"mean"`` divides by under class weights (``None`` without)."""
        return None if self.weight is None else self.weight.index_select(0, y)

    def _observe_shares(self, logp: Tensor, label: Tensor, share: Tensor, keep: Tensor) -> None:
        if self.mixed_update == "unmixed":
            weight = keep & (share == 1)
        elif self.mixed_update == "dominant":
            weight = torch.where(keep & (share >= self.mixed_threshold), share, 0.0)
        else:  # "all"
            weight = keep
        self._observe(logp, label, weight)

    def _observe(self, logp: Tensor, label: Tensor, weight: Tensor) -> None:
        """Eq. (5): feed the store, count the forward, and step if ``update_every`` says so."""
        self.store.observe(logp.detach(), label, weight)
        self.num_iterations.add_(1)
        if not compiling():  # a --cuda-graph step runs it after each replay
            count_on_host(functools.partial(self._count_forward, logp.shape[0]))
        elif self.update_every is not None:
            _count_outside_graph(self)

    def _observing(self) -> bool:
        """True in training mode with gradients on; a training-mode forward under no_grad warns once."""
        if self.training and not torch.is_grad_enabled():
            if not self._warned_no_grad:
                self._warned_no_grad = True
                warnings.warn(f"{type(self).__name__}: a training-mode forward under torch.no_grad() is not "
                              "added to the soft-label statistics (a validation loop that forgot "
                              "crit.eval()?); call crit.eval() for evaluation", stacklevel=3)
            return False
        return self.training

    def _count_forward(self, batch: Optional[int] = None) -> None:
        """The host's count of observed forwards since the last step (never read from the device).

        ``batch``: the forward's rows (its shape), for the step reminder's epoch pattern.
        """
        self._since_step += 1
        self._note_training_forward(batch)
        if self.update_every is not None:
            if self._since_step >= self.update_every:
                self.step()
        elif self._since_step == self.warn_unstepped_after:
            warnings.warn(f"{type(self).__name__}: {self._since_step} training forwards without a step(), so "
                          "the soft labels never update. Call crit.step() at the end of every epoch (the "
                          "adapters ols.integrations.lightning.OLSCallback and "
                          "ols.integrations.hf.OLSTrainerHook do), or pass update_every=N; "
                          "warn_unstepped_after=None silences this", stacklevel=4)

    def step(self) -> None:
        """Close the period, Eq. (6); a collective under ``torch.distributed``. Raises a bad input seen."""
        self.raise_bad_inputs()
        self.store.step()
        self._since_step = 0
        self._note_step()

    def _load_from_state_dict(self, state_dict, prefix, *args) -> None:
        kinds = {"top-k": "store.index", "dense": "store.soft_labels"}
        saved = next((kind for kind, key in kinds.items() if prefix + key in state_dict), None)
        mine = "dense" if isinstance(self.store, SoftLabels) else "top-k"
        if saved is not None and saved != mine:
            how = "with topk=N (the N the state was saved with)" if saved == "top-k" else "without topk="
            raise ValueError(f"the state to load ({prefix or 'top level'}) is a {saved} store's, and this "
                             f"loss has a {mine} store; build the loss {how} to load it")
        super()._load_from_state_dict(state_dict, prefix, *args)
        every = self.update_every  # where in its period the loaded state stands (read at load time only)
        self._since_step = int(self.num_iterations) % every if every is not None else 0

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, alpha={self.alpha}, update_every={self.update_every}, "
                f"reduction={self.reduction!r}")


def make_store(num_classes: int, topk: Optional[int] = None, **options: Any) -> Any:
    """The store OLS builds when none is passed: dense, or top-k with ``topk`` entries per class."""
    if topk is None:
        return SoftLabels(num_classes, **options)
    from .topk import TopKSoftLabels  # loaded only when asked for

    return TopKSoftLabels(num_classes, topk, **options)


@torch.compiler.disable
def _count_outside_graph(loss: OnlineLabelSmoothing) -> None:
    """:meth:`OnlineLabelSmoothing._count_forward` under ``torch.compile``: a graph break, no device read."""
    loss._count_forward()
