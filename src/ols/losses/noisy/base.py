"""What the noisy-label methods of Table VII share: the loss they build on, CE or OLS, and their phases.

Each method (Ren et al.'s reweighting, Meta-Weight-Net, Arazo et al.'s bootstrapping, PENCIL, Han
et al.'s self-learning) is a loss in the registry, ``--loss NAME``, holding the method's options,
state and equations, and ``--loss-arg base=ols`` puts OLS under it (``base=ce``, the default, is the
method as its paper has it). What a method does with the model (a virtual step, a pass over the
training set once an epoch) is its task's (:mod:`ols.tasks`). Called as a plain loss outside its
task, ``crit(logits, target)`` is its base loss.

**OLS combined with a method** (no public code has these; the paper says OLS does not conflict
with label correction, Sec. V-B). One rule each, stated in the method's docstring:

* a method that **reweights** samples (``l2rw``, ``mwnet``) reweights OLS's per-sample loss,
  Eq. (4), and OLS's statistics, Eq. (5), count each correct row with its sample weight;
* a method that **corrects labels** (``bmm``, ``pencil``, ``self_learning``) trains on a target
  distribution ``t`` in place of the one-hot noisy label; with OLS it trains on
  ``q(t) = alpha * t + (1 - alpha) * t @ S`` (OLS's probability target, so the corrected label
  feeds the hard term and its soft label the other), and OLS's statistics count each row that
  predicts its corrected label (the noisy label before any correction) for that label.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..base import ClassificationLoss, Rows, check_target
from ..functional import reduce_rows, upcast
from ..ols import OnlineLabelSmoothing
from ..standard import CrossEntropy

#: the losses a method can build on
BASES = ("ce", "ols")


def phase_epochs(name: str, given: Optional[int], share: float, epochs: int, least: int = 0,
                 most: Optional[int] = None) -> int:
    """Epochs of a phase: ``given``, or ``share`` of the run's ``epochs`` (the paper's proportion), rounded.

    The phase has ``least`` epochs at the fewest and ``most`` (``epochs``) at the most; a ``given``
    count outside them is one line naming ``--loss-arg name``.
    """
    most = epochs if most is None else most
    if given is None:
        return min(max(int(round(share * epochs)), least), most)
    if isinstance(given, bool) or not isinstance(given, int) or not least <= given <= most:
        raise ValueError(f"--loss-arg {name}={given!r} must be a whole number of epochs in [{least}, {most}] "
                         f"(the run has --epochs {epochs})")
    return given


def check_positive(name: str, value: float, zero: bool = False) -> float:
    """``value`` as a finite float above 0 (or at least 0 with ``zero``), else one line naming it."""
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        raise ValueError(f"--loss-arg {name} must be a finite number {'>= 0' if zero else '> 0'}, got "
                         f"{value}")
    return value


def epoch_span(first: int, last: int) -> str:
    """``"epochs 3-7"``, ``"epoch 3"`` or ``"no epoch"``, for the phase lines a run prints."""
    if last < first:
        return "no epoch"
    return f"epoch {first}" if first == last else f"epochs {first}-{last}"


class NoisyLabelMethod(ClassificationLoss):
    """Base of the noisy-label methods: the base loss (CE or OLS) and the periodic-loss protocol.

    Args:
        num_classes: ``K``.
        base: ``"ce"`` (the method as published) or ``"ols"`` (OLS under the method, module docstring).
        alpha: OLS's hard-label weight (``base="ols"`` only; 0.5 by default).
        epochs: the run's length, which the phases are proportions of (the engine passes its own).
        ignore_index, reduction, validate: as every registry loss.
    """

    update_every = None  # OLS's period under a method is the epoch: the engine steps it
    needs_index = False
    #: the clean held-out set (``--meta-size``) is what the method learns from
    needs_clean_set = False
    #: why ``--cuda-graph`` cannot capture the method's step (``None``: it can)
    cuda_graph_refusal: Optional[str] = None

    def __init__(self, num_classes: int, base: str = "ce", alpha: Optional[float] = None, epochs: int = 1,
                 ignore_index: int = -100, reduction: str = "mean", validate: bool = True):
        super().__init__(num_classes, ignore_index, reduction, validate)
        if base not in BASES:
            raise ValueError(f"--loss-arg base={base!r}: a method builds on one of {', '.join(BASES)}")
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be a positive integer (the run's length), got {epochs!r}")
        if base == "ce" and alpha is not None:
            raise ValueError("--alpha is OLS's weight of the hard label, and this method builds on CE; add "
                             "--loss-arg base=ols, or drop --alpha")
        self.base_name, self.epochs = base, epochs
        self.periodic = base == "ols"
        common = {"ignore_index": ignore_index, "reduction": "none", "validate": validate}
        self.base = (OnlineLabelSmoothing(num_classes, 0.5 if alpha is None else alpha, **common)
                     if self.periodic else CrossEntropy(num_classes, **common))

    # -- the loss a method builds on --
    def base_loss(self, logits: Tensor, target: Tensor, base: Optional[nn.Module] = None) -> Tensor:
        """``(B,)`` base loss of ``logits`` ``(B, K)`` for hard labels ``target`` ``(B,)``; no statistics.

        ``base``: another loss of the same kind than ``self.base`` (a pair's second network's OLS).
        """
        base = self.base if base is None else base
        if self.periodic:
            return base(logits, target, observe=False)
        return base(logits, target)

    def base_loss_probs(self, logits: Tensor, probs: Tensor, base: Optional[nn.Module] = None) -> Tensor:
        """``(B,)`` base loss against a ``(B, K)`` target distribution ``t``: ``CE(z, t)`` or ``CE(z, q(t))``.

        ``q(t) = alpha * t + (1 - alpha) * t @ S`` is OLS's target for ``t`` (no statistics here).
        """
        logp = F.log_softmax(upcast(logits), dim=1)
        base = self.base if base is None else base
        target = base.target_distribution(probs) if self.periodic else probs
        return -(target.to(logp.dtype) * logp).sum(dim=1)

    def observe(self, logits: Tensor, label: Tensor, weight: Optional[Tensor] = None) -> None:
        """OLS's statistics, Eq. (5), from ``logits`` ``(B, K)`` for ``label`` ``(B,)``; nothing for CE."""
        if self.periodic:
            self.base.observe(logits, label, weight)

    # -- a plain loss, outside the method's task --
    def forward(self, logits: Tensor, target: Tensor) -> Tensor:  # type: ignore[override]
        """The base loss of ``logits`` ``(B, K)`` and ``target`` ``(B,)``, OLS's statistics included."""
        check_target(logits, target, self.num_classes)
        per = self.base(logits, target)  # (B,): 0 at ignored rows, NaN at a bad label
        return reduce_rows(per, target != self.ignore_index, 0.0, self.reduction)

    def per_sample(self, logits: Tensor, rows: Rows) -> Tensor:
        return self.base_loss(logits, rows.labels)

    # -- the periodic-loss protocol, forwarded to OLS --
    def step(self) -> None:
        """Close OLS's update period (a collective under ``torch.distributed``); nothing for CE."""
        if self.periodic:
            self.base.step()

    @property
    def soft_labels(self) -> Optional[Tensor]:
        """OLS's ``(K, K)`` soft labels, ``None`` for CE."""
        return self.base.soft_labels if self.periodic else None

    def phases(self) -> str:
        """One line: what the method does in which epochs (the run prints it before training)."""
        return f"{self.name}: every epoch alike"

    #: the method's registry name, in the lines a run prints
    key = "method"

    @property
    def name(self) -> str:
        return self.key + (" + OLS" if self.periodic else "")

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, base={self.base_name!r}, epochs={self.epochs}"


def one_hot(labels: Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """``(B, K)`` one-hot rows of ``labels`` ``(B,)``."""
    return F.one_hot(labels, num_classes).to(dtype)
