"""Co-teaching (Han et al., NeurIPS 2018) and Co-teaching+ (Yu et al., ICML 2019): two networks, small losses.

The registry's ``coteaching`` and ``coteaching_plus``.

Two networks see the same batch; each ranks it by its own per-sample loss and keeps the fraction
``R(T)`` with the smallest losses; each network is then updated on the samples its **peer** kept
(the exchange). Co-teaching+ does the same inside the *disagreement set*, the samples whose
predicted classes differ, from epoch ``init_epochs`` on. The step is :mod:`ols.tasks.coteaching`.

Facts from the authors' code (``bhanML/Co-teaching``, ``xingruiyu/coteaching_plus``; read, not
copied), and where this departs from it:

* **forget rate** at 0-based epoch ``T``: ``tau * T / (T_k - 1)`` while ``T < T_k`` (their
  ``linspace(0, tau, T_k)``), then ``tau``; ``R(T) = 1 - forget``. ``tau`` is the noise rate
  (``--noise-rate``) unless ``forget_rate`` is given; ``T_k`` (``gradual_epochs``) is 10 of their
  200 epochs, so ``--epochs / 20`` here by default. Their exponent ``c`` is left out (with
  ``c != 1`` their ramp jumps at ``T_k``).
* **kept**: ``int(R(T) * n)`` of the ``n`` candidates (the batch, or the disagreement set), the
  smallest losses first, ties broken by the position in the batch (a stable sort).
* **loss**: each network's mean base loss over the samples its peer kept. Their code divides that
  mean by the count a second time; that only rescales the step, and is not done here.
* **Co-teaching+** ranks by the cross-entropy of the logits (their code passes softmax outputs to
  ``F.cross_entropy``, which applies a softmax again, coteaching_plus#1; not reproduced). When the
  disagreement set is empty, both networks train on the whole batch, as their code does; when it
  is not, but keeps no sample (``int(R * n) = 0``), the step trains on nothing. ``init_epochs``:
  their CIFAR-100 value, 5 of 200 epochs (CIFAR-10: 20), so ``--epochs / 40`` by default.
* **under torchrun** each rank ranks its own batch (their code runs one process): the kept
  fraction is the same, chosen among ``--batch-size`` samples, not the global batch.

**With OLS** (``--loss-arg base=ols``): each network's per-sample loss is OLS's Eq. (4) with its
own soft labels, and that is what it ranks and trains on; its Eq. (5) statistics count the samples
it trains on (those its peer kept) that it predicts correctly.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor

from .base import check_positive, epoch_span, phase_epochs
from .two_networks import TwoNetworkMethod

#: T_k: 10 of the official 200 epochs; Co-teaching+'s init_epoch: 5 of 200 (CIFAR-100)
GRADUAL_SHARE, INIT_SHARE = 10 / 200, 5 / 200


def forget_rate(epoch: int, tau: float, gradual: int) -> float:
    """The fraction forgotten in 1-based epoch ``epoch``: ``tau`` reached linearly over ``gradual`` epochs."""
    t = epoch - 1
    if t >= gradual:
        return tau
    return 0.0 if gradual <= 1 else tau * t / (gradual - 1)


def small_loss_mask(losses: Tensor, count: int) -> Tensor:
    """``(B,)`` bool: the ``count`` smallest ``losses`` ``(B,)``, ties to the lower position; no host read."""
    order = torch.argsort(losses, stable=True)
    keep = torch.zeros_like(losses, dtype=torch.bool)
    return keep.index_fill(0, order[:count], True)


def disagreement_selection(losses: Tensor, disagree: Tensor, remember: float) -> Tuple[Tensor, Tensor]:
    """``(kept (B,) bool, n ())``: the ``int(remember * n)`` smallest ``losses`` of ``disagree``'s ``n`` rows.

    Rows outside ``disagree`` rank last (their loss taken as infinite); no host read.
    """
    n = disagree.sum()
    count = torch.floor(remember * n.double()).long()
    order = torch.argsort(torch.where(disagree, losses.float(), math.inf), stable=True)
    rank = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=order.device))
    return disagree & (rank < count), n


class CoTeaching(TwoNetworkMethod):
    """Co-teaching (Han et al., NeurIPS 2018): ``coteaching``, each network trains on its peer's pick.

    The rules, defaults and departures from the authors' code are the module docstring's.

    Args:
        noise_rate: the run's ``--noise-rate`` (``ols train`` passes it): ``tau`` unless ``forget_rate``.
        forget_rate: ``tau``, the fraction finally forgotten, in ``[0, 1)``.
        gradual_epochs: ``T_k``; ``--epochs / 20`` (10 of 200) when ``None``.
        base, alpha, epochs: as :class:`~ols.losses.noisy.base.NoisyLabelMethod`.
    """

    key = "coteaching"
    plus = False
    cuda_graph_refusal = "the share of each batch it keeps changes by epoch, and a graph would freeze it"

    def __init__(self, num_classes: int, base: str = "ce", alpha: Optional[float] = None, epochs: int = 1,
                 noise_rate: float = 0.0, forget_rate: Optional[float] = None,
                 gradual_epochs: Optional[int] = None, ignore_index: int = -100, reduction: str = "mean",
                 validate: bool = True):
        super().__init__(num_classes, base, alpha, epochs, ignore_index, reduction, validate)
        tau = noise_rate if forget_rate is None else forget_rate
        tau = check_positive("forget_rate", tau, zero=True)
        if tau >= 1:
            raise ValueError(f"--loss-arg forget_rate must be in [0, 1) (the share of each batch left out), "
                             f"got {tau}")
        self.tau = tau
        self.gradual_epochs = phase_epochs("gradual_epochs", gradual_epochs, GRADUAL_SHARE, epochs)

    def forget(self, epoch: int) -> float:
        """The forget rate of 1-based ``epoch``; ``R(T)`` is one minus it."""
        return forget_rate(epoch, self.tau, self.gradual_epochs)

    def selection(self, losses: Tensor, logits: Tensor, epoch: int) -> Tuple[Tensor, Tensor]:
        """``(kept (2, B) bool, fallback () bool)``: the samples each network keeps; whether to train on all.

        ``losses`` ``(2, B)`` are the networks' per-sample losses, ``logits`` ``(2, B, K)`` their logits;
        ``fallback`` is True where Co-teaching+ found no disagreement (train on the whole batch).
        """
        remember = 1.0 - self.forget(epoch)
        count = int(remember * losses.shape[1])
        kept = torch.stack([small_loss_mask(losses[m], count) for m in range(2)])
        return kept, torch.zeros((), dtype=torch.bool, device=losses.device)

    def exchange(self, losses: Tensor, kept: Tensor, fallback: Tensor) -> Tensor:
        """The step's loss: network ``m``'s mean of ``losses[m]`` over ``kept[1 - m]``, summed over ``m``.

        Where ``fallback``, each network's mean over the whole batch instead; an empty kept set adds 0.
        """
        total = losses.new_zeros(())
        for m in range(2):
            peer = kept[1 - m].to(losses.dtype)
            chosen = (losses[m] * peer).sum() / peer.sum().clamp_min(1)
            total = total + torch.where(fallback, losses[m].mean(), chosen)
        return total

    def phases(self) -> str:
        if self.tau == 0:
            return (f"{self.name}: forget rate 0, so every sample is kept and each network trains as with "
                    "plain CE; give --noise-rate, or --loss-arg forget_rate=TAU where the labels are noisy "
                    "already")
        kept = f"R(T) = {1 - self.tau:g} of each batch kept"
        if self.gradual_epochs <= 1:
            return f"{self.name}: forget rate {self.tau:g} from epoch {self.gradual_epochs + 1} ({kept})"
        ramp = epoch_span(1, self.gradual_epochs)
        return f"{self.name}: forget rate rises from 0 to {self.tau:g} over {ramp}, then stays ({kept})"

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", forget_rate={self.tau}, gradual_epochs={self.gradual_epochs}")


class CoTeachingPlus(CoTeaching):
    """Co-teaching+ (Yu et al., ICML 2019): ``coteaching_plus``, Co-teaching where the networks disagree.

    Args:
        init_epochs: epochs of plain Co-teaching before the disagreement set is used; ``--epochs / 40``
            (5 of 200, their CIFAR-100 value) when ``None``.
        the others: as :class:`CoTeaching`.
    """

    key = "coteaching_plus"
    plus = True

    def __init__(self, num_classes: int, base: str = "ce", alpha: Optional[float] = None, epochs: int = 1,
                 noise_rate: float = 0.0, forget_rate: Optional[float] = None,
                 gradual_epochs: Optional[int] = None, init_epochs: Optional[int] = None,
                 ignore_index: int = -100, reduction: str = "mean", validate: bool = True):
        super().__init__(num_classes, base, alpha, epochs, noise_rate, forget_rate, gradual_epochs,
                         ignore_index, reduction, validate)
        self.init_epochs = phase_epochs("init_epochs", init_epochs, INIT_SHARE, epochs)

    def selection(self, losses: Tensor, logits: Tensor, epoch: int) -> Tuple[Tensor, Tensor]:
        if epoch <= self.init_epochs:
            return super().selection(losses, logits, epoch)
        disagree = logits[0].argmax(1) != logits[1].argmax(1)  # (B,)
        remember = 1.0 - self.forget(epoch)
        kept, n = zip(*(disagreement_selection(losses[m], disagree, remember) for m in range(2)))
        return torch.stack(kept), n[0] == 0

    def phases(self) -> str:
        if not self.init_epochs:
            return super().phases() + "; on the disagreement set from epoch 1"
        return (super().phases() + f"; {epoch_span(1, self.init_epochs)} on the whole batch, then on the "
                "disagreement set")

    def extra_repr(self) -> str:
        return super().extra_repr() + f", init_epochs={self.init_epochs}"

