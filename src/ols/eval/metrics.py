"""Top-k error, NLL and ECE of a set of predictions."""

from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F
from torch import Tensor

from .calibration import expected_calibration_error

#: direction of each metric this module computes: True where a larger value is better
HIGHER_IS_BETTER = {"top1_err": False, "top5_err": False, "nll": False, "ece": False}


def topk_error(logits: Tensor, target: Tensor, k: int = 1) -> float:
    """Percent of rows whose target is not among the ``k`` largest logits (micro average)."""
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices  # (N, k)
    hit = (top == target.unsqueeze(1)).any(dim=1)
    return float(100.0 * (1.0 - hit.double().mean()))


def classification_metrics(logits: Tensor, target: Tensor, n_bins: int = 15) -> Dict[str, float]:
    """``top1_err``, ``top5_err`` (percent), ``nll`` (nats) and ``ece`` (percent) of ``(N, K)`` logits."""
    logits = logits.float()
    return {
        "top1_err": topk_error(logits, target, 1),
        "top5_err": topk_error(logits, target, 5),
        "nll": float(F.cross_entropy(logits, target)),
        "ece": expected_calibration_error(torch.softmax(logits, 1), target, n_bins),
    }


def probability_metrics(probs: Tensor, target: Tensor, n_bins: int = 15) -> Dict[str, float]:
    """The same metrics from ``(N, K)`` probabilities (e.g. an ensemble's average)."""
    probs = probs.double()
    picked = probs.gather(1, target.view(-1, 1)).squeeze(1)
    return {
        "top1_err": topk_error(probs, target, 1),
        "top5_err": topk_error(probs, target, 5),
        "nll": float(-torch.log(picked.clamp_min(1e-300)).mean()),
        "ece": expected_calibration_error(probs, target, n_bins),
    }
