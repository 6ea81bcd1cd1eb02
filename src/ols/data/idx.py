"""MNIST-format datasets (Fashion-MNIST, MNIST) from their idx files, read with numpy.

Four files: ``{train,t10k}-{images-idx3,labels-idx1}-ubyte``, each raw or gzipped (``.gz``).
An idx file is a 4-byte magic number (two zero bytes, a type code, the number of
dimensions), one big-endian uint32 per dimension, then the values in C order (LeCun et al.,
"The MNIST database"). Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017; MIT licence) is in
Debian as ``dataset-fashion-mnist``, which installs the four ``.gz`` files in
:data:`FASHION_MNIST_DIR`.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from .splits import TensorSplit, channel_stats

#: where Debian's ``dataset-fashion-mnist`` puts the files
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

#: the four files: (train images, train labels, test images, test labels), without ``.gz``
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
         "t10k-labels-idx1-ubyte")

#: idx type codes and the numpy dtype each stands for (big-endian)
TYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
         0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}

#: the first two bytes of a gzip stream (RFC 1952): a gzipped file is read as one, whatever its name
GZIP_MAGIC = b"\x1f\x8b"

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")
#: tops (T-shirt/top, pullover, coat, shirt) = 0, footwear (sandal, sneaker, ankle boot) = 1; trouser,
#: dress and bag are groups of their own
FASHION_GROUPS = (0, 2, 0, 3, 0, 1, 0, 1, 4, 1)


def read_idx(path: Path) -> np.ndarray:
    """The array in idx file ``path`` (raw or ``.gz``); a malformed file is one line naming it."""
    try:
        with open(path, "rb") as f:
            gzipped = f.read(2) == GZIP_MAGIC
        with (gzip.open(path, "rb") if gzipped else open(path, "rb")) as f:  # by its bytes, not its name
            data = f.read()
    except (OSError, EOFError, zlib.error) as err:  # a truncated or corrupt gzip stream
        raise ValueError(f"{path}: cannot read it ({type(err).__name__}: {err}); fetch the file "
                         "again") from None
    if len(data) < 4 or data[0] or data[1] or data[2] not in TYPES:
        raise ValueError(f"{path}: not an idx file (its first bytes are {data[:4].hex() or 'missing'}; an "
                         "idx file starts with 00 00, a type code and the number of dimensions)")
    dtype, ndim = TYPES[data[2]], data[3]
    if len(data) < 4 + 4 * ndim:
        raise ValueError(f"{path}: truncated in its header ({len(data)} bytes for {ndim} dimensions)")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    payload = data[4 + 4 * ndim:]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(payload) != expected:
        raise ValueError(f"{path}: holds {len(payload)} bytes of values where its header {shape} says "
                         f"{expected}; the file is truncated or damaged, fetch it again")
    return np.frombuffer(payload, dtype=dtype).reshape(shape)


def _find(root: Path, stem: str, missing_hint: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    raise ValueError(f"{root}: no {stem}[.gz]; {missing_hint}")


def first_per_class(labels: Tensor, per_class: int) -> Tensor:
    """Indices of the first ``per_class`` samples of each class in file order, sorted (all if 0)."""
    if per_class < 0:
        raise ValueError(f"--data-arg train_per_class/test_per_class must be >= 0, got {per_class}")
    if per_class == 0:
        return torch.arange(labels.shape[0])
    rank = torch.zeros_like(labels)
    for c in labels.unique():
        members = (labels == c).nonzero().squeeze(1)
        rank[members] = torch.arange(members.shape[0])
    return (rank < per_class).nonzero().squeeze(1)


def load_idx_split(data_dir: Optional[str], what: str = "Fashion-MNIST", num_classes: int = 10,
                   class_names: Optional[Tuple[str, ...]] = None,
                   groups: Optional[Tuple[int, ...]] = None, train_per_class: int = 0,
                   test_per_class: int = 0) -> TensorSplit:
    """An MNIST-format dataset as ``uint8`` ``(N, 1, H, W)`` tensors; mean/std from the train split.

    ``data_dir`` holds the four :data:`FILES` (each raw or ``.gz``). Image and label counts,
    image dimensions and label ranges are checked; every error is one line naming the file.
    ``train_per_class``/``test_per_class`` > 0 keep the first that many images of each class
    (in file order: a fixed subset for laptops; ``--data-arg train_per_class=600``).
    """
    if data_dir is None:
        raise ValueError(f"{what} needs --data-dir: the folder holding {', '.join(FILES)} (each raw or .gz)")
    root = Path(data_dir)
    hint = (f"apt-get install dataset-fashion-mnist puts them in {FASHION_MNIST_DIR}, or pass the folder "
            f"holding {', '.join(FILES)} (each raw or .gz) with --data-dir" if what == "Fashion-MNIST" else
            f"pass the folder holding {', '.join(FILES)} (each raw or .gz) with --data-dir")
    arrays = []
    for images_stem, labels_stem in (FILES[:2], FILES[2:]):
        images_path, labels_path = _find(root, images_stem, hint), _find(root, labels_stem, hint)
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise ValueError(f"{images_path}: expected (N, H, W) uint8 images, got {images.dtype} of shape "
                             f"{images.shape}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"{labels_path}: {labels.size} labels for the {images.shape[0]} images of "
                             f"{images_path.name}")
        if not images.shape[0]:
            split = "training" if images_stem == FILES[0] else "test"
            raise ValueError(f"{images_path}: holds no images; the {split} split needs at least one")
        if labels.dtype.kind == "f" and not np.array_equal(labels, np.round(labels)):
            bad = labels[labels != np.round(labels)][0]
            raise ValueError(f"{labels_path}: a label is {bad:g}, not a whole number; labels are class "
                             "indices")
        if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
            worst = int(labels.min()) if int(labels.min()) < 0 else int(labels.max())
            raise ValueError(f"{labels_path}: a label is {worst}, outside [0, {num_classes})")
        x = torch.from_numpy(images.copy()).unsqueeze(1)  # (N, 1, H, W); a copy: frombuffer is read-only
        arrays.append((x, torch.from_numpy(labels.astype(np.int64))))
    (train_x, train_y), (test_x, test_y) = arrays
    keep, keep_test = first_per_class(train_y, train_per_class), first_per_class(test_y, test_per_class)
    train_x, train_y, test_x, test_y = train_x[keep], train_y[keep], test_x[keep_test], test_y[keep_test]
    if train_x.shape[1:] != test_x.shape[1:]:
        raise ValueError(f"{root}: train images are {tuple(train_x.shape[2:])} but test images "
                         f"{tuple(test_x.shape[2:])}")
    mean, std = channel_stats(train_x)
    names = class_names or tuple(str(c) for c in range(num_classes))
    return TensorSplit(train_x, train_y, test_x, test_y, num_classes, names, mean, std, groups)


def load_fashion_mnist(data_dir: Optional[str] = None, train_per_class: int = 0,
                       test_per_class: int = 0) -> TensorSplit:
    """Fashion-MNIST: 60,000 + 10,000 28x28 greyscale images of 10 garment classes, with their groups."""
    return load_idx_split(data_dir or FASHION_MNIST_DIR, "Fashion-MNIST", 10, FASHION_CLASSES, FASHION_GROUPS,
                          train_per_class, test_per_class)


def load_mnist(data_dir: Optional[str] = None, train_per_class: int = 0,
               test_per_class: int = 0) -> TensorSplit:
    """MNIST (or any MNIST-format set of 10 classes) from ``data_dir``."""
    return load_idx_split(data_dir, "MNIST", 10, train_per_class=train_per_class,
                          test_per_class=test_per_class)
