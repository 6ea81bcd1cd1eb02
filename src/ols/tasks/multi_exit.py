"""Self-distillation over exits: one forward of a multi-exit model, one loss over all its exits."""

from __future__ import annotations

from typing import Dict

from torch import Tensor, nn

from ..losses.protocol import takes_exits


class MultiExitTask(nn.Module):
    """``task(model, x, y, idx) -> {"loss", "logits"}`` with ``loss = criterion(model(x), y)``.

    ``model(x)`` in training mode gives every exit's ``(B, K)`` logits, deepest first
    (:class:`~ols.models.exits.MultiExit`); ``criterion`` takes them all
    (:mod:`ols.losses.self_distillation`). ``logits`` are the deepest exit's, so train
    error and noisy-label tracking follow the network that is evaluated.
    """

    #: a --cuda-graph can capture its step (no per-batch host draws or host state)
    graph_safe = True

    def __init__(self, criterion: nn.Module):
        super().__init__()
        if not takes_exits(criterion):
            raise ValueError(f"{type(criterion).__name__} takes one output, but the model has several exits; "
                             "use byot, byot+ols, ds+ols or deep_supervision, or drop --exits")
        self.criterion = criterion

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Nothing is drawn per batch."""

    def forward(self, model: nn.Module, x: Tensor, y: Tensor, idx: Tensor) -> Dict[str, Tensor]:
        outputs = model(x)  # [deepest (B, K), ..., shallowest (B, K)]
        if isinstance(outputs, Tensor):
            raise ValueError("the model gave one output in training mode; a multi-exit task needs a model "
                             "built with exits (--exits byot)")
        return {"loss": self.criterion(outputs, y), "logits": outputs[0]}
