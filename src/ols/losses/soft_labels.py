"""The dense soft-label store of OLS: targets out, correct predictions in, Eq. (5)-(6)."""

from __future__ import annotations

import warnings
from typing import Optional, Union

import torch
from torch import Tensor

from ..distributed import all_reduce_sum
from ..utils.index_add import add_rows
from .functional import check_store_options, correct_rows, pick_rows, row_sources
from .init import make_soft_label_matrix
from .rank_local import VersionedState

#: dense state (soft labels and sums) above this many bytes is refused in favour of the top-k store
DENSE_LIMIT_BYTES = 4_000_000_000


class SoftLabels(VersionedState):
    r"""Dense soft labels ``S`` and the period's statistics: :meth:`targets`, :meth:`observe`, :meth:`step`.

    The loss (:class:`~ols.losses.ols.OnlineLabelSmoothing`) owns Eq. (4); the top-k store
    (:class:`~ols.losses.topk.TopKSoftLabels`) has the same three methods. State, float32,
    saved mid-period too: ``soft_labels`` ``(K, K)``, row ``c`` the target of class ``c``
    (column ``c`` of the paper's ``S``), one tensor for the store's lifetime (:meth:`step`
    writes it in place, so a compiled or captured step reads the current one); ``sums``
    ``(K + 1, K)``, Eq. (5), whose row ``K`` takes the rows that do not count (no host-side
    selection), rank-local (:mod:`~ols.losses.rank_local`); ``num_updates``.

    Args:
        num_classes: ``K``.
        init: ``S^0``: ``"uniform"`` (the paper's text), ``"zeros"`` (the official CIFAR script),
            ``"onehot"``, ``"ls:<eps>"`` or a ``(K, K)`` prior (:mod:`~ols.losses.init`).
        zero_count, freeze_above, frozen_empty: Eq. (6)'s rules (:func:`~ols.losses.functional.row_sources`).
        freeze: keep ``S^0`` for good (a fixed prior): :meth:`step` closes periods, nothing changes.

    Example:
        >>> store = SoftLabels(3)
        >>> logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
        >>> store.observe(logits.log_softmax(1), torch.tensor([0, 1]))  # row 1 is wrong: not counted
        >>> store.step()
        >>> store.targets(torch.tensor([0, 2]))
        tensor([[0.7870, 0.1065, 0.1065],
                [0.3333, 0.3333, 0.3333]])
    """

    soft_labels: Tensor
    sums: Tensor
    num_updates: Tensor
    keep_float32 = ("soft_labels",)
    finite_state = ("soft_labels", "sums")
    #: the period's rank-local statistics, all-reduced and then cleared by :meth:`step`
    period_state: tuple = ("sums",)

    def __init__(self, num_classes: int, init: Union[str, Tensor] = "uniform", zero_count: str = "uniform",
                 freeze_above: Optional[float] = None, frozen_empty: str = "keep", freeze: bool = False):
        super().__init__()
        self.freeze_above = check_store_options(zero_count, frozen_empty, freeze_above)
        size = 2 * num_classes * num_classes * 4
        if size > DENSE_LIMIT_BYTES:
            raise ValueError(f"dense OLS with num_classes={num_classes} would hold {size / 1e9:.1f} GB of "
                             f"soft-label state (two K x K float32 matrices), over the "
                             f"{DENSE_LIMIT_BYTES // 10**9} GB limit; pass topk=32 for the top-k store "
                             "(about 58 MB at K = 100,000)")
        self.num_classes = k = num_classes
        self.zero_count, self.frozen_empty, self.freeze = zero_count, frozen_empty, bool(freeze)
        self.register_buffer("soft_labels", make_soft_label_matrix(init, k))
        self.register_rank_local("sums", torch.zeros(k + 1, k))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        self._warned_empty = False

    @property
    def counts(self) -> Tensor:
        """``(K + 1,)`` the period's (weighted) count of correct samples of each class, then discards.

        Each softmax row sums to one, so a class's row sum is its count.
        """
        return self.sums.sum(dim=1)

    def targets(self, target: Tensor) -> Tensor:
        """The ``(B, K)`` soft labels of the int64 classes ``target`` ``(B,)``."""
        return self.soft_labels.index_select(0, target)

    def observe(self, logp: Tensor, target: Tensor, weight: Optional[Tensor] = None) -> None:
        """Add the correct rows' softmax to their class's sums, Eq. (5); no host read.

        ``logp`` ``(B, K)`` detached log-probabilities, ``target`` ``(B,)`` int64 in ``[0, K)``,
        ``weight`` ``(B,)``: a bool mask or float weights (a row counts where it is ``> 0`` and
        adds ``weight * softmax``). A row counts when its target has the largest log-probability
        (:func:`~ols.losses.functional.correct_rows`); never with a NaN or ``+inf`` logit.
        """
        rows, probs, _ = self._counted_rows(logp, target, weight)
        add_rows(self.sums, rows, probs)

    def _counted_rows(self, logp: Tensor, target: Tensor, weight: Optional[Tensor]) -> tuple:
        """``(rows (B,), probs (B, K), mass (B,))``: where each row adds, and what.

        ``rows``: its class, or ``K`` (the discard bin) when it does not count; ``probs``: its
        weighted probabilities; ``mass``: its float weight, ``None`` without float ``weight`` (1 each).
        """
        logp = logp.detach().float()
        probs = logp.exp()  # (B, K)
        ok = correct_rows(logp, target)
        mass = None
        if weight is not None:
            ok = ok & (weight if weight.dtype == torch.bool else weight > 0)
            if weight.dtype != torch.bool:
                mass = weight.detach().float()
                probs = probs * mass.unsqueeze(1)
        return torch.where(ok, target, self.num_classes), probs, mass

    @torch.no_grad()
    def step(self) -> None:
        """Close the period, Eq. (6): ``soft_labels[c] = sums[c] / sums[c].sum()``, then the options.

        Writes ``soft_labels`` and clears ``sums`` in place. A collective under
        ``torch.distributed`` (the sums are all-reduced first). A loss computed before the step
        still backpropagates with the targets it read (:meth:`targets` returns a copy).
        """
        k = self.num_classes
        all_reduce_sum(*(getattr(self, name) for name in self.period_state))
        sums, counts = self.sums[:k], self.counts[:k]
        if not self._warned_empty and not self.freeze and float(counts.sum()) == 0.0:
            self._warned_empty = True
            warnings.warn("SoftLabels.step() closed a period in which no training sample was observed, so "
                          f"every class follows zero_count={self.zero_count!r}: step() called twice (or at "
                          "epoch end with update_every set), or the loss left in eval mode? Pass "
                          "zero_count='keep' to keep the previous soft labels", stacklevel=2)
        if not self.freeze:
            source = row_sources(counts, self.soft_labels.amax(dim=1), self.zero_count, self.freeze_above,
                                 self.frozen_empty)
            mean = sums / torch.where(counts > 0, counts, 1.0).unsqueeze(1)  # Eq. (6)
            self.soft_labels.copy_(pick_rows(source, mean, self.soft_labels, 1.0 / k, 0.0))
        for name in self.period_state:
            getattr(self, name).zero_()
        self.num_updates += 1

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, zero_count={self.zero_count!r}, "
                f"freeze_above={self.freeze_above}, frozen_empty={self.frozen_empty!r}")
