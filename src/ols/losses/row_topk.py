"""The largest entries of each row: the row maximum for every row, the top ``m`` for the rows asked.

The top-k store feeds each correct sample's ``feed`` largest probabilities to its class's
table. At K = 21,841 or 100,000, ``torch.topk`` over every row cost more than the loss's
whole softmax pass on a CPU (``benchmarks/RESULTS.md``), and ``Tensor.max`` with indices
is 10-15× slower than ``amax``. :func:`row_maxima` reads each row once in blocks of
``BLOCK`` columns; the row maximum, which every row needs (the correctness test, the
log-sum-exp), comes from the block maxima, and :func:`row_topk` reuses them to run
``topk`` over far fewer candidates, for only the rows that feed.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor

#: columns per block
BLOCK = 64

#: blocks are used for the top m when a row has at least this many blocks per entry asked for
MIN_BLOCKS_PER_ENTRY = 8


class RowMaxima(NamedTuple):
    """Each row's largest entry ``value`` ``(B,)`` and its ``column`` ``(B,)``; ``blocks`` ``(B, n)``."""

    value: Tensor
    column: Tensor
    blocks: Tensor


def _whole_blocks(z: Tensor) -> Tensor:
    """``(B, n, BLOCK)``, a view of the ``n = K // BLOCK`` whole blocks of contiguous ``z`` ``(B, K)``."""
    b, k_all = z.shape
    return z.as_strided((b, k_all // BLOCK, BLOCK), (k_all, BLOCK, 1))


def row_maxima(z: Tensor) -> RowMaxima:
    """The largest entry of each row of ``z`` ``(B, K)`` and its column, from one blocked ``amax`` pass.

    ``value`` equals ``z.amax(1)`` and ``z[i, column[i]] == value[i]`` (any column of a tie).
    A NaN counts as the largest value, as in ``torch.max``. ``blocks`` ``(B, K // BLOCK)``
    holds the maxima of the whole blocks, for :func:`row_topk`.
    """
    b, k_all = z.shape
    z = z.contiguous()
    n = k_all // BLOCK
    blocks_of = _whole_blocks(z)
    blocks = blocks_of.amax(dim=2)  # (B, n)
    if n == 0:  # a row shorter than one block
        value, column = z.max(dim=1)
        return RowMaxima(value, column, blocks)
    best = blocks.argmax(dim=1)  # (B,)
    # the best whole block and the tail (shorter than a block): under 2 * BLOCK columns to search
    cand = torch.cat([blocks_of[torch.arange(b, device=z.device), best], z[:, n * BLOCK:]], dim=1)
    at = cand.argmax(dim=1)
    column = torch.where(at < BLOCK, best * BLOCK + at, n * BLOCK + at - BLOCK)
    return RowMaxima(cand.gather(1, at.unsqueeze(1)).squeeze(1), column, blocks)


def row_topk(z: Tensor, m: int, rows: Optional[Tensor] = None,
             maxima: Optional[RowMaxima] = None) -> Tuple[Tensor, Tensor]:
    """``(values, indices)``, each ``(R, m)``: the ``m`` largest entries of rows ``rows`` of ``z`` ``(B, K)``.

    ``rows`` ``(R,)``, or ``None`` for every row (``R = B``). Sorted largest first, with the values of
    ``z[rows].topk(m, dim=1)``. The indices are the same unless entries tie, where either
    pick is a valid top ``m``. A NaN counts as the largest value, as in ``torch.topk``.
    ``maxima``: :func:`row_maxima` of ``z`` when the caller has it.

    **Blocks.** With ``K >= MIN_BLOCKS_PER_ENTRY * m * BLOCK``, ``topk`` runs only on the
    ``m`` blocks with the largest maxima and the columns after the last whole block:
    ``m * BLOCK`` candidates instead of ``K``. No value is lost. An entry ``x`` in an
    unchosen block has ``m`` chosen blocks whose maxima are at least ``x``. That makes ``m``
    other entries at least as large, so ``x`` is at best tied for the ``m``-th place. Below
    that size it is ``topk`` over the whole rows.
    """
    k_all = z.shape[1]
    n = k_all // BLOCK
    if n < MIN_BLOCKS_PER_ENTRY * m:
        return (z if rows is None else z.index_select(0, rows)).topk(m, dim=1)
    z = z.contiguous()
    blocks = (row_maxima(z) if maxima is None else maxima).blocks
    if rows is None:
        rows = torch.arange(z.shape[0], device=z.device)
    else:
        blocks = blocks.index_select(0, rows)
    r = rows.numel()
    chosen = blocks.topk(m, dim=1, sorted=False).indices  # (R, m)
    cand = _whole_blocks(z)[rows.unsqueeze(1), chosen].view(r, m * BLOCK)  # whole blocks copied
    if n * BLOCK < k_all:  # the tail, shorter than a block, always stays a candidate
        cand = torch.cat([cand, z[rows, n * BLOCK:]], dim=1)
    values, at = cand.topk(m, dim=1)
    block_cols = chosen.gather(1, (at // BLOCK).clamp(max=m - 1)) * BLOCK + at % BLOCK
    return values, torch.where(at < m * BLOCK, block_cols, at - m * BLOCK + n * BLOCK)
