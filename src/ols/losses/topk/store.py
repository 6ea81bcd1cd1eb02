r"""A top-k soft-label store for many classes: ``k`` entries per class and a spread rest.

Dense OLS holds two ``K x K`` float32 matrices: 80 GB at ``K = 100,000``. This store keeps,
for each class ``c``, at most ``k`` (class, probability) entries (slot 0 is always ``c``
itself) and a scalar ``rest[c]``, the mass spread uniformly over the ``K - size`` classes
outside the entries. Its period statistics are a bounded candidate table per class
(:mod:`~ols.losses.topk.merge`, weighted Misra-Gries) and the period's counts.

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

from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from ...distributed import all_reduce_sum, is_distributed
from ..functional import check_store_options, correct_rows, pick_rows, row_sources
from ..init import make_soft_label_matrix, named_init
from ..rank_local import VersionedState
from .merge import merge_batch, merge_rows
from .sparse import SparseRows

LEFTOVERS = ("uniform", "renormalise")

#: the largest K for which the store still offers its soft labels as a dense (K, K) matrix
DENSE_VIEW_MAX = 4096


class TopKSoftLabels(VersionedState):
    """Sparse soft labels: ``index``/``value`` ``(K, k)`` and ``rest`` ``(K,)``; see the module docstring.

    The same three methods as the dense :class:`~ols.losses.soft_labels.SoftLabels`:
    :meth:`targets` (a :class:`~ols.losses.topk.sparse.SparseRows`), :meth:`observe` and
    :meth:`step` (in place). ``OnlineLabelSmoothing(K, store=TopKSoftLabels(K, 32))``, or
    ``topk=32`` for short.

    Args:
        num_classes: ``K``.
        topk: ``k``, the entries per class (clipped to ``K``), the class itself included.
        init, zero_count, freeze_above, frozen_empty, freeze: as in
            :class:`~ols.losses.soft_labels.SoftLabels`. A ``(K, K)`` prior keeps each row's
            own entry and its ``k - 1`` largest others; the rest follows ``leftover``.
        leftover: ``"uniform"`` or ``"renormalise"`` (module docstring).
        slots: ``M``, the candidate slots per class (default ``k + max(8, k // 4)``, at least ``k``).
        feed: how many of a correct sample's largest probabilities reach the table (default
            ``k``); its own class is always summed exactly.
    """

    class_weights = False  # the sparse loss has no class weights
    index: Tensor
    value: Tensor
    rest: Tensor
    num_updates: Tensor
    keep_float32 = ("value", "rest")
    finite_state = ("value", "rest", "cand_value", "count", "own")

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

    def targets(self, target: Tensor) -> SparseRows:
        """The sparse soft labels of ``target`` ``(B,)``; ``index`` ``(B, k)`` is int64, ``-1`` if empty."""
        return SparseRows(self.index.index_select(0, target).long(), self.value.index_select(0, target),
                          self.rest.index_select(0, target))

    def dense(self) -> Tensor:
        """The ``(K, K)`` matrix these rows stand for (row ``c``: class ``c``'s target); ``K^2`` floats."""
        k_all = self.num_classes
        present = self.index >= 0
        spread = (self.rest / (k_all - present.sum(1)).clamp(min=1)).unsqueeze(1)  # (K, 1)
        out = spread.expand(k_all, k_all).clone()
        # an empty slot rewrites the row's own entry (slot 0) with its own value: no clash
        cols = torch.where(present, self.index.long(), self.index[:, :1].long())
        out.scatter_(1, cols, torch.where(present, self.value, self.value[:, :1]))
        return out

    @property
    def soft_labels(self) -> Optional[Tensor]:
        """:meth:`dense` up to ``K = DENSE_VIEW_MAX`` (4096), else ``None``: read :meth:`targets` there."""
        return self.dense() if self.num_classes <= DENSE_VIEW_MAX else None

    @property
    def counts(self) -> Tensor:
        """``(K + 1,)`` the period's (weighted) count of correct samples of each class, then discards."""
        return self.count

    def observe(self, logp: Tensor, target: Tensor, weight: Optional[Tensor] = None) -> None:
        """Feed the correct rows' ``feed`` largest probabilities to their class's table; no host read.

        The rule and the arguments of :meth:`SoftLabels.observe`. Every row is ranked and
        merged, at fixed size; a row that does not count goes to the discard bin with zero mass.
        """
        logp = logp.detach().float()
        top, cols = logp.topk(self.feed, dim=1)  # (B, m), largest first
        w = correct_rows(logp, target, row_max=top[:, 0]).float()  # (B,)
        if weight is not None:
            w = w * (weight.float() if weight.dtype == torch.bool else weight.detach().float().clamp(min=0))
        own = logp.gather(1, target.unsqueeze(1)).squeeze(1).exp()
        rows = torch.where(w > 0, target, self.num_classes)  # (B,): the rest go to the discard bin
        self.count.index_add_(0, rows, w)
        self.own.index_add_(0, rows, torch.where(w > 0, own * w, 0.0))  # a NaN row adds nothing
        # the own class is summed exactly above, so the table holds only the other classes
        cols = torch.where(cols == target.unsqueeze(1), -1, cols)
        mass = torch.where(w.unsqueeze(1) > 0, top.exp() * w.unsqueeze(1), 0.0)
        merge_batch(self.cand_index, self.cand_value, rows, cols, mass)

    @torch.no_grad()
    def step(self) -> None:
        """Close the period, Eq. (6), in place: each class's top-``k`` entries divided by its count.

        A collective under ``torch.distributed``: the counts are all-reduced and the tables
        all-gathered (fixed-size messages) and merged in rank order, so every rank gets the
        same rows. Zero counts and frozen classes follow :func:`~ols.losses.functional.row_sources`.
        """
        k_all, k = self.num_classes, self.topk
        self._gather_tables()
        count = self.count[:k_all]
        if not self.freeze:
            c_index = self.cand_index[:k_all].long()
            others = torch.where(c_index < 0, -1.0, self.cand_value[:k_all])
            # Eq. (6): the own-class sum (exact) and the table's k - 1 largest, over the count
            new = _top_rows(self.own[:k_all], c_index, others, k, self.leftover, count.clamp(min=1e-30))
            size = (self.index >= 0).sum(1)
            peaks = torch.maximum(self.value.amax(1), self.rest / (k_all - size).clamp(min=1))
            source = row_sources(count, peaks, self.zero_count, self.freeze_above, self.frozen_empty)
            uniform = _initial_rows("uniform", k_all, k, self.leftover, self.index.device)
            zeros = _initial_rows("zeros", k_all, k, self.leftover, self.index.device)
            for name, fresh, u, z in zip(("index", "value", "rest"), new, uniform, zeros):
                old = getattr(self, name)
                old.copy_(pick_rows(source, fresh.to(old.dtype), old, u.to(old.dtype), z.to(old.dtype)))
        self.cand_index.fill_(-1)
        self.cand_value.zero_()
        self.count.zero_()
        self.own.zero_()
        self.num_updates += 1

    def clear_rank_local(self) -> None:
        """Empty the period's statistics: no candidates (index ``-1``), zero counts."""
        super().clear_rank_local()
        self.cand_index.fill_(-1)

    def merge_rank_local(self, parts):
        """Counts and own-class mass add up; the candidate tables merge as :meth:`step` merges ranks'."""
        merged = {name: parts[name].sum(0) for name in ("count", "own")}
        world, rows_all, slots = parts["cand_index"].shape
        rows = torch.arange(rows_all).unsqueeze(1).expand(rows_all, world * slots)
        cols = parts["cand_index"].permute(1, 0, 2).reshape(rows_all, -1).long()
        mass = parts["cand_value"].permute(1, 0, 2).reshape(rows_all, -1)
        index, value = merge_rows(rows.reshape(-1), cols.reshape(-1), mass.reshape(-1), rows_all,
                                  self.num_classes, slots)
        merged["cand_index"], merged["cand_value"] = index.to(torch.int32), value
        return merged

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


def _initial_rows(init: Union[str, Tensor], num_classes: int, k: int, leftover: str,
                  device: Optional[torch.device] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """``S^0`` as ``(index (K, k) int32, value (K, k), rest (K,))``; no ``K x K`` matrix for a name."""
    k_all = num_classes
    if isinstance(init, str) and not init.endswith(".npy"):
        index = torch.full((k_all, k), -1, dtype=torch.int32, device=device)
        index[:, 0] = torch.arange(k_all, dtype=torch.int32, device=device)
        value = torch.zeros(k_all, k, device=device)
        diagonal, off = named_init(init, k_all)
        value[:, 0] = diagonal
        return index, value, torch.full((k_all,), off * (k_all - 1), device=device)
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
    picked = torch.where(top > 0, cand_index.gather(1, slot), -1)
    classes = torch.arange(own.shape[0], device=own.device).unsqueeze(1)
    index = torch.cat([classes, picked], 1)
    value = torch.cat([own.unsqueeze(1), top.clamp(min=0)], 1)
    if count is not None:
        value = value / count.unsqueeze(1)
    rest = (1.0 - value.sum(1)).clamp(min=0.0)
    if leftover == "renormalise":
        value, rest = value / value.sum(1, keepdim=True).clamp(min=1e-30), torch.zeros_like(rest)
    return index, value, rest
