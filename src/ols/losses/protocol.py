"""The one contract between a loss and whoever trains with it: the periodic-loss protocol.

Most losses are plain functions of ``(logits, target)``. A *periodic* loss (OLS, OLS-Single)
also holds state that changes once per update period, and says so by having:

* ``step()``: close the period. Under ``torch.distributed`` it is a collective: every rank
  calls it at the same point.
* ``update_every``: ``None`` when the period is one epoch, so the training loop calls
  ``step()`` after every epoch; an int ``N`` when the loss steps itself every ``N``
  training forwards, so the loop must *not* add an epoch-end step (that would close an
  empty period).
* ``needs_index``: ``True`` when ``forward`` also takes ``index=`` (the dataset position of
  every sample, as OLS-Single needs).
* ``soft_labels`` (optional): the ``(K, K)`` class-level soft labels, row ``c`` the target
  of class ``c``, for losses that learn them.

Two more class attributes say what a loss takes as input (absent means no):

* ``takes_exits``: ``forward(logits, target)`` takes a list of every exit's logits,
  deepest first (self-distillation over a :class:`~ols.models.exits.MultiExit`).
* ``views``: ``2`` when ``forward(logits_a, logits_b, target)`` takes two augmented views
  of each image (Xu et al.'s self-distillation).
* ``networks``: ``2`` when the method trains two networks (Co-teaching, DivideMix): the run's
  model is then a :class:`~ols.models.pair.NetworkPair`.

The engine, the trainer, ``ols eval`` and the framework adapters go through the helpers
below, never through ``hasattr`` checks of their own.
"""

from __future__ import annotations

from typing import List, Optional, Protocol, runtime_checkable

from torch import Tensor, nn


@runtime_checkable
class PeriodicLoss(Protocol):
    """A loss whose state changes once per update period (see the module docstring)."""

    needs_index: bool
    update_every: Optional[int]

    def step(self) -> None:
        """Close the update period (a collective under ``torch.distributed``)."""


def is_periodic(loss: nn.Module) -> bool:
    """True for a loss that follows :class:`PeriodicLoss`."""
    return isinstance(loss, PeriodicLoss)


def needs_index(loss: nn.Module) -> bool:
    """True when ``loss.forward`` takes ``index=`` (each sample's dataset position)."""
    return bool(getattr(loss, "needs_index", False))


def end_of_epoch(loss: nn.Module) -> bool:
    """Close ``loss``'s period at an epoch end when its period is the epoch; True if it stepped.

    A loss with ``update_every`` set steps itself and is left alone. A collective under
    ``torch.distributed`` for the losses that step.
    """
    if is_periodic(loss) and loss.update_every is None:
        loss.step()
        return True
    return False


def soft_labels_of(loss: nn.Module) -> Optional[Tensor]:
    """The ``(K, K)`` class-level soft labels of ``loss``, or ``None`` for a loss without them."""
    soft = getattr(loss, "soft_labels", None)
    return soft if isinstance(soft, Tensor) else None


def takes_exits(loss: nn.Module) -> bool:
    """True when ``loss`` takes every exit's logits of a multi-exit model, deepest first."""
    return bool(getattr(loss, "takes_exits", False))


def views_of(loss: nn.Module) -> int:
    """How many augmented views of each image ``loss`` takes (1 for a plain loss)."""
    return int(getattr(loss, "views", 1))


def networks_of(loss) -> int:
    """How many networks ``loss`` (an instance or a registry class) trains: 1, or 2.

    2 for Co-teaching and DivideMix, whose run's model is a :class:`~ols.models.pair.NetworkPair`.
    """
    return int(getattr(loss, "networks", 1))


def periodic_losses(module: nn.Module) -> List[nn.Module]:
    """The periodic losses among ``module`` and its submodules, outermost only.

    A periodic loss inside another (the OLS store of ``byot+ols``) is stepped by its owner,
    so it is not listed again: stepping both would close its period twice.
    """
    if is_periodic(module):
        return [module]
    return [loss for child in module.children() for loss in periodic_losses(child)]


def set_progress(module: nn.Module, fraction: float) -> int:
    """Tell every loss in ``module`` that schedules by the run's progress how far it is; returns how many.

    ``fraction`` in ``[0, 1]`` is the share of training done: ``epoch / epochs`` at the start
    of epoch ``epoch = 0 .. epochs-1``. A loss that schedules by it (MaxSup's ``lambda_t``)
    has ``set_progress(fraction)``; the engine, ``OLSCallback`` and ``OLSTrainerHook`` call
    this at every epoch start, and a loop of your own can too. Host side, no device read.
    """
    count = 0
    for m in module.modules():
        fn = getattr(m, "set_progress", None)
        if callable(fn):
            fn(fraction)
            count += 1
    return count


def follows_progress(module: nn.Module) -> bool:
    """True if ``module`` or a submodule schedules by the run's progress (has ``set_progress``)."""
    return any(callable(getattr(m, "set_progress", None)) for m in module.modules())
