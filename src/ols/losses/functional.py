"""Pure tensor maths behind the losses: no state, no modules.

Notation follows Zhang et al., "Delving Deep into Label Smoothing" (IEEE TIP 2021):
``K`` classes, a batch of ``B`` samples, logits ``z`` of shape ``(B, K)``. The paper's
soft-label matrix ``S`` stores one soft label per *column*; here we store it per *row*
(``soft_labels[c]`` is the distribution used as the target for samples of class ``c``),
which is the transpose and lets a batch gather its targets with one ``index_select``.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

REDUCTIONS = ("mean", "sum", "none")
ZERO_COUNT_POLICIES = ("uniform", "keep", "zeros")
FROZEN_EMPTY = ("keep", "zero_count")


def compiling() -> bool:
    """True while ``torch.compile`` traces the caller (``torch.compiler.is_compiling``, torch >= 2.3)."""
    is_compiling = getattr(torch.compiler, "is_compiling", None)
    return bool(is_compiling()) if is_compiling is not None else False


def upcast(logits: Tensor) -> Tensor:
    """``logits`` in float32, or as they are when already float32 or float64 (half and bf16 are upcast)."""
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


def reduce_loss(per_sample: Tensor, valid: Optional[Tensor], reduction: str) -> Tensor:
    """Apply ``reduction`` to a ``(B,)`` loss, dropping the rows where ``valid`` is False.

    Matches ``F.cross_entropy``: ``"mean"`` divides by the number of valid rows (NaN when
    there are none), ``"none"`` returns zeros at the invalid rows. ``valid=None`` means
    every row counts.
    """
    if valid is None:
        return per_sample.mean() if reduction == "mean" else per_sample.sum() if reduction == "sum" \
            else per_sample
    kept = per_sample.masked_fill(~valid, 0.0)  # a dropped row adds nothing, even a NaN one
    if reduction == "mean":  # the sum over the count: 0 / 0 is NaN for an empty or all-ignored batch
        return kept.sum() / valid.sum()
    return kept.sum() if reduction == "sum" else kept


def prior_matrix(prior: Union[Tensor, np.ndarray, str], num_classes: int) -> Tensor:
    """A user's ``(K, K)`` class-similarity prior (a tensor, an array or a ``.npy`` path) as soft labels.

    Entries must be finite and non-negative; each row is divided by its sum, so similarity
    scores (WordNet, CLIP, human confusions) serve as they are. Row ``c`` is the target of
    class ``c``.
    """
    where = f"init={prior!r}" if isinstance(prior, str) else "init (a prior matrix)"
    if isinstance(prior, str):
        try:
            prior = np.load(prior, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise ValueError(f"{where}: cannot read the .npy file ({err})") from None
    matrix = torch.as_tensor(np.asarray(prior) if not isinstance(prior, Tensor) else prior).double()
    k = num_classes
    if matrix.shape != (k, k):
        raise ValueError(f"{where}: a prior must be ({k}, {k}) for num_classes={k}, got "
                         f"{tuple(matrix.shape)}")
    if not bool(torch.isfinite(matrix).all()) or bool((matrix < 0).any()):
        raise ValueError(f"{where}: a prior must hold finite, non-negative entries")
    total = matrix.sum(1, keepdim=True)
    if bool((total == 0).any()):
        row = int(torch.nonzero(total.squeeze(1) == 0)[0])
        raise ValueError(f"{where}: row {row} of the prior is all zero; give every class some mass")
    return (matrix / total).float()


def make_soft_label_matrix(init: Union[str, Tensor, np.ndarray], num_classes: int) -> Tensor:
    """The ``(K, K)`` float32 soft labels used before the first update, ``S^0``.

    ``init`` is a ``(K, K)`` prior (tensor, array or ``.npy`` path; see :func:`prior_matrix`)
    or one of:

    * ``"uniform"``: every entry ``1/K`` (the paper's text, Sec. III-B). Before the first
      update OLS then equals ``F.cross_entropy(..., label_smoothing=1 - alpha)``.
    * ``"zeros"``: the official CIFAR script; the first period trains on ``alpha * CE``.
    * ``"onehot"``: the identity; the first period trains on plain CE.
    * ``"ls:<eps>"``: ``(1 - eps) * I + eps / K``, torch's label-smoothing target.
    """
    if isinstance(init, (Tensor, np.ndarray)) or (isinstance(init, str) and init.endswith(".npy")):
        return prior_matrix(init, num_classes)
    k = num_classes
    diagonal, off = named_init(init, k)
    return (diagonal - off) * torch.eye(k) + off


def named_init(init: str, num_classes: int) -> Tuple[float, float]:
    """``(diagonal, off-diagonal)`` entry of the named ``S^0`` ``init`` (see :func:`make_soft_label_matrix`).

    Every named init is a constant on the diagonal and another off it; a top-k store builds
    its rows from the pair without a ``K x K`` matrix.
    """
    if not isinstance(init, str):
        raise ValueError(f"init must be a string such as 'uniform', 'zeros', 'onehot', 'ls:0.1' or a .npy "
                         f"path, or a (K, K) prior tensor; got {init!r} ({type(init).__name__})")
    k = num_classes
    if init == "uniform":
        return 1.0 / k, 1.0 / k
    if init == "zeros":
        return 0.0, 0.0
    if init == "onehot":
        return 1.0, 0.0
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
        return 1.0 - eps + eps / k, eps / k
    raise ValueError(
        f"unknown init {init!r}; use one of 'uniform', 'zeros', 'onehot' or 'ls:<eps>'"
    )


def check_store_options(zero_count: str, frozen_empty: str, freeze_above: Optional[float]) -> Optional[float]:
    """Refuse an unknown ``zero_count``/``frozen_empty`` or a ``freeze_above`` outside ``(0, 1]``.

    Shared by the dense and the top-k store; returns ``freeze_above`` as a float (or ``None``).
    """
    if zero_count not in ZERO_COUNT_POLICIES:
        raise ValueError(f"unknown zero_count {zero_count!r}; use one of {', '.join(ZERO_COUNT_POLICIES)}")
    if frozen_empty not in FROZEN_EMPTY:
        raise ValueError(f"unknown frozen_empty {frozen_empty!r}; use one of {', '.join(FROZEN_EMPTY)}")
    if freeze_above is not None and not 0.0 < float(freeze_above) <= 1.0:
        raise ValueError(f"freeze_above must be in (0, 1] or None, got {freeze_above!r}")
    return None if freeze_above is None else float(freeze_above)


#: dense state (soft labels and sums) above this many bytes is refused in favour of ``topk``
DENSE_LIMIT_BYTES = 4_000_000_000


def check_dense_size(num_classes: int) -> None:
    """Refuse a dense store whose two ``K x K`` float32 matrices exceed :data:`DENSE_LIMIT_BYTES`."""
    size = 2 * num_classes * num_classes * 4
    if size > DENSE_LIMIT_BYTES:
        raise ValueError(f"dense OLS with num_classes={num_classes} would hold {size / 1e9:.1f} GB of "
                         "soft-label state (two K x K float32 matrices), over the "
                         f"{DENSE_LIMIT_BYTES / 1e9:.0f} GB limit; pass topk=32 for the top-k store "
                         "(about 58 MB at K = 100,000)")


def refuse_non_finite_state(module: Any, state: dict, prefix: str, *args: Any) -> None:
    """Load pre-hook of the dense store: refuse NaN or infinite soft labels or sums.

    They would poison every later target. The sums' discard bin (row ``K``) takes NaN rows
    and is never read, so it is not checked.
    """
    for name in ("soft_labels", "sums"):
        value = state.get(prefix + name)
        if name == "sums" and isinstance(value, Tensor) and value.dim() == 2:
            value = value[:module.num_classes]
        if isinstance(value, Tensor) and not bool(torch.isfinite(value).all()):
            raise ValueError(f"the soft-label state to load ({prefix}{name}) holds NaN or infinite values; "
                             "it comes from a diverged run: load an earlier checkpoint")


def normalise_soft_labels(
    sums: Tensor,
    counts: Tensor,
    previous: Tensor,
    zero_count: str = "uniform",
    freeze_above: Optional[float] = None,
    frozen_empty: str = "keep",
) -> Tensor:
    """Close an update period: the new ``(K, K)`` soft labels, Eq. (6)-(7).

    Args:
        sums: ``(K, K)`` float32; row ``c`` is the (weighted) sum of the softmax outputs of
            the correctly classified samples of class ``c`` in the period, Eq. (5).
        counts: ``(K,)`` the (weighted) number of samples in each row of ``sums``.
        previous: ``(K, K)`` the soft labels used during the period.
        zero_count: what a class with no correct sample gets: ``"uniform"`` (``1/K``, the
            official code and mmcls), ``"keep"`` (its previous row) or ``"zeros"`` (an
            all-zero row, as Kurumi233's and ankandrew's code: its samples then train on
            ``alpha * CE`` alone).
        freeze_above: if set, a class whose previous row has its largest entry at or
            above this value keeps that row (the official fine-grained code uses 0.88).
        frozen_empty: ``"keep"``: a frozen class keeps its row even with no correct
            sample. ``"zero_count"``: the official fine-grained order, in which the
            zero-count rule comes first, so a frozen class with no correct sample is reset
            (to uniform by default) and then resumes updating.

    Returns:
        ``(K, K)`` float32: ``sums[c] / counts[c]`` for every updated class. As each
        softmax row sums to one, this is the column normalisation of Eq. (6).
    """
    has = counts > 0  # (K,)
    new = sums / torch.where(has, counts, torch.ones_like(counts)).to(sums.dtype).unsqueeze(1)
    if zero_count == "uniform":
        empty = torch.full_like(new, 1.0 / sums.shape[0])
    elif zero_count == "keep":
        empty = previous
    elif zero_count == "zeros":
        empty = torch.zeros_like(new)
    else:
        raise ValueError(f"unknown zero_count {zero_count!r}; use one of {', '.join(ZERO_COUNT_POLICIES)}")
    new = torch.where(has.unsqueeze(1), new, empty)
    if freeze_above is not None:
        frozen = previous.max(dim=1).values >= freeze_above  # (K,)
        if frozen_empty == "zero_count":
            frozen = frozen & has
        new = torch.where(frozen.unsqueeze(1), previous, new)
    return new


def correct_rows(log_probs: Tensor, target: Tensor) -> Tensor:
    """``(B,)`` bool: the row's target ``(B,)`` has its largest log-probability in ``log_probs`` ``(B, K)``.

    A tie at the maximum counts (``argmax`` would give it to the lower class). A NaN or ``+inf``
    logit makes the row NaN, never equal. ``amax`` is vectorised on CPUs, ``argmax`` is not.
    """
    return log_probs.gather(1, target.unsqueeze(1)).squeeze(1) == log_probs.amax(dim=1)


def mixed_target_nll(
    log_probs: Tensor,
    target: Tensor,
    soft: Tensor,
    alpha: float,
    valid: Optional[Tensor] = None,
    reduction: str = "mean",
    weight: Optional[Tensor] = None,
    smoothing: float = 0.0,
) -> Tensor:
    """Eq. (4), ``alpha * CE(z, y) + (1 - alpha) * CE(z, soft)``, reduced as ``F.cross_entropy`` does.

    Cross-entropy is linear in its target, so this is the cross-entropy against the mixed
    target ``q = alpha * onehot(y) + (1 - alpha) * soft``:
    ``-(alpha * log p_y + (1 - alpha) * <soft, log p>)``. The caller passes ``log p =
    F.log_softmax(z, dim=1)``, so that it can read the softmax from it too (its ``exp``).
    Under ``torch.compile`` the same value comes from :func:`mixed_target_rows`.

    Args:
        log_probs: ``(B, K)`` float log-probabilities, ``F.log_softmax(logits, dim=1)``.
        target: ``(B,)`` int64 classes in ``[0, K)`` (any value at ignored rows).
        soft: ``(B, K)`` soft targets; rows need not sum to one (an all-zero row leaves
            ``alpha * CE``). No gradient flows into them. Overwritten in place in eager mode (with the
            scaled mixed target): pass a fresh tensor such as ``store.targets(y)``.
        alpha: weight of the hard-label term.
        valid: optional ``(B,)`` bool, False at ignored rows: they add nothing, even when
            their logits are NaN, and ``"mean"`` divides by the number of valid rows.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (``(B,)``, zero at ignored rows).
        weight: optional ``(K,)`` class weights, as in ``F.cross_entropy``: each row's loss is
            ``-sum_c weight_c q_c log p_c`` and ``"mean"`` divides by ``sum_i weight[y_i]``.
            With uniform ``soft`` this is exactly ``F.cross_entropy(z, y, weight,
            label_smoothing=1 - alpha)``.
        smoothing: ``F.cross_entropy``'s ``label_smoothing`` applied to the hard term:
            ``onehot(y)`` becomes ``(1 - smoothing) * onehot(y) + smoothing / K``.
    """
    b, k = log_probs.shape
    logp = log_probs
    if weight is not None:
        logp = logp * weight.to(logp.dtype)
    if valid is not None:
        logp = logp.masked_fill(~valid.unsqueeze(1), 0.0)
    if compiling():  # inductor fuses the row form into its reductions; scatter_ would stay an ATen call
        return mixed_target_rows(logp, target, soft, alpha, valid, reduction, weight, smoothing)
    # eager: the mixed target, negated and scaled by the reduction's 1/B, so the loss is one dot product
    prescaled = reduction == "mean" and valid is None and weight is None and b > 0
    scale = -1.0 / b if prescaled else -1.0
    q = soft.detach().to(logp.dtype).mul_((1.0 - alpha) * scale)  # (B, K), in place: no fresh buffer
    if smoothing:
        q.add_(alpha * smoothing / k * scale)
    q.scatter_(1, target.unsqueeze(1), alpha * (1.0 - smoothing) * scale, reduce="add")  # + alpha * onehot(y)
    if reduction == "none":
        return (q * logp).sum(1)
    total = torch.dot(q.view(-1), logp.reshape(-1))  # one pass: the (B, K) product is never built
    if reduction == "sum" or prescaled:
        return total
    return total / mean_denominator(target, valid, weight, total.dtype)


def mixed_target_rows(logp: Tensor, target: Tensor, soft: Tensor, alpha: float,
                      valid: Optional[Tensor] = None, reduction: str = "mean",
                      weight: Optional[Tensor] = None, smoothing: float = 0.0) -> Tensor:
    """:func:`mixed_target_nll` row by row, ``-(alpha * smooth(log p)_y + (1 - alpha) * <soft, log p>)``.

    ``logp`` ``(B, K)`` is already weighted and masked as :func:`mixed_target_nll` does; the
    rest as there. More operations than its in-place target and one dot product in eager mode,
    but no ``scatter_``, so under ``torch.compile`` every pass, backward too, fuses
    (``benchmarks/RESULTS.md``).
    """
    hard = -F.nll_loss(logp, target, reduction="none")  # (B,) log p_y: under compile its backward fuses
    if smoothing:
        hard = (1.0 - smoothing) * hard + smoothing / logp.shape[1] * logp.sum(dim=1)
    per = -(alpha * hard + (1.0 - alpha) * (soft.detach().to(logp.dtype) * logp).sum(dim=1))  # (B,)
    if reduction == "none":
        return per
    total = per.sum()
    return total if reduction == "sum" else total / mean_denominator(target, valid, weight, total.dtype)


def mean_denominator(target: Tensor, valid: Optional[Tensor], weight: Optional[Tensor] = None,
                     dtype: torch.dtype = torch.float32) -> Tensor:
    """What ``F.cross_entropy``'s ``"mean"`` divides by: the valid rows, or their summed class weights.

    ``target`` ``(B,)``, ``valid`` ``(B,)`` bool or ``None``, ``weight`` ``(K,)`` or ``None``; summed in
    ``dtype`` (the loss's). An empty sum gives a NaN mean, as ``F.cross_entropy``.
    """
    rows = torch.ones(target.shape, dtype=dtype, device=target.device) if valid is None else valid.to(dtype)
    if weight is not None:
        rows = rows * weight.to(dtype).index_select(0, target)
    return rows.sum()


def sparse_target_cross_entropy(
    logits: Tensor,
    target: Tensor,
    index: Tensor,
    value: Tensor,
    rest: Tensor,
    alpha: float,
    valid: Optional[Tensor] = None,
    reduction: str = "mean",
    smoothing: float = 0.0,
    softmax: Optional[Tuple[Tensor, Tensor]] = None,
) -> Tensor:
    """Eq. (4) with a sparse soft label, never building a ``(B, K)`` target.

    The soft label of row ``i`` is ``value[i, s]`` at class ``index[i, s]`` (``-1``: an empty
    slot) and ``u_i = rest[i] / (K - size_i)`` at each of the other classes. With
    ``log p_j = z_j - lse(z)`` and ``sum_j log p_j = sum_j z_j - K lse(z)``:

    ``-<S_i, log p> = -sum_s (value_s - u) (z_{index_s} - lse) - u (sum_j z_j - K lse)``,

    so a row costs one softmax (for its log-sum-exp, and kept for the gradient), one sum of
    its logits and ``k`` gathers. ``logits`` ``(B, K)``, ``target`` ``(B,)``,
    ``index``/``value`` ``(B, k)``, ``rest`` ``(B,)``; ``valid``, ``reduction`` and
    ``smoothing`` as in :func:`mixed_target_nll`. ``softmax``: :func:`row_softmax`
    of these logits when the caller has it already (the top-k store's :meth:`observe` reads
    the same log-sum-exp), else computed here.
    """
    k_all = logits.shape[1]
    if valid is not None:  # an ignored row adds nothing, not even a NaN gradient from NaN logits
        logits = logits.masked_fill(~valid.unsqueeze(1), 0.0)
    probs, lse = row_softmax(logits) if softmax is None else softmax
    present = index >= 0
    size = present.sum(1)
    u = (rest.to(logits.dtype) / (k_all - size).clamp(min=1).to(logits.dtype)).detach()  # (B,)
    coef = torch.where(present, value.to(logits.dtype) - u.unsqueeze(1), torch.zeros_like(u).unsqueeze(1))
    cols = index.clamp(min=0)
    per = _SparseTargetCE.apply(logits, probs, lse, target, cols, coef.detach(), u, float(alpha),
                                float(smoothing))
    return reduce_loss(per, valid, reduction)


def row_softmax(logits: Tensor, valid: Optional[Tensor] = None,
                argmax: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """The detached softmax ``(B, K)`` of ``logits`` ``(B, K)`` and each row's log-sum-exp ``(B,)``.

    ``lse = max_j z_j - log max_j p_j``: the largest probability is ``1 / sum_j exp(z_j - max)``
    to one rounding, so this is ``torch.logsumexp`` to float rounding, from one fused softmax
    pass that the gradient reuses. ``argmax`` ``(B,)``, the column of each row's largest
    logit when the caller has it (the top-k store's feed): both maxima are then read there,
    sparing two ``(B, K)`` passes. Ignored rows (``valid`` False) read as zeros, as
    :func:`sparse_target_cross_entropy` sees them. A NaN or ``+inf`` logit gives a NaN row.
    """
    z = logits.detach()
    if valid is not None:
        z = z.masked_fill(~valid.unsqueeze(1), 0.0)
    probs = z.softmax(dim=1)
    if argmax is None:
        return probs, z.amax(dim=1) - probs.amax(dim=1).log()
    at = argmax.unsqueeze(1)
    return probs, (z.gather(1, at) - probs.gather(1, at).log()).squeeze(1)


def sparse_target_cross_entropy_reference(logits: Tensor, target: Tensor, index: Tensor, value: Tensor,
                                          rest: Tensor, alpha: float, smoothing: float = 0.0) -> Tensor:
    """The ``(B,)`` loss of :func:`sparse_target_cross_entropy` by plain autograd.

    The readable formula that the hand-written backward is tested against.
    """
    k_all = logits.shape[1]
    lse = torch.logsumexp(logits, dim=1)  # (B,)
    total = logits.sum(1)  # (B,)
    present = index >= 0
    u = rest.to(logits.dtype) / (k_all - present.sum(1)).clamp(min=1).to(logits.dtype)  # (B,)
    z_s = logits.gather(1, index.clamp(min=0))  # (B, k)
    coef = torch.where(present, value.to(logits.dtype) - u.unsqueeze(1), torch.zeros_like(z_s))
    soft = -(coef * (z_s - lse.unsqueeze(1))).sum(1) - u * (total - k_all * lse)
    hard = lse - logits.gather(1, target.unsqueeze(1)).squeeze(1)  # -log p_y
    if smoothing:
        hard = (1.0 - smoothing) * hard + smoothing * (lse - total / k_all)  # + eps * mean_j(-log p_j)
    return alpha * hard + (1.0 - alpha) * soft


class _SparseTargetCE(torch.autograd.Function):
    """The ``(B,)`` sparse-target loss with its gradient written out, one ``(B, K)`` pass each way.

    ``d loss_i / d z_ij = A_i p_ij - c_i - (1 - alpha) coef_is [j = index_is]
    - alpha (1 - eps) [j = y_i]`` with ``A_i = alpha + (1 - alpha)(sum_s coef_is + u_i K)``
    (the row's target mass) and ``c_i = (1 - alpha) u_i + alpha eps / K``; autograd would
    build four ``(B, K)`` tensors. ``p`` is the detached softmax ``probs`` of the forward
    (:func:`row_softmax`), kept instead of the logits, so the backward computes no ``exp``.
    """

    @staticmethod
    def forward(ctx, z: Tensor, probs: Tensor, lse: Tensor, y: Tensor, cols: Tensor, coef: Tensor, u: Tensor,
                alpha: float, smoothing: float) -> Tensor:
        k_all = z.shape[1]
        lse = lse.to(z.dtype)  # (B,), computed without a graph: the backward is written out
        total = z.sum(1)  # (B,)
        soft = -(coef * (z.gather(1, cols) - lse.unsqueeze(1))).sum(1) - u * (total - k_all * lse)
        hard = lse - z.gather(1, y.unsqueeze(1)).squeeze(1)
        if smoothing:
            hard = (1.0 - smoothing) * hard + smoothing * (lse - total / k_all)
        ctx.save_for_backward(probs, y, cols, coef, u)
        ctx.alpha, ctx.smoothing = alpha, smoothing
        return alpha * hard + (1.0 - alpha) * soft

    @staticmethod
    def backward(ctx, grad: Tensor):
        probs, y, cols, coef, u = ctx.saved_tensors
        alpha, eps, k_all = ctx.alpha, ctx.smoothing, probs.shape[1]
        mass = alpha + (1.0 - alpha) * (coef.sum(1) + u * k_all)  # (B,)
        flat = (1.0 - alpha) * u + alpha * eps / k_all  # (B,)
        out = probs.to(grad.dtype) * (grad * mass).unsqueeze(1)  # (B, K): the forward's softmax, reused
        out.sub_((grad * flat).unsqueeze(1))
        out.scatter_add_(1, cols, -(1.0 - alpha) * coef * grad.unsqueeze(1))
        out.scatter_add_(1, y.unsqueeze(1), (-alpha * (1.0 - eps) * grad).unsqueeze(1))
        return out, None, None, None, None, None, None, None, None
