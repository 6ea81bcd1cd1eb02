"""What every training task shares: how it is chosen for a run, built from the settings, and fed.

A task is chosen by :func:`ols.tasks.registry.build_task`: the first class of
:data:`~ols.tasks.registry.TASKS` whose :meth:`Task.wanted` says yes builds itself with
:meth:`Task.from_settings`, where its own refusals live. A task may also reshape the
epoch's sample order (:meth:`Task.epoch_order`: CS-KD's class pairs).

A step is ``task.compute(model, *task.prepare(x, y, idx))`` (which ``task(model, x, y, idx)``
is): :meth:`Task.prepare` does the batch's per-step work that a CUDA graph cannot hold
(Mixup's draws and mixing), :meth:`Task.compute` the forward and the loss, which
``--cuda-graph`` captures once and replays on static copies of ``prepare``'s tensors.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
from torch import Tensor, nn


class Task(nn.Module):
    """The base of the tasks: ``task(model, x, y, idx) -> {"loss", "logits"}`` plus these hooks."""

    #: how many independently augmented views of each image the task asks the data source for
    views = 1
    #: rows a batch holds per sample of the epoch's order (CS-KD: 2, each sample and its partner)
    rows_per_sample = 1

    def prepare(self, x: Tensor, y: Tensor, idx: Tensor) -> Tuple[Tensor, ...]:
        """The inputs of :meth:`compute` for a batch ``x`` ``(B, ...)``, ``y`` ``(B,)``, ``idx`` ``(B,)``.

        Runs outside a CUDA graph, so per-batch draws belong here; the default passes the batch on.
        """
        return x, y, idx

    def compute(self, model: nn.Module, *inputs: Tensor) -> Dict[str, Tensor]:
        """``{"loss", "logits"}`` from :meth:`prepare`'s tensors: the part a CUDA graph captures.

        The default is the task's ``forward``; a task that overrides :meth:`prepare` overrides both.
        """
        return self(model, *inputs)

    @classmethod
    def wanted(cls, cfg: Any, criterion: nn.Module, model: nn.Module) -> bool:
        """Whether this task is the one the settings, the loss and the model ask for."""
        return False

    @classmethod
    def from_settings(cls, cfg: Any, criterion: nn.Module, model: nn.Module, rank: int = 0) -> Task:
        """The task for a run (``cfg`` a :class:`~ols.config.TrainConfig`); refuses what cannot work."""
        return cls(criterion)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Called by the run loop before each (resumed) epoch; the default draws nothing."""

    def epoch_order(self, order: Sequence[int], labels: np.ndarray, batch_size: int, seed: int, epoch: int,
                    rank: int = 0) -> Tuple[List[int], int]:
        """``(order, batch size)`` the data source cuts into batches; the default: unchanged."""
        return list(order), batch_size


def refuse_mixing(cfg: Any, loss: str, why: str = "the self-distillation loss") -> None:
    """One line when Mixup/CutMix is on for a task that cannot mix."""
    if cfg.mixer().active:
        raise ValueError(f"--mixup-alpha/--cutmix-alpha do not combine with {why} {loss!r}; turn mixing off")
