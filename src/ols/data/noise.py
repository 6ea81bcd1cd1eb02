"""Seeded label noise for the training labels (Sec. V-B of Zhang et al.)."""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

#: the standard asymmetric CIFAR-10 map of Patrini et al. (2017), used by SCE and others:
#: truck -> automobile, bird -> airplane, deer -> horse, cat <-> dog
CIFAR10_ASYMMETRIC_MAP: Dict[int, int] = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}


def _check(labels: np.ndarray, rate: float, num_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError("labels must be a 1-D integer array")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"noise rate must be in [0, 1], got {rate}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes})")
    return labels.astype(np.int64)


def symmetric_noise(
    labels: np.ndarray, rate: float, num_classes: int, seed: int
) -> Tuple[np.ndarray, np.ndarray]:
    """Flip exactly ``round(rate * N)`` labels, each to a *different* class chosen uniformly.

    This is the "exclude the true class" convention (the flip rate is ``rate``), as in
    the SCE and Co-teaching code the paper compares with.

    Returns:
        ``(noisy_labels, flipped)``: ``(N,)`` int64 and ``(N,)`` bool.
    """
    labels = _check(labels, rate, num_classes)
    if num_classes < 2 and rate > 0:
        raise ValueError("symmetric noise needs at least 2 classes")
    rng = np.random.default_rng(seed)
    n = labels.size
    flipped = np.zeros(n, dtype=bool)
    flipped[rng.permutation(n)[: int(round(rate * n))]] = True
    # an offset in [1, K-1] added modulo K is uniform over the other K-1 classes
    offset = rng.integers(1, max(num_classes, 2), size=n)
    noisy = np.where(flipped, (labels + offset) % num_classes, labels)
    return noisy, flipped


def asymmetric_noise_cifar10(
    labels: np.ndarray, rate: float, seed: int, num_classes: int = 10
) -> Tuple[np.ndarray, np.ndarray]:
    """Flip ``round(rate * n_c)`` labels of each mapped class ``c`` to its CIFAR-10 partner.

    Returns ``(noisy_labels, flipped)`` as :func:`symmetric_noise` does.
    """
    labels = _check(labels, rate, num_classes)
    if num_classes != 10:
        raise ValueError("the asymmetric map is defined for the 10 CIFAR-10 classes")
    rng = np.random.default_rng(seed)
    noisy = labels.copy()
    flipped = np.zeros(labels.size, dtype=bool)
    for src, dst in CIFAR10_ASYMMETRIC_MAP.items():
        idx = np.flatnonzero(labels == src)
        pick = rng.permutation(idx)[: int(round(rate * idx.size))]
        noisy[pick] = dst
        flipped[pick] = True
    return noisy, flipped
