"""Hugging Face ``Trainer``: OLS as the ``compute_loss_func`` plus a callback, in one object.

Usage::

    from ols.integrations.hf import OLSTrainerHook
    hook = OLSTrainerHook(OnlineLabelSmoothing(num_classes=K))
    trainer = Trainer(model, args, ..., compute_loss_func=hook, callbacks=[hook])

What the obvious glue gets wrong, and this does not:

* **Gradient accumulation.** The Trainer treats a ``compute_loss_func``'s result as already
  normalised by ``num_items_in_batch`` (the labelled items of the whole accumulated step)
  and does not divide it by ``gradient_accumulation_steps``; a plain mean would multiply the
  gradient by that factor. The hook returns ``sum / num_items_in_batch``.
* **Evaluation.** ``evaluate()`` and ``predict()`` run under ``torch.no_grad()`` and never
  touch the loss's mode; the hook switches the loss to ``eval()`` there, so evaluation
  batches never reach the soft labels. ``eval_loss`` is then the loss itself (OLS against its
  soft targets), which is not comparable with a CE run's ``eval_loss``: pass
  ``eval_loss="ce"`` to report plain cross-entropy there (for early stopping or choosing a
  checkpoint across runs), or compare accuracy.
* **Epochs.** The loss steps after the epoch's last optimizer step, in ``on_step_end``,
  because the Trainer saves a step checkpoint *before* ``on_epoch_end``: stepping there
  would leave the epoch's statistics unstepped in ``checkpoint-N`` and a run resumed from
  it would merge two epochs into one period. ``on_epoch_end`` steps an epoch cut short.
  A collective under DDP: every rank steps.
* **Checkpoints.** ``on_save`` writes the loss's state (mid-period too) into the checkpoint
  folder as ``ols_loss.pt`` (``ols_loss-rank<r>.pt`` per rank under DDP, since each rank's
  period sums differ); a Trainer resumed with ``resume_from_checkpoint`` reloads it in
  ``on_train_begin``, from the folder the Trainer resumes from (inside ``output_dir`` or
  not). A checkpoint without it is refused with one line, not resumed with fresh soft labels.

Token-level logits ``(B, T, K)`` are flattened to ``(B * T, K)`` with labels ``(B * T,)``,
as the Trainer's own loss does; label ``-100`` is ignored.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import warnings
from typing import Any, Iterator, Optional

import torch
from torch import Tensor, nn

from ..losses.protocol import end_of_epoch, follows_progress, is_periodic, set_progress
from ..losses.step_reminder import mark_stepped_by

try:
    from transformers import TrainerCallback
except ImportError:
    raise ImportError("ols.integrations.hf needs transformers: pip install 'ols[hf]'") from None

CHECKPOINT_PREFIX = "checkpoint-"  # the Trainer's checkpoint folder names


class OLSTrainerHook(TrainerCallback):
    """``compute_loss_func`` and ``TrainerCallback`` for one periodic loss (OLS, OLS-Single).

    Args:
        loss: the loss, e.g. ``OnlineLabelSmoothing(num_classes)`` with ``reduction="mean"``.
        resume_from: the checkpoint folder to reload the loss from when it is not
            ``<output_dir>/checkpoint-<global_step>`` (a checkpoint copied elsewhere).
        eval_loss: what ``evaluate()`` reports as ``eval_loss``: ``"loss"`` (the loss itself, the
            default) or ``"ce"`` (cross-entropy against the labels, comparable across losses).
    """

    def __init__(self, loss: nn.Module, resume_from: Optional[str] = None, eval_loss: str = "loss"):
        if eval_loss not in ("loss", "ce"):
            raise ValueError(f"OLSTrainerHook: eval_loss must be 'loss' or 'ce', got {eval_loss!r}")
        self.eval_loss = eval_loss
        if not (is_periodic(loss) or follows_progress(loss)):
            raise ValueError(f"OLSTrainerHook: {type(loss).__name__} is not a periodic loss (no step()) and "
                             "schedules nothing by the run's progress; a stateless loss needs no hook: pass "
                             "it as compute_loss_func directly")
        if getattr(loss, "needs_index", False):
            raise ValueError("OLSTrainerHook: OLS-Single needs each sample's dataset index, which the "
                             "Trainer's compute_loss_func never receives; use OnlineLabelSmoothing")
        self.loss = loss
        self.resume_from = resume_from
        self._stepped_epoch = -1
        self._registered = self._warned = False  # among the Trainer's callbacks (on_train_begin ran)

    def __call__(self, outputs: Any, labels: Tensor, num_items_in_batch: Any = None) -> Tensor:
        if labels is None:
            raise ValueError("OLSTrainerHook got no labels: the Trainer keeps a 'labels' column only when "
                             "the model's forward takes a labels argument; add label_names=['labels'] to "
                             "TrainingArguments")
        logits = outputs["logits"] if hasattr(outputs, "keys") else outputs[0]
        if logits.dim() > 2:  # (B, T, K) token logits, the class dimension last
            logits, labels = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
        self.loss.train(torch.is_grad_enabled())  # evaluate() and predict() run under no_grad
        if self.loss.training and not self._registered and not self._warned:
            self._warned = True
            warnings.warn("OLSTrainerHook is the Trainer's compute_loss_func but not among its callbacks, so "
                          "the loss is never stepped and its soft labels never update (it is plain label "
                          "smoothing); pass it as both: Trainer(compute_loss_func=hook, callbacks=[hook])",
                          stacklevel=2)
        if self.eval_loss == "ce" and not self.loss.training:  # evaluate(): CE against the labels
            ignore = getattr(self.loss, "ignore_index", -100)
            if num_items_in_batch is None:  # older Trainers evaluate with the plain mean
                return nn.functional.cross_entropy(logits, labels, ignore_index=ignore)
            total = nn.functional.cross_entropy(logits, labels, ignore_index=ignore, reduction="sum")
            return total / num_items_in_batch
        if num_items_in_batch is None:  # evaluation in older Trainers: the plain mean
            return self.loss(logits, labels)
        with _reduction(self.loss, "sum"):
            total = self.loss(logits, labels)
        return total / num_items_in_batch

    # -- the callback side -------------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._registered = True
        mark_stepped_by(self.loss, "OLSTrainerHook")
        self.loss.to(args.device)
        if state.global_step > 0:  # a resumed run
            step = state.global_step
            folder = (self.resume_from or _trainer_resume_folder()
                      or os.path.join(args.output_dir, f"{CHECKPOINT_PREFIX}{step}"))
            path = os.path.join(folder, _file_name(args))
            if not os.path.isfile(path):
                raise ValueError(f"resuming at step {step}, but {path} is missing, so the soft labels would "
                                 "restart from scratch; resume from a checkpoint saved with OLSTrainerHook "
                                 "among the callbacks, or pass OLSTrainerHook(loss, resume_from=FOLDER)")
            self.loss.load_state_dict(torch.load(path, map_location=args.device, weights_only=True))

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.max_steps:  # global_step / max_steps: epoch / epochs when every epoch has as many steps
            set_progress(self.loss, min(max(state.global_step / state.max_steps, 0.0), 1.0))

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        epoch = float(state.epoch or 0.0)  # epoch + (steps done) / (steps in epoch): whole at the last step
        if epoch > 0 and epoch.is_integer():
            self._step(int(epoch))

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._step(int(math.ceil(float(state.epoch or 0.0))))  # once; an epoch cut short steps here

    def _step(self, epoch: int) -> None:
        if epoch != self._stepped_epoch:
            self._stepped_epoch = epoch
            end_of_epoch(self.loss)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        folder = os.path.join(args.output_dir, f"{CHECKPOINT_PREFIX}{state.global_step}")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, _file_name(args))
        tmp = f"{path}.tmp{os.getpid()}"
        torch.save(self.loss.state_dict(), tmp)
        os.replace(tmp, path)  # atomic: a crash leaves the old file or the new one


def _trainer_resume_folder() -> Optional[str]:
    """The folder the running ``Trainer.train(resume_from_checkpoint=...)`` resumes from, if it says.

    The Trainer hands callbacks no checkpoint path, so this reads the ``resume_from_checkpoint``
    local of its training loop on the call stack (``None`` where that is not found).
    """
    frame = inspect.currentframe()
    try:
        while frame is not None:
            if frame.f_code.co_name in ("_inner_training_loop", "train"):
                value = frame.f_locals.get("resume_from_checkpoint")
                if isinstance(value, (str, os.PathLike)):
                    return os.fspath(value)
            frame = frame.f_back
        return None
    finally:
        del frame


def _file_name(args: Any) -> str:
    world = int(getattr(args, "world_size", 1) or 1)
    return "ols_loss.pt" if world == 1 else f"ols_loss-rank{int(args.process_index)}.pt"


@contextlib.contextmanager
def _reduction(loss: nn.Module, reduction: str) -> Iterator[None]:
    previous = loss.reduction
    loss.reduction = reduction
    try:
        yield
    finally:
        loss.reduction = previous
