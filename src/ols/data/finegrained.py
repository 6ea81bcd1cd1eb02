"""Fine-grained sets: list files of ``relative/path;label`` lines, and CUB-200-2011's own files.

List files (the layout of the official OLS fine-grained code): ``DATA_DIR/train_list.txt``
and ``DATA_DIR/test_list.txt`` (or the same under ``DATA_DIR/lists/``), paths relative to
``DATA_DIR/images/`` when that folder exists, else to ``DATA_DIR``; labels are
``0..K-1``. CUB-200-2011: ``images.txt`` (``id path``), ``image_class_labels.txt``
(``id class``, 1-based), ``train_test_split.txt`` (``id is_train``), ``classes.txt``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from .splits import FileSplit, labels_tensor, layout_error

LIST_LAYOUT = (
    "  DATA_DIR/train_list.txt and DATA_DIR/test_list.txt (or under DATA_DIR/lists/),\n"
    "  one 'relative/path.jpg;label' line per image, labels 0..K-1,\n"
    "  paths relative to DATA_DIR/images/ (if it exists) or DATA_DIR"
)
CUB_LAYOUT = (
    "  DATA_DIR/images.txt              '<id> <relative path>'\n"
    "  DATA_DIR/image_class_labels.txt  '<id> <class 1..200>'\n"
    "  DATA_DIR/train_test_split.txt    '<id> <1 = train, 0 = test>'\n"
    "  DATA_DIR/classes.txt             '<class> <name>' (optional)\n"
    "  DATA_DIR/images/<relative path>  (the CUB_200_2011 folder of the official archive)"
)


def _lines(path: Path, layout: str) -> List[Tuple[int, str]]:
    if not path.is_file():
        raise layout_error(path, "file not found", layout)
    with open(path, encoding="utf-8-sig") as f:  # a BOM that an editor added is not part of line 1
        lines = [(i, line.strip()) for i, line in enumerate(f, 1) if line.strip()]
    if not lines:
        raise layout_error(path, "the file is empty", layout)
    return lines


def read_list_file(path: Path) -> Tuple[List[str], List[int]]:
    """``(relative paths, labels)`` of a ``path;label`` list file; a bad line is named."""
    paths, labels = [], []
    for number, line in _lines(path, LIST_LAYOUT):
        rel, sep, label = line.rpartition(";")
        if not sep or not rel or not label.strip().lstrip("-").isdigit():
            raise layout_error(path, f"line {number} is not 'relative/path;label': {line!r}", LIST_LAYOUT)
        paths.append(rel.strip())
        labels.append(int(label))
    return paths, labels


def _resolve(root: Path, rel: List[str], source: Path, layout: str) -> List[str]:
    base = root / "images" if (root / "images").is_dir() else root
    files = [str(base / r) for r in rel]
    missing = [f for f in files[:1000] if not Path(f).is_file()]
    if missing:
        raise layout_error(Path(missing[0]), f"an image listed in {source.name} is missing", layout)
    return files


def check_classes_trained(train_y: List[int], test_y: List[int], num_classes: int, train_file: Path,
                          test_file: Path, unit: str, layout: str, first: int = 0,
                          where: Optional[Callable[[int], str]] = None) -> None:
    """Every class ``first..num_classes-1`` has training images; a test-only class names the test file."""
    trained = set(train_y)
    unseen = sorted(set(test_y) - trained)
    if unseen:
        at = where(test_y.index(unseen[0])) if where else f"{unit} {test_y.index(unseen[0]) + 1}"
        raise layout_error(test_file, f"{at} has label {unseen[0]}, which no training image has "
                           f"({len(unseen)} such class(es): {unseen[:5]}); every class needs training images",
                           layout)
    gaps = sorted(set(range(first, num_classes)) - trained)
    if gaps:
        raise layout_error(train_file, f"labels must be {first}..K-1 with no gap: class(es) {gaps[:5]} have "
                           "no image at all", layout)


def load_list_files(data_dir: Optional[str], image_size: int = 224, resize: int = 256) -> FileSplit:
    """A fine-grained set given by ``train_list.txt`` / ``test_list.txt``."""
    if data_dir is None:
        raise layout_error(Path("."), "the finegrained dataset needs --data-dir", LIST_LAYOUT)
    root = Path(data_dir)
    lists = root / "lists" if (root / "lists" / "train_list.txt").is_file() else root
    train_rel, train_y = read_list_file(lists / "train_list.txt")
    test_rel, test_y = read_list_file(lists / "test_list.txt")
    for name, ys in (("train_list.txt", train_y), ("test_list.txt", test_y)):
        if min(ys) < 0:
            raise layout_error(lists / name, f"line {ys.index(min(ys)) + 1} has label {min(ys)}; labels are "
                               "0..K-1", LIST_LAYOUT)
    num_classes = max(train_y + test_y) + 1
    check_classes_trained(train_y, test_y, num_classes, lists / "train_list.txt", lists / "test_list.txt",
                          "line", LIST_LAYOUT)
    return FileSplit(
        _resolve(root, train_rel, lists / "train_list.txt", LIST_LAYOUT), labels_tensor(train_y),
        _resolve(root, test_rel, lists / "test_list.txt", LIST_LAYOUT), labels_tensor(test_y),
        num_classes, tuple(str(k) for k in range(num_classes)), image_size, resize,
    )


def _id_table(path: Path) -> Dict[int, str]:
    table = {}
    for number, line in _lines(path, CUB_LAYOUT):
        key, _, value = line.partition(" ")
        if not key.isdigit() or not value:
            raise layout_error(path, f"line {number} is not '<id> <value>': {line!r}", CUB_LAYOUT)
        table[int(key)] = value.strip()
    return table


def load_cub(data_dir: Optional[str], image_size: int = 224, resize: int = 256) -> FileSplit:
    """CUB-200-2011 from its native files: 5,994 train / 5,794 test images of 200 species."""
    if data_dir is None:
        raise layout_error(Path("."), "the cub dataset needs --data-dir", CUB_LAYOUT)
    root = Path(data_dir)
    images = _id_table(root / "images.txt")
    labels = _id_table(root / "image_class_labels.txt")
    is_train = _id_table(root / "train_test_split.txt")
    names_file = root / "classes.txt"
    for name, table in (("image_class_labels.txt", labels), ("train_test_split.txt", is_train)):
        if set(table) != set(images):
            raise layout_error(root / name, "its image ids differ from images.txt", CUB_LAYOUT)
    ids = sorted(images)
    bad = next((i for i in ids if not labels[i].isdigit() or int(labels[i]) < 1), None)
    if bad is not None:
        raise layout_error(root / "image_class_labels.txt", f"image {bad} has label {labels[bad]!r}; CUB's "
                           "class ids are 1-based (1..200): a 0-based file would shift every class",
                           CUB_LAYOUT)
    y = {i: int(labels[i]) - 1 for i in ids}
    num_classes = max(y.values()) + 1
    split = {"train": [i for i in ids if is_train[i] == "1"], "test": [i for i in ids if is_train[i] != "1"]}
    check_classes_trained([y[i] + 1 for i in split["train"]], [y[i] + 1 for i in split["test"]],
                          num_classes + 1, root / "train_test_split.txt", root / "image_class_labels.txt", "",
                          CUB_LAYOUT, first=1, where=lambda k: f"image {split['test'][k]}")
    names = _id_table(names_file) if names_file.is_file() else {}
    class_names = tuple(names.get(k + 1, str(k)) for k in range(num_classes))
    files = {s: _resolve(root, [images[i] for i in split[s]], root / "images.txt", CUB_LAYOUT)
             for s in split}
    return FileSplit(files["train"], labels_tensor([y[i] for i in split["train"]]),
                     files["test"], labels_tensor([y[i] for i in split["test"]]),
                     num_classes, class_names, image_size, resize)
