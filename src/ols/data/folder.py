"""ImageNet-style folders: ``DATA_DIR/train/<class>/<image>`` and ``DATA_DIR/val/<class>/<image>``.

Class names are the ``train`` sub-folders in plain sorted order (torchvision's
``ImageFolder`` order), and ``val`` must use the same names.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

from .splits import FileSplit, labels_tensor, layout_error

EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
LAYOUT = (
    "  DATA_DIR/train/<class name>/<image>.jpg   (one sub-folder per class)\n"
    "  DATA_DIR/val/<class name>/<image>.jpg     (the same class names)"
)


def scan(split_dir: Path, classes: Optional[List[str]] = None) -> Tuple[List[str], List[int], List[str]]:
    """``(files, labels, classes)`` of one split folder; ``classes`` fixes the label order."""
    if not split_dir.is_dir():
        raise layout_error(split_dir, "image folder not found", LAYOUT)
    found = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    defines_classes = classes is None  # the train split: every class must have images there
    if classes is None:
        classes = found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise layout_error(split_dir, f"class folders not in train/: {unknown[:5]}", LAYOUT)
    files, labels = [], []
    for label, name in enumerate(classes):
        folder = split_dir / name
        if not folder.is_dir():
            continue
        found_here = [str(p) for p in sorted(folder.rglob("*"))
                      if p.suffix.lower() in EXTENSIONS and p.is_file()]
        if not found_here and defines_classes:
            raise layout_error(folder, "this class folder holds no images, so its class could never be "
                               "learned; remove the folder or add its images", LAYOUT)
        files += found_here
        labels += [label] * len(found_here)
    if not files:
        raise layout_error(split_dir, "no images found (extensions: " + " ".join(EXTENSIONS) + ")", LAYOUT)
    return files, labels, classes


def load_image_folder(data_dir: Optional[str], image_size: int = 224, resize: int = 256) -> FileSplit:
    """The ``train``/``val`` folders of ``data_dir`` as a :class:`FileSplit`."""
    if data_dir is None:
        raise layout_error(Path("."), "the folder dataset needs --data-dir", LAYOUT)
    root = Path(data_dir)
    train_files, train_y, classes = scan(root / "train")
    test_files, test_y, _ = scan(root / "val", classes)
    return FileSplit(train_files, labels_tensor(train_y), test_files, labels_tensor(test_y),
                     len(classes), tuple(classes), image_size, resize)
