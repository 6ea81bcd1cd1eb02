"""PyTorch Lightning: one callback that closes every OLS update period at the right moment.

Usage (the loss is an attribute of the LightningModule, as any other criterion)::

    from ols.integrations.lightning import OLSCallback
    trainer = L.Trainer(..., callbacks=[OLSCallback()])

What it takes care of:

* **When to step.** Every periodic loss (:mod:`ols.losses.protocol`) found among the
  module's submodules, plus any passed to the callback, is stepped after the *last training
  batch* of each epoch, before validation runs. Lightning's ``ModelCheckpoint`` saves at
  validation end, so ``epoch=N.ckpt`` then holds the soft labels learned in epoch ``N``
  (stepping in ``on_train_epoch_end`` would leave epoch ``N - 1``'s in that file). A loss
  with ``update_every`` set steps itself and is left alone.
* **DDP.** ``step()`` all-reduces, and every rank reaches the last batch, so all ranks end
  with the same soft labels from all ranks' data, whether the loss sits inside the
  DDP-wrapped module (its statistics are rank-local state, never overwritten by DDP's
  buffer broadcast) or outside it.
* **Checkpoints.** A loss inside the module is saved with the module's ``state_dict``; a
  loss passed to the callback is saved in the callback's state. Both resume exactly.
* **Casts.** ``precision="bf16-true"``/``"64-true"`` cast the module; the soft labels and
  their sums stay float32.
* **Validation.** Lightning puts the module in ``eval()`` for validation, so validation
  batches never reach the soft labels.
* **Progress.** At every epoch start it tells the losses that schedule by the run's
  progress (MaxSup's ``lambda_t``) how far training is: ``epoch / max_epochs``, or
  ``global_step / max_steps`` when only ``max_steps`` is set.
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, List

from torch import nn

from ..losses.protocol import end_of_epoch, follows_progress, is_periodic, periodic_losses, set_progress
from ..losses.step_reminder import mark_stepped_by

try:
    import lightning.pytorch as pl
except ImportError:  # the older package name
    try:
        import pytorch_lightning as pl  # type: ignore[no-redef]
    except ImportError:
        raise ImportError("ols.integrations.lightning needs Lightning: "
                          "pip install 'ols[lightning]'") from None


class OLSCallback(pl.Callback):
    """Steps every periodic loss of the LightningModule (and ``losses``) once per training epoch.

    Args:
        losses: periodic losses that are not submodules of the LightningModule (a loss kept
            outside it); their state goes into the callback's checkpoint state.
    """

    def __init__(self, *losses: nn.Module):
        for loss in losses:
            if not (is_periodic(loss) or follows_progress(loss)):
                raise ValueError(f"OLSCallback: {type(loss).__name__} is not a periodic loss (it has no "
                                 "step()) and schedules nothing by the run's progress; pass OLS, OLS-Single "
                                 "or MaxSup losses only")
        self.extra: List[nn.Module] = list(losses)
        self._stepped_epoch = -1
        self._restored = False  # load_state_dict ran: a resumed fit found this callback's state

    def losses(self, pl_module: nn.Module) -> List[nn.Module]:
        """The periodic losses this callback steps: the module's own, then ``losses``, each once."""
        found = periodic_losses(pl_module) + self.extra
        unique: Dict[int, nn.Module] = {}
        for loss in found:
            unique.setdefault(id(loss), loss)
        return list(unique.values())

    def on_train_start(self, trainer: Any, pl_module: nn.Module) -> None:
        if self.extra and getattr(trainer, "ckpt_path", None) and not self._restored:
            raise ValueError(f"OLSCallback: resuming from {trainer.ckpt_path}, which holds no OLSCallback "
                             f"state, so the {len(self.extra)} loss(es) passed to the callback would restart "
                             "their soft labels from scratch; resume from a checkpoint saved with "
                             "OLSCallback(loss) among the callbacks, or keep the loss inside the "
                             "LightningModule (self.crit = loss)")
        if not self.losses(pl_module) and not follows_progress(pl_module) and not self.extra:
            warnings.warn("OLSCallback found no periodic loss (OnlineLabelSmoothing, ...) among the "
                          "LightningModule's submodules; store the loss as an attribute (self.crit = ...) or "
                          "pass it: OLSCallback(crit)", stacklevel=2)
        for loss in self.losses(pl_module):
            mark_stepped_by(loss, "OLSCallback")
        for loss in self.extra:
            loss.to(pl_module.device).train()

    def on_train_epoch_start(self, trainer: Any, pl_module: nn.Module) -> None:
        epochs, steps = trainer.max_epochs, trainer.max_steps
        if epochs is not None and epochs > 0:
            fraction = trainer.current_epoch / epochs
        elif steps is not None and steps > 0:
            fraction = trainer.global_step / steps
        else:
            return  # no end of training known: the schedule stays where it is
        fraction = min(max(fraction, 0.0), 1.0)
        set_progress(pl_module, fraction)
        for loss in self.extra:
            set_progress(loss, fraction)

    def on_train_batch_end(self, trainer: Any, pl_module: nn.Module, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.is_last_batch:  # before validation, so epoch-end checkpoints hold this epoch's labels
            self._step(trainer, pl_module)

    def on_train_epoch_end(self, trainer: Any, pl_module: nn.Module) -> None:
        self._step(trainer, pl_module)  # an epoch cut short (max_steps, limit_train_batches): once

    def _step(self, trainer: Any, pl_module: nn.Module) -> None:
        if self._stepped_epoch == trainer.current_epoch:
            return
        self._stepped_epoch = trainer.current_epoch
        for loss in self.losses(pl_module):
            end_of_epoch(loss)

    def on_validation_start(self, trainer: Any, pl_module: nn.Module) -> None:
        for loss in self.extra:  # a loss outside the module is not switched by Lightning
            loss.eval()

    def on_validation_end(self, trainer: Any, pl_module: nn.Module) -> None:
        for loss in self.extra:
            loss.train()

    def state_dict(self) -> Dict[str, Any]:
        return {"losses": [loss.state_dict() for loss in self.extra], "stepped_epoch": self._stepped_epoch}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        saved = state_dict.get("losses", [])
        if len(saved) != len(self.extra):
            raise ValueError(f"OLSCallback: the checkpoint holds {len(saved)} losses passed to the callback, "
                             f"this run passes {len(self.extra)}; pass the same losses to resume")
        for loss, state in zip(self.extra, saved):
            loss.load_state_dict(state)
        self._restored = True
        self._stepped_epoch = int(state_dict.get("stepped_epoch", -1))
