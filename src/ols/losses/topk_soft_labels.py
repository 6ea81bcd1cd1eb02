r"""A top-k soft-label store for many classes: ``k`` entries per class and a spread rest.

Dense OLS holds two ``K x K`` float32 matrices: 80 GB at ``K = 100,000``. This store keeps,
for each class ``c``, at most ``k`` (class, probability) entries (slot 0 is always ``c``
itself) and a scalar ``rest[c]``, the mass spread uniformly over the ``K - size`` classes
outside the entries. Its period statistics are a bounded candidate table per class
(:mod:`~ols.losses.topk_merge`, weighted Misra-Gries) and the period's counts.

**Memory** (int32 indices, float32 values): ``K * (k * 8 + M * 8 + 16)`` bytes, 58 MB at
``K = 100,000``, ``k = 32`` and the default ``M = 40`` slots.

**What is exact and what is not.**

* Each correct sample adds its own-class probability to an exact per-class sum, and feeds
  its ``feed`` largest other probabilities (default ``k``) to the table; the mass it does
  not feed goes to ``rest``. The own entry of every row is therefore exact.
* The table underestimates a fed sum by at most ``W_c / (M + 1)``, ``W_c`` class ``c``'s
  fed mass in the period (at most its count); with no more than ``M`` distinct classes fed
  to a row, it is exact.
* With ``topk = feed = slots = K`` nothing is truncated or subtracted: the store equals the
  dense :class:`~ols.losses.soft_labels.SoftLabels` (up to float summation order).

**Leftover.** ``"uniform"`` (default, FKD's marginal smoothing): ``rest = 1 - sum of the
k entries``, so each row still sums to one and its ``k`` entries are the dense row's (up
to the table's error); the other classes share the dense row's tail mass equally.
``"renormalise"``: the ``k`` entries are scaled to sum to one and ``rest = 0``, which
inflates them by ``1 / (1 - tail)``. Both reach dense OLS exactly at ``k = K`` (the tail is
then empty); for ``k < K`` only ``"uniform"`` keeps the dense row's top-``k`` values.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple, Union

import torch
from torch import Tensor

from ..distributed import all_reduce_sum, is_distributed
from .functional import (
    check_store_options,
    compiling,
    make_soft_label_matrix,
    named_init,
    row_softmax,
    sparse_target_cross_entropy,
)
from .rank_local import RankLocalState
from .row_topk import row_maxima, row_topk
from .topk_merge import merge_rows

LEFTOVERS = ("uniform", "renormalise")

#: the largest K for which the store still offers its soft labels as a dense (K, K) matrix
DENSE_VIEW_MAX = 4096


def refuse_class_weight(weight: Optional[Tensor]) -> None:
    """The sparse loss has no class weights: refuse ``weight`` unless it is ``None``."""
    if weight is not None:
        raise ValueError("weight= is not supported with topk= (the sparse loss has no class weights); "
                         "drop one of them")


class TopKSoftLabels(RankLocalState):
    """Sparse soft labels: ``index``/``value`` ``(K, k)`` and ``rest`` ``(K,)``; see the module docstring.

    Args:
        num_classes: ``K``.
        topk: ``k``, the entries per class (clipped to ``K``), the class itself included.
        init, zero_count, freeze_above, frozen_empty, freeze: as in
            :class:`~ols.losses.soft_labels.SoftLabels`. A ``(K, K)`` prior keeps each row's
            own entry and its ``k - 1`` largest others; the rest follows ``leftover``.
        leftover: ``"uniform"`` or ``"renormalise"`` (module docstring).
        slots: ``M``, the candidate slots per class (default ``k + max(8, k // 4)``, at least ``k``).
        feed: how many of a correct sample's largest other-class probabilities reach the table
            (default ``k``); its own class is always summed exactly.
    """

    index: Tensor
    value: Tensor
    rest: Tensor
    num_updates: Tensor
    keep_float32 = ("value", "rest")

    def __init__(self, num_classes: int, topk: int, init: Union[str, Tensor] = "uniform",
                 zero_count: str = "uniform", freeze_above: Optional[float] = None,
                 frozen_empty: str = "keep", freeze: bool = False, leftover: str = "uniform",
                 slots: Optional[int] = None, feed: Optional[int] = None):
        super().__init__()
        k_all = num_classes
        if not isinstance(topk, int) or isinstance(topk, bool) or topk < 1:
            raise ValueError(f"topk must be a positive integer (the entries kept per class), got {topk!r}")
        self.freeze_above = check_store_options(zero_count, frozen_empty, freeze_above)
        if leftover not in LEFTOVERS:
            raise ValueError(f"unknown leftover {leftover!r}; use one of {', '.join(LEFTOVERS)}")
        k = min(topk, k_all)
        m = min(k_all, k + max(8, k // 4)) if slots is None else int(slots)
        if m < k:
            raise ValueError(f"slots ({m}) must be at least topk ({k}): the table feeds the top-k")
        self.num_classes, self.topk, self.slots = k_all, k, m
        self.feed = min(k_all, k if feed is None else int(feed))
        if self.feed < 1:
            raise ValueError(f"feed must be a positive integer, got {feed!r}")
        self.zero_count, self.frozen_empty, self.leftover = zero_count, frozen_empty, leftover
        self.freeze = bool(freeze)
        index, value, rest = _initial_rows(init, k_all, k, leftover)
        self.register_buffer("index", index)
        self.register_buffer("value", value)
        self.register_buffer("rest", rest)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        # period statistics, row K a discard bin (as the dense store's sums): the exact count and
        # own-class mass of each class, and the candidate table of the other classes
        self.register_rank_local("cand_index", torch.full((k_all + 1, m), -1, dtype=torch.int32))
        self.register_rank_local("cand_value", torch.zeros(k_all + 1, m))
        self.register_rank_local("count", torch.zeros(k_all + 1))
        self.register_rank_local("own", torch.zeros(k_all + 1))

    def rows(self, target: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """The sparse soft labels of ``target`` ``(B,)``: ``(index, value, rest)``.

        ``index`` ``(B, k)`` int64 (``-1``: an empty slot), ``value`` ``(B, k)``, ``rest`` ``(B,)``.
        """
        return self.index.index_select(0, target).long(), self.value.index_select(0, target), \
            self.rest.index_select(0, target)

    def dense(self) -> Tensor:
        """The ``(K, K)`` matrix these rows stand for (row ``c``: class ``c``'s target); ``K^2`` floats."""
        k_all = self.num_classes
        present = self.index >= 0
        size = present.sum(1)
        spread = (self.rest / (k_all - size).clamp(min=1)).unsqueeze(1)  # (K, 1)
        out = spread.expand(k_all, k_all).clone()
        # an empty slot rewrites the row's own entry (slot 0) with its own value: no clash
        cols = torch.where(present, self.index.long(), self.index[:, :1].long())
        out.scatter_(1, cols, torch.where(present, self.value, self.value[:, :1]))
        return out

    @property
    def soft_labels(self) -> Optional[Tensor]:
        """:meth:`dense` up to ``K = DENSE_VIEW_MAX`` (4096), else ``None``: read :meth:`rows` there."""
        return self.dense() if self.num_classes <= DENSE_VIEW_MAX else None

    @property
    def counts(self) -> Tensor:
        """``(K + 1,)`` the period's (weighted) count of correct samples of each class, then discards."""
        return self.count

    def prepare(self, logits: Tensor, valid: Optional[Tensor] = None,
                observing: bool = True) -> Tuple[Any, ...]:
        """What :meth:`cross_entropy` and :meth:`observe` share, computed once per forward.

        ``(probs, lse, maxima)``: :func:`~ols.losses.functional.row_softmax` of ``logits``
        ``(B, K)`` (``valid`` ``(B,)`` zeroes the ignored rows), and when ``observing``
        :func:`~ols.losses.row_topk.row_maxima` (else ``None``), whose columns give the row
        maxima (two ``(B, K)`` passes fewer) and whose blocks the feed reuses. The
        log-sum-exp read at any column is exact, so an ignored row may take its column from
        the unmasked logits.
        """
        maxima = row_maxima(logits.detach().float()) if observing else None
        return (*row_softmax(logits, valid, None if maxima is None else maxima.column), maxima)

    def cross_entropy(self, logits: Tensor, target: Tensor, shared: Tuple[Any, ...], alpha: float,
                      valid: Optional[Tensor] = None, reduction: str = "mean",
                      weight: Optional[Tensor] = None, label_smoothing: float = 0.0) -> Tensor:
        """Eq. (4) against the sparse rows of ``target`` ``(B,)``, never a ``(B, K)`` target.

        ``shared``, :meth:`prepare` of ``logits``; see
        :func:`~ols.losses.functional.sparse_target_cross_entropy`. No class ``weight``.
        """
        refuse_class_weight(weight)
        index, value, rest = self.rows(target)
        return sparse_target_cross_entropy(logits, target, index, value, rest, alpha, valid, reduction,
                                           label_smoothing, shared[:2])

    def observe(self, logits: Tensor, target: Tensor, weight: Optional[Tensor] = None, *,
                shared: Optional[Tuple[Any, ...]] = None) -> None:
        """Feed the correct rows' ``feed`` largest probabilities to their class's table (no host sync).

        Same rule as :meth:`SoftLabels.observe`, read on the logits (softmax keeps their
        order): a row counts when its target has the largest logit (ties count), no logit is
        NaN or ``+inf``, and ``weight > 0``; it adds ``weight *`` its probabilities. ``shared``:
        :meth:`prepare` of these logits (with ``observing=True``) when the loss has it.

        On a CPU, outside ``torch.compile``, only the rows that count are ranked and merged
        (a CPU has no host sync to avoid); elsewhere every row is, the others with zero mass.
        """
        lse, maxima = (None, None) if shared is None else shared[1:]
        k_all = self.num_classes
        z = logits.detach().float()
        # on the logits, softmax's order: no (B, K) probabilities are built, only the fed ones
        lse = torch.logsumexp(z, dim=1) if lse is None else lse.detach().float()  # (B,)
        maxima = row_maxima(z) if maxima is None else maxima
        own_z = z.gather(1, target.unsqueeze(1)).squeeze(1)  # (B,)
        w = ((own_z == maxima.value) & torch.isfinite(lse)).float()  # NaN/+inf never count
        if weight is not None:
            w = w * weight.float().clamp(min=0)
        own_p = torch.where(w > 0, torch.exp(own_z - lse), torch.zeros_like(w))
        rows = torch.where(w > 0, target, torch.full_like(target, k_all))  # (B,): discards to row K
        self.count.index_add_(0, rows, w)
        self.own.index_add_(0, rows, own_p * w)
        fed = None  # every row, at fixed size (no host sync)
        if z.device.type == "cpu" and not compiling():  # no sync to avoid: only the rows that count
            fed = (w > 0).nonzero().squeeze(1)
            if fed.numel() == 0:
                return
            if fed.numel() == w.numel():
                fed = None  # every row counts: no copies
            else:
                lse, target, rows, w = (t.index_select(0, fed) for t in (lse, target, rows, w))
        top_z, cols = row_topk(z, self.feed, fed, maxima)  # (R, m), R the rows fed
        # the own class is summed exactly on its own, so the table holds only the other classes
        cols = torch.where(cols == target.unsqueeze(1), torch.full_like(cols, -1), cols)
        top = torch.exp(top_z - lse.unsqueeze(1))
        top = torch.where(w.unsqueeze(1) > 0, top, torch.zeros_like(top))  # a NaN row adds nothing
        self._merge_batch(rows, cols, top * w.unsqueeze(1))

    def _merge_batch(self, rows: Tensor, cols: Tensor, mass: Tensor) -> None:
        """Merge ``(B, m)`` contributions for the classes ``rows`` ``(B,)`` into their tables."""
        k_all, m_slots = self.num_classes, self.slots
        b = rows.numel()
        order = rows.argsort(stable=True)
        rows_s = rows.index_select(0, order)
        starts = torch.ones(b, dtype=torch.bool, device=rows.device)
        starts[1:] = rows_s[1:] != rows_s[:-1]
        pos = torch.arange(b, device=rows.device)
        # the first batch row of each class
        local = torch.cummax(torch.where(starts, pos, torch.zeros_like(pos)), 0).values
        # each class's current table enters once (at its first batch row), the contributions once each
        t_cols = self.cand_index.index_select(0, rows_s).long()
        t_cols = torch.where(starts.unsqueeze(1), t_cols, torch.full_like(t_cols, -1))
        t_mass = self.cand_value.index_select(0, rows_s)
        live_row = torch.where(rows_s < k_all, local, torch.full_like(local, b))
        live = live_row.unsqueeze(1)
        all_rows = torch.cat([live.expand(b, m_slots), live.expand_as(cols)], 1)
        all_cols = torch.cat([t_cols, cols.index_select(0, order)], 1)
        all_mass = torch.cat([t_mass, mass.index_select(0, order)], 1)
        index, value = merge_rows(all_rows.reshape(-1), all_cols.reshape(-1), all_mass.reshape(-1), b, k_all,
                                  m_slots)
        dest = torch.where(starts & (rows_s < k_all), rows_s, torch.full_like(rows_s, k_all))
        self.cand_index.index_copy_(0, dest, index.index_select(0, local).to(torch.int32))
        self.cand_value.index_copy_(0, dest, value.index_select(0, local))

    @torch.no_grad()
    def step(self) -> None:
        """Close the period: each class's top-``k`` table entries divided by its count, Eq. (6).

        A collective under ``torch.distributed``: the counts are all-reduced and the tables
        all-gathered (fixed-size messages) and merged in rank order, so every rank gets the
        same rows.
        """
        k_all, k = self.num_classes, self.topk
        self._gather_tables()
        c_index, c_value, count = self.cand_index[:k_all].long(), self.cand_value[:k_all], self.count[:k_all]
        has = count > 0
        if not self.freeze:
            others = torch.where(c_index < 0, torch.full_like(c_value, -1.0), c_value)
            # Eq. (6): the own-class sum (exact) and the table's k - 1 largest, over the count
            idx, val, rest = _top_rows(self.own[:k_all], c_index, others, k, self.leftover,
                                       count.clamp(min=1e-30))
            empty_idx, empty_val, empty_rest = self._empty_rows()
            keep_old = torch.zeros_like(has)
            if self.freeze_above is not None:
                size = (self.index >= 0).sum(1)
                peak = torch.maximum(self.value.amax(1), self.rest / (k_all - size).clamp(min=1))
                keep_old = peak >= self.freeze_above
                if self.frozen_empty == "zero_count":
                    keep_old = keep_old & has
            new_idx = torch.where(has.unsqueeze(1), idx, empty_idx)
            new_val = torch.where(has.unsqueeze(1), val, empty_val)
            new_rest = torch.where(has, rest, empty_rest)
            self.index = torch.where(keep_old.unsqueeze(1), self.index, new_idx.to(torch.int32))
            self.value = torch.where(keep_old.unsqueeze(1), self.value, new_val)
            self.rest = torch.where(keep_old, self.rest, new_rest)
        self.cand_index.fill_(-1)
        self.cand_value.zero_()
        self.count.zero_()
        self.own.zero_()
        self.num_updates += 1

    def _empty_rows(self) -> Tuple[Tensor, Tensor, Tensor]:
        """The rows a class with no correct sample gets under ``zero_count``."""
        if self.zero_count == "keep":
            return self.index, self.value, self.rest
        k_all = self.num_classes
        index, value, rest = _initial_rows("uniform" if self.zero_count == "uniform" else "zeros", k_all,
                                           self.topk, self.leftover)
        return index.to(self.index.device), value.to(self.value.device), rest.to(self.rest.device)

    def _gather_tables(self) -> None:
        """Under ``torch.distributed``: every rank ends with the merge of all ranks' tables."""
        all_reduce_sum(self.count, self.own)
        if not is_distributed():
            return
        world = torch.distributed.get_world_size()
        k_all, m_slots = self.num_classes, self.slots
        idx_parts = [torch.empty_like(self.cand_index) for _ in range(world)]
        val_parts = [torch.empty_like(self.cand_value) for _ in range(world)]
        torch.distributed.all_gather(idx_parts, self.cand_index)
        torch.distributed.all_gather(val_parts, self.cand_value)
        rows = torch.arange(k_all + 1, device=self.cand_index.device).unsqueeze(1)
        rows = rows.expand(k_all + 1, world * m_slots)
        cols = torch.cat(idx_parts, 1).long()
        mass = torch.cat(val_parts, 1)
        index, value = merge_rows(rows.reshape(-1), cols.reshape(-1), mass.reshape(-1), k_all + 1, k_all,
                                  m_slots)
        self.cand_index.copy_(index.to(torch.int32))
        self.cand_value.copy_(value)

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, topk={self.topk}, slots={self.slots}, feed={self.feed}, "
                f"leftover={self.leftover!r}, zero_count={self.zero_count!r}")


def _initial_rows(init: Union[str, Tensor], num_classes: int, k: int,
                  leftover: str) -> Tuple[Tensor, Tensor, Tensor]:
    """``S^0`` as ``(index (K, k) int32, value (K, k), rest (K,))``; no ``K x K`` matrix for a name."""
    k_all = num_classes
    if isinstance(init, str) and not init.endswith(".npy"):
        index = torch.full((k_all, k), -1, dtype=torch.int32)
        index[:, 0] = torch.arange(k_all, dtype=torch.int32)
        value = torch.zeros(k_all, k)
        diagonal, off = named_init(init, k_all)
        value[:, 0] = diagonal
        return index, value, torch.full((k_all,), off * (k_all - 1))
    prior = make_soft_label_matrix(init, k_all)  # (K, K), rows normalised
    others = prior.clone()
    others.fill_diagonal_(-1.0)
    columns = torch.arange(k_all).expand(k_all, k_all)  # a view: candidate j of every row is class j
    index, value, rest = _top_rows(prior.diagonal().clone(), columns, others, k, leftover)
    return index.to(torch.int32), value, rest


def _top_rows(own: Tensor, cand_index: Tensor, others: Tensor, k: int, leftover: str,
              count: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """Rows of ``k`` entries from each class's own mass and its candidates, the rest per ``leftover``.

    ``own`` ``(K,)``; ``cand_index`` ``(K, M)`` int64 and ``others`` ``(K, M)`` their masses,
    ``-1`` where a slot is empty. Slot 0 is the class itself, then its ``k - 1`` largest
    positive candidates; both are divided by ``count`` ``(K,)`` when given. Returns
    ``index`` ``(K, k)`` int64 (``-1``: empty), ``value`` ``(K, k)`` and ``rest`` ``(K,)``.
    """
    top, slot = others.topk(k - 1, dim=1) if k > 1 else (others[:, :0], others[:, :0].long())
    picked = torch.where(top > 0, cand_index.gather(1, slot), torch.full_like(slot, -1))
    classes = torch.arange(own.shape[0], device=own.device).unsqueeze(1)
    index = torch.cat([classes, picked], 1)
    value = torch.cat([own.unsqueeze(1), top.clamp(min=0)], 1)
    if count is not None:
        value = value / count.unsqueeze(1)
    rest = (1.0 - value.sum(1)).clamp(min=0.0)
    if leftover == "renormalise":
        value, rest = value / value.sum(1, keepdim=True).clamp(min=1e-30), torch.zeros_like(rest)
    return index, value, rest
