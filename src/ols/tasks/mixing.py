"""Mixup/CutMix classification: mix the batch, one forward, the loss against the mixed target."""

from __future__ import annotations

from typing import Any, Dict, Tuple

import numpy as np
from torch import Tensor, nn

from ..data.mixing import Mixer
from ..losses.protocol import needs_index
from .base import Task
from .classification import ClassificationTask


class MixingTask(ClassificationTask):
    """``task(model, x, y, idx)`` with ``x`` mixed by ``mixer`` and ``criterion.forward_mixed``.

    The batch's random choices come from ``(seed, epoch, rank, batch)`` (see
    :mod:`ols.data.mixing`), so a resumed epoch replays them: the run loop calls
    :meth:`set_epoch` with the batch it starts from. From epoch ``off_epoch`` on (0: never)
    the task trains on plain batches, timm's ``mixup_off_epoch``.

    The draws and the mixing are :meth:`prepare` (outside a CUDA graph: every batch gets its
    own); the forward and ``forward_mixed`` are :meth:`compute` (what ``--cuda-graph`` captures).
    """

    @classmethod
    def wanted(cls, cfg: Any, criterion: nn.Module, model: nn.Module) -> bool:
        return cfg.mixer().active

    @classmethod
    def from_settings(cls, cfg: Any, criterion: nn.Module, model: nn.Module, rank: int = 0) -> Task:
        if not getattr(criterion, "linear_in_target", False) or needs_index(criterion):
            from ..losses import LOSSES

            linear = ", ".join(n for n, c in LOSSES.items() if getattr(c, "linear_in_target", False)
                               and not getattr(c, "needs_index", False))
            raise ValueError(f"--mixup-alpha/--cutmix-alpha: loss {cfg.loss!r} cannot take mixed targets "
                             f"(only losses linear in the target can: {linear}); change --loss or turn "
                             "mixing off")
        return cls(criterion, cfg.mixer(), cfg.seed, rank, cfg.mix_off_epoch)

    def __init__(self, criterion: nn.Module, mixer: Mixer, seed: int = 0, rank: int = 0,
                 off_epoch: int = 0):
        super().__init__(criterion)
        if not hasattr(criterion, "forward_mixed"):
            raise ValueError(f"{type(criterion).__name__} cannot take Mixup/CutMix targets; use ce, ls "
                             "or ols")
        self.mixer, self.seed, self.rank, self.off_epoch = mixer, seed, rank, off_epoch
        self.epoch, self.batch = 1, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.batch = epoch, start_batch

    def prepare(self, x: Tensor, y: Tensor, idx: Tensor) -> Tuple[Tensor, ...]:
        """``(x_mixed, y_a, y_b, lam)`` (:class:`~ols.data.mixing.MixedBatch`); ``(x, y, idx)`` once off.

        The choices are drawn on the host from the batch's position and written to the device
        without being read back; the mixing itself runs on the device.
        """
        rng = np.random.default_rng((self.seed, self.epoch, self.rank, self.batch))
        self.batch += 1
        if self.off_epoch and self.epoch >= self.off_epoch:
            return x, y, idx
        return tuple(self.mixer(x, y, rng))

    def compute(self, model: nn.Module, *inputs: Tensor) -> Dict[str, Tensor]:
        if len(inputs) == 3:  # mixing is off: a plain batch
            return super().forward(model, *inputs)
        x, y_a, y_b, lam = inputs
        logits = model(x)  # (B, K)
        return {"loss": self.criterion.forward_mixed(logits, y_a, y_b, lam), "logits": logits}

    def forward(self, model: nn.Module, x: Tensor, y: Tensor, idx: Tensor) -> Dict[str, Tensor]:
        return self.compute(model, *self.prepare(x, y, idx))
