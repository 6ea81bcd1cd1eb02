"""The pure maths of OLS, Eq. (4)-(6) of Zhang et al. (IEEE TIP 2021): no state, no modules.

``K`` classes, a batch of ``B`` samples, log-probabilities ``logp = log_softmax(z)`` ``(B, K)``.
The paper's ``S`` holds one soft label per *column*; here row ``c`` of ``soft_labels`` is the
target of class ``c`` (the transpose), so a batch reads its targets with one ``index_select``.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

REDUCTIONS = ("mean", "sum", "none")
ZERO_COUNT_POLICIES = ("uniform", "keep", "zeros")
FROZEN_EMPTY = ("keep", "zero_count")

#: where :func:`row_sources` takes each class's new row from
NEW, UNIFORM, ZEROS, PREVIOUS = 0, 1, 2, 3


def upcast(logits: Tensor) -> Tensor:
    """``logits`` in float32, or as they are when already float32 or float64 (half and bf16 are upcast)."""
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


def soft_target_nll(logp: Tensor, target: Tensor, soft: Any, alpha: float, smoothing: float = 0.0,
                    weight: Optional[Tensor] = None) -> Tensor:
    """Eq. (4) row by row: ``-(alpha * log p_y + (1 - alpha) * <soft, log p>)``, a ``(B,)`` loss.

    Cross-entropy is linear in its target, so this is the cross-entropy against
    ``q = alpha * onehot(y) + (1 - alpha) * soft``, computed without building ``q``.

    Args:
        logp: ``(B, K)`` float log-probabilities, ``F.log_softmax(z, dim=1)``.
        target: ``(B,)`` int64 classes in ``[0, K)``.
        soft: ``(B, K)`` soft targets (rows need not sum to one; an all-zero row leaves
            ``alpha * CE``), detached. A sparse target (:class:`~ols.losses.topk.sparse.SparseRows`)
            computes the same rows itself.
        alpha: weight of the hard-label term.
        smoothing: ``F.cross_entropy``'s ``label_smoothing`` on the hard term: ``onehot(y)``
            becomes ``(1 - smoothing) * onehot(y) + smoothing / K``.
        weight: ``(K,)`` class weights, as in ``F.cross_entropy``: the row's loss is
            ``-sum_c weight_c q_c log p_c``.
    """
    if not isinstance(soft, Tensor):
        return soft.nll(logp, target, alpha, smoothing)
    if weight is not None:
        logp = logp * weight.to(logp.dtype)
    nll = F.nll_loss(logp, target, reduction="none")  # (B,) -log p_y
    if smoothing:
        nll = (1.0 - smoothing) * nll - smoothing / logp.shape[1] * logp.sum(dim=1)
    return (alpha * nll).sub_((soft.detach().to(logp.dtype) * logp).sum(dim=1), alpha=1.0 - alpha)


def reduce_rows(per: Tensor, keep: Tensor, fill: Union[float, Tensor], reduction: str,
                mass: Optional[Tensor] = None) -> Tensor:
    """Reduce a ``(B,)`` loss as ``F.cross_entropy`` does, counting only the rows ``keep`` ``(B,)``.

    A row that is not kept adds ``fill`` (0 for an ignored row, even a NaN one; NaN for a bad
    label, so the loss shows it). ``"mean"`` divides by the kept rows, or by their summed
    target weight ``mass`` ``(B,)`` (``weight[y]`` under class weights); an empty sum gives NaN.
    """
    per = torch.where(keep, per, fill)
    if reduction == "none":
        return per
    total = per.sum()
    if reduction == "sum":
        return total
    return total / (keep.sum() if mass is None else torch.where(keep, mass.to(total.dtype), 0.0).sum())


def correct_rows(logp: Tensor, target: Tensor, row_max: Optional[Tensor] = None) -> Tensor:
    """``(B,)`` bool, Eq. (5)'s "correctly classified": ``target`` has the row's largest entry of ``logp``.

    A tie at the maximum counts (``argmax`` would give it to the lower class). A NaN or
    ``+inf`` logit makes the row NaN, never equal. Ranking logits or log-probabilities is the
    same: both stores call this. ``row_max`` ``(B,)``: ``logp.amax(1)`` when the caller has it.
    """
    row_max = logp.amax(dim=1) if row_max is None else row_max
    return logp.gather(1, target.unsqueeze(1)).squeeze(1) == row_max


def check_store_options(zero_count: str, frozen_empty: str, freeze_above: Optional[float]) -> Optional[float]:
    """Refuse an unknown ``zero_count``/``frozen_empty`` or a ``freeze_above`` outside ``(0, 1]``."""
    if zero_count not in ZERO_COUNT_POLICIES:
        raise ValueError(f"unknown zero_count {zero_count!r}; use one of {', '.join(ZERO_COUNT_POLICIES)}")
    if frozen_empty not in FROZEN_EMPTY:
        raise ValueError(f"unknown frozen_empty {frozen_empty!r}; use one of {', '.join(FROZEN_EMPTY)}")
    if freeze_above is not None and not 0.0 < float(freeze_above) <= 1.0:
        raise ValueError(f"freeze_above must be in (0, 1] or None, got {freeze_above!r}")
    return None if freeze_above is None else float(freeze_above)


def row_sources(counts: Tensor, peaks: Tensor, zero_count: str = "uniform",
                freeze_above: Optional[float] = None, frozen_empty: str = "keep") -> Tensor:
    """Where each class's row comes from when a period closes, Eq. (6) and the options around it.

    ``counts`` ``(K,)``: the period's (weighted) count of correct samples of each class;
    ``peaks`` ``(K,)``: the largest entry of each class's previous row. Returns ``(K,)`` codes:

    * :data:`NEW`: the period's mean softmax, Eq. (6) (the class had a correct sample);
    * otherwise ``zero_count``: :data:`UNIFORM` (``1/K``, the official code), :data:`ZEROS`
      (Kurumi233's and ankandrew's code: the class then trains on ``alpha * CE``) or
      :data:`PREVIOUS` (``"keep"``);
    * :data:`PREVIOUS` for a class whose previous row peaks at or above ``freeze_above``
      (0.88 in the official fine-grained code). With ``frozen_empty="zero_count"`` (that
      code's order) a frozen class with no correct sample follows ``zero_count`` instead.
    """
    has = counts > 0
    empty = {"uniform": UNIFORM, "zeros": ZEROS, "keep": PREVIOUS}[zero_count]
    source = torch.where(has, NEW, empty)
    if freeze_above is not None:
        frozen = peaks >= freeze_above
        if frozen_empty == "zero_count":
            frozen = frozen & has
        source = torch.where(frozen, PREVIOUS, source)
    return source


def pick_rows(source: Tensor, new: Tensor, previous: Tensor, uniform: Any, zeros: Any) -> Tensor:
    """Each class's row from ``new``, ``previous``, ``uniform`` or ``zeros``, as ``source`` ``(K,)`` says.

    The candidates are ``(K, ...)`` tensors or values that broadcast against them.
    """
    at = source.view(-1, *([1] * (new.dim() - 1)))
    return torch.where(at == NEW, new, torch.where(at == PREVIOUS, previous,
                                                   torch.where(at == UNIFORM, uniform, zeros)))
