"""Class pairs (CS-KD): every batch is B samples and, after them, a same-class partner for each."""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from .base import Task, refuse_mixing


def class_pair_order(order: Sequence[int], labels: np.ndarray, batch_size: int, seed: int, epoch: int,
                     rank: int = 0) -> List[int]:
    """The epoch's sample order with each batch of ``order`` followed by its partners.

    For every dataset index ``i`` in a chunk of ``batch_size``, a partner ``j != i`` with
    ``labels[j] == labels[i]`` is drawn uniformly from ``order`` itself (the samples this
    rank trains on; ``i`` itself when its class has no other sample there), as the official
    ``PairBatchSampler`` draws from the training set. The draws depend only on ``(seed,
    epoch, rank)``, so a resumed epoch gets the same pairs. Chunks of the result are
    ``2 * batch_size`` long (the last ``2 * r``).

    Args:
        order: the epoch's dataset indices, in training order.
        labels: ``(N,)`` the labels trained on, by dataset index.
        batch_size: ``B``, the batch size before the partners are added.
        seed: the run's seed.
        epoch: the epoch (1-based, as the engine counts).
        rank: this process's rank (each rank draws its own partners from its own shard).
    """
    order = np.asarray(order, dtype=np.int64)
    rng = np.random.default_rng([seed, epoch, rank, 0xC5CD])
    classes = labels[order]
    pool = {c: order[classes == c] for c in np.unique(classes)}
    out: List[int] = []
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        partners = []
        for i, c in zip(chunk, labels[chunk]):
            same = pool[c]
            if len(same) < 2:
                partners.append(int(i))
                continue
            j = same[rng.integers(len(same) - 1)]
            partners.append(int(same[-1] if j == i else j))  # uniform over the others
        out += chunk.tolist() + partners
    return out


class ClassPairTask(Task):
    """``task(model, x, y, idx)`` for ``x`` ``(2B, ...)``: the batch, then one same-class partner each.

    As the official code: the first half trains (cross-entropy and the KL term), the
    partners' forward runs under ``no_grad`` and gives the teacher,
    ``criterion(z, z_partner, y[:B])`` (:class:`~ols.losses.cskd.ClassWiseSelfKD`). The
    returned ``logits`` are both halves', so the engine tracks the partners' train-mode
    predictions too.

    The partners' forward runs first (the official code runs it second). Under DDP every
    forward first copies rank 0's buffers into the model in place; after the training
    forward, that copy would change the batch-norm statistics its backward saved, and the
    backward fails ("modified by an inplace operation": seen with torch 2.4 on the CPU, and
    reported for CUDA builds since 2.6 in pytorch/pytorch#175024). The logits are the same
    either way; only the two updates of the running statistics swap places.
    """

    rows_per_sample = 2  # the pairs are in the epoch's order, drawn once an epoch on the host

    def __init__(self, criterion: nn.Module):
        super().__init__()
        self.criterion = criterion

    @classmethod
    def wanted(cls, cfg: Any, criterion: nn.Module, model: nn.Module) -> bool:
        return bool(getattr(criterion, "pairs_by_class", False))

    @classmethod
    def from_settings(cls, cfg: Any, criterion: nn.Module, model: nn.Module, rank: int = 0) -> Task:
        refuse_mixing(cfg, cfg.loss, "the class-pair loss")
        return cls(criterion)

    def epoch_order(self, order: Sequence[int], labels: np.ndarray, batch_size: int, seed: int, epoch: int,
                    rank: int = 0) -> Tuple[List[int], int]:
        """Every batch followed by a same-class partner per sample: batches of ``2 * batch_size``."""
        pairs = class_pair_order(order, labels, batch_size, seed, epoch, rank)
        return pairs, self.rows_per_sample * batch_size

    def forward(self, model: nn.Module, x: Tensor, y: Tensor, idx: Tensor) -> Dict[str, Tensor]:
        if x.shape[0] % 2:
            raise ValueError(f"a class-pair batch holds 2B images, got {x.shape[0]}")
        half = x.shape[0] // 2
        with torch.no_grad():
            partner = model(x[half:])
        logits = model(x[:half])
        loss = self.criterion(logits, partner, y[:half])
        return {"loss": loss, "logits": torch.cat([logits.detach(), partner])}
