"""Top-k error, NLL and ECE of a set of predictions."""

from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F
from torch import Tensor

from .calibration import aurc, expected_calibration_error, fit_temperature, signed_calibration_error

#: direction of each metric this module computes: True where a larger value is better, False where a
#: smaller one is, "zero" where the one nearest 0 is (a signed error), None where none is better
HIGHER_IS_BETTER = {"top1_err": False, "top5_err": False, "nll": False, "ece": False, "aurc": False,
                    "ece_signed": "zero", "temperature": None, "nll_ts": False, "ece_ts": False,
                    "ece_signed_ts": "zero"}
#: how a report heads each of them, unit included
HEADERS = {"top1_err": "top-1 error (%)", "top5_err": "top-5 error (%)", "nll": "NLL (nats)",
           "ece": "ECE (%)",
           "aurc": "AURC (%)", "ece_signed": "confidence − accuracy (%)", "temperature": "temperature T",
           "nll_ts": "NLL after T (nats)", "ece_ts": "ECE after T (%)",
           "ece_signed_ts": "confidence − accuracy after T (%)"}


def topk_error(logits: Tensor, target: Tensor, k: int = 1) -> float:
    """Percent of rows whose target is not among the ``k`` largest logits (micro average)."""
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices  # (N, k)
    hit = (top == target.unsqueeze(1)).any(dim=1)
    return float(100.0 * (1.0 - hit.double().mean()))


def classification_metrics(logits: Tensor, target: Tensor, n_bins: int = 15) -> Dict[str, float]:
    """Top-1/top-5 error, NLL (nats), ECE, signed ECE and AURC (percent) of ``(N, K)`` logits."""
    logits = logits.float()
    probs = torch.softmax(logits, 1)
    return {
        "top1_err": topk_error(logits, target, 1),
        "top5_err": topk_error(logits, target, 5),
        "nll": float(F.cross_entropy(logits, target)),
        "ece": expected_calibration_error(probs, target, n_bins),
        "ece_signed": signed_calibration_error(probs, target),
        "aurc": aurc(probs, target),
    }


def temperature_scaled(logits: Tensor, target: Tensor, held_logits: Tensor, held_target: Tensor,
                       n_bins: int = 15) -> Dict[str, float]:
    """Temperature scaling: ``T`` fitted on held-out ``(M, K)`` logits, test metrics at that ``T``.

    Returns ``temperature``, and ``nll_ts``, ``ece_ts``, ``ece_signed_ts`` of the test
    ``(N, K)`` logits divided by it. Top-1 error and AURC do not change with ``T`` (it keeps
    every row's order).
    """
    t = fit_temperature(held_logits.float(), held_target)
    scaled = logits.double() / t
    probs = torch.softmax(scaled, 1)
    return {"temperature": t, "nll_ts": float(F.cross_entropy(scaled, target)),
            "ece_ts": expected_calibration_error(probs, target, n_bins),
            "ece_signed_ts": signed_calibration_error(probs, target)}


def probability_metrics(probs: Tensor, target: Tensor, n_bins: int = 15) -> Dict[str, float]:
    """The same metrics from ``(N, K)`` probabilities (e.g. an ensemble's average)."""
    probs = probs.double()
    picked = probs.gather(1, target.view(-1, 1)).squeeze(1)
    return {
        "top1_err": topk_error(probs, target, 1),
        "top5_err": topk_error(probs, target, 5),
        "nll": float(-torch.log(picked.clamp_min(1e-300)).mean()),
        "ece": expected_calibration_error(probs, target, n_bins),
        "ece_signed": signed_calibration_error(probs, target),
        "aurc": aurc(probs, target),
    }
