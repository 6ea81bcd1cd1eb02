"""A warning, within the first epochs, for a periodic loss whose ``step()`` is never called.

OLS that is never stepped keeps its initial soft labels: it is label smoothing with
``eps = 1 - alpha``, and nothing else looks wrong. :class:`StepReminder` warns once, at the
first of these moments that comes after training forwards when ``step()`` was never called:

* the loss is switched to eval mode (an evaluation at an epoch's end, with the loss inside the
  module that is evaluated);
* its ``state_dict()`` is taken (a checkpoint at an epoch's end);
* two epochs seem to have ended: the batches have one size but the last of an epoch, which is
  shorter, and full batches followed a short one twice. This catches the loop that keeps the
  loss outside the model and only calls ``model.eval()``: at the start of the third epoch. A
  loader that drops its last batch, or batches of varying size, give no such sign; then only the
  count ``warn_unstepped_after`` is left.

The counts and sizes are kept on the host (a batch's size is its tensor's shape): nothing is read
from the device.

An adapter that steps the loss itself (``OLSCallback``, ``OLSTrainerHook`` among the
callbacks, the engine) sets :attr:`StepReminder.stepped_by`, so that an evaluation in the
middle of an epoch, before the adapter's step, is not taken for a forgotten step.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional

FIX = ("call crit.step() at the end of every epoch (ols.integrations.lightning.OLSCallback and "
       "ols.integrations.hf.OLSTrainerHook among the Trainer's callbacks do it), or pass update_every=N")


class StepReminder:
    """Mixin for an ``nn.Module`` loss with ``step()``: call :meth:`_note_training_forward` per forward."""

    #: the name of what steps this loss each epoch (an adapter, the engine); ``None``: the user's loop
    stepped_by: Optional[str] = None
    _training_forwards = 0
    _ever_stepped = False
    _reminded = False
    # the epoch pattern of batch sizes: a full size, the short last batch, full ones again
    _full_batch = 0
    _short_batch = 0
    _after_short = False
    _epochs_ended = 0
    _sizes_vary = False

    def _note_training_forward(self, batch: Optional[int] = None) -> None:
        """Count a training forward of ``batch`` rows (its shape; ``None`` where unknown)."""
        self._training_forwards += 1
        if batch is None or self._ever_stepped or self._sizes_vary or self._reminded:
            return
        if not self._full_batch:
            self._full_batch = batch
        elif batch == self._full_batch:
            if self._after_short:
                self._after_short, self._epochs_ended = False, self._epochs_ended + 1
                if self._epochs_ended >= 2:
                    self._remind("two epochs seem to have ended (full batches, a short last one, then full "
                                 "ones again, twice)")
        elif batch < self._full_batch and self._short_batch in (0, batch):
            self._short_batch, self._after_short = batch, True
        else:  # a third size, or a larger one: the sizes say nothing about epochs
            self._sizes_vary = True

    def _note_step(self) -> None:
        self._ever_stepped = True

    def _remind(self, moment: str) -> None:
        if (self._ever_stepped or self._reminded or not self._training_forwards or self.stepped_by is not None
                or getattr(self, "update_every", None) is not None):
            return
        self._reminded = True
        warnings.warn(f"{type(self).__name__}: {moment} after {self._training_forwards} training forward(s) "
                      "and no step(), so the soft labels have not updated; if that was the end of an epoch, "
                      f"{FIX}. (An evaluation inside the first epoch, before your step, is fine.)",
                      stacklevel=4)

    def train(self, mode: bool = True) -> Any:
        if not mode and getattr(self, "training", False):
            self._remind("switched to eval mode")
        return super().train(mode)  # type: ignore[misc]

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        self._remind("state_dict() taken")
        return super().state_dict(*args, **kwargs)  # type: ignore[misc]


def mark_stepped_by(module: Any, name: str) -> None:
    """Tell every periodic loss in ``module`` (itself and its submodules) that ``name`` steps it."""
    for m in module.modules():
        if isinstance(m, StepReminder):
            m.stepped_by = name
