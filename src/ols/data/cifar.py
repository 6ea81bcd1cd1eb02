"""CIFAR-10 and CIFAR-100 from the original python pickle batches, read with numpy.

CIFAR-10: ``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``;
CIFAR-100: ``cifar-100-python/{train, test, meta}``. Each batch is a pickled dict whose
``data`` is ``(N, 3072)`` uint8 in planar R, G, B order (Krizhevsky, 2009).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .splits import TensorSplit, channel_stats, labels_tensor, layout_error

LAYOUT = {
    10: "  DATA_DIR/cifar-10-batches-py/{data_batch_1, ..., data_batch_5, test_batch, batches.meta}\n"
        "  (the 'CIFAR-10 python version' archive from https://www.cs.toronto.edu/~kriz/cifar.html)",
    100: "  DATA_DIR/cifar-100-python/{train, test, meta}\n"
         "  (the 'CIFAR-100 python version' archive from https://www.cs.toronto.edu/~kriz/cifar.html)",
}
FOLDER = {10: "cifar-10-batches-py", 100: "cifar-100-python"}


def read_batch(path: Path, num_classes: int) -> dict:
    """One pickle batch as a dict with str keys; errors name the file."""
    if not path.is_file():
        raise layout_error(path, f"CIFAR-{num_classes} file not found", LAYOUT[num_classes])
    try:
        with open(path, "rb") as f:
            raw = pickle.load(f, encoding="bytes")
        return {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}
    except Exception as err:  # truncated or foreign file
        raise layout_error(path, f"not a CIFAR pickle batch ({type(err).__name__}: {err})",
                           LAYOUT[num_classes]) from None


def _images(batch: dict, path: Path, num_classes: int) -> np.ndarray:
    if "data" not in batch:
        raise layout_error(path, f"the batch has no 'data' key (keys: {sorted(batch)})", LAYOUT[num_classes])
    data = np.asarray(batch["data"])
    if data.ndim != 2 or data.shape[1] != 3072:
        raise layout_error(path, f"'data' should be (N, 3072) uint8, got shape {data.shape}",
                           LAYOUT[num_classes])
    if data.dtype != np.uint8:
        raise layout_error(path, f"'data' should hold uint8 pixels 0-255, got {data.dtype}; casting would "
                           "blank or wrap the images", LAYOUT[num_classes])
    if len(data) == 0:
        raise layout_error(path, "the batch holds 0 images", LAYOUT[num_classes])
    return data.reshape(-1, 3, 32, 32)


def _labels(batch: dict, key: str, path: Path, num_classes: int, count: int) -> np.ndarray:
    if key not in batch:
        raise layout_error(path, f"the batch has no {key!r} key (keys: {sorted(batch)})", LAYOUT[num_classes])
    try:
        labels = np.asarray(batch[key], dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        first = next(iter(batch[key]), None)
        raise layout_error(path, f"{key!r} should hold integer class indices, got {first!r} "
                           f"({type(first).__name__})", LAYOUT[num_classes]) from None
    if labels.shape != (count,):
        raise layout_error(path, f"{key!r} has {labels.size} entries for {count} images", LAYOUT[num_classes])
    return labels


def _decode(names) -> tuple:
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def load_cifar(data_dir: Optional[str], num_classes: int) -> TensorSplit:
    """CIFAR-``num_classes`` as ``uint8`` ``(N, 3, 32, 32)`` tensors (50,000 train / 10,000 test).

    ``data_dir`` is the folder holding ``cifar-10-batches-py`` / ``cifar-100-python``, or
    that folder itself. CIFAR-100 also gives each fine class its coarse superclass.
    """
    if data_dir is None:
        raise layout_error(Path("."), f"cifar{num_classes} needs --data-dir", LAYOUT[num_classes])
    root = Path(data_dir)
    if root.name != FOLDER[num_classes]:
        root = root / FOLDER[num_classes]
    label_key = "labels" if num_classes == 10 else "fine_labels"
    if num_classes == 10:
        train_files = [root / f"data_batch_{i}" for i in range(1, 6)]
        test_file, meta_file, names_key = root / "test_batch", root / "batches.meta", "label_names"
    else:
        train_files = [root / "train"]
        test_file, meta_file, names_key = root / "test", root / "meta", "fine_label_names"

    train = [read_batch(p, num_classes) for p in train_files]
    test = read_batch(test_file, num_classes)
    train_parts = [_images(b, p, num_classes) for b, p in zip(train, train_files)]
    train_x = np.concatenate(train_parts)
    train_y = np.concatenate([_labels(b, label_key, p, num_classes, len(x))
                              for b, p, x in zip(train, train_files, train_parts)])
    test_x = _images(test, test_file, num_classes)
    test_y = _labels(test, label_key, test_file, num_classes, len(test_x))
    for y, path in ((train_y, train_files[0]), (test_y, test_file)):
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise layout_error(path, f"labels outside [0, {num_classes})", LAYOUT[num_classes])
    meta = read_batch(meta_file, num_classes) if meta_file.is_file() else {}
    names = _decode(meta.get(names_key, [str(k) for k in range(num_classes)]))

    groups = None
    if num_classes == 100 and "coarse_labels" in train[0]:
        coarse = np.full(100, -1, dtype=np.int64)
        coarse[train_y] = _labels(train[0], "coarse_labels", train_files[0], num_classes, len(train_y))
        groups = tuple(int(g) for g in coarse)
    x = torch.from_numpy(train_x)
    mean, std = channel_stats(x)
    return TensorSplit(x, labels_tensor(train_y), torch.from_numpy(test_x), labels_tensor(test_y),
                       num_classes, names, mean, std, groups)
