"""What the two-network methods share (Co-teaching, Co-teaching+, DivideMix): a base loss per network.

The run's model is a :class:`~ols.models.pair.NetworkPair`; member ``m`` (0 or 1) trains on its
own base loss. With ``base="ols"`` each network has its **own** OLS (its own soft labels, Eq. (5)
statistics from its own predictions on the samples it trains on): the two networks disagree by
design, so one matrix fed by both would blend what each has learned. ``soft_labels`` is the first
network's, ``peer_soft_labels`` the second's; ``step()`` closes both periods.
"""

from __future__ import annotations

import copy
from typing import Optional

from torch import Tensor

from .base import NoisyLabelMethod


class TwoNetworkMethod(NoisyLabelMethod):
    """Base of the methods that train a :class:`~ols.models.pair.NetworkPair`; args as the base class."""

    networks = 2

    def __init__(self, num_classes: int, base: str = "ce", alpha: Optional[float] = None, epochs: int = 1,
                 ignore_index: int = -100, reduction: str = "mean", validate: bool = True):
        super().__init__(num_classes, base, alpha, epochs, ignore_index, reduction, validate)
        self.peer_base = copy.deepcopy(self.base)

    def member_base(self, member: int):
        """The base loss (CE or OLS) of network ``member``."""
        return self.base if member == 0 else self.peer_base

    def member_loss(self, member: int, logits: Tensor, labels: Tensor) -> Tensor:
        """``(B,)`` base loss of network ``member``'s ``logits`` ``(B, K)`` for ``labels``; no Eq. (5)."""
        return self.base_loss(logits, labels, self.member_base(member))

    def member_loss_probs(self, member: int, logits: Tensor, probs: Tensor) -> Tensor:
        """``(B,)`` base loss of network ``member`` against target distributions ``probs`` ``(B, K)``."""
        return self.base_loss_probs(logits, probs, self.member_base(member))

    def observe_member(self, member: int, logits: Tensor, label: Tensor,
                       weight: Optional[Tensor] = None) -> None:
        """Eq. (5) for network ``member``'s OLS from ``logits`` ``(B, K)``, rows weighted by ``weight``."""
        if self.periodic:
            self.member_base(member).observe(logits, label, weight)

    def step(self) -> None:
        """Close both networks' OLS periods (collectives under ``torch.distributed``); nothing for CE."""
        if self.periodic:
            self.base.step()
            self.peer_base.step()

    @property
    def peer_soft_labels(self) -> Optional[Tensor]:
        """The second network's ``(K, K)`` soft labels, ``None`` for CE."""
        return self.peer_base.soft_labels if self.periodic else None
