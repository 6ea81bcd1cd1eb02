"""The Co-teaching and Co-teaching+ step: both networks on one batch, each trained on its peer's pick.

One forward of the :class:`~ols.models.pair.NetworkPair` (``(2, B, K)`` logits, through DDP once),
each network's per-sample base loss (CE or OLS's Eq. (4)), the selection
(:meth:`~ols.losses.noisy.coteaching.CoTeaching.selection`, on detached losses), and the sum of
the two exchanged means as the step's loss: the networks' parameters are disjoint, so one backward
and one optimiser step update each on its own loss. The step has no host read; the kept count of
Co-teaching is a host int of the batch size and the epoch, which a CUDA graph would freeze, so
``--cuda-graph`` is refused.
"""

from __future__ import annotations

from typing import Any, Dict

import torch
from torch import Tensor, nn

from ..losses.protocol import networks_of
from ..models.pair import ensemble_log_probs
from .base import Task, refuse_mixing


class CoTeachingTask(Task):
    """``task(pair, x, y, idx) -> {"loss", "logits"}`` for ``coteaching`` and ``coteaching_plus``.

    ``logits`` are the ensemble's log-probabilities (the training error counts the ensemble).
    """

    def __init__(self, criterion: nn.Module):
        super().__init__()
        self.criterion = criterion
        self.epoch = 1

    @classmethod
    def wanted(cls, cfg: Any, criterion: nn.Module, model: nn.Module) -> bool:
        return networks_of(criterion) == 2 and hasattr(criterion, "selection")

    @classmethod
    def from_settings(cls, cfg: Any, criterion: nn.Module, model: nn.Module, rank: int = 0) -> Task:
        refuse_mixing(cfg, cfg.loss, "Co-teaching, which ranks each sample's own loss,")
        return cls(criterion)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch

    def forward(self, model: nn.Module, x: Tensor, y: Tensor, idx: Tensor) -> Dict[str, Tensor]:
        crit = self.criterion
        logits = model(x, members=True)  # (2, B, K)
        rows = crit.rows(logits[0], y)  # the labels checked; a bad one gives its row a NaN loss
        losses = torch.stack([torch.where(rows.keep, crit.member_loss(m, logits[m], rows.labels), rows.fill)
                              for m in range(2)])  # (2, B)
        kept, fallback = crit.selection(losses.detach(), logits.detach(), self.epoch)
        loss = crit.exchange(losses, kept, fallback)
        if crit.periodic:  # each network's statistics: the samples it trains on
            for m in range(2):
                trains_on = torch.where(fallback, torch.ones_like(kept[1 - m]), kept[1 - m])
                crit.observe_member(m, logits[m], rows.labels, trains_on.float())
        return {"loss": loss, "logits": ensemble_log_probs(logits.detach())}

