"""Bounded per-class candidate tables: a weighted Misra-Gries summary merged batch by batch.

Pure functions with fixed-size tensors only (no ``unique``, no boolean indexing), so a
GPU never waits on the host. Used by :class:`~ols.losses.topk.store.TopKSoftLabels`.

**The summary.** Each class keeps ``M`` (class, mass) slots. Merging new weighted
contributions into a row adds equal classes together, then, if more than ``M`` distinct
classes remain, subtracts the ``(M + 1)``-th largest mass from every entry and keeps the
``M`` largest (the mergeable Misra-Gries rule; Agarwal et al., "Mergeable Summaries",
PODS 2012). Every kept mass *underestimates* the true sum by at most ``W / (M + 1)``,
``W`` the row's total fed mass, and a class whose true sum exceeds that bound is never
dropped. With at most ``M`` distinct classes per row nothing is subtracted: the sums are exact.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor


def merge_rows(row: Tensor, col: Tensor, mass: Tensor, num_rows: int, num_cols: int,
               slots: int) -> Tuple[Tensor, Tensor]:
    """Sum ``mass`` per ``(row, col)`` and keep each row's ``slots`` largest by Misra-Gries.

    Args:
        row: ``(N,)`` int64 in ``[0, num_rows]``; ``num_rows`` marks an entry to ignore.
        col: ``(N,)`` int64 in ``[0, num_cols)``, or ``-1`` to ignore the entry.
        mass: ``(N,)`` float, ``>= 0``; a zero mass is ignored.
        num_rows: the table's rows.
        num_cols: the number of classes a column can hold.
        slots: ``M``, the slots per row.

    Returns:
        ``(index, value)``, each ``(num_rows, M)``: the kept columns (``-1`` in empty slots)
        and their reduced masses, largest first.
    """
    n = row.numel()
    device = row.device
    sentinel = num_rows * num_cols  # sorts after every real key
    live = (col >= 0) & (row < num_rows) & (mass > 0)
    key = torch.where(live, row * num_cols + col.clamp(min=0), sentinel)
    key_sorted, perm = key.sort(stable=True)
    mass_sorted = torch.where(live, mass, 0.0).index_select(0, perm)
    # 1. one segment per distinct key: its summed mass
    seg = torch.cumsum(_run_starts(key_sorted), 0) - 1  # (N,)
    seg_mass = torch.zeros(n, dtype=mass.dtype, device=device).scatter_add_(0, seg, mass_sorted)
    seg_key = torch.full((n,), sentinel, dtype=key.dtype, device=device).scatter_(0, seg, key_sorted)
    seg_row = seg_key // num_cols  # num_rows for unused segments and ignored entries
    # 2. within each row, largest mass first: a stable sort by mass, then a stable one by row
    order = seg_mass.argsort(descending=True, stable=True)
    order = order.index_select(0, seg_row.index_select(0, order).argsort(stable=True))
    r, m, k = (t.index_select(0, order) for t in (seg_row, seg_mass, seg_key))
    pos = torch.arange(n, device=device)
    first = _run_starts(r)
    rank = pos - torch.cummax(torch.where(first, pos, 0), 0).values  # place inside the row
    # 3. Misra-Gries: subtract each row's (M + 1)-th largest mass, keep the M largest that stay positive
    threshold = torch.zeros(num_rows + 1, dtype=mass.dtype, device=device)
    threshold.scatter_reduce_(0, r, torch.where(rank == slots, m, 0.0), reduce="amax")
    reduced = m - threshold.index_select(0, r)
    kept = (rank < slots) & (r < num_rows) & (reduced > 0)
    dump = num_rows * slots  # one extra cell takes every entry that is not kept
    cell = torch.where(kept, r * slots + rank.clamp(max=slots - 1), dump)
    index = torch.full((dump + 1,), -1, dtype=torch.long, device=device).scatter_(0, cell, k % num_cols)
    value = torch.zeros(dump + 1, dtype=mass.dtype, device=device).scatter_(0, cell, reduced)
    index, value = index[:dump].view(num_rows, slots), value[:dump].view(num_rows, slots)
    return torch.where(value > 0, index, -1), value


def merge_batch(cand_index: Tensor, cand_value: Tensor, rows: Tensor, cols: Tensor, mass: Tensor) -> None:
    """Merge ``(B, m)`` contributions into the tables of their classes ``rows`` ``(B,)``, in place.

    ``cand_index``/``cand_value`` ``(K + 1, M)``: the tables, row ``K`` a discard bin; ``rows``
    in ``[0, K]``; ``cols`` ``(B, m)`` int64 (``-1``: nothing); ``mass`` ``(B, m)`` ``>= 0``. The
    batch rows of one class are merged together with that class's table, which enters once.
    """
    k_all, slots = cand_index.shape[0] - 1, cand_index.shape[1]
    b = rows.numel()
    order = rows.argsort(stable=True)
    rows_s = rows.index_select(0, order)
    starts = _run_starts(rows_s)  # (B,) the first batch row of each class
    pos = torch.arange(b, device=rows.device)
    group = torch.cummax(torch.where(starts, pos, 0), 0).values  # (B,) that first row, for every row
    live = torch.where(rows_s < k_all, group, b).unsqueeze(1)  # (B, 1): the discard bin's rows go nowhere
    table_cols = torch.where(starts.unsqueeze(1), cand_index.index_select(0, rows_s).long(), -1)
    index, value = merge_rows(torch.cat([live.expand(b, slots), live.expand_as(cols)], 1).reshape(-1),
                              torch.cat([table_cols, cols.index_select(0, order)], 1).reshape(-1),
                              torch.cat([cand_value.index_select(0, rows_s), mass.index_select(0, order)],
                                        1).reshape(-1), b, k_all, slots)
    dest = torch.where(starts & (rows_s < k_all), rows_s, k_all)  # each class written once, from its group
    cand_index.index_copy_(0, dest, index.index_select(0, group).to(cand_index.dtype))
    cand_value.index_copy_(0, dest, value.index_select(0, group))


def _run_starts(x: Tensor) -> Tensor:
    """``(N,)`` bool: True where a run of equal values of the sorted ``x`` ``(N,)`` starts."""
    return torch.cat([torch.ones_like(x[:1], dtype=torch.bool), x[1:] != x[:-1]])
