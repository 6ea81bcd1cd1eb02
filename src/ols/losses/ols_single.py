"""OLS-Single: sample-level soft labels, the ablation of Sec. V-E of Zhang et al."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..distributed import all_reduce_sum
from ..utils.tracing import compiling
from .base import ClassificationLoss, check_several_classes, check_unit_interval
from .functional import correct_rows, reduce_rows, soft_target_nll, upcast
from .init import make_soft_label_matrix
from .rank_local import VersionedState
from .step_reminder import StepReminder


def draw_partners(labels: Tensor, available: Tensor, num_classes: int, generator) -> Tensor:
    """For every sample, a random *other* sample of the same class that has a prediction.

    Args:
        labels: ``(N,)`` int64 label of each training sample, ``-1`` if never seen.
        available: ``(N,)`` bool, samples whose prediction may serve as a soft label.
        num_classes: ``K``.
        generator: a ``torch.Generator`` on the CPU.

    Returns:
        ``(N,)`` int64 partner index, ``-1`` where the class has no other available sample.
    """
    n = labels.shape[0]
    known = labels >= 0
    pool_mask = available & known
    pool = torch.nonzero(pool_mask).squeeze(1)  # indices that can be chosen
    pool_cls = labels[pool]
    order = torch.argsort(pool_cls, stable=True)
    pool, pool_cls = pool[order], pool_cls[order]  # grouped by class
    per_class = torch.bincount(pool_cls, minlength=num_classes)  # (K,)
    offsets = torch.cumsum(per_class, 0) - per_class  # (K,) start of each class's block
    # rank of each pool member inside its class block, scattered back to sample order
    rank = torch.full((n,), -1, dtype=torch.long)
    rank[pool] = torch.arange(pool.numel()) - offsets[pool_cls]

    cls = labels.clamp(min=0)
    in_pool = pool_mask.long()
    choices = torch.where(known, per_class[cls] - in_pool, torch.zeros_like(cls))  # others only
    u = torch.rand(n, generator=generator)
    r = (u * choices.clamp(min=1)).long().clamp(max=(choices - 1).clamp(min=0))
    r = r + ((r >= rank) & (rank >= 0)).long()  # skip the sample itself
    partner = pool[(offsets[cls] + r).clamp(max=max(pool.numel() - 1, 0))] if pool.numel() else cls
    return torch.where(choices > 0, partner, torch.full_like(partner, -1))


class OnlineLabelSmoothingSingle(StepReminder, VersionedState, ClassificationLoss):
    """OLS-Single: each sample's soft label is one other sample's previous-epoch prediction.

    Sec. V-E of Zhang et al.: "for each training sample, we randomly select another
    training sample with the same category" and use its predicted distribution as the
    soft label. The loss is Eq. (4) with that per-sample soft label.

    **Shapes.** ``forward(logits (B, K), target (B,), index (B,))``; ``index`` holds
    each sample's position in the training set, ``[0, num_samples)``.

    **What it holds** (saved by ``state_dict()``, moved by ``.to()``; float state stays
    float32 through module casts):

    * ``epoch_sums`` ``(N, K)`` and ``epoch_counts`` ``(N,)``: this period's predictions
      (rank-local state, not buffers, so DDP's buffer broadcast cannot overwrite them);
    * ``previous`` ``(N, K)``: the predictions of the last closed period;
    * ``partner`` ``(N,)``: for each sample, whose prediction it uses (``-1``: none);
    * ``labels`` ``(N,)``: the label seen for each sample (``-1``: not seen yet), and
      ``epoch_labels`` ``(N,)``, the labels seen in this period.

    Memory is ``2 * N * K`` floats: 40 MB for CIFAR-100, 10 GB for ImageNet.

    **Who calls what.** :meth:`step` at every epoch end, as for OLS; it draws the
    partners for the next epoch with a generator seeded by ``seed`` and the update
    count, so a resumed run draws the same partners. Until the first step, and for a
    sample whose class has no other predicted sample, the soft label is row ``y`` of
    the ``init`` matrix.

    Args:
        num_classes: ``K``.
        num_samples: ``N``, the size of the training set.
        alpha: weight of the hard-label term, Eq. (4).
        init: soft labels before the first step (see :class:`OnlineLabelSmoothing`).
        correct_only: only correctly classified samples may serve as partners, as OLS
            accumulates only correct predictions (the target has the largest probability; a
            tie counts, as in OLS's stores). The paper's text does not filter.
        seed: seed for drawing partners.
    """

    needs_index = True
    update_every = None  # one period per epoch: the training loop steps it
    keep_float32 = ("init_labels", "previous")

    def __init__(
        self,
        num_classes: int,
        num_samples: int,
        alpha: float = 0.5,
        init: str = "uniform",
        correct_only: bool = False,
        seed: int = 0,
        ignore_index: int = -100,
        reduction: str = "mean",
        validate: bool = True,
    ):
        super().__init__(num_classes, ignore_index, reduction, validate)
        check_several_classes("OnlineLabelSmoothingSingle", num_classes)
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
        self.alpha = check_unit_interval("alpha", alpha)
        self.num_samples = num_samples
        self.init = init
        self.correct_only = bool(correct_only)
        self.seed = int(seed)
        n, k = num_samples, num_classes
        self.register_buffer("init_labels", make_soft_label_matrix(init, k))
        self.register_rank_local("epoch_sums", torch.zeros(n, k))
        self.register_rank_local("epoch_counts", torch.zeros(n, dtype=torch.long))
        self.register_buffer("previous", torch.zeros(n, k))
        self.register_buffer("partner", torch.full((n,), -1, dtype=torch.long))
        self.register_buffer("labels", torch.full((n,), -1, dtype=torch.long))
        self.register_rank_local("epoch_labels", torch.full((n,), -1, dtype=torch.long))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def forward(self, logits: Tensor, target: Tensor, index: Tensor = None) -> Tensor:  # type: ignore[override]
        """Eq. (4) with per-sample soft labels; ``index`` ``(B,)`` is required. No host read."""
        rows, index = self.indexed_rows(logits, target, index, self.num_samples, "OLS-Single")
        keep, fill = rows.keep, rows.fill
        partner = self.partner.index_select(0, index)  # (B,)
        from_partner = self.previous.index_select(0, partner.clamp(min=0))  # (B, K)
        fallback = self.init_labels.index_select(0, rows.labels)  # (B, K)
        soft_rows = torch.where((partner >= 0).unsqueeze(1), from_partner, fallback)  # (B, K)
        logp = F.log_softmax(upcast(logits), dim=1)  # (B, K)
        per_sample = soft_target_nll(logp, rows.labels, soft_rows, self.alpha)  # (B,)
        if self.training:
            if not compiling():
                self._note_training_forward()
            with torch.no_grad():
                seen = keep & torch.isfinite(per_sample)
                if self.correct_only:  # the stores' rule: ties at the maximum count
                    seen &= correct_rows(logp, rows.labels)
                probs = torch.where(seen.unsqueeze(1), logp.exp(), 0.0)  # the softmax; NaN rows add nothing
                self.epoch_sums.index_add_(0, index, probs)
                self.epoch_counts.index_add_(0, index, seen.long())
                # the label of each sample seen this period (ignored rows keep what they had)
                labels = torch.where(keep, rows.labels, self.epoch_labels.index_select(0, index))
                self.epoch_labels.index_copy_(0, index, labels)
        return reduce_rows(per_sample, keep, fill, self.reduction)

    def clear_rank_local(self) -> None:
        """Empty this period's statistics: no sample seen (``epoch_labels`` ``-1``)."""
        super().clear_rank_local()
        self.epoch_labels.fill_(-1)

    def merge_rank_local(self, parts):
        """Sums and counts add up; a sample's label is the one any rank saw (``-1`` elsewhere)."""
        merged = super().merge_rank_local(parts)
        if "epoch_labels" in parts:
            merged["epoch_labels"] = parts["epoch_labels"].amax(0)
        return merged

    @torch.no_grad()
    def step(self) -> None:
        """Freeze this period's predictions and draw new partners; a collective under DDP.

        Raises first if a bad input was recorded during the period (:mod:`~ols.losses.base`).
        """
        self.raise_bad_inputs()
        self._note_step()
        all_reduce_sum(self.epoch_sums, self.epoch_counts)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # a sample seen on any rank this period takes that label (-1 elsewhere)
            torch.distributed.all_reduce(self.epoch_labels, op=torch.distributed.ReduceOp.MAX)
        seen = self.epoch_labels >= 0
        self.labels.copy_(torch.where(seen, self.epoch_labels, self.labels))
        self.epoch_labels.fill_(-1)
        have = self.epoch_counts > 0
        mean = self.epoch_sums / self.epoch_counts.clamp(min=1).unsqueeze(1).float()
        self.previous.copy_(torch.where(have.unsqueeze(1), mean, self.previous))
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.num_updates))
        partner = draw_partners(self.labels.cpu(), have.cpu(), self.num_classes, gen)
        self.partner.copy_(partner.to(self.partner.device))
        self.epoch_sums.zero_()
        self.epoch_counts.zero_()
        self.num_updates += 1
