"""Arazo et al.'s two-component beta mixture on the per-sample losses (ICML 2019), as pure functions.

The high-loss component models the samples with wrong labels. Fitted once an epoch on the host
(``N`` numbers), then summarised as a 100-bin lookup table of ``P(noisy | loss)`` that the training
step reads on the device. Every choice follows ``PaulAlbert31/LabelNoiseCorrection`` (``utils.py``:
``track_training_loss``, ``BetaMixture1D``, ``compute_probabilities_batch``):

* the losses between the 5th and 95th percentiles are kept for the fit, and every loss is mapped
  to ``(l - low) / (high - low + 1e-6)`` with ``low = p5 + 1e-5``, ``high = p95``, a value of 1 or
  more then set to ``1 - 1e-3`` and one of 0 or less to ``1e-3``;
* EM from ``alpha = (1, 2)``, ``beta = (2, 1)``, mixing weights ``(0.5, 0.5)``, 10 iterations, on the
  losses clamped again to ``[1e-4, 1 - 1e-4]``; the E-step floors each weighted likelihood at
  1e-12 before normalising; the M-step is the weighted method of moments
  (``x̄ = Σ r x / Σ r``, ``s² = Σ r (x - x̄)² / Σ r``, ``alpha = x̄ (x̄ (1 - x̄) / s² - 1)``,
  ``beta = alpha (1 - x̄) / x̄``), not maximum likelihood;
* the table holds the posterior of component 1 (the high-loss one) at 100 points evenly spaced on
  ``[1e-4, 1 - 1e-4]``, made flat at its maximum from its argmax on, so that a larger loss is never
  less likely noisy; a loss ``x`` reads entry ``int(100 x)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Tuple

import numpy as np
import torch
from torch import Tensor

#: the lookup table's resolution, the EM's iterations and floors, as the official code
RESOLUTION, ITERATIONS, FLOOR, CLAMP, LIKELIHOOD_FLOOR = 100, 10, 1e-3, 1e-4, 1e-12


def _log_beta_pdf(x: np.ndarray, a: float, b: float) -> np.ndarray:
    return ((a - 1) * np.log(x) + (b - 1) * np.log1p(-x)
            - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)))


@dataclass(frozen=True)
class BetaMixture:
    """Two beta components: ``alphas``, ``betas`` and mixing ``weights``, each ``(2,)`` float64."""

    alphas: Tuple[float, float] = (1.0, 2.0)
    betas: Tuple[float, float] = (2.0, 1.0)
    weights: Tuple[float, float] = (0.5, 0.5)

    def weighted_likelihood(self, x: np.ndarray) -> np.ndarray:
        """``(2, n)``: ``weight_k * Beta(x; alpha_k, beta_k)``."""
        return np.stack([w * np.exp(_log_beta_pdf(x, a, b))
                         for a, b, w in zip(self.alphas, self.betas, self.weights)])

    def posterior(self, x: np.ndarray, component: int = 1) -> np.ndarray:
        """``P(component | x)`` ``(n,)``, as the official ``posterior`` (its denominator plus 1e-12)."""
        like = self.weighted_likelihood(x)
        return like[component] / (like.sum(0) + LIKELIHOOD_FLOOR)

    def fit(self, x: np.ndarray, iterations: int = ITERATIONS) -> BetaMixture:
        """The mixture after ``iterations`` EM steps from this one on ``x`` ``(n,)`` in ``(0, 1)``."""
        x = np.clip(np.asarray(x, dtype=np.float64), CLAMP, 1 - CLAMP)
        mixture = self
        for _ in range(iterations):
            r = np.maximum(mixture.weighted_likelihood(x), LIKELIHOOD_FLOOR)  # E-step
            r = r / r.sum(0)
            ab = [_moments(x, r[k]) for k in range(2)]  # M-step
            weights = r.sum(1) / r.sum()
            mixture = BetaMixture((ab[0][0], ab[1][0]), (ab[0][1], ab[1][1]), (weights[0], weights[1]))
        return mixture

    def lookup(self, component: int = 1) -> np.ndarray:
        """``(100,)``: ``P(component | x)`` on the grid, flat at its maximum from its argmax on."""
        grid = np.linspace(CLAMP, 1 - CLAMP, RESOLUTION)
        table = self.posterior(grid, component)
        table[int(np.argmax(table)):] = table.max()
        return table


def _moments(x: np.ndarray, w: np.ndarray) -> Tuple[float, float]:
    """The weighted method of moments' ``(alpha, beta)`` (the official ``fit_beta_weighted``)."""
    mean = float(np.sum(w * x) / np.sum(w))
    var = float(np.sum(w * (x - mean) ** 2) / np.sum(w))
    alpha = mean * (mean * (1 - mean) / var - 1)
    return alpha, alpha * (1 - mean) / mean


def loss_range(losses: np.ndarray) -> Tuple[float, float, float, float]:
    """``(p5, p95, low, high)`` of ``losses`` ``(n,)``: the fit keeps ``[p5, p95]`` and maps ``[low, high]``.

    ``low = p5 + 1e-5`` and ``high = p95``, rounded to float32 as the official code holds them
    (``torch.FloatTensor``); the training step reads them as float32 too.
    """
    losses = np.asarray(losses, dtype=np.float64)
    p5, p95 = float(np.percentile(losses, 5)), float(np.percentile(losses, 95))
    return p5, p95, float(np.float32(p5) + np.float32(1e-5)), float(np.float32(p95))


def normalise(losses, low: float, high: float):
    """``x = (l - low) / (high - low + 1e-6)``, then ``x >= 1`` set to ``1 - 1e-3`` and ``x <= 0`` to 1e-3.

    Numpy or torch, as given. Values just inside ``(0, 1)`` stay as they are, as in the official code
    (which replaces, rather than clamps).
    """
    if isinstance(losses, Tensor):
        x = (losses - low) / (high - low + 1e-6)
    else:  # the range in float32, as the official code holds it (its denominator is float32 arithmetic)
        x = (losses - np.float32(low)) / (np.float32(high) - np.float32(low) + np.float32(1e-6))
    where = torch.where if isinstance(x, Tensor) else np.where
    return where(x >= 1, 1 - FLOOR, where(x <= 0, FLOOR, x))


def fit_losses(losses: np.ndarray) -> Tuple[BetaMixture, float, float]:
    """``(mixture, low, high)`` fitted to per-sample ``losses`` ``(N,)`` as the official code fits them."""
    losses = np.asarray(losses, dtype=np.float64)
    p5, p95, low, high = loss_range(losses)
    kept = losses[(losses >= p5) & (losses <= p95)]
    return BetaMixture().fit(normalise(kept, low, high)), low, high


def noisy_probability(losses: Tensor, table: Tensor, low: Tensor, high: Tensor) -> Tensor:
    """``B`` ``(B,)``: the table's ``P(noisy)`` at each normalised loss, clamped to ``[1e-4, 1 - 1e-4]``.

    ``losses`` ``(B,)``, ``table`` ``(100,)``, ``low`` and ``high`` scalars, all on the device: no host read.
    """
    x = normalise(losses.float(), low, high)
    at = (x * RESOLUTION).long().clamp(0, RESOLUTION - 1)
    return table.index_select(0, at).clamp(CLAMP, 1 - CLAMP)


def lookup_tensor(mixture: BetaMixture, device: torch.device) -> Tensor:
    """The mixture's table as a ``(100,)`` float32 tensor on ``device``."""
    return torch.as_tensor(mixture.lookup(1), dtype=torch.float32, device=device)
