r"""Online Label Smoothing on a detector's class head: class-level soft labels for the positives.

The paper's Table X trains a YOLO detector with OLS but does not say how the soft labels
enter the head. This module makes one choice per head type and states it (the reasoning and
the host codebases: ``../shared/research/self-distillation-and-detection.md`` §3.2 and
``next-round-2026-12-04.md`` §1.2):

* **Sigmoid BCE heads** (YOLOv3/v4, RetinaNet- and FCOS-style), ``head="sigmoid"``: each
  positive's class target ``onehot(c)`` becomes

  .. math:: q = \alpha \, \mathrm{onehot}(c) + (1 - \alpha) \, S[c]

  and the loss is ``BCEWithLogits(z, q)``. BCE is affine in its target, so this *is*
  ``alpha * BCE(z, onehot) + (1 - alpha) * BCE(z, S[c])``: Eq. (4) with BCE in place of CE.
  The statistic (Eq. 5) adds, for each positive whose largest class logit is its label,
  its class probabilities: ``statistic="sigmoid"`` (default) the sigmoids renormalised to
  sum to one (the form of argusswift's label-smoothed BCE targets, which sum to one), or
  ``"softmax"`` of the class logits, or ``"raw_sigmoid"``: the per-class means of the raw
  sigmoids, one Bernoulli target per class that need not sum to one
  (:class:`~ols.detection.mean_store.MeanSoftLabels`). Objectness and negatives are the host's
  and are not touched here.
* **Softmax heads with a background class** (Faster R-CNN's box head, SSD), ``head="softmax"``:
  ``logits`` ``(N, K + 1)`` with the background at column ``background``. Foreground samples
  get Eq. (4) with ``S[c]`` over the ``K`` foreground columns (0 at the background); background
  samples keep the hard target. A foreground sample counts (Eq. 5) when its argmax over all
  ``K + 1`` columns is its label, and adds its softmax over the foreground columns alone
  (the background column dropped and the rest renormalised).

One ``S`` serves every pyramid level. The store is the classification loss's
(:class:`~ols.losses.soft_labels.SoftLabels`): ``step()`` closes the period (Eq. 6) and
all-reduces the sums under ``torch.distributed``; the state is in buffers, saved with the model's
checkpoint; no step reads a value back to the host.
"""

from __future__ import annotations

import warnings
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..losses.base import check_unit_interval
from ..losses.soft_labels import SoftLabels
from .mean_store import MeanSoftLabels

HEADS = ("sigmoid", "softmax")
STATISTICS = ("sigmoid", "softmax", "raw_sigmoid")
REDUCTIONS = ("mean", "sum", "none")


