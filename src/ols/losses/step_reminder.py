"""A warning, within the first epoch, for a periodic loss whose ``step()`` is never called.

OLS that is never stepped keeps its initial soft labels: it is label smoothing with
``eps = 1 - alpha``, and nothing else looks wrong. A training loop ends its first epoch
by evaluating (the loss is switched to eval mode with its module) or by saving a
checkpoint (its ``state_dict()`` is taken). :class:`StepReminder` warns once at the first
of those two moments that comes after training forwards, when ``step()`` was never
called. The count is kept on the host; nothing is read from the device.

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

    def _note_training_forward(self) -> None:
        self._training_forwards += 1

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
