"""PASCAL VOC detection data from the devkit's folders: ``VOCdevkit/VOC2007|VOC2012``.

Layout (as the devkit ships it): ``VOC<year>/JPEGImages/<id>.jpg``, ``VOC<year>/Annotations/<id>.xml``
and ``VOC<year>/ImageSets/Main/<split>.txt`` (one id per line). An annotation holds one
``<object>`` per box: ``<name>``, ``<difficult>`` and ``<bndbox>`` with ``xmin, ymin, xmax, ymax``
in 1-based, inclusive pixels; they are read as continuous coordinates
``(xmin - 1, ymin - 1, xmax, ymax)``, so a box's area is the devkit's ``(w + 1) * (h + 1)``.
The paper's training set is 07+12 trainval (16,551 images), its test set 07 test (4,952).
Difficult objects are kept, flagged: :func:`~ols.detection.voc_eval.evaluate_voc` ignores them,
and a trainer may drop them.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

#: the 20 VOC classes, in the devkit's order
VOC_CLASSES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

#: the paper's sets (Table X)
TRAIN_SETS = (("2007", "trainval"), ("2012", "trainval"))
TEST_SETS = (("2007", "test"),)


def image_size(path: Path) -> Optional[Tuple[int, int]]:
    """``(width, height)`` of an annotation's ``<size>``, or ``None`` where it has none (or a zero one)."""
    try:
        size = ET.parse(path).getroot().find("size")
        width, height = int(float(size.findtext("width"))), int(float(size.findtext("height")))
    except (AttributeError, TypeError, ValueError, ET.ParseError, OSError):
        return None
    return (width, height) if width > 0 and height > 0 else None


def read_annotation(path: Path, classes: Sequence[str] = VOC_CLASSES) -> Dict[str, Tensor]:
    """``{"boxes" (M, 4) float32 xyxy, "labels" (M,) int64, "difficult" (M,) bool}`` of one XML file.

    A malformed file, an unknown class, a box without its four finite numbers, a reversed box, or a
    box outside the image (negative, or past the ``<size>`` the file gives) is one ``ValueError``
    naming the file and the object: boxes outside their image are the usual sign of a broken
    conversion (normalised coordinates, width and height swapped).
    """
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise ValueError(f"{path}: not valid XML ({err}); restore the file from the VOC archive") from None
    except OSError as err:
        raise ValueError(
            f"{path}: cannot be read ({err.strerror}); the annotation of a listed image is missing"
        ) from None
    boxes, labels, difficult = [], [], []
    size = image_size(path)
    for n, obj in enumerate(root.iter("object"), start=1):
        name = (obj.findtext("name") or "").strip()
        if name not in classes:
            raise ValueError(
                f"{path}: object {n} is {name!r}, not one of the {len(classes)} classes "
                f"({', '.join(classes[:4])}, ...)"
            )
        box = obj.find("bndbox")
        try:
            xmin, ymin, xmax, ymax = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (AttributeError, TypeError, ValueError):
            xmin = ymin = xmax = ymax = float("nan")
        if not all(math.isfinite(v) for v in (xmin, ymin, xmax, ymax)):
            raise ValueError(
                f"{path}: object {n} ({name}) has no complete <bndbox> with numeric xmin, ymin, xmax, ymax"
            )
        if xmax < xmin or ymax < ymin:
            raise ValueError(
                f"{path}: object {n} ({name}) has xmax < xmin or ymax < ymin: "
                f"({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g})"
            )
        outside = min(xmin, ymin) < 0 or (size is not None and (xmax > size[0] or ymax > size[1]))
        if outside:
            where = f"the {size[0]}x{size[1]} image of its <size>" if size else "the image"
            raise ValueError(
                f"{path}: object {n} ({name}) box ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g}) lies outside "
                f"{where}; VOC boxes are 1-based pixels inside the image (a normalised or swapped "
                "conversion?)"
            )
        boxes.append((xmin - 1.0, ymin - 1.0, xmax, ymax))
        labels.append(classes.index(name))
        difficult.append((obj.findtext("difficult") or "0").strip() == "1")
    return {
        "boxes": torch.tensor(np.array(boxes, dtype=np.float32).reshape(-1, 4)),
        "labels": torch.tensor(labels, dtype=torch.long),
        "difficult": torch.tensor(difficult, dtype=torch.bool),
    }


def find_devkit(root: str) -> Path:
    """``root`` itself if it holds ``VOC<year>`` folders, else ``root/VOCdevkit``; one line otherwise."""
    path = Path(root)
    for candidate in (path, path / "VOCdevkit"):
        if any(candidate.glob("VOC20*")):
            return candidate
    raise ValueError(
        f"--data-dir {root}: no VOC2007/ or VOC2012/ folder in it or in {path / 'VOCdevkit'}; "
        "pass the folder the VOC archives unpack into (VOCdevkit/VOC2007/JPEGImages, "
        "Annotations, "
        "ImageSets/Main)"
    )


