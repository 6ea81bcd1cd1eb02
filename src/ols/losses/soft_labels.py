"""The class-level soft-label store of OLS: targets out, correct predictions in, Eq. (5)-(6)."""

from __future__ import annotations

import warnings
from typing import Optional, Union

import torch
from torch import Tensor

from ..distributed import all_reduce_sum
from .functional import check_store_options, make_soft_label_matrix, normalise_soft_labels
from .rank_local import RankLocalState
from .row_sums import add_rows

#: dense state (soft labels and sums) above this many bytes is refused in favour of ``topk``
DENSE_LIMIT_BYTES = 4_000_000_000


class SoftLabels(RankLocalState):
    r"""Dense soft labels ``S`` and the statistics of the current update period.

    The store knows nothing about losses: a loss reads :meth:`targets`, a training step
    feeds :meth:`observe`, and whoever owns the update period calls :meth:`step`. Any
    store with these four methods and ``state_dict()`` (a sparse top-k one, say) can
    serve the same losses.

    **What it holds** (``state_dict()`` saves it, mid-period too, and ``.to(device)`` moves
    it; it stays float32 whatever the module is cast to):

    * ``soft_labels`` ``(K, K)``: row ``c`` is the target of class ``c`` (column ``c`` of
      the paper's ``S``) during the current period;
    * ``sums`` ``(K + 1, K)``: Eq. (5), the period's summed (weighted) softmax outputs of
      the correct samples of each class. Row ``K`` is a discard bin that takes every row
      that does not count, so :meth:`observe` never needs a device sync. As each softmax
      row sums to one, ``sums[c].sum()`` is the (weighted) count of class ``c``
      (:attr:`counts`), and Eq. (6) divides by it. Not a buffer but rank-local state
      (:class:`~ols.losses.rank_local.RankLocalState`): ``DistributedDataParallel`` never
      overwrites one rank's sums with rank 0's, so the store may sit inside the wrapped module;
    * ``num_updates``: periods closed so far.

    Args:
        num_classes: ``K``.
        init: ``S^0``: ``"uniform"`` (the paper's text), ``"zeros"`` (the official CIFAR
            script), ``"onehot"`` or ``"ls:<eps>"``.
        zero_count: a class with no correct sample in a period gets ``"uniform"`` (``1/K``,
            the official code), ``"keep"`` (its previous row) or ``"zeros"`` (an all-zero row).
        freeze_above: a class whose soft label peaks at or above this value stops updating
            (0.88 in the official fine-grained code).
        frozen_empty: ``"keep"`` (a frozen class keeps its row) or ``"zero_count"`` (the
            official fine-grained order: with no correct sample it follows ``zero_count``
            first, and so may resume updating).
        freeze: keep ``S^0`` for good (a fixed prior given as ``init``): :meth:`step` still
            closes the period, but the soft labels never change.

    Example:
        >>> store = SoftLabels(3)
        >>> logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
        >>> store.observe(logits, torch.tensor([0, 1]))  # row 1 is wrong: not counted
        >>> store.step()
        >>> store.targets(torch.tensor([0, 2]))
        tensor([[0.7870, 0.1065, 0.1065],
                [0.3333, 0.3333, 0.3333]])
    """

    soft_labels: Tensor
    sums: Tensor
    num_updates: Tensor
    keep_float32 = ("soft_labels",)

    def __init__(
        self,
        num_classes: int,
        init: Union[str, Tensor] = "uniform",
        zero_count: str = "uniform",
        freeze_above: Optional[float] = None,
        frozen_empty: str = "keep",
        freeze: bool = False,
    ):
        super().__init__()
        self.freeze_above = check_store_options(zero_count, frozen_empty, freeze_above)
        self.num_classes = num_classes
        self.zero_count = zero_count
        self.frozen_empty = frozen_empty
        self.freeze = bool(freeze)
        k = num_classes
        if 2 * k * k * 4 > DENSE_LIMIT_BYTES:
            raise ValueError(f"dense OLS with num_classes={k} would hold {2 * k * k * 4 / 1e9:.1f} GB of "
                             "soft-label state (two K x K float32 matrices), over the "
                             f"{DENSE_LIMIT_BYTES / 1e9:.0f} GB limit; pass topk=32 for the top-k store "
                             "(about 58 MB at K = 100,000)")
        self.register_buffer("soft_labels", make_soft_label_matrix(init, k))
        self.register_rank_local("sums", torch.zeros(k + 1, k))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        self._warned_empty = False
        if hasattr(self, "register_load_state_dict_pre_hook"):  # public since torch 2.5
            self.register_load_state_dict_pre_hook(_refuse_non_finite)

    @property
    def counts(self) -> Tensor:
        """``(K + 1,)`` the period's (weighted) count of correct samples of each class, then discards."""
        return self.sums.sum(dim=1)

    def targets(self, target: Tensor) -> Tensor:
        """The ``(B, K)`` soft labels of the int64 classes ``target`` ``(B,)``."""
        return self.soft_labels.index_select(0, target)

    def observe(self, logits: Tensor, target: Tensor, weight: Optional[Tensor] = None, *,
                log_probs: Optional[Tensor] = None) -> None:
        """Add the correctly classified rows to the period's statistics, Eq. (5).

        ``logits`` ``(B, K)`` (detached, as float32), ``target`` ``(B,)`` int64 in ``[0, K)``,
        ``weight`` an optional ``(B,)`` bool mask or float weights: a row counts only where it
        is ``> 0`` and adds ``weight * softmax``. A row counts when its target has the row's
        largest log-probability; a tie with another class counts too (``argmax`` would give it
        to the lower index). A NaN or ``+inf`` logit never counts; a ``-inf`` logit (a masked
        class) is a probability of 0. Repeated labels all count. Nothing is read to the host.
        ``log_probs``: ``F.log_softmax(logits, dim=1)`` when the caller has it (the loss
        does); the softmax is then its ``exp``, one ``(B, K)`` pass instead of a softmax's three.
        """
        logp = (logits.detach().float().log_softmax(dim=1) if log_probs is None
                else log_probs.detach().float())  # (B, K)
        # correct: the target has the row's largest log-probability (amax is vectorised on CPUs,
        # argmax is not). A NaN or +inf logit makes the whole row NaN, and NaN == NaN is False.
        ok = logp.gather(1, target.unsqueeze(1)).squeeze(1) == logp.amax(dim=1)  # (B,)
        probs = logp.exp()
        if weight is not None:
            ok = ok & (weight if weight.dtype == torch.bool else weight > 0)
            if weight.dtype != torch.bool:
                probs = probs.mul_(weight.detach().float().unsqueeze(1))
        rows = torch.where(ok, target, self.num_classes)  # (B,): the discard bin takes the rest
        add_rows(self.sums, rows, probs)

    @torch.no_grad()
    def step(self) -> None:
        """Close the period: ``soft_labels[c] = sums[c] / sums[c].sum()``, Eq. (6).

        A collective under ``torch.distributed`` (the sums are all-reduced first), so all
        ranks end with the same soft labels, in a new tensor: a loss computed before the step
        keeps, for its backward, the targets it used.
        """
        k = self.num_classes
        all_reduce_sum(self.sums)
        if not self._warned_empty and not self.freeze and float(self.sums.sum()) == 0.0:
            self._warned_empty = True
            warnings.warn(
                f"SoftLabels.step() closed a period in which no training sample was observed, so every "
                f"class follows zero_count={self.zero_count!r}. Likely causes: step() called twice in one "
                "epoch (or at epoch end with update_every set), or the loss left in eval mode. Pass "
                "zero_count='keep' to keep the previous soft labels instead.",
                stacklevel=2,
            )
        sums = self.sums[:k]
        if not self.freeze:
            new = normalise_soft_labels(sums, sums.sum(dim=1), self.soft_labels, self.zero_count,
                                        self.freeze_above, self.frozen_empty)
            self.soft_labels = new.contiguous()
        self.sums.zero_()
        self.num_updates += 1

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, zero_count={self.zero_count!r}, "
                f"freeze_above={self.freeze_above}, frozen_empty={self.frozen_empty!r}")


def _refuse_non_finite(module: SoftLabels, state: dict, prefix: str, *args) -> None:
    """A state with NaN or infinite soft labels or sums would poison every later target: refuse it."""
    for name in ("soft_labels", "sums"):
        value = state.get(prefix + name)
        if name == "sums" and isinstance(value, Tensor) and value.dim() == 2:
            value = value[:module.num_classes]  # the discard bin (row K) takes NaN rows and is never read
        if isinstance(value, Tensor) and not bool(torch.isfinite(value).all()):
            raise ValueError(f"the soft-label state to load ({prefix}{name}) holds NaN or infinite values; "
                             "it comes from a diverged run: load an earlier checkpoint")
