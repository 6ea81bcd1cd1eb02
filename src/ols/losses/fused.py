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
    first = torch.empty(logits.shape, dtype=dtype, device=device)
    return first, torch.empty_like(first)


class WorkspaceCache:
    """Keeps one workspace for a loss module and hands out one large enough for each call.

    Scratch, not state: it is never saved, and it is remade on a new device or dtype.
    """

    def __init__(self) -> None:
        self._workspace: Optional[Workspace] = None

    def get(self, logits: Tensor) -> Workspace:
        """A workspace for ``logits`` ``(B, K)``: two ``(>= B, K)`` buffers."""
        ws = self._workspace
        if (
            ws is None
            or ws[0].device != logits.device
            or ws[0].dtype != compute_dtype(logits.dtype)
            or ws[0].shape[0] < logits.shape[0]
            or ws[0].shape[1] != logits.shape[1]
        ):
            ws = self._workspace = new_workspace(logits)
        return ws


class ForwardStats:
    """What one forward pass learned about each row, for the losses that accumulate it.

    Holds the ``(B, K)`` logits ``z`` (float32 or float64), ``target`` ``(B,)``, and the
    ``(B, 1)`` columns ``target_logit`` (``z_{i,y_i}``), ``top`` (row max) and ``sumexp``
    (``sum(exp(z - top))``), plus ``exp_shifted``, the ``(B, K)`` ``exp(z - top)`` in the
    workspace. Use it before the next call on that workspace or the backward.

    The softmax is left unnormalised, so a caller that needs only some rows (OLS
    accumulates the correctly classified ones, :meth:`correct_softmax`) pays only for those.
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
        if self._argmax_is_cheap():
            return z.argmax(dim=1) == self.target
        out = torch.zeros(z.shape[0], dtype=torch.bool, device=z.device)
        out[self.correct_softmax()[0]] = True
        return out

    def correct_softmax(self) -> Tuple[Tensor, Tensor]:
        """The ``(R,)`` rows where ``argmax(z) == target`` and their ``(R, K)`` softmax.

        The rows come in increasing order; the softmax is detached float32.

        ``argmax`` is several times slower than ``amax`` on the CPU, so there the test
        starts from the row max the loss already has: a row is correct when its target
        holds the maximum and no other class reaches it (``argmax`` breaks ties towards
        the lowest index; the rare tied rows are settled with it). Only the rows whose
        target holds the maximum are copied, and the test runs on their softmax, which
        is needed anyway, so this costs almost nothing while few predictions are right.
        """
        z = self.logits
        if self._argmax_is_cheap():
            rows = torch.nonzero(z.argmax(dim=1) == self.target)[:, 0]
            return rows, self.probs(rows)
        rows = torch.nonzero(self.target_logit == self.top)[:, 0]  # (R,) target holds the max
        if not rows.numel():
            return rows, z.new_empty((0, z.shape[1]), dtype=torch.float32)
        p_target = self.sumexp.index_select(0, rows).reciprocal_()  # (R, 1): exp(0) / sum
        probs = self.exp_shifted.index_select(0, rows).mul_(p_target)  # (R, K) softmax rows
        col = self.target.index_select(0, rows).view(-1, 1)  # (R, 1)
        # Another class tying with the target would have exp(0) too, so the same
        # probability: if every other probability is below the target's, the target is
        # the unique maximum. The rest (ties, or values that round to a tie) go to argmax.
        others = probs.scatter_(1, col, 0.0).amax(dim=1, keepdim=True)  # (R, 1)
        probs.scatter_(1, col, p_target)
        unique = (others < p_target).view(-1)  # (R,)
        if not bool(unique.all()):
            unsure = torch.nonzero(~unique)[:, 0]
            unique[unsure] = z.index_select(0, rows[unsure]).argmax(dim=1) == col.view(-1)[unsure]
            rows, probs = rows[unique], probs[unique]
        return rows, probs if probs.dtype == torch.float32 else probs.float()

    def _argmax_is_cheap(self) -> bool:
        return self.logits.device.type != "cpu" or self.logits.shape[1] <= ARGMAX_MAX_CLASSES


class _Call:
    """The non-tensor inputs of one call and what its forward hands back besides the loss.

    Passing them as one object keeps ``Function.apply``'s per-argument work small.
    """

    __slots__ = ("target", "table", "rows", "qsum", "weights", "workspace", "alpha",
                 "reduction", "want_stats", "table_scale", "per_sample", "stats")

    def __init__(self, target, table, rows, qsum, weights, workspace, alpha, reduction,
                 want_stats, table_scale):
        self.target, self.table, self.rows, self.qsum = target, table, rows, qsum
        self.weights, self.workspace, self.alpha = weights, workspace, alpha
        self.reduction, self.want_stats, self.table_scale = reduction, want_stats, table_scale
        self.per_sample: Optional[Tensor] = None
        self.stats: Optional[ForwardStats] = None


def row_factor(reduction: str, weights: Optional[Tensor], batch: int) -> float:
    """The factor ``s`` every row's loss carries in the reduced loss, if they share one."""
    return 1.0 / batch if reduction == "mean" and weights is None and batch else 1.0


