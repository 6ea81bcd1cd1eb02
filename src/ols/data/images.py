"""Decoding image files with Pillow, and the usual ImageNet-style crops, for DataLoader workers.

Training images get a random-resized crop (scale 0.08-1, aspect 3/4-4/3; Szegedy et al.,
2015) and a horizontal flip; test images are resized (short side ``resize``) and centre
cropped. The randomness of image ``i`` in epoch ``e`` comes from ``(seed, e, i)`` alone, so
it does not depend on worker count or order and a resumed run sees the same crops.
"""

from __future__ import annotations

import math
from typing import Sequence

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
    """An RGB image with 8 bits per channel; 16- and 32-bit grey images are scaled, not clipped."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        wide = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(wide.max()), 1.0)
        img = image_mod.fromarray(np.round(wide * (255.0 / top)).clip(0, 255).astype(np.uint8), mode="L")
    return img.convert("RGB")


def to_tensor(img) -> Tensor:
    """A PIL RGB image -> ``(3, H, W)`` uint8."""
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


class ImageFiles(Dataset):
    """``dataset[i] -> (image (3, size, size) uint8, i)``; set ``epoch`` before each training pass.

    With ``views = V > 1`` the image is ``(V, 3, size, size)``, ``V`` independent crops.

    ``crop``: random-resized crop, else resize + centre crop; ``flip``: random mirror.
    """

    def __init__(self, files: Sequence[str], size: int, resize: int, crop: bool = False,
                 flip: bool = False, seed: int = 0):
        self.files, self.size, self.resize, self.seed = list(files), size, resize, seed
        self.crop, self.flip = crop, flip
        self.epoch, self.views = 0, 1

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        image_mod = _pil()
        try:
            with image_mod.open(self.files[i]) as f:
                img = to_rgb8(f, image_mod)
        except (OSError, SyntaxError, ValueError) as err:  # missing, truncated or not an image
            raise ValueError(f"cannot decode image {self.files[i]}: {err}") from None
        if self.views == 1:
            return self._view(img, image_mod, np.random.default_rng((self.seed, self.epoch, i))), i
        # view 0 is the single-view crop; view v > 0 draws from (seed, epoch, i, v)
        rngs = [np.random.default_rng((self.seed, self.epoch, i, *([v] if v else [])))
                for v in range(self.views)]
        return torch.stack([self._view(img, image_mod, rng) for rng in rngs]), i

    def _view(self, img, image_mod, rng: np.random.Generator) -> Tensor:
        if self.crop:
            left, top, w, h = random_resized_box(img.width, img.height, rng)
        else:
            left, top, w, h = centre_box(img.width, img.height, self.resize, self.size)
        flip = self.flip and rng.random() < 0.5
        img = img.resize((self.size, self.size), image_mod.BILINEAR, box=(left, top, left + w, top + h))
        if flip:
            img = img.transpose(image_mod.FLIP_LEFT_RIGHT)
        return to_tensor(img)
