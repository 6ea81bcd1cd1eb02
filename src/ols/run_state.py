"""What a run carries from epoch to epoch, and its checkpoint: saved atomically, restored exactly."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import numpy as np
import torch

from .checkpoint import CHECKPOINT, load_part, rng_state, save_checkpoint, set_rng_state
from .optim import lr_on_device
from .run_setup import Run


@dataclass
class RunState:
    """The loop's own state: epochs done, best test error, time spent, an interrupted epoch.

    ``partial`` is the :class:`~ols.engine.EpochState` (as a dict, plus its ``lr``) of an
    epoch a stop request cut short, and ``aug_rng`` its augmentation generator's state;
    both are ``None`` between epochs.
    """

    epoch: int = 0
    best: float = math.inf
    seconds: float = 0.0  # spent in earlier sessions of this run
    started: float = field(default_factory=time.perf_counter)
    partial: Optional[Dict[str, Any]] = None
    aug_rng: Optional[torch.Tensor] = None

    def elapsed(self) -> float:
        """Seconds of training over every session of this run."""
        return self.seconds + time.perf_counter() - self.started


def save_run(run: Run, state: RunState, criterion: Optional[Dict[str, Any]] = None) -> None:
    """Write ``checkpoint.pt``: model, optimiser, schedule, the loss's whole state, RNGs, labels.

    ``criterion``: the loss's state when the caller gathered it (:meth:`Run.criterion_state`, a
    collective under ``torchrun``); by default this process's ``state_dict()``.
    """
    save_checkpoint(run.out / CHECKPOINT, {
        "format": 1, "epoch": state.epoch, "config": run.settings.config,
        "num_classes": run.data.num_classes, "input_shape": list(run.data.input_shape),
        "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "criterion": criterion if criterion is not None else run.criterion.state_dict(),
        "rng": rng_state(), "best": state.best, "seconds": state.elapsed(),
        "noisy_labels": torch.from_numpy(run.noisy), "flipped": torch.from_numpy(run.flipped),
        "meta_index": torch.from_numpy(run.meta_index),
        "epoch_state": state.partial, "aug_rng": state.aug_rng,
        **({"ema": run.ema.state_dict()} if run.ema is not None else {}),
    })


#: what a checkpoint must hold to be resumed (save_run writes these and more)
RESUME_KEYS = ("epoch", "model", "optimizer", "scheduler", "criterion", "rng", "best", "seconds",
               "noisy_labels", "flipped")


def check_resumable(ckpt: Dict[str, Any], path: Any) -> None:
    """Refuse, in one line, a checkpoint that lacks what resuming needs (a snapshot copied over it, say)."""
    missing = [key for key in RESUME_KEYS if key not in ckpt]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}, so it is not a training checkpoint that can "
                         "be resumed (a snapshot copied over it?); restore the run's own checkpoint.pt, "
                         "evaluate a snapshot with `ols eval RUN --checkpoint FILE`, or start again with "
                         "--overwrite")


def restore_run(run: Run, ckpt: Dict[str, Any]) -> RunState:
    """Load ``ckpt`` into ``run`` and return the loop's state at the moment it was written."""
    for key, part, what in (("model", run.model, f"model ({run.settings.model})"),
                            ("criterion", run.criterion, f"loss state ({run.settings.loss})"),
                            ("optimizer", run.optimizer, "optimiser state"),
                            ("scheduler", run.scheduler, "schedule")):
        load_part(part, ckpt[key], what, run.out / CHECKPOINT)
    if run.ema is not None:
        if "ema" not in ckpt:
            raise ValueError(f"{run.out / CHECKPOINT} holds no weight average although the run has "
                             f"--ema-decay {run.settings.ema_decay}; restore the run's own checkpoint.pt, or "
                             "start again with --overwrite")
        load_part(run.ema, ckpt["ema"], "weight average (--ema-decay)", run.out / CHECKPOINT)
    lr_on_device(run.optimizer, run.ctx.device)  # --cuda-graph's learning rate is a device tensor
    set_rng_state(ckpt["rng"])
    state = RunState(epoch=ckpt["epoch"], best=ckpt["best"], seconds=ckpt["seconds"],
                     partial=ckpt.get("epoch_state"), aug_rng=ckpt.get("aug_rng"))
    if state.partial is not None and run.ctx.world_size > 1:
        raise ValueError("this checkpoint was taken mid-epoch by one process; resume it without torchrun")
    return state


def checkpoint_labels(ckpt: Optional[Dict[str, Any]]):
    """A checkpoint's noisy labels and clean held-out set, for :func:`~ols.run_setup.build_run`.

    A checkpoint from before the clean set existed (``meta_index`` absent) had none.
    """
    if ckpt is None:
        return None
    meta = ckpt.get("meta_index")
    return {"noisy": ckpt["noisy_labels"].numpy(), "flipped": ckpt["flipped"].numpy(),
            "meta": np.zeros(0, dtype=np.int64) if meta is None else meta.numpy().astype(np.int64)}
