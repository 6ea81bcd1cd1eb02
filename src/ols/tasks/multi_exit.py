"""Self-distillation over exits: one forward of a multi-exit model, one loss over all its exits."""

from __future__ import annotations

from typing import Any, Dict

from torch import Tensor, nn

from ..losses.protocol import takes_exits, views_of
from .base import Task, refuse_mixing


class MultiExitTask(Task):
    """``task(model, x, y, idx) -> {"loss", "logits"}`` with ``loss = criterion(model(x), y)``.

    ``model(x)`` in training mode gives every exit's ``(B, K)`` logits, deepest first
    (:class:`~ols.models.exits.MultiExit`); ``criterion`` takes them all
    (:mod:`ols.losses.self_distillation`). ``logits`` are the deepest exit's, so train
    error and noisy-label tracking follow the network that is evaluated.
    """

    @classmethod
    def wanted(cls, cfg: Any, criterion: nn.Module, model: nn.Module) -> bool:
        return getattr(model, "num_exits", 1) > 1 or takes_exits(criterion)

    @classmethod
    def from_settings(cls, cfg: Any, criterion: nn.Module, model: nn.Module, rank: int = 0) -> Task:
        if getattr(model, "num_exits", 1) == 1:
            raise ValueError(f"loss {cfg.loss!r} distils between the exits of a multi-exit model; add "
                             "--exits byot (ResNets, ResNeXt), or pick another loss")
        refuse_mixing(cfg, cfg.loss)
        if views_of(criterion) > 1:
            raise ValueError(f"loss {cfg.loss!r} trains on two views through a single-exit model; "
                             "drop --exits")
        if not takes_exits(criterion):
            raise ValueError(f"--exits byot gives every exit's logits, and loss {cfg.loss!r} takes one "
                             "output; use byot, byot+ols, ds+ols or deep_supervision, or drop --exits")
        return cls(criterion)

    def __init__(self, criterion: nn.Module):
        super().__init__()
        if not takes_exits(criterion):
            raise ValueError(f"{type(criterion).__name__} takes one output, but the model has several exits; "
                             "use byot, byot+ols, ds+ols or deep_supervision, or drop --exits")
        self.criterion = criterion

    def forward(self, model: nn.Module, x: Tensor, y: Tensor, idx: Tensor) -> Dict[str, Tensor]:
        outputs = model(x)  # [deepest (B, K), ..., shallowest (B, K)]
        if isinstance(outputs, Tensor):
            raise ValueError("the model gave one output in training mode; a multi-exit task needs a model "
                             "built with exits (--exits byot)")
        return {"loss": self.criterion(outputs, y), "logits": outputs[0]}
