r"""Per-class means of probabilities that need not sum to one: the raw-sigmoid statistic.

A sigmoid class head scores each class independently, so a positive's ``K`` sigmoids do not sum
to one. :class:`~ols.losses.soft_labels.SoftLabels` divides each class's summed rows by their
total mass, which for such rows is the *renormalised* mean. :class:`MeanSoftLabels` counts the
samples instead, so Eq. (6) becomes the plain mean of the raw probabilities:

.. math:: S[c] = \frac{1}{N_c} \sum_{i:\, y_i = c,\ \arg\max_k z_{ik} = c} \sigma(z_i)

with ``N_c`` the (weighted) number of counted positives of class ``c``: one Bernoulli target per
class (the research note's option (iii), ``../shared/research/self-distillation-and-detection.md``
§3.2). A positive scored 0.95 for its class and 0.02 for the others gives the row
``(0.95, 0.02, ...)``; renormalised it would be ``(0.95, 0.02, ...) / (0.95 + 0.02 (K - 1))``.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

from ..losses.soft_labels import SoftLabels
from ..utils.index_add import add_rows


class MeanSoftLabels(SoftLabels):
    """:class:`~ols.losses.soft_labels.SoftLabels` whose Eq. (6) divides by the count of samples.

    State: the parent's, plus ``seen`` ``(K + 1,)``, the period's (weighted) count of counted
    samples of each class (row ``K``: the rest), rank-local, all-reduced and cleared by :meth:`step`.
    """

    seen: Tensor
    finite_state = ("soft_labels", "sums", "seen")
    period_state = ("sums", "seen")

    def __init__(self, num_classes: int, init: Union[str, Tensor] = "uniform", freeze: bool = False):
        super().__init__(num_classes, init=init, freeze=freeze)
        self.register_rank_local("seen", torch.zeros(num_classes + 1))

    @property
    def counts(self) -> Tensor:
        """``(K + 1,)`` the period's (weighted) count of counted samples of each class, then the rest."""
        return self.seen

    @torch.no_grad()
    def observe(self, logp: Tensor, target: Tensor, weight: Optional[Tensor] = None) -> None:
        """Add the counted rows' probabilities ``exp(logp)`` ``(B, K)`` and their weights; no host read."""
        rows, probs, mass = self._counted_rows(logp, target, weight)
        add_rows(self.sums, rows, probs)
        mass = torch.ones_like(probs[:, :1]) if mass is None else mass.unsqueeze(1)
        add_rows(self.seen.unsqueeze(1), rows, mass)
