"""Online Label Smoothing, Algorithm 1 of Zhang et al. (IEEE TIP 2021)."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ..distributed import all_reduce_sum
from .base import ClassificationLoss, check_inputs, check_unit_interval
from .functional import make_soft_label_matrix, normalise_soft_labels, reduction_weights
from .fused import ForwardStats, WorkspaceCache, mixed_target_cross_entropy, row_factor
from .soft_label_cache import SoftLabelCache

ZERO_COUNT_POLICIES = ("uniform", "keep")


class OnlineLabelSmoothing(ClassificationLoss):
    r"""Online Label Smoothing (OLS): class-level soft labels learned from the model itself.

    ``loss = alpha * CE(z, y) + (1 - alpha) * CE(z, soft_labels[y])``, Eq. (3)-(4).

    **Shapes.** ``logits`` ``(B, K)`` of any floating dtype, ``target`` ``(B,)`` int64.
    ``soft_labels`` is ``(K, K)`` float32 and row ``c`` is the soft label used as the
    target for samples of class ``c`` (column ``c`` of the paper's ``S``).

    **What it holds** (all registered buffers, so ``state_dict()`` saves them and
    ``.to(device)`` moves them):

    * ``soft_labels`` ``(K, K)``: the targets used in the current update period;
    * ``sums`` ``(K + 1, K)`` and ``counts`` ``(K + 1,)``: the period's accumulators,
      Eq. (5); row ``c < K`` collects class ``c``. The extra last row is a discard bin:
      on accelerators every row is added, those that do not count into the bin, which
      spares a device sync; on the CPU only the correct rows are normalised and added;
    * ``num_iterations`` and ``num_updates``: training forwards and closed periods.

    Derived from ``soft_labels`` and never saved: a copy scaled for the fused loss (for
    ``K <= 4096``) and each class's target mass, remade whenever ``soft_labels`` changes
    (see :class:`~ols.losses.soft_label_cache.SoftLabelCache`).

    **When it changes.** In training mode (``module.train()``) each forward adds the
    detached float32 softmax of every correctly classified sample (argmax == target,
    target not ignored, finite loss) to ``sums[target]``; duplicate labels in a batch
    all count. Evaluation mode never accumulates. :meth:`step` closes the period: each
    class's soft label becomes ``sums[c] / counts[c]`` (Eq. 6) and the accumulators reset.

    **Who calls what.** Call :meth:`step` once at the end of every epoch (the paper's
    update period), or pass ``update_every=N`` to step automatically every ``N``
    training iterations (Fig. 7b). Under ``torch.distributed`` :meth:`step` all-reduces
    the accumulators, so it is a collective that every rank must call; all ranks then
    hold identical soft labels. Keep this module outside ``DistributedDataParallel``.
    :meth:`step` puts a new tensor in ``soft_labels`` rather than writing into the old
    one, so a loss computed before it keeps, in its backward, the soft labels it used.

    Args:
        num_classes: ``K``.
        alpha: weight of the hard-label term in Eq. (4), in ``[0, 1]``; 0.5 in the paper.
        init: soft labels before the first update: ``"uniform"`` (paper text),
            ``"zeros"`` (official CIFAR script), ``"onehot"`` or ``"ls:<eps>"``.
        zero_count: a class with no correct sample in a period gets ``"uniform"``
            (``1/K``, as in the official code) or ``"keep"`` (its previous soft label).
        update_every: if set, also step after every ``N`` training iterations.
        freeze_above: if set, a class whose soft label's largest entry is at or above
            this value stops updating (0.88 in the official fine-grained code).
        ignore_index: target value that contributes neither loss nor statistics.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``, as in ``F.cross_entropy``.
        validate: check that targets lie in ``[0, K)``; this costs one device sync per
            call on GPUs, so turn it off in tight loops once the labels are known good.

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

    soft_labels: Tensor
    sums: Tensor
    counts: Tensor
    num_iterations: Tensor
    num_updates: Tensor

    def __init__(
        self,
        num_classes: int,
        alpha: float = 0.5,
        init: str = "uniform",
        zero_count: str = "uniform",
        update_every: Optional[int] = None,
        freeze_above: Optional[float] = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        validate: bool = True,
    ):
        super().__init__(num_classes, ignore_index, reduction)
        self.alpha = check_unit_interval("alpha", alpha)
        if zero_count not in ZERO_COUNT_POLICIES:
            raise ValueError(f"unknown zero_count {zero_count!r}; use 'uniform' or 'keep'")
        if update_every is not None and (
            not isinstance(update_every, int) or isinstance(update_every, bool) or update_every < 1
        ):
            raise ValueError(f"update_every must be a positive integer or None, got {update_every!r}")
        if freeze_above is not None:
            freeze_above = float(freeze_above)
        self.init = init
        self.zero_count = zero_count
        self.update_every = update_every
        self.freeze_above = freeze_above
        self.validate = validate
        k = num_classes
        self.register_buffer("soft_labels", make_soft_label_matrix(init, k))
        self.register_buffer("sums", torch.zeros(k + 1, k))
        self.register_buffer("counts", torch.zeros(k + 1, dtype=torch.long))
        self.register_buffer("num_iterations", torch.zeros((), dtype=torch.long))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        self._cache = SoftLabelCache()  # derived from soft_labels, not state: never saved
        self._workspace = WorkspaceCache()

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Eq. (4) for ``logits`` ``(B, K)`` and ``target`` ``(B,)``; accumulates if training."""
        safe, valid = check_inputs(
            logits, target, self.num_classes, self.ignore_index, self.validate,
            none_if_all_valid=True,
        )
        weights = None if valid is None else reduction_weights(valid, self.reduction)
        s = row_factor(self.reduction, weights, safe.shape[0])
        cache, soft_labels = self._cache, self.soft_labels
        table, table_scale = cache.scaled(soft_labels, -s * (1.0 - self.alpha))
        loss, per_sample, stats = mixed_target_cross_entropy(
            logits,
            safe,
            table,
            self.alpha,
            rows=safe,
            qsum=cache.target_mass(soft_labels, self.alpha).index_select(0, safe),
            weights=weights,
            reduction=self.reduction,
            want_stats=self.training,
            workspace=self._workspace.get(logits),
            table_scale=table_scale,
        )
        if stats is not None:
            self._accumulate(safe, valid, per_sample, stats)
        return loss

    @torch.no_grad()
    def _accumulate(
        self, target: Tensor, valid: Optional[Tensor], per_sample: Tensor, stats: ForwardStats
    ) -> None:
        # Eq. (5): only correctly classified samples add their prediction to S^t_{y_i};
        # index_add_ sums every row, also when a label repeats inside the batch (a plain
        # `+=` would drop repeats). Ignored rows and rows with a non-finite loss never count.
        if target.device.type == "cpu":
            self._add_correct_rows(target, valid, per_sample, stats)
        else:
            self._add_all_rows(target, valid, per_sample, stats)
        self.num_iterations.add_(1)
        if self.update_every is not None and int(self.num_iterations) % self.update_every == 0:
            self.step()

    def _add_correct_rows(
        self, target: Tensor, valid: Optional[Tensor], per_sample: Tensor, stats: ForwardStats
    ) -> None:
        """CPU: syncs are free, so find the correct rows and normalise only those."""
        picked, probs = stats.correct_softmax()  # (R,), (R, K)
        if picked.numel():
            losses = per_sample.index_select(0, picked)  # (R,)
            if valid is not None or not math.isfinite(float(losses.sum())):
                keep = losses.isfinite()
                if valid is not None:
                    keep &= valid.index_select(0, picked)
                picked, probs = picked[keep], probs[keep]
            rows = target.index_select(0, picked)
            self.sums.index_add_(0, rows, probs)
            self.counts.index_add_(0, rows, torch.ones_like(rows))

    def _add_all_rows(
        self, target: Tensor, valid: Optional[Tensor], per_sample: Tensor, stats: ForwardStats
    ) -> None:
        """Accelerators: no device sync; the rows that do not count go to the discard bin K."""
        correct = stats.correct() & per_sample.isfinite()
        if valid is not None:
            correct &= valid
        rows = torch.where(correct, target, self.num_classes)  # (B,)
        self.sums.index_add_(0, rows, stats.probs())
        self.counts.index_add_(0, rows, torch.ones_like(rows))

    @torch.no_grad()
    def step(self) -> None:
        """Close the update period: ``soft_labels[c] = sums[c] / counts[c]``, Eq. (6).

        Under ``torch.distributed`` the sums and counts are first all-reduced, so this is a
        collective that every rank calls. Classes with no correct sample follow
        ``zero_count``; classes at or above ``freeze_above`` keep their soft label.
        """
        k = self.num_classes
        all_reduce_sum(self.sums, self.counts)
        new = normalise_soft_labels(
            self.sums[:k], self.counts[:k], self.soft_labels, self.zero_count, self.freeze_above
        )
        # a new tensor, not an in-place copy: a loss computed before this step keeps the
        # soft labels it used for its backward
        self.soft_labels = new.contiguous()
        self.sums.zero_()
        self.counts.zero_()
        self.num_updates += 1

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, alpha={self.alpha}, init={self.init!r}, "
            f"zero_count={self.zero_count!r}, update_every={self.update_every}, "
            f"freeze_above={self.freeze_above}, reduction={self.reduction!r}"
        )
