"""A seeded many-class set (10^4 to 10^6 classes) of class-centred features, for the top-k store.

Class ``c`` has a centre ``mu_c ~ N(0, I_d)``; its samples are ``mu_c + noise * N(0, I_d)``.
Nearby centres make classes confusable, so OLS has class relations to learn. Features are
stored as ``(N, d, 1, 1)`` so that every model and loader of the engine takes them; the
``linear`` and ``mlp`` models fit them.
"""

from __future__ import annotations

import torch

from .splits import TensorSplit, channel_stats


def class_centred_features(classes: int = 1000, dim: int = 32, train_per_class: int = 4,
                           test_per_class: int = 1, noise: float = 0.6, seed: int = 0,
                           test_samples: int = 0) -> TensorSplit:
    """``classes`` Gaussian clusters in ``dim`` dimensions; depends only on ``seed``.

    ``test_samples > 0`` replaces the per-class test set by that many samples of random
    classes: at 10^5 classes a full test set's logits alone would be 40 GB.
    """
    if classes < 2 or dim < 1 or train_per_class < 1 or test_per_class < 1:
        raise ValueError("manyclass needs classes >= 2 and dim, train_per_class, test_per_class >= 1")
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=gen)

    def draw(per_class: int):
        y = torch.arange(classes).repeat_interleave(per_class)
        x = centres[y] + noise * torch.randn(len(y), dim, generator=gen)
        return x.view(len(y), dim, 1, 1), y

    train_x, train_y = draw(train_per_class)
    if test_samples > 0:
        test_y = torch.randint(0, classes, (test_samples,), generator=gen)
        test_x = (centres[test_y] + noise * torch.randn(test_samples, dim, generator=gen)).view(-1, dim, 1, 1)
    else:
        test_x, test_y = draw(test_per_class)
    mean, std = channel_stats(train_x)
    names = tuple(f"c{c}" for c in range(classes))
    return TensorSplit(train_x, train_y, test_x, test_y, classes, names, mean, std)
