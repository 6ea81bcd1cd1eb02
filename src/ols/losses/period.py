"""When a periodic loss observes and when its period closes: the schedule half of OLS.

A loss that learns from its own predictions (OLS) adds a training-mode forward to its
statistics and closes the period with ``step()``. :class:`PeriodSchedule` holds the rules
around that, so the loss module only says *what* it observes:

* a training-mode forward observes; an eval-mode one never does. A training-mode forward
  under ``torch.no_grad()`` (a validation loop that forgot ``eval()``) is not observed
  and warns once;
* ``update_every=N``: the loss steps itself after every ``N`` observed forwards (Fig. 7b);
  the training loop must then not add an epoch-end step;
* otherwise a warning after ``warn_unstepped_after`` forwards with no ``step()`` (the soft
  labels would never update). Not counted under ``torch.compile``.
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import Tensor, nn

from .functional import compiling


def check_update_every(update_every: Optional[int]) -> Optional[int]:
    """``None`` or a positive int (a bool is not one)."""
    if update_every is not None and (
        not isinstance(update_every, int) or isinstance(update_every, bool) or update_every < 1
    ):
        raise ValueError(f"update_every must be a positive integer or None, got {update_every!r}")
    return update_every


class PeriodSchedule(nn.Module):
    """Mixin: ``num_iterations`` (a buffer), :meth:`_observing`, :meth:`_count_forward`.

    The subclass calls :meth:`_init_schedule` in its ``__init__``, :meth:`_observing` before
    a forward's statistics, :meth:`_count_forward` after them, and implements ``_close()``
    (the store's ``step``).
    """

    num_iterations: Tensor

    def _init_schedule(self, update_every: Optional[int], warn_unstepped_after: Optional[int]) -> None:
        self.update_every = check_update_every(update_every)
        self.warn_unstepped_after = warn_unstepped_after
        self.register_buffer("num_iterations", torch.zeros((), dtype=torch.long))
        self._warned_no_grad = False
        self._unstepped = [0]  # mutated in place: no nn.Module.__setattr__ on every forward

    def _observing(self) -> bool:
        """True when this forward adds to the statistics: training mode with autograd on."""
        if self.training and not torch.is_grad_enabled():
            if not self._warned_no_grad:
                self._warned_no_grad = True
                warnings.warn(f"{type(self).__name__}: a training-mode forward under torch.no_grad() is not "
                              "added to the soft-label statistics (a validation loop that forgot "
                              "crit.eval()?); call crit.eval() for evaluation", stacklevel=5)
            return False
        return self.training

    def _count_forward(self) -> None:
        """Count an observed forward; step every ``update_every``, or warn when steps never come."""
        self.num_iterations.add_(1)
        if self.update_every is not None:
            if int(self.num_iterations) % self.update_every == 0:
                self.step()
        elif self.warn_unstepped_after is not None and not compiling():
            self._unstepped[0] += 1
            if self._unstepped[0] == self.warn_unstepped_after:
                warnings.warn(
                    f"{type(self).__name__}: {self._unstepped[0]} training forwards without a step(), so "
                    "the soft labels never update. Call crit.step() at the end of every epoch (the adapters "
                    "ols.integrations.lightning.OLSCallback and ols.integrations.hf.OLSTrainerHook do), or "
                    "pass update_every=N; warn_unstepped_after=None silences this", stacklevel=5)

    def step(self) -> None:
        """Close the update period (a collective under ``torch.distributed``)."""
        self._close()
        self._unstepped = [0]

    def _close(self) -> None:
        raise NotImplementedError
