"""What a run carries from epoch to epoch, and its checkpoint: saved atomically, restored exactly."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from .checkpoint import CHECKPOINT, load_part, rng_state, save_checkpoint, set_rng_state
from .optim import lr_on_device
from .rank_layout import align_schedule, own_partial, restore_rank_local
from .run_setup import Run


@dataclass
class RunState:
    """The loop's own state: epochs done, best test error, time spent, an interrupted epoch.

    ``partial``: this rank's share of the epoch a checkpoint was written inside (a stop request,
    ``--save-every-steps``), as :func:`~ols.rank_layout.own_partial` gives it; ``None`` between
    epochs. ``orders``: every rank's sample order of the epoch under way when it is not the
    one :meth:`~ols.run_setup.Run.rank_order` gives (the rest of an epoch dealt out again on
    another number of ranks), so a later checkpoint in that epoch keeps it.
    """

    epoch: int = 0
    best: float = math.inf
    seconds: float = 0.0  # spent in earlier sessions of this run
    started: float = field(default_factory=time.perf_counter)
    partial: Optional[Dict[str, Any]] = None
    orders: Optional[List[List[int]]] = None
    note: str = ""  # what a resume on another number of ranks changes, printed once

    def elapsed(self) -> float:
        """Seconds of training over every session of this run."""
        return self.seconds + time.perf_counter() - self.started


def save_run(run: Run, state: RunState, criterion: Optional[Dict[str, Any]] = None,
             rank_local: Optional[Dict[str, Any]] = None, partial: Optional[Dict[str, Any]] = None) -> None:
    """Write ``checkpoint.pt``: model, optimiser, schedule, the loss's whole state, RNGs, labels.

    ``criterion``: the loss's state when the caller gathered it (:meth:`Run.criterion_state`, a
    collective under ``torchrun``); by default this process's ``state_dict()``. ``rank_local``:
    every rank's rank-local statistics (:func:`~ols.rank_layout.gather_rank_local`); ``partial``:
    the open epoch on every rank (:func:`~ols.rank_layout.gather_partial`), ``None`` at an epoch's end.
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
        "epoch_state": partial, "world_size": run.ctx.world_size, "rank_local": rank_local,
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
    rank, world = run.ctx.rank, run.ctx.world_size
    restore_rank_local(run.criterion, ckpt.get("rank_local"), rank, world)
    partial = ckpt.get("epoch_state")
    if partial is not None:
        if "aug_rngs" not in partial:  # written before several ranks could checkpoint mid-epoch
            partial = {**partial, "aug_rng": ckpt.get("aug_rng")}
        partial = own_partial(partial, rank, world)
    state = RunState(epoch=ckpt["epoch"], best=ckpt["best"], seconds=ckpt["seconds"], partial=partial)
    saved_world = int(ckpt.get("world_size", world))
    done = 0 if partial is None else partial["batches"]
    old_steps = partial_steps(run, saved_world)
    # the schedule at the same share of the run (the same step on the same number of ranks)
    align_schedule(run.scheduler, run.optimizer,
                   state.epoch * run.steps_per_epoch + round(done * run.steps_per_epoch / old_steps))
    if saved_world != world:
        where = f"inside epoch {state.epoch + 1}" if partial is not None else f"after epoch {state.epoch}"
        state.note = (f"resuming on {world} rank(s) a run checkpointed on {saved_world} {where}: the loss's "
                      "statistics are merged into what one process would hold"
                      + (", and the epoch's remaining samples are dealt out again" if partial else "")
                      + f"; each rank keeps --batch-size {run.settings.batch_size}, so the global batch is "
                      f"now {world * run.settings.batch_size} (not an exact continuation)")
    return state


def partial_steps(run: Run, world_size: int) -> int:
    """The steps an epoch had on ``world_size`` ranks (each rank trains ``--batch-size`` a step)."""
    per_rank = -(-len(run.train_index) // world_size)
    return max(1, -(-per_rank // run.settings.batch_size))


def checkpoint_labels(ckpt: Optional[Dict[str, Any]]):
    """A checkpoint's noisy labels and clean held-out set, for :func:`~ols.run_setup.build_run`.

    A checkpoint from before the clean set existed (``meta_index`` absent) had none.
    """
    if ckpt is None:
        return None
    meta = ckpt.get("meta_index")
    return {"noisy": ckpt["noisy_labels"].numpy(), "flipped": ckpt["flipped"].numpy(),
            "meta": np.zeros(0, dtype=np.int64) if meta is None else meta.numpy().astype(np.int64)}
