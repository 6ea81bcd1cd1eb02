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


def clean_set_size(size: float, num_samples: int) -> int:
    """How many images ``--meta-size`` takes of ``num_samples``: a count (``>= 1``) or a fraction."""
    if not (size >= 0 and size == size):  # NaN fails both
        raise ValueError(f"--meta-size must be a count (>= 1) or a fraction in (0, 1), got {size}")
    if size >= 1:
        if size != int(size):
            raise ValueError(f"--meta-size {size:g} is neither a whole number of images nor a fraction "
                             "below 1; give e.g. 1000 or 0.02")
        count = int(size)
    else:
        count = int(round(size * num_samples))
        if size > 0 and count == 0:
            raise ValueError(f"--meta-size {size:g} of {num_samples} training images is no image; give a "
                             "larger fraction or a count")
    if count > num_samples // 2:
        raise ValueError(f"--meta-size {size:g} takes {count} of the {num_samples} training images, over "
                         "half of them; the clean set is for validation, keep it small (1,000 for CIFAR)")
    return count


def clean_held_out(labels: np.ndarray, size: float, seed: int) -> np.ndarray:
    """The sorted ``(M,)`` indices of the clean held-out set: ``M`` images taken out before the noise.

    ``labels`` ``(N,)`` are the true training labels; ``size`` is a count (``>= 1``) or a fraction
    (``< 1``) of ``N`` (:func:`clean_set_size`). The set is class-balanced as far as the classes
    allow (as Meta-Weight-Net's 10 images a class of CIFAR-100's 1,000, ``load_corrupted_data.py``):
    each class gives ``M / K`` images, the remainder going one each to the largest classes, and no
    class gives more than half of its images. The draw is seeded from ``(seed, "clean set")`` alone,
    apart from the noise and the ``--val-fraction`` split, so a resumed run and ``ols eval`` find it
    again. ``size`` 0 gives an empty set.
    """
    labels = np.asarray(labels)
    count = clean_set_size(size, len(labels))
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    classes, sizes = np.unique(labels, return_counts=True)
    room = sizes // 2  # every class keeps at least half of its images to train on
    if room.sum() < count:
        raise ValueError(f"--meta-size {size:g}: the classes can give at most {room.sum()} clean images "
                         "while each keeps half of its own to train on; ask for fewer")
    share = np.full(len(classes), count // len(classes))
    share[np.argsort(-sizes, kind="stable")[: count % len(classes)]] += 1  # the remainder: the largest ones
    take = np.minimum(share, room)
    while take.sum() < count:  # a class too small for its share: the others, one image at a time
        take[int(np.argmax(room - take))] += 1
    rng = np.random.default_rng([seed, 0xC1EA])  # 0xC1EA: the clean set's own stream
    chosen = [rng.choice(np.flatnonzero(labels == c), size=int(n), replace=False)
              for c, n in zip(classes, take)]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def temperature_split(meta_index: np.ndarray, held_index: np.ndarray, true_labels: np.ndarray,
                      noisy_labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray, str]:
    """``(index, labels, what)``: the images temperature scaling is fitted on, their labels, and a phrase.

    The clean held-out set (``--meta-size``) with its clean labels when the run has one; else the
    ``--val-fraction`` split with the labels as trained (noisy, if the run added noise: then ``T``
    fits the noise, and says so); else nothing.
    """
    if len(meta_index):
        what = f"the clean held-out set ({len(meta_index)} images, clean labels)"
        return meta_index, true_labels[meta_index], what
    if len(held_index):
        noisy = bool((noisy_labels[held_index] != true_labels[held_index]).any())
        what = "labels as trained, with their noise" if noisy else "labels as trained"
        return held_index, noisy_labels[held_index], f"the held-out split ({len(held_index)} images, {what})"
    return held_index, noisy_labels[held_index], ""
