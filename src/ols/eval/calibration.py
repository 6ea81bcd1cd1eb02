"""Expected calibration error (Guo et al., "On Calibration of Modern Neural Networks", 2017)."""

from __future__ import annotations

import torch
from torch import Tensor


def calibration_bins(probs: Tensor, target: Tensor, n_bins: int = 15) -> Tensor:
    """Per-bin ``(count, confidence sum, correct count)`` as a ``(3, n_bins)`` float64 tensor.

    ``probs`` is ``(N, K)`` (rows sum to 1), ``target`` ``(N,)`` int64. Confidence is the
    top probability; bins are ``n_bins`` equal-width intervals ``(lo, hi]`` over
    ``[0, 1]``, as in Guo et al.'s code (a confidence of exactly 0 falls in the first bin).
    """
    if probs.dim() != 2 or target.shape != probs.shape[:1]:
        raise ValueError(f"probs must be (N, K) and target (N,), got {tuple(probs.shape)} "
                         f"and {tuple(target.shape)}")
    if n_bins < 1:
        raise ValueError(f"n_bins must be positive, got {n_bins}")
    conf, pred = probs.double().max(dim=1)
    hit = (pred == target).double()
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64, device=probs.device)
    # bucketize(right=False) gives i with edges[i-1] < x <= edges[i]: (lo, hi] bins
    bin_id = (torch.bucketize(conf, edges, right=False) - 1).clamp(0, n_bins - 1)
    return torch.stack([
        torch.bincount(bin_id, minlength=n_bins).double(),
        torch.bincount(bin_id, weights=conf, minlength=n_bins),
        torch.bincount(bin_id, weights=hit, minlength=n_bins),
    ]).cpu()


def expected_calibration_error(probs: Tensor, target: Tensor, n_bins: int = 15) -> float:
    r"""ECE in percent: ``100 * sum_b |B_b|/N * |acc(B_b) - conf(B_b)|``.

    Bins as in :func:`calibration_bins`; empty bins contribute nothing.
    """
    count, conf_sum, hit_sum = calibration_bins(probs, target, n_bins)
    n = probs.shape[0]
    if n == 0:
        return 0.0
    return float(100.0 * (conf_sum - hit_sum).abs().sum() / n)


def signed_calibration_error(probs: Tensor, target: Tensor) -> float:
    r"""The sign ECE hides, in percent: ``100 * (mean confidence - accuracy)``.

    Equal to ``100 * sum_b |B_b|/N * (conf(B_b) - acc(B_b))`` for any binning (the sum is
    linear), so it is ECE's bins without the absolute value: positive means over-confident
    (the model claims more than it gets right), negative under-confident.
    """
    if probs.shape[0] == 0:
        return 0.0
    conf, pred = probs.double().max(dim=1)
    return float(100.0 * (conf.mean() - (pred == target).double().mean()))


def aurc(probs: Tensor, target: Tensor) -> float:
    r"""Area under the risk-coverage curve, in percent (Geifman et al., ICLR 2019).

    Samples are ranked by confidence (the top probability), most confident first (ties in
    input order); keeping the first ``k`` gives coverage ``k / N`` and risk ``e_k / k`` with
    ``e_k`` the errors among them. ``AURC = 100 * (1/N) sum_k e_k / k``: low when the
    confident predictions are the right ones (0 for a model whose errors are all less
    confident than its hits and that makes none).
    """
    n = probs.shape[0]
    if n == 0:
        return 0.0
    conf, pred = probs.double().max(dim=1)
    order = torch.sort(conf, descending=True, stable=True).indices
    errors = (pred != target).double()[order].cumsum(0)
    return float(100.0 * (errors / torch.arange(1, n + 1, dtype=torch.float64, device=probs.device)).mean())


def fit_temperature(logits: Tensor, target: Tensor, low: float = 0.05, high: float = 20.0,
                    steps: int = 80) -> float:
    r"""``T`` minimising the NLL of ``softmax(logits / T)`` on held-out data (Guo et al., 2017).

    ``logits`` ``(N, K)``, ``target`` ``(N,)``. The NLL is convex in ``1 / T`` (a log-sum-exp
    of logits scaled by ``1/T`` minus a linear term), so a golden-section search over
    ``1/T`` in ``[1/high, 1/low]`` finds its minimum to float64 precision; ``T`` stays in
    ``[low, high]``. ``T > 1`` softens an over-confident model, ``T < 1`` sharpens an
    under-confident one.
    """
    if logits.shape[0] == 0:
        raise ValueError("temperature scaling needs held-out samples, got none")
    z, y = logits.double(), target.long()

    def nll(beta: float) -> float:
        return float(torch.nn.functional.cross_entropy(z * beta, y))

    a, b = 1.0 / high, 1.0 / low
    ratio = (5 ** 0.5 - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = nll(c), nll(d)
    for _ in range(steps):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = nll(d)
    return 1.0 / ((a + b) / 2)
