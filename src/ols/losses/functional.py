"""Pure tensor maths behind the losses: no state, no modules.

Notation follows Zhang et al., "Delving Deep into Label Smoothing" (IEEE TIP 2021):
``K`` classes, a batch of ``B`` samples, logits ``z`` of shape ``(B, K)``. The paper's
soft-label matrix ``S`` stores one soft label per *column*; here we store it per *row*
(``soft_labels[c]`` is the distribution used as the target for samples of class ``c``),
which is the transpose and lets a batch gather its targets with one ``index_select``.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

REDUCTIONS = ("mean", "sum", "none")


class _MixedTargetCrossEntropy(torch.autograd.Function):
    """Cross-entropy against ``q = alpha * onehot(y) + (1 - alpha) * soft_rows`` in one pass.

    Eq. (4) of the paper is ``alpha * CE(hard) + (1 - alpha) * CE(soft)``. Both terms
    share one log-softmax; folding them into a single soft target halves the work of
    the naive version and the gradient has the closed form
    ``dL_i/dz_i = p_i * sum(q_i) - q_i`` (``sum(q_i)`` is 1 once the soft labels are
    distributions, ``alpha`` while they are all zeros).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        logits: Tensor,
        target: Tensor,
        soft_rows: Tensor,
        soft_mass: Tensor,
        alpha: float,
    ) -> Tuple[Tensor, Tensor]:
        z = logits.float()  # (B, K): all maths in float32, whatever the input dtype
        logp = torch.log_softmax(z, dim=1)  # (B, K)
        probs = logp.exp()  # (B, K), reused by backward and by the OLS statistics
        hard = logp.gather(1, target.unsqueeze(1)).squeeze(1)  # (B,) log p_y
        # (B,) sum_k soft_rows[i, k] * logp[i, k], as a batched dot product (one kernel)
        soft = torch.bmm(soft_rows.unsqueeze(1), logp.unsqueeze(2)).view(-1)
        loss = -(alpha * hard + (1.0 - alpha) * soft)  # (B,) Eq. (4) per sample
        ctx.save_for_backward(probs, target, soft_rows, soft_mass)
        ctx.alpha = alpha
        ctx.in_dtype = logits.dtype
        ctx.mark_non_differentiable(probs)
        return loss, probs

    @staticmethod
    def backward(ctx, grad_loss: Tensor, _grad_probs: Optional[Tensor]):  # type: ignore[override]
        probs, target, soft_rows, soft_mass = ctx.saved_tensors
        alpha = ctx.alpha
        g = grad_loss.float()  # (B,)
        # dL/dz = g * (p * sum(q) - (1 - alpha) * soft_rows - alpha * onehot)
        qsum = alpha + (1.0 - alpha) * soft_mass  # (B,)
        grad = probs * (g * qsum).unsqueeze(1)
        grad.addcmul_(soft_rows, (g * (alpha - 1.0)).unsqueeze(1))
        grad.scatter_add_(1, target.unsqueeze(1), (-alpha * g).unsqueeze(1))
        return grad.to(ctx.in_dtype), None, None, None, None


