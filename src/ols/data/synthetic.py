"""Seeded synthetic image data: a hierarchical flavour with known class relations, and a CIFAR-shaped one.

Every image is ``sigmoid(prototype + noise)``, where prototypes are smooth random fields
(Gaussian noise on a coarse grid, upsampled bilinearly). In the hierarchical flavour a
class prototype is its group's prototype plus a smaller class-specific field, so classes
of one group look alike and are confused with each other more than with the rest: the
ground truth that OLS's learned soft labels can be checked against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .splits import TensorSplit, channel_stats


def smooth_fields(n: int, channels: int, size: int, coarse: int, gen: torch.Generator) -> Tensor:
    """``(n, channels, size, size)`` smooth standard-normal-ish fields."""
    grid = torch.randn(n, channels, coarse, coarse, generator=gen)
    return F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False) * 2.0


def sample_images(prototypes: Tensor, per_class: int, noise: float, gen: torch.Generator) -> tuple:
    """``(x uint8 (K * per_class, C, H, W), y (K * per_class,))``: noisy copies of each prototype."""
    k, c, h, w = prototypes.shape
    y = torch.arange(k).repeat_interleave(per_class)
    fields = smooth_fields(y.numel(), c, h, max(2, h // 4), gen)
    pixel = noise * 0.5 * torch.randn(y.numel(), c, h, w, generator=gen)
    x = torch.sigmoid(prototypes[y] + noise * fields + pixel)
    return (x * 255).round().to(torch.uint8), y


def _split(protos: Tensor, train_per_class: int, test_per_class: int, noise: float,
           gen: torch.Generator, names: tuple, groups=None) -> TensorSplit:
    train_x, train_y = sample_images(protos, train_per_class, noise, gen)
    test_x, test_y = sample_images(protos, test_per_class, noise, gen)
    mean, std = channel_stats(train_x)
    return TensorSplit(train_x, train_y, test_x, test_y, protos.shape[0], names, mean, std, groups)


def hierarchical_synthetic(
    groups: int = 20,
    classes_per_group: int = 5,
    train_per_class: int = 100,
    test_per_class: int = 20,
    image_size: int = 16,
    within: float = 0.45,
    noise: float = 1.0,
    seed: int = 0,
) -> TensorSplit:
    """``groups x classes_per_group`` classes (100 by default, like CIFAR-100's 20 superclasses).

    Class ``k`` belongs to group ``k // classes_per_group`` (``TensorSplit.groups``).
    ``within`` scales the class-specific part of a prototype against its group's:
    smaller means classes of a group are harder to tell apart. Images are
    ``3 x image_size x image_size``; the data depend only on ``seed``, not on the run's seed.
    """
    gen = torch.Generator().manual_seed(seed)
    coarse = max(2, image_size // 4)
    group_protos = smooth_fields(groups, 3, image_size, coarse, gen)
    class_protos = smooth_fields(groups * classes_per_group, 3, image_size, coarse, gen)
    group_of = torch.arange(groups).repeat_interleave(classes_per_group)
    protos = group_protos[group_of] + within * class_protos
    names = tuple(f"g{g}c{c}" for g in range(groups) for c in range(classes_per_group))
    return _split(protos, train_per_class, test_per_class, noise, gen, names, tuple(group_of.tolist()))


def cifar_shaped_synthetic(
    num_classes: int = 10,
    train_per_class: int = 5000,
    test_per_class: int = 1000,
    noise: float = 1.0,
    seed: int = 0,
) -> TensorSplit:
    """CIFAR-sized data (``3 x 32 x 32`` ``uint8``, 50,000 / 10,000 images by default) for benchmarks."""
    gen = torch.Generator().manual_seed(seed)
    protos = smooth_fields(num_classes, 3, 32, 8, gen)
    names = tuple(f"class{k}" for k in range(num_classes))
    return _split(protos, train_per_class, test_per_class, noise, gen, names)
