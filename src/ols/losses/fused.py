"""The fused mixed-target cross-entropy behind OLS and OLS-Single, Eq. (3)-(4).

``loss_i = alpha * CE(z_i, y_i) + (1 - alpha) * CE(z_i, T[r_i])`` for logits ``z`` of shape
``(B, K)``, hard targets ``y`` ``(B,)`` and soft labels gathered from the rows ``r`` of a
table ``T``. With ``lse_i = logsumexp(z_i)`` and ``q_i = alpha * onehot(y_i) + (1 - alpha) *
T[r_i]`` this is ``lse_i * sum(q_i) - <q_i, z_i>``, so no log-probability matrix is needed,
and the gradient has the closed form ``dL_i/dz_i = w_i * (p_i * sum(q_i) - q_i)`` with
``p_i = exp(z_i - lse_i)``.

On the CPU the cost is memory traffic (a fresh ``(B, K)`` buffer pays for page faults) and
the number of operator calls, not arithmetic, so this module keeps both low: the gathered
soft labels and ``exp(z - max)`` live in a reusable workspace that the backward reads
again, and per-row values stay ``(B, 1)`` columns so that no reshaping op is needed.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .functional import weighted_reduce

#: up to this many classes a plain CPU ``argmax`` is cheaper than the two-``amax`` test
ARGMAX_MAX_CLASSES = 128

Workspace = Tuple[Tensor, Tensor]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the losses compute in: float64 for float64 input, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def new_workspace(logits: Tensor) -> Workspace:
    """Two ``(B, K)`` scratch buffers for :func:`mixed_target_cross_entropy` on ``logits``."""
    dtype, device = compute_dtype(logits.dtype), logits.device
    return torch.empty(logits.shape, dtype=dtype, device=device), torch.empty(
        logits.shape, dtype=dtype, device=device
    )


class ForwardStats:
    """What one forward pass learned about each row, for the losses that accumulate it.

    Holds the ``(B, K)`` logits ``z`` (float32 or float64), ``target`` ``(B,)``, and the
    ``(B, 1)`` columns ``target_logit`` (``z_{i,y_i}``), ``top`` (row max) and ``sumexp``
    (``sum(exp(z - top))``), plus ``exp_shifted``, the ``(B, K)`` ``exp(z - top)`` in the
    workspace. Use it before the next call on that workspace or the backward.

    The softmax is left unnormalised, so a caller that needs only some rows (OLS
    accumulates the correctly classified ones) pays only for those.
    """

    __slots__ = ("logits", "target", "target_logit", "top", "sumexp", "exp_shifted")

    def __init__(self, logits, target, target_logit, top, sumexp, exp_shifted):
        self.logits = logits
        self.target = target
        self.target_logit = target_logit
        self.top = top
        self.sumexp = sumexp
        self.exp_shifted = exp_shifted

    def probs(self, rows: Optional[Tensor] = None) -> Tensor:
        """The detached float32 softmax: ``(B, K)``, or ``(R, K)`` for the ``(R,)`` ``rows``."""
        if rows is None:
            return (self.exp_shifted / self.sumexp).float()
        part = self.exp_shifted.index_select(0, rows)
        return part.div_(self.sumexp.index_select(0, rows)).float()

    def correct(self) -> Tensor:
        """``(B,)`` bool: ``argmax(z) == target``, exactly as ``argmax`` decides it."""
        z = self.logits
        if z.device.type != "cpu" or z.shape[1] <= ARGMAX_MAX_CLASSES:
            return z.argmax(dim=1) == self.target
        out = torch.zeros(z.shape[0], dtype=torch.bool, device=z.device)
        out[self.correct_rows()] = True
        return out

    def correct_rows(self) -> Tensor:
        """``(R,)`` int64: the rows where ``argmax(z) == target``, in increasing order.

        ``argmax`` is several times slower than ``amax`` on the CPU, so there the test
        starts from the row max the loss already has: a row is correct when its target
        holds the maximum and no other class reaches it (``argmax`` breaks ties towards
        the lowest index, settled exactly for the rare tied rows). Only the rows whose
        target holds the maximum are copied, so this costs almost nothing while few
        predictions are right.
        """
        z = self.logits
        if z.device.type != "cpu" or z.shape[1] <= ARGMAX_MAX_CLASSES:
            return torch.nonzero(z.argmax(dim=1) == self.target).view(-1)
        rows = torch.nonzero(self.target_logit == self.top)[:, 0]  # (R,) target holds the max
        if rows.numel():
            col = self.target.index_select(0, rows).view(-1, 1)
            others = z.index_select(0, rows).scatter_(1, col, float("-inf")).amax(dim=1)  # (R,)
            drop = others == self.top.view(-1).index_select(0, rows)  # another class ties
            if bool(drop.any()):  # argmax takes the lowest tied index: settle those exactly
                tied = torch.nonzero(drop)[:, 0]
                drop[tied] = z.index_select(0, rows[tied]).argmax(dim=1) != col.view(-1)[tied]
            rows = rows[~drop]
        return rows


class _Call:
    """The non-tensor inputs of one call and what its forward hands back besides the loss.

    Passing them as one object keeps ``Function.apply``'s per-argument work small.
    """

    __slots__ = ("target", "table", "rows", "qsum", "weights", "workspace", "alpha",
                 "reduction", "want_stats", "per_sample", "stats")

    def __init__(self, target, table, rows, qsum, weights, workspace, alpha, reduction, want_stats):
        self.target, self.table, self.rows, self.qsum = target, table, rows, qsum
        self.weights, self.workspace, self.alpha = weights, workspace, alpha
        self.reduction, self.want_stats = reduction, want_stats
        self.per_sample: Optional[Tensor] = None
        self.stats: Optional[ForwardStats] = None


class _MixedTargetCrossEntropy(torch.autograd.Function):
    """``sum_i w_i * loss_i`` (or the ``(B,)`` products) with a closed-form backward.

    The forward leaves ``T[r]`` and ``exp(z - max)`` in the two workspace buffers. The
    backward starts from them when neither buffer was written since (their version
    counters say so); otherwise it rebuilds them from the saved logits and row max with
    the forward's own ops, so both paths give the same bits and the backward is
    reentrant. The gradient is the only fresh ``(B, K)`` allocation of a step.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, call: _Call) -> Tensor:  # type: ignore[override]
        dtype = compute_dtype(logits.dtype)
        z = logits if logits.dtype == dtype else logits.to(dtype)  # (B, K)
        table, target, alpha = call.table, call.target, call.alpha
        if table.dtype != dtype:
            table = table.to(dtype)
        b = z.shape[0]
        expz, soft = call.workspace
        if expz.dtype != dtype:
            expz, soft = new_workspace(z)
        elif expz.shape[0] != b:
            expz, soft = expz[:b], soft[:b]
        torch.index_select(table, 0, call.rows, out=soft)  # (B, K) T[r_i], kept for the backward
        dot = torch.mul(soft, z, out=expz).sum(1, keepdim=True)  # (B, 1) <T[r_i], z_i>
        top = z.amax(dim=1, keepdim=True)  # (B, 1)
        torch.sub(z, top, out=expz).exp_()  # (B, K) exp(z - max)
        sumexp = expz.sum(1, keepdim=True)  # (B, 1)
        col = target.view(b, 1)
        target_logit = z.gather(1, col)  # (B, 1)
        # (B, 1) lse * sum(q) - alpha * z_y - (1 - alpha) * <T[r], z>
        per_sample = sumexp.log().add_(top).mul_(call.qsum)
        per_sample.sub_(target_logit, alpha=alpha).sub_(dot, alpha=1.0 - alpha)
        per_sample = per_sample.view(b)
        call.per_sample = per_sample
        if call.want_stats:
            call.stats = ForwardStats(z, target, target_logit, top, sumexp, expz)
        weights, reduction = call.weights, call.reduction
        if weights is not None:
            out = weighted_reduce(per_sample, weights, reduction != "none")
        elif reduction == "mean":
            out = per_sample.mean()
        else:
            out = per_sample.sum() if reduction == "sum" else per_sample.clone()
        ctx.save_for_backward(logits)
        ctx.call, ctx.col, ctx.top, ctx.sumexp = call, col, top, sumexp
        ctx.buffers, ctx.versions = (expz, soft), (expz._version, soft._version)
        ctx.table_version = call.table._version
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        call = ctx.call
        expz, soft = ctx.buffers
        alpha, b = call.alpha, expz.shape[0]
        g = grad_out.to(expz.dtype)  # () or (B,): dL/dloss
        if call.weights is not None:
            g = call.weights.to(expz.dtype).mul(g).view(b, 1)  # (B, 1)
        elif call.reduction == "mean":
            g = g / b
        elif call.reduction == "none":
            g = g.view(b, 1)
        if (expz._version, soft._version) != ctx.versions:  # a later call reused them:
            expz, soft = _rebuild(ctx, expz.dtype)  # with the forward's own ops
        # dL/dz = g * (p * sum(q) - (1 - alpha) * T[r] - alpha * onehot(y))
        grad = torch.mul(expz, torch.div(call.qsum, ctx.sumexp).mul_(g))
        grad.addcmul_(soft, g, value=alpha - 1.0)
        grad.scatter_add_(1, ctx.col, g.mul(-alpha).expand(b, 1))
        dtype = ctx.saved_tensors[0].dtype
        return (grad if grad.dtype == dtype else grad.to(dtype)), None


