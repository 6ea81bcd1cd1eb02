"""What the run loop needs from the settings, resolved once at set-up.

The loop (:mod:`ols.trainer`) reads a :class:`LoopSettings` and a
:class:`~ols.engine.Precision`, never the :class:`~ols.config.TrainConfig`: a field the
loop does not use cannot change what it does, and a new config key touches set-up only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Tuple


@dataclass(frozen=True)
class LoopSettings:
    """The epoch loop's settings (see :class:`~ols.config.TrainConfig` for each one's meaning)."""

    epochs: int
    seed: int
    batch_size: int  # per rank
    eval_batch_size: int
    save_every: int  # 0: no snapshots
    save_every_steps: int  # 0: checkpoints at epoch ends only
    progress: bool
    clip_grad_norm: float  # 0: off
    loggers: Tuple[str, ...]  # --log; the step losses are kept only when there is one
    noise_rate: float
    # named in messages only
    dataset: str
    model: str
    loss: str
    lr: float
    ema_decay: float
    #: the whole config as ``config.json`` and the checkpoint record it
    config: Dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_config(cls, cfg: Any) -> LoopSettings:
        """The loop's part of ``cfg`` (a :class:`~ols.config.TrainConfig`)."""
        return cls(epochs=cfg.epochs, seed=cfg.seed, batch_size=cfg.batch_size,
                   eval_batch_size=cfg.eval_batch_size, save_every=cfg.save_every,
                   save_every_steps=cfg.save_every_steps, progress=cfg.progress,
                   clip_grad_norm=cfg.clip_grad_norm, loggers=tuple(cfg.loggers()),
                   noise_rate=cfg.noise_rate, dataset=cfg.dataset, model=cfg.model, loss=cfg.loss,
                   lr=cfg.lr, ema_decay=cfg.ema_decay, config=cfg.to_dict())
