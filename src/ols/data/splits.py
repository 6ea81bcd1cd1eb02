"""The two shapes a dataset takes in ``ols``: whole tensors, or image files decoded on the fly.

Images are in pixel units in both: ``[0, 1]`` floats or ``0..255`` ``uint8``. Each split
carries the per-channel ``mean``/``std`` the model normalises with (see
:class:`ols.models.Classifier`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class TensorSplit:
    """A dataset held whole as tensors (no per-sample loader).

    ``train_x``/``test_x`` are ``(N, C, H, W)``, ``uint8`` (0..255) or float (0..1);
    ``train_y``/``test_y`` are ``(N,)`` int64. ``groups``, when known, gives each class's
    superclass (``(K,)``; CIFAR-100 coarse labels, the hierarchical synthetic groups).
    """

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    class_names: Tuple[str, ...]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    groups: Optional[Tuple[int, ...]] = None

    @property
    def input_shape(self) -> Tuple[int, ...]:
        """``(C, H, W)`` of one image."""
        return tuple(self.train_x.shape[1:])


@dataclass
class FileSplit:
    """A dataset of image files (decoded with Pillow in DataLoader workers).

    ``train_files``/``test_files`` are absolute paths; ``train_y``/``test_y`` are
    ``(N,)`` int64. Images come out as ``3 x image_size x image_size``.
    """

    train_files: Sequence[str]
    train_y: Tensor
    test_files: Sequence[str]
    test_y: Tensor
    num_classes: int
    class_names: Tuple[str, ...]
    image_size: int = 224
    resize: int = 256
    mean: Tuple[float, ...] = IMAGENET_MEAN
    std: Tuple[float, ...] = IMAGENET_STD
    groups: Optional[Tuple[int, ...]] = None

    @property
    def input_shape(self) -> Tuple[int, ...]:
        return (3, self.image_size, self.image_size)


def channel_stats(images: Tensor) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Per-channel mean and std of ``(N, C, H, W)`` images, in ``[0, 1]`` pixel units."""
    scale = 255.0 if images.dtype == torch.uint8 else 1.0
    x = images.transpose(0, 1).reshape(images.shape[1], -1).double() / scale
    return tuple(x.mean(1).tolist()), tuple(x.std(1).tolist())


def labels_tensor(labels: Sequence[int]) -> Tensor:
    """``(N,)`` int64 from any integer sequence."""
    return torch.from_numpy(np.asarray(labels, dtype=np.int64))


def layout_error(path: Path, problem: str, layout: str) -> ValueError:
    """The error for a missing or malformed data directory: what, where, and the layout expected."""
    return ValueError(
        f"{path}: {problem}\nExpected layout:\n{layout}\n"
        "ols fetches CIFAR-10 and CIFAR-100 itself when asked (add --download); for any other dataset, "
        "download it yourself and pass its folder with --data-dir."
    )