def _rebuild(ctx, dtype: torch.dtype) -> Workspace:
    """The forward's ``exp(z - max)`` and ``T[r]``, recomputed after a later call reused them."""
    (logits,) = ctx.saved_tensors
    table = ctx.call.table
    if table._version != ctx.table_version:
        raise RuntimeError(
            "the soft labels changed between this loss's forward and backward (was step() "
            "called in between?), and a later call on the same loss reused its workspace, "
            "so the gradient cannot be rebuilt; call backward() before step()"
        )
    z = logits if logits.dtype == dtype else logits.to(dtype)
    return torch.sub(z, ctx.top).exp_(), torch.index_select(table.to(dtype), 0, ctx.call.rows)


def mixed_target_cross_entropy(
    logits: Tensor,
    target: Tensor,
    table: Tensor,
    alpha: float,
    rows: Optional[Tensor] = None,
    qsum: Optional[Tensor] = None,
    weights: Optional[Tensor] = None,
    reduction: str = "mean",
    want_stats: bool = False,
    workspace: Optional[Workspace] = None,
) -> Tuple[Tensor, Tensor, Optional[ForwardStats]]:
    """``alpha * CE(z, y) + (1 - alpha) * CE(z, table[rows])``, Eq. (3)-(4), fused.

    Args:
        logits: ``(B, K)`` logits of any floating dtype.
        target: ``(B,)`` int64 class indices, all in ``[0, K)``.
        table: ``(M, K)`` float32 soft labels (detached); sample ``i`` uses ``table[rows[i]]``.
        alpha: weight of the hard-label term, in ``[0, 1]``.
        rows: ``(B,)`` int64 rows of ``table``; defaults to ``target`` (OLS's class lookup).
        qsum: ``(B, 1)`` mass of each sample's mixed target,
            ``alpha + (1 - alpha) * sum(table[rows[i]])``; computed when omitted.
        weights: ``(B,)`` float32 factor per sample, which then replaces ``reduction``'s
            own (0 drops a row even if its loss is NaN; see ``reduction_weights``).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``, as in ``F.cross_entropy``.
        want_stats: also return the pass's :class:`ForwardStats`.
        workspace: from :func:`new_workspace`, two ``(>= B, K)`` buffers reused across
            calls; fresh ones are made when omitted.

    Returns:
        ``(loss, per_sample, stats)``: the differentiable loss (a scalar, or ``(B,)`` for
        ``"none"``), the detached unweighted ``(B,)`` per-sample loss, and the
        :class:`ForwardStats` if ``want_stats`` (else ``None``).

    The backward uses the forward's ``T[r]``, so calling ``step()`` between a loss's
    forward and backward does not change its gradient, unless a later call reused the
    workspace in between; then the backward raises instead of using the new soft labels.
    """
    if rows is None:
        rows = target
    if qsum is None:
        qsum = table.sum(1, keepdim=True).index_select(0, rows).mul_(1.0 - alpha).add_(alpha)
    if workspace is None:
        workspace = new_workspace(logits)
    call = _Call(target, table, rows, qsum, weights, workspace, float(alpha), reduction, want_stats)
    loss = _MixedTargetCrossEntropy.apply(logits, call)
    assert call.per_sample is not None
    return loss, call.per_sample, call.stats
