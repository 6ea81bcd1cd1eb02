"""The held-out part of a training set: what temperature scaling is fitted on, never trained on."""

from __future__ import annotations

from typing import Tuple

import numpy as np


def held_out_split(labels: np.ndarray, fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """``(train_index, held_index)``: a stratified, seeded ``fraction`` of ``labels`` ``(N,)`` held out.

    Each class gives ``round(fraction * n_c)`` of its ``n_c`` samples (at least one when the
    fraction is positive and the class has two or more), chosen by a generator seeded from
    ``(seed, "held-out")`` alone, so a resumed run and ``ols eval`` find the same split.
    Both index arrays are sorted int64.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"--val-fraction must be in [0, 1), got {fraction}")
    labels = np.asarray(labels)
    if fraction == 0.0:
        return np.arange(len(labels), dtype=np.int64), np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng([seed, 0x4E1D])  # 0x4E1D: this split's own stream, apart from the noise's
    held = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        take = int(round(fraction * len(members)))
        if take == 0 and len(members) >= 2:
            take = 1
        take = min(take, len(members) - 1)  # every class keeps a sample to train on
        held.append(rng.choice(members, size=take, replace=False))
    held_index = np.sort(np.concatenate(held)).astype(np.int64)
    keep = np.ones(len(labels), dtype=bool)
    keep[held_index] = False
    return np.flatnonzero(keep).astype(np.int64), held_index