class DetectionOLS(nn.Module):
    r"""OLS for a detector's class head: ``loss = crit(logits, labels)``, then ``crit.step()`` each epoch.

    ``head="sigmoid"``: ``logits`` ``(P, K)`` the class logits of the ``P`` positive anchors
    (any pyramid level), ``labels`` ``(P,)`` int64 in ``[0, K)``. Returns the BCE against
    :meth:`soft_targets` over all ``P x K`` entries, reduced by ``reduction`` (``"none"``:
    ``(P, K)``). ``head="softmax"``: ``logits`` ``(N, K + 1)`` over the sampled RoIs or boxes,
    ``labels`` ``(N,)`` in ``[0, K]`` with ``background`` for background; the cross-entropy
    against the soft targets, ``(N,)`` for ``"none"``.

    ``weight`` ``(P,)`` or ``(N,)`` scales each sample's loss and its statistic (Mixup weights,
    say). A training-mode forward with gradients on observes the batch (Eq. 5); call
    :meth:`observe` yourself to count other samples.

    Args:
        num_classes: ``K``, the object classes (without the background).
        alpha: the hard label's weight in ``[0, 1]`` (the paper: 0.5; 1 is the hard-label loss).
        head: ``"sigmoid"`` or ``"softmax"`` (with a background class), as above.
        statistic: sigmoid head only: ``"sigmoid"`` (renormalised sigmoids), ``"softmax"``, or
            ``"raw_sigmoid"`` (the raw sigmoids' per-class means, which need not sum to one).
        background: softmax head only: the background's column (torchvision: 0; detectron2
            and DETR: ``K``).
        init: ``S^0`` (:class:`~ols.losses.soft_labels.SoftLabels`): ``"uniform"`` by default.
        reduction: ``"mean"`` (over entries for BCE, over samples for CE), ``"sum"`` or ``"none"``.
        freeze: keep ``S^0`` for good: ``alpha = 1 - delta`` with the uniform ``S^0`` is label
            smoothing's ``onehot (1 - delta) + delta / K``; ``alpha = 1`` the hard labels.

    Example:
        >>> crit = DetectionOLS(3, alpha=0.5)
        >>> crit.soft_targets(torch.tensor([2]))
        tensor([[0.1667, 0.1667, 0.6667]])
    """

    def __init__(
        self,
        num_classes: int,
        alpha: float = 0.5,
        head: str = "sigmoid",
        statistic: str = "sigmoid",
        background: int = 0,
        init: Union[str, Tensor] = "uniform",
        reduction: str = "mean",
        freeze: bool = False,
    ):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2 object classes, got {num_classes}")
        if head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
        if statistic not in STATISTICS:
            raise ValueError(f"statistic must be one of {', '.join(STATISTICS)}, got {statistic!r}")
        if head == "softmax" and statistic != "sigmoid":
            raise ValueError(
                "statistic is the sigmoid head's option; the softmax head counts the softmax "
                "over the foreground columns"
            )
        if not 0 <= background <= num_classes:
            raise ValueError(
                f"background must be a column of the K + 1 = {num_classes + 1} logits, got {background}"
            )
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
        self.num_classes, self.head, self.statistic = num_classes, head, statistic
        self.alpha = check_unit_interval("alpha", alpha)
        self.background, self.reduction = background, reduction
        store = MeanSoftLabels if statistic == "raw_sigmoid" else SoftLabels
        self.store = store(num_classes, init=init, freeze=freeze)

    @property
    def soft_labels(self) -> Tensor:
        """``(K, K)`` row ``c``: the soft label of class ``c`` (over the foreground classes)."""
        return self.store.soft_labels

    def step(self) -> None:
        """Close the update period, Eq. (6) (a collective under ``torch.distributed``).

        A class with no correct positive in the period follows the store's ``zero_count`` rule
        (uniform); early in training, when no positive is classified right yet, that is every
        class, which is expected here, so the classification store's warning is not raised.
        """
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="SoftLabels.step\\(\\) closed a period")
            self.store.step()

    # -- the softmax head's two index spaces: K + 1 columns and K foreground classes --
    def _foreground(self, labels: Tensor) -> tuple:
        """``(is_fg (N,), class among the K foreground ones (N,), 0 for background)``."""
        fg = labels != self.background
        cls = labels - (labels > self.background).long()
        return fg, torch.where(fg, cls, torch.zeros_like(cls))

    def _foreground_columns(self, x: Tensor) -> Tensor:
        """``x`` ``(N, K + 1)`` without the background column: ``(N, K)``."""
        return torch.cat([x[:, : self.background], x[:, self.background + 1 :]], dim=1)

    def soft_targets(self, labels: Tensor) -> Tensor:
        """The targets of ``labels``: ``(P, K)`` (sigmoid head) or ``(N, K + 1)`` (softmax head).

        Softmax head: background rows one-hot at the background, foreground rows 0 there.
        """
        k = self.num_classes
        if self.head == "sigmoid":
            onehot = F.one_hot(labels, k).to(self.soft_labels.dtype)
            return self.alpha * onehot + (1.0 - self.alpha) * self.store.targets(labels)
        fg, cls = self._foreground(labels)
        soft_fg = self.alpha * F.one_hot(cls, k).to(self.soft_labels.dtype) + (
            1.0 - self.alpha
        ) * self.store.targets(cls)  # (N, K)
        soft = torch.cat(
            [soft_fg[:, : self.background], torch.zeros_like(soft_fg[:, :1]), soft_fg[:, self.background :]],
            dim=1,
        )  # (N, K + 1): 0 at the background
        hard = F.one_hot(labels, k + 1).to(soft.dtype)
        return torch.where(fg.unsqueeze(1), soft, hard)

    @torch.no_grad()
    def observe(self, logits: Tensor, labels: Tensor, weight: Optional[Tensor] = None) -> None:
        """Add the correct samples' class probabilities to their class's sums, Eq. (5); no host read."""
        z = logits.detach().float()
        if self.head == "sigmoid":
            if self.statistic == "softmax":
                logp = F.log_softmax(z, dim=1)
            elif self.statistic == "raw_sigmoid":  # the store divides by the count, not the row sums
                logp = F.logsigmoid(z)
            else:  # log(sigmoid / sum sigmoid): the same argmax as the logits
                logs = F.logsigmoid(z)
                logp = logs - torch.logsumexp(logs, dim=1, keepdim=True)
            self.store.observe(logp, labels, weight)
            return
        fg, cls = self._foreground(labels)
        correct = fg & (z.argmax(dim=1) == labels)  # argmax over all K + 1 columns
        keep = correct if weight is None else correct.float() * weight.detach().float()
        self.store.observe(F.log_softmax(self._foreground_columns(z), dim=1), cls, keep)

    def forward(self, logits: Tensor, labels: Tensor, weight: Optional[Tensor] = None) -> Tensor:
        width = self.num_classes + (self.head == "softmax")
        if logits.dim() != 2 or logits.shape[1] != width:
            want = "(P, K)" if self.head == "sigmoid" else "(N, K + 1)"
            raise ValueError(
                f"DetectionOLS({self.head!r}) takes {want} = (*, {width}) logits, got {tuple(logits.shape)}"
            )
        if labels.shape != logits.shape[:1]:
            raise ValueError(
                f"labels must be ({logits.shape[0]},), one per row of logits, got {tuple(labels.shape)}"
            )
        if self.training and torch.is_grad_enabled():
            self.observe(logits, labels, weight)
        z = logits.float()
        q = self.soft_targets(labels)
        if self.head == "sigmoid":
            per = F.binary_cross_entropy_with_logits(z, q, reduction="none")  # (P, K)
            if weight is not None:
                per = per * weight.to(per.dtype).unsqueeze(1)
        else:
            per = -(q * F.log_softmax(z, dim=1)).sum(dim=1)  # (N,)
            if weight is not None:
                per = per * weight.to(per.dtype)
        if self.reduction == "none":
            return per
        return per.sum() if self.reduction == "sum" else per.mean()

    def extra_repr(self) -> str:
        extra = (
            f", statistic={self.statistic!r}" if self.head == "sigmoid" else f", background={self.background}"
        )
        return f"num_classes={self.num_classes}, alpha={self.alpha}, head={self.head!r}{extra}"
