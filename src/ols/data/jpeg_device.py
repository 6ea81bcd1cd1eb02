"""JPEG decoding on the device (``--decode gpu``): workers read bytes, nvJPEG decodes the batch.

Pillow in DataLoader workers fed ResNet-50 2,630 img/s on an H200 with 15 workers, 57 % of
what the model takes there; batched nvJPEG (``torchvision.io.decode_jpeg(list,
device="cuda")``) decoded 22,400 img/s (``../shared/research/next-round-2026-12-04.md`` §0).

* :class:`EncodedFiles` (in the workers): a baseline or progressive 3-component JPEG comes
  back as its bytes; anything else (PNG, a greyscale or CMYK JPEG, a lossless or arithmetic-
  coded one) is decoded there by Pillow, as on the default path, so every file works.
* :class:`DeviceDecoder` (in the main process): one batched ``decode_jpeg`` call on the
  device, then each image's crop and flip, taken from
  :func:`~ols.data.images.view_plan` (the Pillow path's own plan, so the same
  ``(seed, epoch, index)`` gives the same box and mirror), resized with antialiased
  bilinear interpolation (Pillow's ``BILINEAR`` filter) and rounded to uint8.

On the CPU the same code runs with torchvision's libjpeg decoder: the tests compare it with
the Pillow path there.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from ..utils.install import pin_torch_hint
from .images import ImageFiles, open_rgb8, to_tensor

#: start-of-frame markers nvJPEG decodes: baseline (C0), extended (C1) and progressive (C2) Huffman
_DEVICE_FRAMES = {0xC0, 0xC1, 0xC2}
#: every other start-of-frame marker (lossless, hierarchical, arithmetic): decoded by Pillow
_OTHER_FRAMES = {0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _torchvision_io():
    try:
        from torchvision import io
    except ImportError:
        raise ValueError(f"--decode gpu needs torchvision: {pin_torch_hint('vision')}") from None
    return io


def device_decodable(data: bytes) -> bool:
    """True for a JPEG whose frame is Huffman-coded (baseline/extended/progressive) with 3 components."""
    if data[:2] != b"\xff\xd8":
        return False
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return False
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length field
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker in _DEVICE_FRAMES:
            return pos + 9 < len(data) and data[pos + 9] == 3  # components, after precision, height, width
        if marker in _OTHER_FRAMES or marker == 0xDA:  # another frame type, or the scan before any frame
            return False
        pos += 2 + length
    return False


class EncodedFiles(Dataset):
    """``dataset[key] -> (tensor, encoded, key)`` for the workers of ``--decode gpu``.

    ``tensor`` is the file's bytes ``(n,)`` uint8 when ``encoded``, else the image decoded by
    Pillow, ``(3, H, W)`` uint8. ``key`` is :class:`~ols.data.images.ImageFiles`'s.
    """

    def __init__(self, images: ImageFiles):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key) -> Tuple[Tensor, bool, tuple]:
        key = self.images.key(key)
        path = self.images.files[key[0]]
        try:
            data = Path(path).read_bytes()
        except OSError as err:
            raise ValueError(f"cannot decode image {path}: {err}") from None
        if device_decodable(data):
            return torch.frombuffer(bytearray(data), dtype=torch.uint8), True, key
        return to_tensor(open_rgb8(path)), False, key


class DeviceDecoder:
    """A batch of :class:`EncodedFiles` items -> ``(images, idx)``, decoded and cropped on ``device``.

    ``images`` is ``(B, 3, S, S)`` uint8, or ``(B, V, 3, S, S)`` for ``V`` views; ``idx`` ``(B,)``.
    """

    def __init__(self, images: ImageFiles, device: torch.device):
        self.images, self.device = images, device
        self.io = _torchvision_io()

    def decode(self, items: List[Tuple[Tensor, bool, tuple]]) -> List[Tensor]:
        """Every item as ``(3, H, W)`` uint8 on the device: the JPEGs in one batched call."""
        encoded = [t for t, enc, _ in items if enc]
        decoded = []
        if encoded:
            paths = [self.images.files[key[0]] for _, enc, key in items if enc]
            try:
                decoded = self.io.decode_jpeg(encoded, mode=self.io.ImageReadMode.RGB, device=self.device)
            except RuntimeError as err:
                raise ValueError(f"cannot decode a JPEG of this batch on {self.device} (first file "
                                 f"{paths[0]}): {str(err).splitlines()[0]}; use --decode pillow") from None
        out, it = [], iter(decoded)
        for tensor, enc, _ in items:
            out.append(next(it) if enc else tensor.to(self.device, non_blocking=True))
        return out

    def __call__(self, items: List[Tuple[Tensor, bool, tuple]]) -> Tuple[Tensor, Tensor]:
        size = self.images.size
        views = []
        for image, (_, _, key) in zip(self.decode(items), items):
            i, epoch, count = key
            height, width = image.shape[-2:]
            crops = [crop_resize(image, box, size, flip) for box, flip in self.images.plan(width, height, i,
                                                                                           epoch, count)]
            views.append(crops[0] if count == 1 else torch.stack(crops))
        idx = torch.tensor([key[0] for _, _, key in items], dtype=torch.long)
        return torch.stack(views), idx


def crop_resize(image: Tensor, box: Tuple[int, int, int, int], size: int, flip: bool) -> Tensor:
    """``(3, size, size)`` uint8: ``image`` ``(3, H, W)`` cropped to ``box`` ``(left, top, w, h)``, resized.

    Antialiased bilinear interpolation (Pillow's ``BILINEAR`` when it shrinks), rounded, and
    mirrored if ``flip``.
    """
    left, top, w, h = box
    crop = image[:, top:top + h, left:left + w].unsqueeze(0).float()
    out = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    out = out.round_().clamp_(0, 255).to(torch.uint8)[0]
    return out.flip(-1) if flip else out
