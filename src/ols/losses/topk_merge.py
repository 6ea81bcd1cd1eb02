"""Bounded per-class candidate tables: a weighted Misra-Gries summary merged batch by batch.

Pure functions with fixed-size tensors only (no ``unique``, no boolean indexing), so a
GPU never waits on the host. Used by :class:`~ols.losses.topk_soft_labels.TopKSoftLabels`.

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
    new_key = torch.ones(n, dtype=torch.bool, device=device)
    new_key[1:] = key_sorted[1:] != key_sorted[:-1]
    seg = torch.cumsum(new_key, 0) - 1  # (N,) segment of each entry
    seg_mass = torch.zeros(n, dtype=mass.dtype, device=device).scatter_add_(0, seg, mass_sorted)
    seg_key = torch.full((n,), sentinel, dtype=key.dtype, device=device).scatter_(0, seg, key_sorted)
    seg_row = seg_key // num_cols  # num_rows for unused segments and ignored entries
    # 2. within each row, largest mass first
    order = _by_row_then_mass(seg_row, seg_mass)
    r, m, k = (t.index_select(0, order) for t in (seg_row, seg_mass, seg_key))
    pos = torch.arange(n, device=device)
    first = torch.ones(n, dtype=torch.bool, device=device)
    first[1:] = r[1:] != r[:-1]
    rank = pos - torch.cummax(torch.where(first, pos, 0), 0).values
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


def _by_row_then_mass(row: Tensor, mass: Tensor) -> Tensor:
    """The permutation that orders ``(N,)`` entries by ``row`` ascending, then ``mass`` (``>= 0``) descending.

    Ties keep their input order. For float32 masses this is one sort: a non-negative float
    orders as its bit pattern, so ``row * 2^31 + (2^31 - 1 - bits)`` is the key (``abs``
    makes a ``-0.0`` a ``+0.0``). Otherwise a stable sort by mass, then a stable one by row.
    """
    if mass.dtype == torch.float32:
        bits = mass.abs().view(torch.int32).long()
        return (row * 2**31 + (2**31 - 1 - bits)).argsort(stable=True)
    order = mass.argsort(descending=True, stable=True)
    return order.index_select(0, row.index_select(0, order).argsort(stable=True))
