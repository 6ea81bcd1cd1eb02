"""What every training task shares: how it is chosen for a run, built from the settings, and fed.

A task is chosen by :func:`ols.tasks.registry.build_task`: the first class of
:data:`~ols.tasks.registry.TASKS` whose :meth:`Task.wanted` says yes builds itself with
:meth:`Task.from_settings`, where its own refusals live. A task may also reshape the
epoch's sample order (:meth:`Task.epoch_order`: CS-KD's class pairs).

A step is ``task.compute(model, *task.prepare(x, y, idx))`` (which ``task(model, x, y, idx)``
is): :meth:`Task.prepare` does the batch's per-step work that a CUDA graph cannot hold
(Mixup's draws and mixing), :meth:`Task.compute` the forward and the loss, which
``--cuda-graph`` captures once and replays on static copies of ``prepare``'s tensors.

Around the step, for the methods that need more than a batch (the noisy-label methods):
:meth:`Task.attach` gives the task the run's data (:class:`TaskData`: a clean held-out batch for
the meta-learning methods, the training images for a pass over them); :meth:`Task.end_epoch`
runs once an epoch, outside the step and any graph (a mixture fitted to every sample's loss,
prototypes chosen from features); :meth:`Task.epoch_metrics` and :meth:`Task.run_outputs` say
what the method learned (the accuracy of its corrected labels, the labels themselves). A
method's state lives in its loss, so the checkpoint's ``criterion`` holds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

#: the metrics of :meth:`Task.epoch_metrics`: their directions and headings, for reports
HIGHER_IS_BETTER = {"label_correction_acc": True, "label_correction_changed": None,
                    "dividemix_labelled": None, "dividemix_labelled_clean": True}
HEADERS = {"label_correction_acc": "labels right after correction (%)",
           "label_correction_changed": "labels changed by correction (%)",
           "dividemix_labelled": "samples DivideMix's split labels (%)",
           "dividemix_labelled_clean": "of those, labels not flipped (%)"}


@dataclass
class TaskData:
    """What a task may read of its run besides the batch (:meth:`Task.attach`).

    ``labels`` ``(N,)`` are the labels trained on, on the device (the clean ones at ``meta_index``);
    ``true_labels`` and ``flipped`` ``(N,)`` are for the metrics only, never for training.
    ``source`` is the run's batch source (:mod:`ols.data.batches`); ``lr()`` the current
    learning rate of the optimiser's first group (a host float).
    """

    source: Any
    labels: Tensor
    true_labels: Tensor
    flipped: Tensor
    train_index: np.ndarray
    meta_index: np.ndarray
    batch_size: int
    eval_batch_size: int
    seed: int
    epochs: int
    rank: int = 0
    world_size: int = 1
    lr: Callable[[], float] = lambda: 0.0
    steps_per_epoch: int = 1  # the rank's steps an epoch (a schedule within the epoch: DivideMix's ramp)


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

    def attach(self, data: TaskData) -> None:
        """Called once by the run's set-up with the run's data; the default keeps it as ``self.data``."""
        self.data = data

    def end_epoch(self, epoch: int, model: nn.Module) -> None:
        """Called by every rank after epoch ``epoch`` (1-based) has trained and the loss has stepped.

        Outside the step and any graph, so it may pass over the training set with ``model`` (the
        plain model, in training mode on return) and read values back; under ``torchrun`` a
        collective, and every rank must end with the same state. The default does nothing.
        """

    def corrected_labels(self) -> Optional[Tensor]:
        """``(N,)`` the labels the method trains on where it corrected them, ``-1`` elsewhere; or ``None``.

        The default asks the loss (``criterion.corrected_labels()``); a collective where the loss
        keeps them sharded.
        """
        fn = getattr(getattr(self, "criterion", None), "corrected_labels", None)
        return fn() if callable(fn) else None

    def epoch_metrics(self) -> Dict[str, float]:
        """Numbers about the method for the epoch's metrics (read once an epoch; every rank calls it).

        With corrected labels: ``label_correction_acc``, the percentage of the trained samples whose
        label (corrected where it was) is the true one, and ``label_correction_changed``, the
        percentage changed from the noisy label.
        """
        corrected = self.corrected_labels()
        data = getattr(self, "data", None)
        if corrected is None or data is None:
            return {}
        index = torch.as_tensor(data.train_index, device=data.labels.device)
        noisy = data.labels.index_select(0, index)
        now = torch.where(corrected.to(noisy.device).index_select(0, index) >= 0,
                          corrected.to(noisy.device).index_select(0, index), noisy)
        true = data.true_labels.index_select(0, index)
        acc, changed = torch.stack([(now == true).double().mean(), (now != noisy).double().mean()]).tolist()
        return {"label_correction_acc": 100.0 * acc, "label_correction_changed": 100.0 * changed}

    def epoch_text(self, metrics: Dict[str, float]) -> str:
        """What the epoch's line says of :meth:`epoch_metrics`'s ``metrics`` (``""``: nothing)."""
        if "label_correction_acc" not in metrics:
            return ""
        return f", corrected labels {metrics['label_correction_acc']:.1f}% right"

    def run_outputs(self) -> Dict[str, np.ndarray]:
        """Arrays saved in the run directory at its end, by name (``corrected_labels.npy``); a collective."""
        corrected = self.corrected_labels()
        return {} if corrected is None else {"corrected_labels": corrected.cpu().numpy()}

    def phases(self) -> Optional[str]:
        """One line on the method's phases, printed before training; the default asks the loss."""
        fn = getattr(getattr(self, "criterion", None), "phases", None)
        return fn() if callable(fn) else None

    def epoch_order(self, order: Sequence[int], labels: np.ndarray, batch_size: int, seed: int, epoch: int,
                    rank: int = 0) -> Tuple[List[int], int]:
        """``(order, batch size)`` the data source cuts into batches; the default: unchanged."""
        return list(order), batch_size


def refuse_mixing(cfg: Any, loss: str, why: str = "the self-distillation loss") -> None:
    """One line when Mixup/CutMix is on for a task that cannot mix."""
    if cfg.mixer().active:
        raise ValueError(f"--mixup-alpha/--cutmix-alpha do not combine with {why} {loss!r}; turn mixing off")
