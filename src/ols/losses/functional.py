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
from torch import Tensor

REDUCTIONS = ("mean", "sum", "none")

#: up to this many classes a plain CPU ``argmax`` is cheaper than the two-``amax`` test
ARGMAX_MAX_CLASSES = 128

#: a row whose ``sum(exp(z - max))`` is below this cannot hold two maxima (two terms of 1)
TIE_BOUND = 1.5


class _MixedTargetCrossEntropy(torch.autograd.Function):
    """Reduced ``sum_i w_i * CE(z_i, q_i)`` with ``q_i = alpha * onehot(y_i) + (1 - alpha) * T[r_i]``.

    Eq. (4) of the paper is ``alpha * CE(hard) + (1 - alpha) * CE(soft)``. With
    ``lse_i = logsumexp(z_i)`` it reads
    ``lse_i * sum(q_i) - alpha * z_{i,y_i} - (1 - alpha) * <T[r_i], z_i>``, so no
    log-probability matrix is needed, and the gradient has the closed form
    ``dL_i/dz_i = w_i * (p_i * sum(q_i) - q_i)`` with ``p_i = exp(z_i - lse_i)``.

    Memory traffic is what costs on the CPU, where each fresh ``(B, K)`` buffer pays for
    page faults. All ``(B, K)`` intermediates therefore live in one reusable
    ``workspace``. The forward leaves the softmax there. The backward starts from it when
    the workspace is untouched since (its version counter says so); otherwise it rebuilds
    it from the saved logits, row max and ``1 / sum(exp)`` with the forward's own ops, so
    both paths give the same bits and the backward is reentrant. The gradient is the only
    fresh ``(B, K)`` allocation of a step. The forward also returns the softmax (a view of
    the workspace, valid until the next call or backward) and, on request, which rows are
    classified correctly, so OLS needs no second pass.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        logits: Tensor,
        target: Tensor,
        table: Tensor,
        rows: Tensor,
        row_mass: Tensor,
        weights: Optional[Tensor],
        workspace: Tensor,
        alpha: float,
        reduce: bool,
        want_stats: bool,
        scale: float,
    ):
        z = logits.to(compute_dtype(logits.dtype))  # (B, K) float32 (float64 stays float64)
        table = table.to(z.dtype)
        b = z.shape[0]
        col = target.view(b, 1)
        ws = workspace[:b] if workspace.dtype == z.dtype else torch.empty_like(z)  # (B, K)
        top = z.amax(dim=1, keepdim=True)  # (B, 1)
        dot = torch.index_select(table, 0, rows, out=ws).mul_(z).sum(1)  # (B,) <T[r_i], z_i>
        # logsumexp by hand, inside the workspace: exp(z - max) then its row sums
        expz = torch.sub(z, top, out=ws).exp_()  # (B, K)
        sumexp = expz.sum(1, keepdim=True)  # (B, 1)
        lse = sumexp.log().add_(top).view(b)  # (B,)
        target_logit = z.gather(1, col)  # (B, 1)
        qsum = row_mass.mul(1.0 - alpha).add_(alpha)  # (B,) sum_k q_ik
        # (B,) lse * sum(q) - alpha * z_y - (1 - alpha) * <T[r], z>
        per_sample = (lse * qsum).sub_(target_logit.view(b), alpha=alpha)
        per_sample.sub_(dot, alpha=1.0 - alpha)
        if want_stats:
            correct = argmax_equals_given_max(z, target, target_logit, top, sumexp)
        else:
            correct = torch.empty(0, dtype=torch.bool, device=z.device)
        keep_probs = want_stats or ctx.needs_input_grad[0]
        inv_sumexp = sumexp.reciprocal_()  # (B, 1)
        probs = expz.mul_(inv_sumexp) if keep_probs else expz[:0]  # (B, K) softmax
        if weights is None:  # every row counts with the same factor
            out = per_sample.sum().mul_(scale) if reduce else per_sample * scale
        else:
            out = weighted_reduce(per_sample, weights, reduce)
        ctx.scale = scale
        ctx.save_for_backward(logits, target, table, rows, qsum, weights, top, inv_sumexp)
        ctx.alpha = alpha
        ctx.workspace = ws
        ctx.probs_version = ws._version if keep_probs else None  # softmax still in `ws`?
        ctx.mark_non_differentiable(per_sample, probs, correct)
        ctx.set_materialize_grads(False)  # no zero gradients for the unused outputs
        return out, per_sample.float(), (probs if want_stats else probs[:0]).float(), correct

    @staticmethod
    def backward(ctx, grad_out, *_unused):  # type: ignore[override]
        nothing = (None,) * 10
        if grad_out is None:
            return (None,) + nothing
        logits, target, table, rows, qsum, weights, top, inv_sumexp = ctx.saved_tensors
        alpha = ctx.alpha
        z = logits.to(compute_dtype(logits.dtype))
        table = table.to(z.dtype)
        b = z.shape[0]
        if weights is None:  # (B,) dL/dloss_i
            g = (grad_out.to(z.dtype) * ctx.scale).expand(b)
        else:
            g = weights.to(z.dtype) * grad_out.to(z.dtype)
        # dL/dz = g * (p * sum(q) - (1 - alpha) * T[r] - alpha * onehot(y))
        ws = ctx.workspace
        p_factor = (g * qsum).view(b, 1)
        if ctx.probs_version is not None and ws._version == ctx.probs_version:
            grad = torch.mul(ws, p_factor)  # the forward's softmax, untouched since
        else:  # the workspace was reused in between: rebuild p with the forward's own ops
            grad = torch.sub(z, top).exp_().mul_(inv_sumexp).mul_(p_factor)
        soft_rows = torch.index_select(table, 0, rows, out=ws)
        grad.addcmul_(soft_rows, (g * (alpha - 1.0)).view(b, 1))
        grad.scatter_add_(1, target.view(b, 1), (g * -alpha).view(b, 1))
        return (grad.to(logits.dtype),) + nothing


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the losses compute in: float64 for float64 input, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def mixed_target_cross_entropy(
    logits: Tensor,
    target: Tensor,
    table: Tensor,
    alpha: float,
    rows: Optional[Tensor] = None,
    row_mass: Optional[Tensor] = None,
    weights: Optional[Tensor] = None,
    reduce: bool = False,
    want_stats: bool = False,
    workspace: Optional[Tensor] = None,
    scale: float = 1.0,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """``alpha * CE(z, y) + (1 - alpha) * CE(z, table[rows])``, Eq. (3)-(4), fused.

    Args:
        logits: ``(B, K)`` logits of any floating dtype.
        target: ``(B,)`` int64 class indices, all in ``[0, K)``.
        table: ``(M, K)`` float32 soft labels (detached); sample ``i`` uses ``table[rows[i]]``.
        alpha: weight of the hard-label term, in ``[0, 1]``.
        rows: ``(B,)`` int64 rows of ``table``; defaults to ``target`` (OLS's class lookup).
        row_mass: ``(B,)`` sums of the used rows; computed when omitted.
        weights: ``(B,)`` float32 factor per sample (0 drops a row even if its loss is NaN);
            when omitted every row is weighted by ``scale``.
        reduce: return the weighted sum instead of the weighted ``(B,)`` vector.
        want_stats: also return the softmax and ``argmax(logits) == target``.
        workspace: float32 scratch of shape ``(>= B, K)`` on the logits' device, reused
            across calls; a fresh one is made when omitted.
        scale: the factor of every row when ``weights`` is omitted (``1/B`` for a mean).

    Returns:
        ``(loss, per_sample, probs, correct)``: the differentiable loss (scalar if
        ``reduce`` else ``(B,)``), the detached unweighted ``(B,)`` float32 per-sample loss,
        and, if ``want_stats``, the detached ``(B, K)`` float32 softmax of the same forward
        pass (a view of ``workspace``: use it before the next call or the backward) and
        the ``(B,)`` bool correctness; both are empty otherwise.
    """
    if rows is None:
        rows = target
    if row_mass is None:
        row_mass = table.sum(1).index_select(0, rows)
    if workspace is None:
        workspace = torch.empty(logits.shape, dtype=torch.float32, device=logits.device)
    return _MixedTargetCrossEntropy.apply(
        logits, target, table, rows, row_mass, weights, workspace, float(alpha),
        bool(reduce), bool(want_stats), float(scale),
    )


def argmax_equals(logits: Tensor, target: Tensor, top: Optional[Tensor] = None) -> Tensor:
    """``(B,)`` bool: ``logits.argmax(1) == target``, ties resolved to the lowest index.

    Exactly ``argmax``'s answer. On the CPU ``argmax`` over rows is several times slower
    than ``amax``, so there the test uses two ``amax`` passes and falls back to
    ``argmax`` only for the rows where the target ties with another class. ``top`` is
    the precomputed ``(B,)`` row max, if the caller has it.
    """
    if logits.device.type != "cpu" or logits.shape[1] <= ARGMAX_MAX_CLASSES:
        return logits.argmax(dim=1) == target
    col = target.unsqueeze(1)
    if top is None:
        top = logits.amax(dim=1)  # (B,)
    candidate = logits.gather(1, col).squeeze(1) == top  # target holds the maximum
    unique = logits.clone().scatter_(1, col, float("-inf")).amax(dim=1) < top  # nobody else does
    result = candidate & unique
    rows = torch.nonzero(candidate > unique).squeeze(1)  # candidate and tied
    if rows.numel():  # exact ties are rare: settle them with argmax's own rule
        result[rows] = logits.index_select(0, rows).argmax(dim=1) == target[rows]
    return result


def argmax_equals_given_max(
    logits: Tensor, target: Tensor, target_logit: Tensor, top: Tensor, sumexp: Tensor
) -> Tensor:
    """``(B,)`` bool: ``logits.argmax(1) == target``, from what the loss has already computed.

    ``target_logit`` ``(B, 1)`` is ``z_{i,y_i}``, ``top`` ``(B, 1)`` the row max and
    ``sumexp`` ``(B, 1)`` the row sums of ``exp(z - top)``. A row is correct when its
    target holds the maximum and no other class ties with it. A tie would add a second
    ``exp(0) = 1`` to ``sumexp``, and rounding a sum of non-negative terms is monotone, so
    ``sumexp < TIE_BOUND`` rules ties out with no pass over the logits. Only the rows
    where the target holds the maximum but ``sumexp`` is at least the bound (a confidence
    of at most ``1 / TIE_BOUND``) are checked exactly, with :func:`argmax_equals`.
    Off the CPU, or for few classes, ``argmax`` is cheap and used directly.
    """
    if logits.device.type != "cpu" or logits.shape[1] <= ARGMAX_MAX_CLASSES:
        return logits.argmax(dim=1) == target
    holds_max = (target_logit == top).view(-1)  # (B,)
    unsure = holds_max & ~(sumexp.view(-1) < TIE_BOUND)  # NaN sums are unsure too
    rows = torch.nonzero(unsure).squeeze(1)
    if rows.numel():
        some = logits.index_select(0, rows)  # (R, K)
        holds_max[rows] = argmax_equals(some, target[rows], top=top.view(-1)[rows])
    return holds_max


def reduction_weights(valid: Tensor, reduction: str) -> Tensor:
    """``(B,)`` float32 weights that turn a per-sample loss into ``reduction``'s result.

    ``"mean"`` averages over the valid rows (NaN when there are none, as in
    ``F.cross_entropy``); ``"sum"`` and ``"none"`` weight valid rows by 1.
    """
    w = valid.float()
    return w / w.sum() if reduction == "mean" else w


def weighted_reduce(per_sample: Tensor, weights: Tensor, reduce: bool) -> Tensor:
    """``sum_i w_i * loss_i`` (or the ``(B,)`` products): a zero weight drops a row, even a NaN one."""
    weighted = per_sample.masked_fill(weights == 0, 0.0) * weights
    return weighted.sum() if reduce else weighted


def reduce_loss(per_sample: Tensor, valid: Tensor, reduction: str) -> Tensor:
    """Apply ``reduction`` to a ``(B,)`` loss, dropping the rows where ``valid`` is False.

    Matches ``F.cross_entropy``: ``"mean"`` divides by the number of valid rows (NaN when
    there are none), ``"none"`` returns zeros at the invalid rows.
    """
    return weighted_reduce(per_sample, reduction_weights(valid, reduction), reduction != "none")


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
