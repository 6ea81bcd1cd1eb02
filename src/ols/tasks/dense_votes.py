"""Dense votes (Zipf's LS, ``--loss zipf --loss-arg dense=true``): the classifier at every position.

Liang et al. (ECCV 2022) rank the non-target classes by votes: the network's own linear head
applied at each position of the last feature map before global pooling, each position voting
for its argmax class (official ``pytorch_zipfls/forwards_impl.py``). This task reads that map
with a forward hook on the model's last pooling layer and hands the vote counts to the loss.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import Tensor, nn

from .base import Task, refuse_mixing


def last_pool_and_head(model: nn.Module):
    """``(pool, head)``: the model's last ``AdaptiveAvgPool2d`` and its last ``Linear``, or ``None`` each."""
    pools = [m for m in model.modules() if isinstance(m, nn.AdaptiveAvgPool2d)]
    heads = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return (pools[-1] if pools else None), (heads[-1] if heads else None)


def dense_votes(feature_map: Tensor, head: nn.Linear) -> Tensor:
    """``(B, K)`` vote counts of ``feature_map`` ``(B, C, H, W)``; no gradient, no host read.

    ``head`` is applied at each of the ``H x W`` positions; each position votes for its argmax class.
    """
    with torch.no_grad():
        b, c, h, w = feature_map.shape
        logits = head(feature_map.permute(0, 2, 3, 1).reshape(b * h * w, c).to(head.weight.dtype))
        winners = logits.argmax(dim=1).view(b, h * w)
        return torch.zeros(b, head.out_features, device=feature_map.device).scatter_add_(
            1, winners, torch.ones_like(winners, dtype=torch.float32))


class DenseVoteTask(Task):
    """``task(model, x, y, idx)``: one forward; the loss gets ``votes=`` counted from the pre-pool map."""

    @classmethod
    def wanted(cls, cfg: Any, criterion: nn.Module, model: nn.Module) -> bool:
        return bool(getattr(criterion, "dense_votes", False))

    @classmethod
    def from_settings(cls, cfg: Any, criterion: nn.Module, model: nn.Module, rank: int = 0) -> Task:
        refuse_mixing(cfg, cfg.loss, "the dense-vote loss")
        pool, head = last_pool_and_head(model)
        if pool is None or head is None:
            raise ValueError("--loss-arg dense=true needs a model that pools a feature map into a linear "
                             f"head (the ResNets, cnn, mobilenetv2); {cfg.model} has none; use dense=false")
        if getattr(model, "num_exits", 1) > 1:
            raise ValueError("--loss-arg dense=true trains one exit; drop --exits")
        return cls(criterion, pool, head)

    def __init__(self, criterion: nn.Module, pool: nn.Module, head: nn.Linear):
        super().__init__()
        self.criterion = criterion
        self._head = [head]  # not a submodule: the model owns it
        self._map: Optional[Tensor] = None
        pool.register_forward_pre_hook(self._keep_map)

    def _keep_map(self, module: nn.Module, inputs) -> None:
        self._map = inputs[0] if inputs[0].dim() == 4 else None

    def forward(self, model: nn.Module, x: Tensor, y: Tensor, idx: Tensor) -> Dict[str, Tensor]:
        logits = model(x)  # (B, K); the hook kept the (B, C, H, W) map
        if self._map is None:
            raise ValueError("the model's last pooling layer saw no (B, C, H, W) feature map")
        votes, self._map = dense_votes(self._map, self._head[0]), None
        return {"loss": self.criterion(logits, y, votes=votes), "logits": logits}
