"""The class-level soft-label store of OLS: targets out, correct predictions in, Eq. (4)-(6)."""

from __future__ import annotations

import warnings
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..distributed import all_reduce_sum
from .functional import (
    check_dense_size,
    check_store_options,
    correct_rows,
    make_soft_label_matrix,
    mixed_target_nll,
    normalise_soft_labels,
    refuse_non_finite_state,
)
from .rank_local import RankLocalState
from .row_sums import add_rows


class SoftLabels(RankLocalState):
    r"""Dense soft labels ``S`` and the statistics of the current update period, Eq. (4)-(6).

    A loss takes Eq. (4) from :meth:`cross_entropy` (or reads :meth:`targets`), a training step
    feeds :meth:`observe`, and the owner of the period calls :meth:`step`; the top-k store
    (:class:`~ols.losses.topk_soft_labels.TopKSoftLabels`) has the same methods. State, float32,
    saved mid-period too: ``soft_labels`` ``(K, K)``, row ``c`` the target of class ``c`` (column
    ``c`` of the paper's ``S``); ``sums`` ``(K + 1, K)``, Eq. (5), row ``K`` a discard bin (so no
    device sync), rank-local (:mod:`~ols.losses.rank_local`); ``num_updates``.

    Args:
        num_classes: ``K``.
        init: ``S^0``: ``"uniform"`` (the paper's text), ``"zeros"`` (the official CIFAR
            script), ``"onehot"``, ``"ls:<eps>"``, or a ``(K, K)`` prior (tensor or ``.npy``).
        zero_count: a class with no correct sample in a period gets ``"uniform"`` (``1/K``,
            the official code), ``"keep"`` (its previous row) or ``"zeros"``.
        freeze_above: a class whose soft label peaks at or above this stops updating (0.88 in
            the official fine-grained code).
        frozen_empty: ``"keep"`` (a frozen class keeps its row) or ``"zero_count"`` (the official
            fine-grained order: with no correct sample it follows ``zero_count``, and may resume).
        freeze: keep ``S^0`` for good (a fixed prior): :meth:`step` closes periods, nothing changes.

    Example:
        >>> store = SoftLabels(3)
        >>> logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
        >>> store.observe(logits, torch.tensor([0, 1]))  # row 1 is wrong: not counted
        >>> store.step()
        >>> store.targets(torch.tensor([0, 2]))
        tensor([[0.7870, 0.1065, 0.1065],
                [0.3333, 0.3333, 0.3333]])
    """

    soft_labels: Tensor
    sums: Tensor
    num_updates: Tensor
    keep_float32 = ("soft_labels",)

    def __init__(self, num_classes: int, init: Union[str, Tensor] = "uniform", zero_count: str = "uniform",
                 freeze_above: Optional[float] = None, frozen_empty: str = "keep", freeze: bool = False):
        super().__init__()
        self.freeze_above = check_store_options(zero_count, frozen_empty, freeze_above)
        check_dense_size(num_classes)
        self.num_classes = k = num_classes
        self.zero_count, self.frozen_empty, self.freeze = zero_count, frozen_empty, bool(freeze)
        self.register_buffer("soft_labels", make_soft_label_matrix(init, k))
        self.register_rank_local("sums", torch.zeros(k + 1, k))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        self._warned_empty = False
        if hasattr(self, "register_load_state_dict_pre_hook"):  # public since torch 2.5
            self.register_load_state_dict_pre_hook(refuse_non_finite_state)

    @property
    def counts(self) -> Tensor:
        """``(K + 1,)`` the period's (weighted) count of correct samples of each class, then discards."""
        return self.sums.sum(dim=1)

    def targets(self, target: Tensor) -> Tensor:
        """The ``(B, K)`` soft labels of the int64 classes ``target`` ``(B,)``."""
        return self.soft_labels.index_select(0, target)

    def prepare(self, logits: Tensor, valid: Optional[Tensor] = None, observing: bool = True) -> Tensor:
        """``F.log_softmax(logits)`` ``(B, K)``, shared by the loss and :meth:`observe` (arguments unused)."""
        return F.log_softmax(logits, dim=1)

    def cross_entropy(self, logits: Tensor, target: Tensor, shared: Tensor, alpha: float,
                      valid: Optional[Tensor] = None, reduction: str = "mean",
                      weight: Optional[Tensor] = None, label_smoothing: float = 0.0) -> Tensor:
        """Eq. (4) against ``alpha * onehot(y) + (1 - alpha) * targets(y)``; ``shared`` is :meth:`prepare`.

        The rest as in :func:`~ols.losses.functional.mixed_target_nll`.
        """
        return mixed_target_nll(shared, target, self.targets(target), alpha, valid, reduction, weight,
                                label_smoothing)

    def observe(self, logits: Tensor, target: Tensor, weight: Optional[Tensor] = None, *,
                shared: Optional[Tensor] = None) -> None:
        """Add the correctly classified rows of ``logits`` ``(B, K)`` to the period's sums, Eq. (5).

        ``target`` ``(B,)`` int64 in ``[0, K)``; ``weight`` ``(B,)``, a bool mask or float weights
        (a row counts where it is ``> 0`` and adds ``weight * softmax``). A row counts when its
        target has the largest log-probability (ties count); never with a NaN or ``+inf`` logit.
        No host sync. ``shared``: :meth:`prepare` of these logits, whose ``exp`` is the softmax.
        """
        logp = (logits.detach().float().log_softmax(dim=1) if shared is None
                else shared.detach().float())  # (B, K)
        ok = correct_rows(logp, target)  # (B,)
        probs = logp.exp()
        if weight is not None:
            ok = ok & (weight if weight.dtype == torch.bool else weight > 0)
            if weight.dtype != torch.bool:
                probs = probs.mul_(weight.detach().float().unsqueeze(1))
        rows = torch.where(ok, target, self.num_classes)  # (B,): the discard bin takes the rest
        add_rows(self.sums, rows, probs)

    @torch.no_grad()
    def step(self) -> None:
        """Close the period, Eq. (6): ``soft_labels[c] = sums[c] / sums[c].sum()``, then the options.

        A collective under ``torch.distributed`` (sums all-reduced first). The new soft labels are a
        new tensor: a loss computed before the step keeps, for its backward, the targets it used.
        """
        k = self.num_classes
        all_reduce_sum(self.sums)
        if not self._warned_empty and not self.freeze and float(self.sums.sum()) == 0.0:
            self._warned_empty = True
            warnings.warn(f"SoftLabels.step() closed a period in which no training sample was observed, so "
                          f"every class follows zero_count={self.zero_count!r}: step() called twice (or at "
                          "epoch end with update_every set), or the loss left in eval mode? Pass "
                          "zero_count='keep' to keep the previous soft labels", stacklevel=2)
        sums = self.sums[:k]
        if not self.freeze:
            new = normalise_soft_labels(sums, sums.sum(dim=1), self.soft_labels, self.zero_count,
                                        self.freeze_above, self.frozen_empty)
            self.soft_labels = new.contiguous()
        self.sums.zero_()
        self.num_updates += 1

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, zero_count={self.zero_count!r}, "
                f"freeze_above={self.freeze_above}, frozen_empty={self.frozen_empty!r}")