def mixed_target_cross_entropy(
    logits: Tensor,
    target: Tensor,
    soft_rows: Tensor,
    alpha: float,
    soft_mass: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """Per-sample ``alpha * CE(z, y) + (1 - alpha) * CE(z, soft_rows)``, Eq. (3)-(4).

    Args:
        logits: ``(B, K)`` logits of any floating dtype.
        target: ``(B,)`` int64 class indices, all in ``[0, K)``.
        soft_rows: ``(B, K)`` float32 soft target of each sample (detached).
        alpha: weight of the hard-label term, in ``[0, 1]``.
        soft_mass: ``(B,)`` row sums of ``soft_rows``; computed when omitted.

    Returns:
        ``(loss, probs)``: the ``(B,)`` float32 per-sample loss and the detached
        ``(B, K)`` float32 softmax of the same forward pass.
    """
    if soft_mass is None:
        soft_mass = soft_rows.sum(1)
    return _MixedTargetCrossEntropy.apply(logits, target, soft_rows, soft_mass, float(alpha))


def soft_cross_entropy(logits: Tensor, soft_targets: Tensor) -> Tensor:
    """Per-sample ``-sum_k q_k log softmax(z)_k`` for ``(B, K)`` logits and targets -> ``(B,)``."""
    return -(soft_targets * torch.log_softmax(logits.float(), dim=1)).sum(1)


def reduce_loss(per_sample: Tensor, valid: Tensor, reduction: str) -> Tensor:
    """Apply ``reduction`` to a ``(B,)`` loss, dropping the rows where ``valid`` is False.

    Matches ``F.cross_entropy``: ``"mean"`` divides by the number of valid rows (NaN when
    there are none), ``"none"`` returns zeros at the invalid rows.
    """
    per_sample = torch.where(valid, per_sample, per_sample.new_zeros(()))
    if reduction == "none":
        return per_sample
    total = per_sample.sum()
    if reduction == "sum":
        return total
    return total / valid.sum()


def make_soft_label_matrix(init: str, num_classes: int) -> Tensor:
    """The ``(K, K)`` float32 soft labels used before the first update, ``S^0``.

    ``init`` is one of:

    * ``"uniform"``: every entry ``1/K`` (the paper's text, Sec. III-B). Before the first
      update OLS then equals ``F.cross_entropy(..., label_smoothing=1 - alpha)``.
    * ``"zeros"``: the official CIFAR script; the first period trains on ``alpha * CE``.
    * ``"onehot"``: the identity; the first period trains on plain CE.
    * ``"ls:<eps>"``: ``(1 - eps) * I + eps / K``, torch's label-smoothing target.
    """
    k = num_classes
    if init == "uniform":
        return torch.full((k, k), 1.0 / k)
    if init == "zeros":
        return torch.zeros(k, k)
    if init == "onehot":
        return torch.eye(k)
    if init.startswith("ls:"):
        text = init[3:]
        try:
            eps = float(text)
        except ValueError:
            raise ValueError(
                f"init={init!r}: the part after 'ls:' must be a number, e.g. 'ls:0.1'"
            ) from None
        if not 0.0 <= eps <= 1.0:
            raise ValueError(f"init={init!r}: eps must be in [0, 1], got {eps}")
        return (1.0 - eps) * torch.eye(k) + eps / k
    raise ValueError(
        f"unknown init {init!r}; use one of 'uniform', 'zeros', 'onehot' or 'ls:<eps>'"
    )


def normalise_soft_labels(
    sums: Tensor,
    counts: Tensor,
    previous: Tensor,
    zero_count: str = "uniform",
    freeze_above: Optional[float] = None,
) -> Tensor:
    """Close an update period: the new ``(K, K)`` soft labels, Eq. (6)-(7).

    Args:
        sums: ``(K, K)`` float32; row ``c`` is the sum of the softmax outputs of the
            correctly classified samples of class ``c`` in the period, Eq. (5).
        counts: ``(K,)`` how many samples went into each row of ``sums``.
        previous: ``(K, K)`` the soft labels used during the period.
        zero_count: what a class with no correct sample gets: ``"uniform"`` (``1/K``, as in
            the official code) or ``"keep"`` (its previous row).
        freeze_above: if set, a class whose previous row has its largest entry at or
            above this value keeps that row (the official fine-grained code uses 0.88).

    Returns:
        ``(K, K)`` float32: ``sums[c] / counts[c]`` for every updated class. As each
        softmax row sums to one, this is the column normalisation of Eq. (6).
    """
    k = sums.shape[0]
    has = counts > 0  # (K,)
    new = sums / counts.clamp(min=1).to(sums.dtype).unsqueeze(1)
    if zero_count == "uniform":
        new = torch.where(has.unsqueeze(1), new, torch.full_like(new, 1.0 / k))
    elif zero_count == "keep":
        new = torch.where(has.unsqueeze(1), new, previous)
    else:
        raise ValueError(f"unknown zero_count {zero_count!r}; use 'uniform' or 'keep'")
    if freeze_above is not None:
        frozen = previous.max(dim=1).values >= freeze_above  # (K,)
        new = torch.where(frozen.unsqueeze(1), previous, new)
    return new


def one_hot_float(target: Tensor, num_classes: int) -> Tensor:
    """``(B,)`` int64 -> ``(B, K)`` float32 one-hot."""
    return F.one_hot(target, num_classes).float()
