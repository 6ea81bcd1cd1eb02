"""The ``m`` largest entries of each row, the values of ``Tensor.topk``, from blocks when rows are long.

The top-k store feeds each correct sample's ``feed`` largest probabilities to its class's
table. At K = 21,841 or 100,000, ``torch.topk`` over every row cost more than the loss's
whole softmax pass on a CPU (``benchmarks/RESULTS.md``). :func:`row_topk` runs it over far
fewer candidates, with the same values.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

#: columns per block
BLOCK = 64

#: blocks are used when a row has at least this many blocks per entry asked for
MIN_BLOCKS_PER_ENTRY = 8


def row_topk(z: Tensor, m: int) -> Tuple[Tensor, Tensor]:
    """``(values, indices)``, each ``(B, m)``: the ``m`` largest entries of each row of ``z`` ``(B, K)``.

    Sorted largest first, with the values of ``z.topk(m, dim=1)``. The indices are the same
    unless entries tie, where either pick is a valid top ``m``. A NaN counts as the largest
    value, as in ``torch.topk``.

    **Blocks.** With ``K >= MIN_BLOCKS_PER_ENTRY * m * BLOCK``, each row is cut into blocks
    of ``BLOCK`` columns, and ``topk`` runs only on the ``m`` blocks with the largest maxima
    and the columns after the last whole block: ``m * BLOCK`` candidates instead of ``K``.
    No value is lost. An entry ``x`` in an unchosen block has ``m`` chosen blocks whose
    maxima are at least ``x``. That makes ``m`` other entries at least as large, so ``x``
    is at best tied for the ``m``-th place. Below that size it is ``z.topk``.
    """
    b, k_all = z.shape
    n = k_all // BLOCK
    if n < MIN_BLOCKS_PER_ENTRY * m:
        return z.topk(m, dim=1)
    z = z.contiguous()
    blocks_of = z.as_strided((b, n, BLOCK), (k_all, BLOCK, 1))  # (B, n, BLOCK), a view of whole blocks
    chosen = blocks_of.amax(dim=2).topk(m, dim=1, sorted=False).indices  # (B, m)
    rows = torch.arange(b, device=z.device).unsqueeze(1)
    cand = blocks_of[rows, chosen].view(b, m * BLOCK)  # whole blocks copied, no column index built
    if n * BLOCK < k_all:  # the tail, shorter than a block, always stays a candidate
        cand = torch.cat([cand, z[:, n * BLOCK:]], dim=1)
    values, at = cand.topk(m, dim=1)
    block_cols = chosen.gather(1, (at // BLOCK).clamp(max=m - 1)) * BLOCK + at % BLOCK
    return values, torch.where(at < m * BLOCK, block_cols, at - m * BLOCK + n * BLOCK)
