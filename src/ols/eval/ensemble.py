"""Snapshot ensembles (paper Table III): N snapshots spread uniformly over training."""

from __future__ import annotations

from typing import List, Sequence

import numpy as np
import torch
from torch import Tensor


def pick_uniform(epochs: Sequence[int], n: int) -> List[int]:
    """``n`` of the available snapshot ``epochs``, spread uniformly from first to last."""
    epochs = sorted(epochs)
    if n < 1:
        raise ValueError(f"--ensemble needs at least 1 model, got {n}")
    if n > len(epochs):
        raise ValueError(f"--ensemble {n}: the run has only {len(epochs)} snapshots; train with "
                         f"--save-every so that epochs/save_every >= {n}")
    idx = np.unique(np.round(np.linspace(0, len(epochs) - 1, n)).astype(int))
    return [epochs[i] for i in idx]


def average_probs(logits: Sequence[Tensor]) -> Tensor:
    """The mean of the softmax of each ``(N, K)`` member's logits."""
    return torch.stack([torch.softmax(z.double(), 1) for z in logits]).mean(0)
