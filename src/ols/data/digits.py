"""scikit-learn's bundled handwritten digits: 1,797 real 8x8 images, 10 classes."""

from __future__ import annotations

import numpy as np
import torch

from .splits import TensorSplit

#: the split does not depend on the run's seed, so every seed is scored on the same test set
SPLIT_SEED = 0


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple:
    """Indices ``(train, test)``: ``test_fraction`` of every class goes to test, seeded."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(test_fraction * idx.size))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_digits_split(test_fraction: float = 0.2, split_seed: int = SPLIT_SEED) -> TensorSplit:
    """The digits as ``(N, 1, 8, 8)`` float32 tensors in ``[0, 1]``; mean/std from the train split.

    The split is stratified and fixed by ``split_seed`` (1,438 train / 359 test images
    with the defaults).
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"--data-arg test_fraction must be in (0, 1), got {test_fraction}")
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.float32) / 16.0  # pixel values 0..16 -> [0, 1]
    labels = bunch.target.astype(np.int64)
    train, test = stratified_split(labels, test_fraction, split_seed)
    mean, std = float(images[train].mean()), float(images[train].std())
    x = torch.from_numpy(images).unsqueeze(1)  # (N, 1, 8, 8)
    y = torch.from_numpy(labels)
    return TensorSplit(
        x[train], y[train], x[test], y[test], 10, tuple(str(d) for d in range(10)), (mean,), (std,)
    )
