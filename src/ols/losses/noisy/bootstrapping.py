"""Arazo et al., "Unsupervised label noise modeling and loss correction" (ICML 2019): ``bmm``."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .base import NoisyLabelMethod, check_positive, epoch_span, one_hot, phase_epochs
from .beta_mixture import BetaMixture, lookup_tensor, noisy_probability

VARIANTS = ("hard", "soft")
#: the official warm-up: bootstrapping starts at epoch 106 of 300 (``train.py``: milestones[0] + 5 + 1)
WARMUP_SHARE = 105 / 300


def bootstrap_target(labels: Tensor, other: Tensor, noisy: Tensor, num_classes: int) -> Tensor:
    """``(1 - B) * onehot(y) + B * other``, ``(B, K)``: the dynamic bootstrapping target.

    ``other`` is ``(B,)`` classes (hard: the model's own prediction ``z``) or ``(B, K)`` probabilities
    (soft: its softmax ``p``); ``noisy`` ``(B,)`` is each sample's ``P(noisy)``.
    """
    y = one_hot(labels, num_classes)
    o = one_hot(other, num_classes) if other.dim() == 1 else other.float()
    b = noisy.float().unsqueeze(1)
    return (1 - b) * y + b * o


def class_balance_penalty(probs: Tensor) -> Tensor:
    """``sum_c (1/K) log((1/K) / mean_i p_ic)``: KL from the uniform prior to the batch's mean prediction.

    The official ``reg_loss_class``: it keeps the bootstrapped targets from collapsing onto one class.
    """
    mean = probs.float().mean(0)  # (K,)
    prior = torch.full_like(mean, 1.0 / mean.shape[0])
    return (prior * torch.log(prior / mean)).sum()


class DynamicBootstrapping(NoisyLabelMethod):
    r"""Dynamic bootstrapping with a beta mixture on the losses (Arazo et al. 2019), M-DYR-H by default.

    After ``warmup_epochs`` (the official 105 of 300: 35 % of ``--epochs``) of training on the noisy
    labels, every epoch a two-component beta mixture is fitted to every training sample's
    cross-entropy (:mod:`~ols.losses.noisy.beta_mixture`; the model in eval mode, un-augmented
    images). Each step, ``B_i = P(noisy | l_i)``, read from the mixture with the batch's eval-mode
    loss, weighs the noisy label against the model's own prediction
    (:class:`~ols.tasks.bootstrapping.BootstrappingTask`)::

        t_i = (1 - B_i) * onehot(y_i) + B_i * onehot(z_i)      hard (M-DYR-H): z_i the argmax
        t_i = (1 - B_i) * onehot(y_i) + B_i * p_i              soft (M-DYR-S): p_i the softmax
        loss = mean_i CE(h_i, lam * t_i + (1 - lam) * t_pi(i)) + reg * R(mean_i h_i)

    with ``h`` the prediction on the mixed images ``lam * x + (1 - lam) * x[pi]`` (``lam`` from
    Beta(32, 32) once a batch, ``pi`` a permutation: the official ``mixup_data_Boot``), ``z`` and
    ``p`` from a forward of the un-mixed images in training mode without gradient, and ``R`` the
    class-balance penalty (:func:`class_balance_penalty`, weight 1 as ``RunScripts.sh``). By
    linearity this is the official ``lam * ((1 - B) CE(y) + B CE(z)) + (1 - lam) * (...)[pi]``. The
    warm-up trains on ``lam * onehot(y) + (1 - lam) * onehot(y[pi])`` without the penalty (the
    official ``train_mixUp``). ``mixup=False`` gives DYR-H and DYR-S: one forward, ``z`` and ``p``
    from it, detached. Where the official code is silent or uses the training transform for the
    losses of the fit, here they are taken on un-augmented images.

    **With OLS** the target ``t`` goes through OLS's ``q(t)``; OLS's statistics take the un-mixed
    forward's correct rows for each sample's corrected label: ``z_i`` where ``B_i > 0.5``, ``y_i``
    otherwise (``y_i`` during the warm-up).

    **State** (in ``state_dict()``): the lookup table, the loss range it reads, the mixture's
    parameters, and per sample the last fit's ``P(noisy)`` and corrected label (``z`` where it is
    above 0.5, saved as ``corrected_labels.npy`` and ``noisy_probability.npy`` at the run's end).

    Args:
        num_samples: ``N``, the training set's size (the engine passes it).
        variant: ``"hard"`` (default) or ``"soft"``.
        mixup: train on mixed images (M-DYR-H/S, default) or not (DYR-H/S).
        mixup_alpha: ``alpha`` of Beta(alpha, alpha) for ``lam`` (32).
        reg: weight of the class-balance penalty (1.0).
        warmup_epochs: epochs before bootstrapping; 35 % of ``--epochs`` when ``None``, at least 1.
        base, alpha, epochs: as :class:`~ols.losses.noisy.base.NoisyLabelMethod`.
    """

    key = "bmm"

    bootstrapping = True
    cuda_graph_refusal = ("its warm-up and bootstrapping steps differ and its mixing permutation is drawn "
                          "every batch, which a captured graph does not follow yet")

    def __init__(self, num_classes: int, num_samples: int, base: str = "ce", alpha: Optional[float] = None,
                 epochs: int = 1, variant: str = "hard", mixup: bool = True, mixup_alpha: float = 32.0,
                 reg: float = 1.0, warmup_epochs: Optional[int] = None, ignore_index: int = -100,
                 reduction: str = "mean", validate: bool = True):
        super().__init__(num_classes, base, alpha, epochs, ignore_index, reduction, validate)
        if variant not in VARIANTS:
            raise ValueError(f"--loss-arg variant={variant!r}: use hard (M-DYR-H) or soft (M-DYR-S)")
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
        self.variant, self.mixup = variant, bool(mixup)
        self.mixup_alpha = check_positive("mixup_alpha", mixup_alpha)
        self.reg = check_positive("reg", reg, zero=True)
        self.warmup_epochs = phase_epochs("warmup_epochs", warmup_epochs, WARMUP_SHARE, epochs, least=1)
        self.num_samples = num_samples
        self.register_buffer("table", torch.zeros(100))
        self.register_buffer("loss_low", torch.zeros(()))
        self.register_buffer("loss_high", torch.ones(()))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.register_buffer("mixture", torch.zeros(6, dtype=torch.float64))  # alphas, betas, weights
        self.register_buffer("noisy_prob", torch.full((num_samples,), -1.0))
        self.register_buffer("corrected", torch.full((num_samples,), -1, dtype=torch.long))

    def bootstrapping_in(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (1-based) bootstraps (after the warm-up)."""
        return epoch > self.warmup_epochs

    def noisy_probability(self, losses: Tensor) -> Tensor:
        """``B`` ``(B,)`` from the batch's eval-mode losses, through the last fit; no host read."""
        return noisy_probability(losses, self.table, self.loss_low, self.loss_high)

    @torch.no_grad()
    def set_fit(self, mixture: BetaMixture, low: float, high: float, index: Tensor, losses: Tensor,
                predictions: Tensor, labels: Tensor) -> None:
        """Keep a fit (:func:`~ols.losses.noisy.beta_mixture.fit_losses`) and the training samples' results.

        For the samples ``index`` ``(n,)``: ``P(noisy)`` from their ``losses`` ``(n,)``, and the corrected
        label, the eval-mode prediction ``predictions`` ``(n,)`` where that is above 0.5 and the label
        ``labels`` ``(n,)`` trained on elsewhere.
        """
        self.table.copy_(lookup_tensor(mixture, self.table.device))
        self.loss_low.fill_(low)
        self.loss_high.fill_(high)
        self.mixture.copy_(torch.as_tensor(np.array(mixture.alphas + mixture.betas + mixture.weights)))
        self.fitted.fill_(True)
        b = self.noisy_probability(losses)
        self.noisy_prob.index_copy_(0, index, b)
        self.corrected.index_copy_(0, index, torch.where(b > 0.5, predictions, labels))

    def corrected_labels(self) -> Optional[Tensor]:
        """``(N,)``: ``z`` where the last fit puts ``P(noisy)`` above 0.5, the noisy label elsewhere.

        ``None`` before the first fit (one read).
        """
        return self.corrected if bool(self.fitted) else None

    def regulariser(self, probs: Tensor) -> Tensor:
        return class_balance_penalty(probs)

    def phases(self) -> str:
        name = ("M-" if self.mixup else "") + "DYR-" + self.variant[0].upper()
        mix = f"mixup (Beta({self.mixup_alpha:g}, {self.mixup_alpha:g}))" if self.mixup else "no mixup"
        return (f"{self.name} ({name}, Arazo et al. 2019): {epoch_span(1, self.warmup_epochs)} warm-up on "
                f"the noisy labels, {mix}; {epoch_span(self.warmup_epochs + 1, self.epochs)} dynamic "
                f"{self.variant} bootstrapping, each sample's P(noisy) from a beta mixture refitted to every "
                f"training sample's loss after each epoch from epoch {self.warmup_epochs} "
                f"(warmup_epochs={self.warmup_epochs}: the paper's 105 of 300)")

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, variant={self.variant!r}, mixup={self.mixup}, "
                f"warmup_epochs={self.warmup_epochs}")


def unmixed_targets(logits: Tensor, variant: str) -> Tensor:
    """What bootstrapping trusts instead of the label: ``z`` ``(B,)`` (hard) or ``p`` ``(B, K)`` (soft)."""
    logits = logits.detach().float()
    return logits.argmax(1) if variant == "hard" else F.softmax(logits, dim=1)
