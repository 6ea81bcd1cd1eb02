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