def list_images(devkit: Path, sets: Sequence[Tuple[str, str]]) -> List[Tuple[Path, Path]]:
    """``(image, annotation)`` paths of every id in ``sets`` (``(year, split)`` pairs), in list order.

    A missing list, image or annotation file is one line naming it and the list that names it.
    """
    out = []
    for year, split in sets:
        folder = devkit / f"VOC{year}"
        listing = folder / "ImageSets" / "Main" / f"{split}.txt"
        if not listing.is_file():
            raise ValueError(
                f"{listing}: missing; VOC{year} {split} needs its ImageSets/Main/{split}.txt "
                "(from the VOC archive)"
            )
        for line_no, line in enumerate(listing.read_text(encoding="utf-8").splitlines(), start=1):
            image_id = line.strip().split()[0] if line.strip() else ""
            if not image_id:
                continue
            image = folder / "JPEGImages" / f"{image_id}.jpg"
            annotation = folder / "Annotations" / f"{image_id}.xml"
            for path, what in ((image, "image"), (annotation, "annotation")):
                if not path.is_file():
                    raise ValueError(f"{path}: missing {what} of id {image_id} (line {line_no} of {listing})")
            out.append((image, annotation))
    if not out:
        raise ValueError(f"{devkit}: the lists {', '.join(f'VOC{y} {s}' for y, s in sets)} name no image")
    return out


class VOCDetection:
    """``dataset[i] -> (image (3, H, W) uint8, {"boxes", "labels", "difficult"})`` over VOC sets.

    Args:
        root: the folder holding ``VOCdevkit`` (or ``VOCdevkit`` itself).
        sets: ``(year, split)`` pairs; the default is the paper's training set, 07+12 trainval
            (:data:`TRAIN_SETS`); :data:`TEST_SETS` is 07 test.
        keep_difficult: keep the difficult objects (flagged); ``False`` drops them (training).

    Every annotation is read and checked when the set is built, so a broken file stops the run
    before it trains. Images are decoded with Pillow (the ``images`` extra) when read.
    """

    def __init__(self, root: str, sets: Sequence[Tuple[str, str]] = TRAIN_SETS, keep_difficult: bool = True):
        self.devkit = find_devkit(root)
        self.sets = tuple(sets)
        self.files = list_images(self.devkit, sets)
        self.targets = [read_annotation(annotation) for _, annotation in self.files]
        self.sizes = [image_size(annotation) for _, annotation in self.files]
        if not keep_difficult:
            self.targets = [{k: v[~t["difficult"]] for k, v in t.items()} for t in self.targets]
        self.class_names = VOC_CLASSES

    @property
    def num_classes(self) -> int:
        return len(VOC_CLASSES)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Tuple[Tensor, Dict[str, Tensor]]:
        try:
            from PIL import Image
        except ImportError:
            raise ImportError("reading VOC images needs Pillow: pip install 'ols[images]'") from None
        path = self.files[i][0]
        try:
            with Image.open(path) as img:
                array = np.asarray(img.convert("RGB"))
        except OSError as err:
            raise ValueError(
                f"{path}: not a readable image ({err}); restore it from the VOC archive"
            ) from None
        height, width = array.shape[:2]
        size, boxes = self.sizes[i], self.targets[i]["boxes"]
        if size is not None and size != (width, height):
            raise ValueError(f"{path}: the image is {width}x{height}, but {self.files[i][1].name} gives its "
                             f"<size> as {size[0]}x{size[1]}; restore the image or the annotation")
        if len(boxes) and (float(boxes[:, 2].max()) > width or float(boxes[:, 3].max()) > height):
            raise ValueError(f"{self.files[i][1]}: a box lies outside the {width}x{height} image {path.name}")
        return torch.from_numpy(array.copy()).permute(2, 0, 1), self.targets[i]


def training_sets(root: str,
                  sets: Sequence[Tuple[str, str]] = TRAIN_SETS) -> Tuple[List[Tuple[str, str]], str]:
    """``(sets, note)``: the ``sets`` whose ``VOC<year>`` folder is there, and a line saying which are not.

    The paper trains on 07+12 trainval; with VOC2012 absent a run trains on 07 trainval alone, and
    the note says so. A folder that is there but lacks its list is still an error (:func:`list_images`).
    """
    devkit = find_devkit(root)
    present = [(year, split) for year, split in sets if (devkit / f"VOC{year}").is_dir()]
    missing = [f"VOC{year}" for year, split in sets if (year, split) not in present]
    if not present:
        raise ValueError(f"{devkit}: none of {', '.join(missing)} is there to train on")
    names = " + ".join(f"{y} {s}" for y, s in present)
    absent = f" ({', '.join(missing)} not in {devkit}, so not the paper's 07+12)" if missing else ""
    note = f"VOC training set: {names}{absent}"
    return present, note


def check_scorable(test: VOCDetection) -> None:
    """A test set with no object that is not difficult would score mAP 0: one line naming its list."""
    if not any(bool((~t["difficult"]).any()) for t in test.targets):
        lists = ", ".join(str(test.devkit / f"VOC{y}" / "ImageSets" / "Main" / f"{s}.txt")
                          for y, s in test.sets)
        raise ValueError(f"{lists}: none of its {len(test)} images has an object that is not <difficult>, "
                         "so there is nothing to evaluate (mAP would read 0); check the annotations' "
                         "difficult flags")