class _MixedTargetCrossEntropy(torch.autograd.Function):
    """``sum_i w_i * loss_i`` (or the ``(B,)`` products) with a one-op backward.

    With ``s`` the factor of every row in the reduced loss (``1/B`` for a mean), the
    forward builds ``-s * q_i`` in one workspace buffer and ``exp(z - max)`` in the other.
    The gradient ``s * (p * sum(q) - q)`` is then a single ``addcmul`` of the two; only
    per-row weights or an upstream gradient other than 1 cost a second pass. The
    backward starts from the buffers when neither was written since the forward (their
    version counters say so); otherwise it rebuilds them with the forward's own ops, so
    both paths give the same bits and the backward is reentrant. The gradient is the
    only fresh ``(B, K)`` allocation of a step.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, call: _Call) -> Tensor:  # type: ignore[override]
        dtype = compute_dtype(logits.dtype)
        z = logits if logits.dtype == dtype else logits.to(dtype)  # (B, K)
        b = z.shape[0]
        expz, soft = call.workspace
        if expz.dtype != dtype:
            expz, soft = new_workspace(z)
        elif expz.shape[0] != b:
            expz, soft = expz[:b], soft[:b]
        s = row_factor(call.reduction, call.weights, b)
        col = call.target.view(b, 1)
        _negated_targets(call, s, col, dtype, out=soft)  # (B, K) -s * q_i
        dot = torch.mul(soft, z, out=expz).sum(1, keepdim=True)  # (B, 1) -s * <q_i, z_i>
        top = z.amax(dim=1, keepdim=True)  # (B, 1)
        torch.sub(z, top, out=expz).exp_()  # (B, K) exp(z - max)
        sumexp = expz.sum(1, keepdim=True)  # (B, 1)
        # (B,) lse * sum(q) - <q, z>
        per_sample = sumexp.log().add_(top).mul_(call.qsum).add_(dot, alpha=1.0 / s).view(b)
        call.per_sample = per_sample
        if call.want_stats:
            call.stats = ForwardStats(z, call.target, z.gather(1, col), top, sumexp, expz)
        weights, reduction = call.weights, call.reduction
        if weights is not None:
            out = weighted_reduce(per_sample, weights, reduction != "none")
        elif reduction == "mean":
            out = per_sample.mean()
        else:
            out = per_sample.sum() if reduction == "sum" else per_sample.clone()
        ctx.save_for_backward(logits)
        ctx.call, ctx.col, ctx.top, ctx.sumexp, ctx.s = call, col, top, sumexp, s
        ctx.buffers, ctx.versions = (expz, soft), (expz._version, soft._version)
        ctx.table_version = call.table._version
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        call = ctx.call
        expz, soft = ctx.buffers
        if (expz._version, soft._version) != ctx.versions:  # a later call reused them:
            expz, soft = _rebuild(ctx, expz.dtype)  # with the forward's own ops
        # dL/dz = s * (p * sum(q) - q), then the upstream and per-row factors
        grad = torch.addcmul(soft, expz, torch.div(call.qsum, ctx.sumexp).mul_(ctx.s))
        if call.weights is not None:
            grad.mul_(call.weights.to(grad.dtype).mul(grad_out).view(-1, 1))
        elif call.reduction == "none":
            grad.mul_(grad_out.to(grad.dtype).view(-1, 1))
        elif grad_out.device.type != "cpu" or float(grad_out) != 1.0:
            grad.mul_(grad_out.to(grad.dtype))
        dtype = ctx.saved_tensors[0].dtype
        return (grad if grad.dtype == dtype else grad.to(dtype)), None


def _negated_targets(call: _Call, s: float, col: Tensor, dtype: torch.dtype, out: Tensor) -> Tensor:
    """``-s * q_i = -s * ((1 - alpha) * T_i + alpha * onehot(y_i))`` into ``out`` ``(B, K)``.

    ``T_i`` is ``table[rows[i]]``, or ``table[i]`` without ``rows``. ``call.table_scale``
    says what the table is already multiplied by; OLS keeps a copy scaled by
    ``-s * (1 - alpha)``, which saves a pass here.
    """
    table = call.table if call.table.dtype == dtype else call.table.to(dtype)
    factor = -s * (1.0 - call.alpha) / call.table_scale
    if call.rows is None:
        torch.mul(table, factor, out=out)
    else:
        torch.index_select(table, 0, call.rows, out=out)
        if factor != 1.0:
            out.mul_(factor)
    return out.scatter_(1, col, -s * call.alpha, reduce="add")


def _rebuild(ctx, dtype: torch.dtype) -> Workspace:
    """The forward's ``exp(z - max)`` and ``-s * q``, recomputed after a later call reused them."""
    (logits,) = ctx.saved_tensors
    call = ctx.call
    if call.table._version != ctx.table_version:
        raise RuntimeError(
            "the soft labels changed between this loss's forward and backward (was step() "
            "called in between?), and a later call on the same loss reused its workspace, "
            "so the gradient cannot be rebuilt; call backward() before step()"
        )
    z = logits if logits.dtype == dtype else logits.to(dtype)
    soft = torch.empty_like(z)
    return torch.sub(z, ctx.top).exp_(), _negated_targets(call, ctx.s, ctx.col, dtype, out=soft)


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
    table_scale: float = 1.0,
) -> Tuple[Tensor, Tensor, Optional[ForwardStats]]:
    """``alpha * CE(z, y) + (1 - alpha) * CE(z, T[rows])``, Eq. (3)-(4), fused.

    Args:
        logits: ``(B, K)`` logits of any floating dtype.
        target: ``(B,)`` int64 class indices, all in ``[0, K)``.
        table: float32 soft labels ``T`` times ``table_scale`` (detached): ``(M, K)`` with
            ``rows``, sample ``i`` using row ``rows[i]`` (OLS passes its class table and
            the targets), or ``(B, K)``, one row per sample, without.
        alpha: weight of the hard-label term, in ``[0, 1]``.
        rows: ``(B,)`` int64 rows of ``table``, or ``None``.
        qsum: ``(B, 1)`` mass of each sample's mixed target,
            ``alpha + (1 - alpha) * sum(T_i)``; computed when omitted.
        weights: ``(B,)`` float32 factor per sample, which then replaces ``reduction``'s
            own (0 drops a row even if its loss is NaN; see ``reduction_weights``).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``, as in ``F.cross_entropy``.
        want_stats: also return the pass's :class:`ForwardStats`.
        workspace: from :func:`new_workspace`, two ``(>= B, K)`` buffers reused across
            calls; fresh ones are made when omitted.
        table_scale: the nonzero factor ``table`` already carries. A caller that keeps
            ``-(1 - alpha) * s * T``, with ``s`` from :func:`row_factor`, saves a pass.

    Returns:
        ``(loss, per_sample, stats)``: the differentiable loss (a scalar, or ``(B,)`` for
        ``"none"``), the detached unweighted ``(B,)`` per-sample loss, and the
        :class:`ForwardStats` if ``want_stats`` (else ``None``).

    The backward reads the soft labels the forward gathered. Only if a later call on the
    same workspace overwrote them does it gather again from ``table``, and if ``table``
    was changed in place in between, it raises rather than use the new values. (OLS's
    ``step()`` makes a new soft-label tensor, so it never triggers this.)
    """
    if qsum is None:
        mass = table.sum(1, keepdim=True)
        mass = (mass if rows is None else mass.index_select(0, rows)).div_(table_scale)
        qsum = mass.mul_(1.0 - alpha).add_(alpha)
    if workspace is None:
        workspace = new_workspace(logits)
    call = _Call(target, table, rows, qsum, weights, workspace, float(alpha), reduction,
                 want_stats, float(table_scale))
    loss = _MixedTargetCrossEntropy.apply(logits, call)
    assert call.per_sample is not None
    return loss, call.per_sample, call.stats
