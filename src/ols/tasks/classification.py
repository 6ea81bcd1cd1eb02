"""Plain classification: one forward, one loss against the batch's labels."""

from __future__ import annotations

from typing import Any, Dict

from torch import Tensor, nn

from ..losses.protocol import needs_index
from .base import Task


class ClassificationTask(Task):
    """``task(model, x, y, idx) -> {"loss", "logits"}`` with ``loss = criterion(model(x), y)``.

    The criterion is a submodule, so ``task.train()`` / ``task.eval()`` switch its mode
    (OLS accumulates only in training mode) and ``task.to(device)`` moves its state.

    Args:
        criterion: any loss of the registry; one that asks for ``needs_index``
            (OLS-Single) also receives ``index=idx``.
    """

    def __init__(self, criterion: nn.Module):
        super().__init__()
        self.criterion = criterion

    @classmethod
    def wanted(cls, cfg: Any, criterion: nn.Module, model: nn.Module) -> bool:
        return True  # the last resort: every run that no other task claims

    def forward(self, model: nn.Module, x: Tensor, y: Tensor, idx: Tensor) -> Dict[str, Tensor]:
        """``x`` ``(B, ...)`` inputs, ``y`` ``(B,)`` labels, ``idx`` ``(B,)`` dataset positions."""
        logits = model(x)  # (B, K)
        if needs_index(self.criterion):
            loss = self.criterion(logits, y, index=idx)
        else:
            loss = self.criterion(logits, y)
        return {"loss": loss, "logits": logits}
