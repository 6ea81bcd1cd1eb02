"""``canvas``: a seeded synthetic detection set of real items pasted onto textured canvases.

Each image is a ``size x size`` greyscale canvas with a smooth random texture, onto which 1 to
``max_objects`` Fashion-MNIST items (or scikit-learn's digits where Fashion-MNIST is not
installed) are pasted at random scales and places, kept apart enough that no two boxes overlap
by more than ``max_overlap`` IoU. A box is the tight box of the item's pixels above
``ink``, so it is exact: no annotation noise. Image ``i`` of a split is a function of
``(seed, split, i)`` alone, so a canvas set needs no files and is the same on every machine.

Training canvases draw items from the source's training images, test canvases from its test
images: no item is seen in both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.idx import FASHION_CLASSES, FASHION_MNIST_DIR

SPLITS = ("train", "test")


@dataclass
class ItemSource:
    """The items to paste: ``(N, h, w)`` float32 in ``[0, 1]`` per split, their labels and class names."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    class_names: Tuple[str, ...]
    name: str


def load_items(source: str = "auto", data_dir: Optional[str] = None) -> ItemSource:
    """The items: ``"fashion-mnist"``, ``"digits"``, or ``"auto"`` (the first of the two that is there).

    Fashion-MNIST is read from ``data_dir``, or Debian's folder.
    """
    if source not in ("auto", "fashion-mnist", "digits"):
        raise ValueError(f"canvas: source must be auto, fashion-mnist or digits, got {source!r}")
    if source in ("auto", "fashion-mnist"):
        from ..data.idx import load_fashion_mnist

        try:
            split = load_fashion_mnist(data_dir or FASHION_MNIST_DIR)
        except ValueError:
            if source == "fashion-mnist":
                raise
        else:
            return ItemSource(
                split.train_x[:, 0].float() / 255,
                split.train_y,
                split.test_x[:, 0].float() / 255,
                split.test_y,
                FASHION_CLASSES,
                "fashion-mnist",
            )
    from ..data.digits import load_digits_split

    split = load_digits_split()
    return ItemSource(
        split.train_x[:, 0],
        split.train_y,
        split.test_x[:, 0],
        split.test_y,
        tuple(str(d) for d in range(10)),
        "digits",
    )


def _texture(gen: torch.Generator, size: int) -> Tensor:
    """``(size, size)`` smooth noise in about ``[0.1, 0.5]``: a coarse random grid, upsampled."""
    coarse = torch.rand(1, 1, 5, 5, generator=gen)
    fine = torch.rand(1, 1, size // 4, size // 4, generator=gen)
    up = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    up = up + 0.3 * F.interpolate(fine, size=(size, size), mode="bilinear", align_corners=False)
    return (0.1 + 0.4 * (up - up.min()) / (up.max() - up.min()).clamp_min(1e-6))[0, 0]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    area = lambda x: (x[2] - x[0]) * (x[3] - x[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


class CanvasDetection:
    """``dataset[i] -> (image, target)``: a canvas with its exact boxes.

    ``image`` ``(1, size, size)`` float32 in ``[0, 1]``; ``target`` ``{"boxes" (M, 4), "labels"
    (M,), "difficult" (M,)}``, boxes xyxy in continuous pixel coordinates.

    Args:
        split: ``"train"`` or ``"test"``.
        num_images: how many canvases.
        size: the canvas side in pixels.
        max_objects: at most this many items per canvas (at least one).
        scale: ``(smallest, largest)`` side of a pasted item, in pixels.
        max_overlap: the largest IoU between two boxes of a canvas.
        seed: the set's seed; image ``i`` depends on ``(seed, split, i)`` only.
        source, data_dir: the items (:func:`load_items`), or ``items`` already loaded.
        ink: an item pixel above this is part of the object's box.
    """

    def __init__(
        self,
        split: str = "train",
        num_images: int = 2000,
        size: int = 64,
        max_objects: int = 3,
        scale: Tuple[int, int] = (16, 32),
        max_overlap: float = 0.3,
        seed: int = 0,
        source: str = "auto",
        data_dir: Optional[str] = None,
        items: Optional[ItemSource] = None,
        ink: float = 0.1,
    ):
        if split not in SPLITS:
            raise ValueError(f"canvas: split must be train or test, got {split!r}")
        if not 1 <= max_objects <= 16:
            raise ValueError(f"canvas: max_objects must be in [1, 16], got {max_objects}")
        lo, hi = scale
        if not 4 <= lo <= hi <= size:
            raise ValueError(
                f"canvas: scale must be (smallest, largest) item sides with 4 <= smallest <= "
                f"largest <= size = {size}, got {scale}"
            )
        if num_images < 1:
            raise ValueError(f"canvas: num_images must be at least 1, got {num_images}")
        self.items = items or load_items(source, data_dir)
        self.split, self.num_images, self.size, self.max_objects = split, num_images, size, max_objects
        self.scale, self.max_overlap, self.seed, self.ink = (lo, hi), max_overlap, seed, ink
        self.x = self.items.train_x if split == "train" else self.items.test_x
        self.y = self.items.train_y if split == "train" else self.items.test_y

    @property
    def class_names(self) -> Tuple[str, ...]:
        return self.items.class_names

    @property
    def num_classes(self) -> int:
        return len(self.items.class_names)

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, i: int) -> Tuple[Tensor, Dict[str, Tensor]]:
        if not 0 <= i < self.num_images:
            raise IndexError(f"canvas image {i} out of range [0, {self.num_images})")
        derived = np.random.SeedSequence((self.seed, SPLITS.index(self.split), i)).generate_state(1)[0]
        gen = torch.Generator().manual_seed(int(derived))
        canvas = _texture(gen, self.size)
        boxes, labels = [], []
        wanted = int(torch.randint(1, self.max_objects + 1, (1,), generator=gen))
        for _ in range(wanted * 10):  # tries: an item that overlaps too much is drawn again
            if len(boxes) == wanted:
                break
            k = int(torch.randint(0, len(self.x), (1,), generator=gen))
            side = int(torch.randint(self.scale[0], self.scale[1] + 1, (1,), generator=gen))
            left, top = (int(torch.randint(0, self.size - side + 1, (1,), generator=gen)) for _ in range(2))
            item = F.interpolate(
                self.x[k][None, None], size=(side, side), mode="bilinear", align_corners=False
            )[0, 0].clamp(0, 1)
            rows, cols = torch.nonzero(item > self.ink, as_tuple=True)
            if len(rows) == 0:
                continue
            box = np.array(
                [
                    left + int(cols.min()),
                    top + int(rows.min()),
                    left + int(cols.max()) + 1,
                    top + int(rows.max()) + 1,
                ],
                dtype=np.float32,
            )
            if any(_iou(box, b) > self.max_overlap for b in boxes):
                continue
            patch = canvas[top : top + side, left : left + side]
            canvas[top : top + side, left : left + side] = torch.maximum(
                patch, item
            )  # the item over the texture
            boxes.append(box)
            labels.append(int(self.y[k]))
        target = {
            "boxes": torch.as_tensor(np.stack(boxes)).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.long),
            "difficult": torch.zeros(len(labels), dtype=torch.bool),
        }
        return canvas[None], target
