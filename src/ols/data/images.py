"""Decoding image files with Pillow, and the usual ImageNet-style crops, for DataLoader workers.

Training images get a random-resized crop (scale 0.08-1, aspect 3/4-4/3; Szegedy et al.,
2015) and a horizontal flip; test images are resized (short side ``resize``) and centre
cropped. The randomness of image ``i`` in epoch ``e`` comes from ``(seed, e, i)`` alone, so
it does not depend on worker count or order and a resumed run sees the same crops.
"""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset


def _pil():
    try:
        from PIL import Image
    except ImportError:
        raise ValueError("image-file datasets need Pillow: pip install 'ols[images]'") from None
    return Image


def random_resized_box(width: int, height: int, rng: np.random.Generator) -> tuple:
    """``(left, top, w, h)`` of a random crop covering 8-100% of the area, aspect in [3/4, 4/3]."""
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(0.08, 1.0)
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    side = min(width, height)  # fall back to the central square
    return (width - side) // 2, (height - side) // 2, side, side


def centre_box(width: int, height: int, resize: int, size: int) -> tuple:
    """``(left, top, w, h)`` in the original image of a ``size`` crop after a short-side ``resize``."""
    scale = resize / min(width, height)
    w, h = min(width, round(size / scale)), min(height, round(size / scale))
    return (width - w) // 2, (height - h) // 2, w, h


def to_rgb8(img, image_mod):
    """An RGB image with 8 bits per channel; 16- and 32-bit grey images are scaled, not clipped.

    A 16-bit grey image maps 0..65535 to 0..255. Pillow before 10.3 opens a 16-bit PNG as 32-bit
    mode ``I``, so an ``I`` image whose values fit in 16 bits is scaled as 16 bits too (every image
    of a folder alike); only one with larger values is scaled by its own maximum.
    """
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        wide = np.asarray(img, dtype=np.float64)
        top = max(65535.0, float(wide.max(initial=0.0)))  # 16-bit data (every I;16 image) maps 65535 to 255
        img = image_mod.fromarray(np.round(wide * (255.0 / top)).clip(0, 255).astype(np.uint8), mode="L")
    return img.convert("RGB")


def to_tensor(img) -> Tensor:
    """A PIL RGB image -> ``(3, H, W)`` uint8."""
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def view_plan(width: int, height: int, i: int, epoch: int, views: int, seed: int, crop: bool, flip: bool,
              resize: int, size: int) -> List[Tuple[Tuple[int, int, int, int], bool]]:
    """``[(box, flip)]`` of each view of image ``i`` (``width x height``) in ``epoch``.

    ``box`` is ``(left, top, w, h)`` in the original image. View ``v`` draws from
    ``(seed, epoch, i)`` when ``v = 0`` and from ``(seed, epoch, i, v)`` otherwise, so the
    plan depends on neither the worker nor the decoder (Pillow here, nvJPEG in
    :mod:`ols.data.jpeg_device`).
    """
    plan = []
    for v in range(views):
        rng = np.random.default_rng((seed, epoch, i, *([v] if v else [])))
        box = random_resized_box(width, height, rng) if crop else centre_box(width, height, resize, size)
        plan.append((box, bool(flip and rng.random() < 0.5)))
    return plan


def open_rgb8(path: str):
    """The image file at ``path`` as an RGB8 PIL image; a broken or missing file is one line naming it."""
    image_mod = _pil()
    try:
        with image_mod.open(path) as f:
            return to_rgb8(f, image_mod)
    except (OSError, SyntaxError, ValueError) as err:  # missing, truncated or not an image
        raise ValueError(f"cannot decode image {path}: {err}") from None


class ImageFiles(Dataset):
    """``dataset[key] -> (image (3, size, size) uint8, i)``.

    ``key`` is ``(i, epoch, views)``: image ``i`` as epoch ``epoch`` crops it, with
    ``views = V > 1`` giving ``(V, 3, size, size)``, ``V`` independent crops (the batch
    source puts the epoch in every key, so persistent workers need no message). A plain
    ``i`` uses the ``epoch`` and ``views`` attributes.

    ``crop``: random-resized crop, else resize + centre crop; ``flip``: random mirror.
    """

    def __init__(self, files: Sequence[str], size: int, resize: int, crop: bool = False,
                 flip: bool = False, seed: int = 0):
        self.files, self.size, self.resize, self.seed = list(files), size, resize, seed
        self.crop, self.flip = crop, flip
        self.epoch, self.views = 0, 1

    def __len__(self) -> int:
        return len(self.files)

    def key(self, key: Union[int, Tuple[int, int, int]]) -> Tuple[int, int, int]:
        """``(i, epoch, views)`` of a dataset key."""
        return tuple(key) if isinstance(key, (tuple, list)) else (int(key), self.epoch, self.views)

    def plan(self, width: int, height: int, i: int, epoch: int, views: int):
        """:func:`view_plan` with this dataset's crop, flip, sizes and seed."""
        return view_plan(width, height, i, epoch, views, self.seed, self.crop, self.flip, self.resize,
                         self.size)

    def __getitem__(self, key: Union[int, Tuple[int, int, int]]):
        i, epoch, views = self.key(key)
        image_mod = _pil()
        img = open_rgb8(self.files[i])
        out = []
        for (left, top, w, h), flip in self.plan(img.width, img.height, i, epoch, views):
            view = img.resize((self.size, self.size), image_mod.BILINEAR, box=(left, top, left + w, top + h))
            out.append(to_tensor(view.transpose(image_mod.FLIP_LEFT_RIGHT) if flip else view))
        return (out[0] if views == 1 else torch.stack(out)), i
