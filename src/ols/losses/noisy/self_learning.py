"""Han, Luo & Wang, "Deep self-learning from noisy labels" (ICCV 2019): ``self_learning``.

There is no official code. This follows the paper's equations (Sec. 3.2-3.3, arXiv 1908.02160);
where it leaves a choice open, the choice made is stated here:

* **S_c**, "the value ranked top 40% in S": the ``ceil(0.4 * m^2)``-th largest entry of the
  ``m x m`` similarity matrix, its diagonal (each 1) included;
* **prototypes**: the ``p`` samples of largest density ``rho`` among those with ``eta < 0.95``,
  ties broken by the lower position; if fewer than ``p`` qualify, those that do, and if none does
  (every similarity at least 0.95, as an untrained network's features can be), the densest alone;
* **features**: the input of the model's last linear layer (the penultimate, pooled features), in
  eval mode, on un-augmented images; the ``m`` images a class are drawn from its noisy labels,
  ``m`` capped at the class's size (1,280 exceeds a CIFAR class);
* **when**: the paper starts correcting after its first epoch; here after ``initial_epochs``
  (``--epochs / 15``: one epoch of a 15-epoch schedule, at least 1), then after every epoch.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..functional import reduce_rows
from .base import NoisyLabelMethod, check_positive, epoch_span, phase_epochs

INITIAL_SHARE = 1 / 15


def density_threshold(similarity: Tensor, quantile: float = 0.4) -> Tensor:
    """``S_c``: the ``ceil(quantile * m^2)``-th largest entry of ``similarity`` ``(m, m)``."""
    values = similarity.flatten()
    rank = max(1, math.ceil(quantile * values.numel()))
    return values.topk(rank).values[-1]


def select_prototypes(features: Tensor, count: int = 8, quantile: float = 0.4,
                      similarity_max: float = 0.95) -> Tensor:
    """The positions ``(<= count,)`` of a class's prototypes among its ``m`` sampled ``features`` ``(m, D)``.

    ``S_ij = cos(g_i, g_j)``; density ``rho_i = sum_j sign(S_ij - S_c)``; ``eta_i = max_{j: rho_j > rho_i}
    S_ij`` (``min_j S_ij`` for the densest); the ``count`` densest samples with ``eta < similarity_max``
    (Han et al., Sec. 3.3): dense, and unlike the denser ones.
    """
    g = F.normalize(features.float(), dim=1)
    s = g @ g.T  # (m, m)
    rho = torch.sign(s - density_threshold(s, quantile)).sum(1)  # (m,)
    denser = rho.unsqueeze(0) > rho.unsqueeze(1)  # [i, j]: rho_j > rho_i
    eta = torch.where(denser, s, torch.full_like(s, -math.inf)).amax(1)
    eta = torch.where(rho == rho.max(), s.amin(1), eta)
    order = torch.argsort(-rho, stable=True)  # densest first; a tie: the lower position
    chosen = order[eta.index_select(0, order) < similarity_max][:count]  # a host read: once a class an epoch
    return (chosen if chosen.numel() else order[:1]).cpu()


def class_similarity(features: Tensor, prototypes: Tensor, prototype_class: Tensor,
                     num_classes: int) -> Tensor:
    """``sigma`` ``(n, K)``: each feature's mean cosine similarity to each class's prototypes.

    ``features`` ``(n, D)``, ``prototypes`` ``(P, D)`` of classes ``prototype_class`` ``(P,)``; a class
    without prototypes gets ``-inf``. The corrected label is its argmax (Han et al., Eq. (4)).
    """
    sim = F.normalize(features.float(), dim=1) @ F.normalize(prototypes.float(), dim=1).T  # (n, P)
    one = F.one_hot(prototype_class, num_classes).float()  # (P, K)
    count = one.sum(0)
    mean = (sim @ one) / count.clamp_min(1)
    return torch.where(count > 0, mean, torch.full_like(mean, -math.inf))


class SelfLearning(NoisyLabelMethod):
    r"""Self-learning with multiple prototypes (Han et al., ICCV 2019): ``self_learning``.

    Trains on ``L = (1 - w) * l(z, y) + w * l(z, y^)``, ``y`` the noisy label and ``y^`` the corrected
    one, ``w = corrected_weight`` (0.5, the paper's alpha) once labels have been corrected, 0 before.
    After ``initial_epochs`` and then every epoch (:class:`~ols.tasks.self_learning.SelfLearningTask`),
    for every class ``samples_per_class`` images (1,280, capped at the class) give ``prototypes``
    (8) prototypes (:func:`select_prototypes`), and every training sample's ``y^`` is the class whose
    prototypes it is most similar to on average (:func:`class_similarity`). The module docstring
    lists where the paper is ambiguous and what is done.

    **With OLS** ``l`` is Eq. (4), and OLS's statistics count each correct row for ``y^`` (for ``y``
    before the first correction).

    **State**: ``corrected`` ``(N,)`` (-1 before the first correction) and the weight in force, in
    ``state_dict()``; the corrected labels are saved as ``corrected_labels.npy``.

    Args:
        num_samples: ``N``.
        corrected_weight: ``w`` (0.5).
        initial_epochs: epochs on the noisy labels alone; ``--epochs / 15`` (at least 1) when ``None``.
        prototypes, samples_per_class: ``p`` and ``m`` (8 and 1,280).
        density_quantile, similarity_max: the share of ``S`` above ``S_c`` (0.4) and ``eta``'s bound (0.95).
        base, alpha, epochs: as :class:`~ols.losses.noisy.base.NoisyLabelMethod`.
    """

    key = "self_learning"

    needs_index = True
    self_learning = True

    def __init__(self, num_classes: int, num_samples: int, base: str = "ce", alpha: Optional[float] = None,
                 epochs: int = 1, corrected_weight: float = 0.5, initial_epochs: Optional[int] = None,
                 prototypes: int = 8, samples_per_class: int = 1280, density_quantile: float = 0.4,
                 similarity_max: float = 0.95, ignore_index: int = -100, reduction: str = "mean",
                 validate: bool = True):
        super().__init__(num_classes, base, alpha, epochs, ignore_index, reduction, validate)
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
        for name, value in (("prototypes", prototypes), ("samples_per_class", samples_per_class)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"--loss-arg {name} must be a positive whole number, got {value!r}")
        self.corrected_weight = check_positive("corrected_weight", corrected_weight, zero=True)
        for name, value in (("corrected_weight", self.corrected_weight),
                            ("density_quantile", density_quantile), ("similarity_max", similarity_max)):
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"--loss-arg {name} must be in [0, 1], got {value}")
        self.initial_epochs = phase_epochs("initial_epochs", initial_epochs, INITIAL_SHARE, epochs, least=1)
        self.prototypes, self.samples_per_class = prototypes, samples_per_class
        self.density_quantile, self.similarity_max = float(density_quantile), float(similarity_max)
        self.num_samples = num_samples
        self.register_buffer("corrected", torch.full((num_samples,), -1, dtype=torch.long))
        self.register_buffer("weight_now", torch.zeros(()))

    def forward(self, logits: Tensor, target: Tensor, index: Tensor = None) -> Tensor:  # type: ignore[override]
        """``(1 - w) l(z, y) + w l(z, y^)`` for ``logits`` ``(B, K)``, ``target`` and ``index`` ``(B,)``."""
        rows, index = self.indexed_rows(logits, target, index, self.num_samples, "self_learning")
        found = self.corrected.index_select(0, index)
        better = torch.where(found >= 0, found, rows.labels)
        w = self.weight_now
        per = (1 - w) * self.base_loss(logits, rows.labels) + w * self.base_loss(logits, better)
        if self.training:
            self.observe(logits, torch.where(w > 0, better, rows.labels), rows.keep)
        return reduce_rows(per, rows.keep, rows.fill, self.reduction)

    @torch.no_grad()
    def set_corrected(self, index: Tensor, labels: Tensor) -> None:
        """Keep the corrected ``labels`` ``(n,)`` of the samples ``index`` ``(n,)``, and train on them."""
        self.corrected.index_copy_(0, index, labels)
        self.weight_now.fill_(self.corrected_weight)

    def corrected_labels(self) -> Optional[Tensor]:
        """``(N,)`` the corrected labels, -1 where none (``None`` before the first correction; one read)."""
        return self.corrected if bool((self.corrected >= 0).any()) else None

    def phases(self) -> str:
        return (f"{self.name} (Han et al. 2019): {epoch_span(1, self.initial_epochs)} on the noisy labels; "
                f"after epoch {self.initial_epochs} and every epoch then, labels corrected from "
                f"{self.prototypes} prototypes a class, trained with weight {self.corrected_weight:g} "
                f"from epoch {self.initial_epochs + 1} (initial_epochs={self.initial_epochs}: the paper's 1 "
                "of 15)")

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, corrected_weight={self.corrected_weight}, "
                f"initial_epochs={self.initial_epochs}, prototypes={self.prototypes}")
