"""Agreement with human label distributions: CIFAR-10H (Peterson et al., ICCV 2019), paper Table XII."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

#: KL(human || model): lower is closer to the human labels
HIGHER_IS_BETTER = {"human_kl": False}
HEADERS = {"human_kl": "KL(human ‖ model) (nats)"}


def load_human_probs(path: str, num_images: int, num_classes: int) -> Tensor:
    """The ``(N, K)`` human label distributions in ``path`` (``cifar10h-probs.npy``), checked."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--human-probs: no such file {path!r} (CIFAR-10H's cifar10h-probs.npy is not "
                         "shipped with ols; download it from the CIFAR-10H repository)")
    try:
        probs = np.load(p)
    except Exception as err:
        raise ValueError(f"--human-probs: cannot read {path!r} as a .npy array: {err}") from None
    if probs.shape != (num_images, num_classes):
        raise ValueError(f"--human-probs: {path!r} has shape {probs.shape}, but the test set needs "
                         f"({num_images}, {num_classes}): one row per test image, in test-set order")
    if not np.allclose(probs.sum(1), 1.0, atol=1e-3) or (probs < 0).any():
        raise ValueError(f"--human-probs: the rows of {path!r} must be probability distributions")
    return torch.from_numpy(probs).double()


def human_kl(human: Tensor, logits: Tensor, target: Tensor) -> float:
    r"""Mean ``KL(human || softmax(logits))`` in nats over the correctly predicted images.

    ``KL(h || p) = sum_k h_k (log h_k - log p_k)`` with ``0 log 0 = 0``; ``human``,
    ``logits`` ``(N, K)``, ``target`` ``(N,)``.
    """
    correct = logits.argmax(1) == target
    if not bool(correct.any()):
        return float("nan")
    h = human[correct].double()
    log_p = torch.log_softmax(logits[correct].double(), dim=1)
    terms = torch.where(h > 0, h * (torch.log(h.clamp_min(1e-300)) - log_p), torch.zeros_like(h))
    return float(terms.sum(1).mean())
