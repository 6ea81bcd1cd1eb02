"""Early-learning regularisation (ELR), Liu et al., NeurIPS 2020: ``elr``.

"Early-Learning Regularization Prevents Memorization of Noisy Labels".

Each training sample ``i`` keeps a running target ``t_i`` ``(K,)``, an average of the network's past
predictions on it; the loss adds ``lambda * log(1 - <t_i, p_i>)``, whose gradient pulls ``p_i``
toward ``t_i``: toward what the network predicted in its early, clean-label phase, and away from
memorising a wrong label later. Per step, for the batch's samples (facts from the authors'
``ELR/model/loss.py``, read, not copied):

    p   = clamp(softmax(z), 1e-4, 1 - 1e-4)
    t_i <- beta * t_i + (1 - beta) * p_i / sum_k p_ik       (p detached; before the loss, every visit)
    L   = mean_i [ CE(z_i, y_i) + lambda * log(1 - <t_i, p_i>) ]   (gradient through p only)

``t`` starts at 0, so the first visit gives ``(1 - beta) * p``. The loss goes below 0 as ``<t, p>``
approaches 1 (ELR#5: expected). Defaults by the number of classes, as the authors' configs:
``beta`` 0.7 and ``lambda`` 3 for ``K <= 10`` (CIFAR-10), 0.9 and 7 above (CIFAR-100). ELR+ (two
networks, weight averaging, mixup) is not built.

**With OLS** (``--loss-arg base=ols``): the cross-entropy term is OLS's Eq. (4), and OLS's
statistics are those of plain OLS on the same forward (its correct rows, Eq. (5)).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..functional import reduce_rows, upcast
from ..per_sample import PerSampleShards
from .base import NoisyLabelMethod, check_positive

#: the authors' ``config_cifar10.json`` and ``config_cifar100.json``: (beta, lambda)
DEFAULTS = {10: (0.7, 3.0), 100: (0.9, 7.0)}
CLAMP = 1e-4


def elr_target(previous: Tensor, probs: Tensor, beta: float) -> Tensor:
    """``beta * t + (1 - beta) * p / sum(p)``: the running targets ``(B, K)`` after a visit."""
    p = probs.detach()
    return beta * previous + (1.0 - beta) * p / p.sum(1, keepdim=True)


def elr_regulariser(target: Tensor, probs: Tensor) -> Tensor:
    """``(B,)`` ``log(1 - <t_i, p_i>)`` for targets ``(B, K)`` (constants) and clamped probabilities."""
    return torch.log(1.0 - (target * probs).sum(1))


class EarlyLearningRegularization(PerSampleShards, NoisyLabelMethod):
    """ELR (Liu et al., NeurIPS 2020): ``elr``, the base loss plus ``lambda * log(1 - <t, p>)``.

    **State**: ``target`` ``(N, K)``, one row per training sample, sharded by sample under
    ``torchrun`` as PS-KD's (:class:`~ols.losses.per_sample.PerSampleShards`), saved in one layout.
    The rows move in training mode only.

    Args:
        num_samples: ``N``.
        beta: the running target's momentum, in ``[0, 1)``; 0.7 for ``K <= 10``, 0.9 above, when ``None``.
        lam: ``lambda``, the regulariser's weight (``>= 0``); 3 for ``K <= 10``, 7 above, when ``None``.
        sharded: keep this rank's shard of the samples only (``ols train`` under ``torchrun`` sets it).
        base, alpha, epochs: as :class:`~ols.losses.noisy.base.NoisyLabelMethod`.
    """

    key = "elr"
    needs_index = True
    per_sample_state = ("target",)

    def __init__(self, num_classes: int, num_samples: int, base: str = "ce", alpha: Optional[float] = None,
                 epochs: int = 1, beta: Optional[float] = None, lam: Optional[float] = None,
                 sharded: bool = False, ignore_index: int = -100, reduction: str = "mean",
                 validate: bool = True):
        super().__init__(num_classes, base, alpha, epochs, ignore_index, reduction, validate)
        beta0, lam0 = DEFAULTS[10 if num_classes <= 10 else 100]
        self.beta = check_positive("beta", beta0 if beta is None else beta, zero=True)
        if self.beta >= 1:
            raise ValueError(f"--loss-arg beta must be in [0, 1) (the running target's momentum), got {beta}")
        self.lam = check_positive("lam", lam0 if lam is None else lam, zero=True)
        rows = self.init_shards(num_samples, sharded)
        self.register_buffer("target", torch.zeros(rows, num_classes))

    def forward(self, logits: Tensor, target: Tensor, index: Tensor = None) -> Tensor:  # type: ignore[override]
        """ELR's loss of ``logits`` ``(B, K)``, labels ``target`` ``(B,)`` at dataset positions ``index``.

        In training mode the batch's running targets move first (then the regulariser uses them),
        and OLS (``base="ols"``) counts its statistics. No host read.
        """
        rows, at = self.own_rows(*self.indexed_rows(logits, target, index, self.num_samples, "elr"))
        probs = F.softmax(upcast(logits), dim=1).clamp(CLAMP, 1.0 - CLAMP)
        t = elr_target(self.target.index_select(0, at).to(probs.dtype), probs, self.beta)
        if self.training:
            with torch.no_grad():
                self.target.index_copy_(0, at, t.to(self.target.dtype))
        per = self.base(logits, rows.labels) + self.lam * elr_regulariser(t, probs)
        return reduce_rows(per, rows.keep, rows.fill, self.reduction)

    def phases(self) -> str:
        return (f"{self.name} (Liu et al. 2020): every epoch alike, running targets with beta {self.beta:g}, "
                f"regulariser weight lambda {self.lam:g}")

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, beta={self.beta}, lam={self.lam}"
