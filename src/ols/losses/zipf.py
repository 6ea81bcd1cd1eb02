"""Zipf's label smoothing: a rank-based soft target for the non-target classes.

Liang et al., "Efficient One Pass Self-distillation with Zipf's Label Smoothing", ECCV 2022
(official code ``megvii-research/zipfls``, ``pytorch_zipfls/losses.py`` and ``train.py``).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import ClassificationLoss, Rows


def zipf_ranks(logits: Tensor) -> Tensor:
    """``(B, K) -> (B, K)`` float: 1 + how many classes of the row score strictly higher.

    Ties share the smallest rank (scipy's ``rankdata(-z, method="min")``, as the official
    code). One sort per row on the device; nothing is read back.
    """
    ascending = torch.sort(-logits, dim=1).values
    return torch.searchsorted(ascending, -logits.contiguous(), side="left").to(logits.dtype) + 1


class ZipfLabelSmoothing(ClassificationLoss):
    r"""``CE(z, y) + lambda * KL(q || softmax(z_{-y}))`` with the Zipf target ``q``.

    For a row with logits ``z`` (``K``) and label ``y``: ``r_k`` is the rank of class ``k``
    among all ``K`` logits (1 for the largest, ties sharing the smallest rank), and over
    the ``K - 1`` non-target classes

        q_k = r_k^{-power} / sum_{j != y} r_j^{-power},     k != y,

    the distribution ``softmax(z_{-y})`` is the softmax of the non-target logits alone, and
    the KL term is ``sum_{k != y} q_k (log q_k - log softmax(z_{-y})_k)``. The ranks come
    from the logits without gradient. Defaults: ``lam = 0.1`` (the README's CIFAR-100
    command, ``--loss_lambda 0.1``), ``power = 1`` (``train.py``), every sample counted
    (``correct_only=True`` is the official ``--mask``: only samples the model classifies
    correctly carry the KL term, averaged over them).

    ``dense=True`` ranks by "dense votes", the official ``--dense`` (``pytorch_zipfls/losses.py``
    ``gen_pdf``, ``forwards_impl.py``): the classifier applied at every position of the last
    feature map before pooling, each position voting for its argmax class; ``r_k`` is then the
    rank of class ``k``'s vote count (ties, such as the classes with no vote, sharing the
    smallest rank). The training task (:class:`~ols.tasks.dense_votes.DenseVoteTask`) counts the
    votes and passes them as ``votes`` ``(B, K)``; without them the loss ranks by the logits.
    The official cross-entropy on intermediate exits is not built. With ``correct_only`` and
    ``reduction="none"``, each
    correct row's KL term is scaled so that the rows' mean is the official average. Not
    linear in its target (the KL term depends on which class is the target), so Mixup is
    refused.

    Example:
        >>> z = torch.tensor([[2.0, 1.0, 0.0, -1.0]])  # label 0: ranks 2, 3, 4 over the others
        >>> q = torch.tensor([1 / 2, 1 / 3, 1 / 4]); q = q / q.sum()
        >>> kl = (q * (q.log() - torch.log_softmax(z[:, 1:], 1)[0])).sum()
        >>> want = F.cross_entropy(z, torch.tensor([0])) + 0.1 * kl
        >>> bool(torch.isclose(ZipfLabelSmoothing(4)(z, torch.tensor([0])), want))
        True
    """

    linear_in_target = False

    def __init__(self, num_classes: int, lam: float = 0.1, power: float = 1.0, correct_only: bool = False,
                 dense: bool = False, ignore_index: int = -100, reduction: str = "mean",
                 validate: bool = True):
        super().__init__(num_classes, ignore_index, reduction, validate)
        if not lam >= 0 or not power >= 0:
            raise ValueError(f"lam and power must be non-negative, got lam={lam}, power={power}")
        if num_classes < 3:
            raise ValueError(f"Zipf label smoothing ranks the K - 1 non-target classes; it needs K >= 3, "
                             f"got {num_classes}")
        self.lam, self.power, self.correct_only = float(lam), float(power), bool(correct_only)
        self.dense_votes = bool(dense)  # the engine's task then passes votes=
        self._votes: Optional[Tensor] = None

    def forward(self, logits: Tensor, target: Tensor, votes: Optional[Tensor] = None) -> Tensor:
        """As every registry loss; ``votes`` ``(B, K)``: each class's dense vote count, to rank by."""
        if votes is not None and votes.shape != logits.shape:
            raise ValueError(f"votes must be (B, K) = {tuple(logits.shape)} like the logits, got "
                             f"{tuple(votes.shape)}")
        self._votes = votes
        try:
            return super().forward(logits, target)
        finally:
            self._votes = None

    def zipf_target(self, logits: Tensor, labels: Tensor, votes: Optional[Tensor] = None) -> Tensor:
        """``(B, K)``: ``q`` over the non-target classes, 0 at the label (no gradient).

        Ranked by ``votes`` ``(B, K)`` when given (dense votes), else by ``logits``.
        """
        with torch.no_grad():
            weight = zipf_ranks(logits if votes is None else votes.to(logits.dtype)) ** -self.power
            weight = weight.scatter(1, labels[:, None], 0.0)
            return weight / weight.sum(1, keepdim=True)

    def per_sample(self, logits: Tensor, rows: Rows) -> Tensor:
        labels = rows.labels
        ce = F.cross_entropy(logits, labels, reduction="none")
        q = self.zipf_target(logits, labels, self._votes)
        target = F.one_hot(labels, self.num_classes).bool()
        # log softmax over the non-target logits only: the target's logit masked to -inf
        log_p = torch.log_softmax(logits.masked_fill(target, float("-inf")), dim=1)
        kl = (q * (torch.log(q.masked_fill(target, 1.0)) - log_p.masked_fill(target, 0.0))).sum(1)
        if self.correct_only:  # the official --mask: the KL term of correctly classified rows, their mean
            correct = (logits.argmax(1) == labels) & rows.keep
            share = correct.to(logits.dtype) * rows.keep.sum() / correct.sum().clamp_min(1)
            kl = kl * share
        return ce + self.lam * kl
