"""Faulty data on disk: every reader names the file (and the line) and says what is wrong."""

import pickle

import numpy as np
import pytest
import torch

from ols.data import load_dataset

PIL = pytest.importorskip("PIL.Image")


def write_pickle(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def cifar100(tmp_path, train=None, test=None):
    rng = np.random.default_rng(0)
    root = tmp_path / "cifar-100-python"
    labels = [int(v) for v in rng.integers(0, 100, size=6)]
    good = {b"data": rng.integers(0, 256, size=(6, 3072), dtype=np.uint8), b"fine_labels": labels,
            b"coarse_labels": [y // 5 for y in labels]}
    write_pickle(root / "train", train if train is not None else good)
    write_pickle(root / "test", test if test is not None else good)
    return str(tmp_path), good


@pytest.mark.parametrize("change,msg", [
    (lambda b: {k: v for k, v in b.items() if k != b"data"}, "train.*has no 'data' key"),
    (lambda b: {k: v for k, v in b.items() if k != b"fine_labels"}, "train.*has no 'fine_labels' key"),
    (lambda b: {**b, b"fine_labels": b[b"fine_labels"][:-1]}, "'fine_labels' has 5 entries for 6 images"),
    (lambda b: {**b, b"coarse_labels": b[b"coarse_labels"][:2]}, "'coarse_labels' has 2 entries for 6"),
    (lambda b: {**b, b"data": b[b"data"].astype(np.float32) / 255}, "'data' should hold uint8 pixels"),
])
def test_cifar_batches_with_missing_keys_wrong_lengths_or_float_pixels(tmp_path, change, msg):
    data_dir, good = cifar100(tmp_path)
    cifar100(tmp_path, train=change(dict(good)))
    with pytest.raises(ValueError, match=msg):
        load_dataset("cifar100", data_dir)


def test_empty_class_folder_is_an_error(tmp_path):
    for split in ("train", "val"):
        PIL.new("RGB", (8, 8), (1, 2, 3)).save(_mk(tmp_path / split / "cat" / "0.png"))
    (tmp_path / "train" / "dog").mkdir()
    with pytest.raises(ValueError, match="train/dog.*holds no images"):
        load_dataset("folder", str(tmp_path))


def _mk(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _lists(tmp_path, train_text, test_text="001.A/x.png;0\n"):
    PIL.new("RGB", (8, 8), (1, 2, 3)).save(_mk(tmp_path / "images" / "001.A" / "x.png"))
    (tmp_path / "train_list.txt").write_bytes(train_text)
    (tmp_path / "test_list.txt").write_text(test_text)
    return str(tmp_path)


def test_list_file_with_a_bom_reads_and_an_empty_one_is_named(tmp_path):
    split = load_dataset("finegrained", _lists(tmp_path, "\ufeff001.A/x.png;0\n".encode("utf-8")))
    assert split.train_files[0].endswith("001.A/x.png")  # the BOM is not part of the path
    with pytest.raises(ValueError, match="train_list.txt.*the file is empty"):
        load_dataset("finegrained", _lists(tmp_path, b"\n\n"))


def test_cub_labels_must_be_one_based(tmp_path):
    for rel in ("001.A/a.png", "002.B/b.png"):
        PIL.new("RGB", (8, 8)).save(_mk(tmp_path / "images" / rel))
    (tmp_path / "images.txt").write_text("1 001.A/a.png\n2 002.B/b.png\n")
    (tmp_path / "image_class_labels.txt").write_text("1 0\n2 1\n")
    (tmp_path / "train_test_split.txt").write_text("1 1\n2 0\n")
    with pytest.raises(ValueError, match="image_class_labels.txt.*image 1 has label '0'.*1-based"):
        load_dataset("cub", str(tmp_path))


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    from ols.data.images import ImageFiles

    path = _mk(tmp_path / "deep.png")
    PIL.fromarray(np.full((6, 6), 32896, dtype=np.uint16)).save(path)  # half grey in 16 bits
    assert PIL.open(path).mode.startswith("I")
    image, _ = ImageFiles([str(path)], 4, 4)[0]
    assert image.shape == (3, 4, 4) and int(image.min()) == int(image.max()) == 128


def test_a_16_bit_image_opened_as_32_bit_is_scaled_as_16_bit_and_a_wider_one_by_its_maximum():
    """Pillow before 10.3 opens a 16-bit PNG as mode ``I`` (32-bit): it must still map 65535 to 255,
    whatever the image's own maximum, so that every image of a folder is scaled alike."""
    from ols.data.images import to_rgb8

    as_old_pillow = PIL.fromarray(np.full((2, 3), 32896, dtype=np.int32))
    assert as_old_pillow.mode == "I"
    assert np.asarray(to_rgb8(as_old_pillow, PIL)).tolist() == [[[128] * 3] * 3] * 2
    wide = PIL.fromarray(np.array([[0, 100_000, 200_000]], dtype=np.int32))  # not 16-bit data: by its max
    assert np.asarray(to_rgb8(wide, PIL))[0, :, 0].tolist() == [0, 128, 255]


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_image_in_a_worker_gives_one_line_naming_the_file(tmp_path, workers):
    from ols.data.batches import make_source

    for split in ("train", "val"):
        for name in ("a", "b"):
            PIL.new("RGB", (8, 8), (9, 9, 9)).save(_mk(tmp_path / split / name / "0.png"))
    bad = tmp_path / "train" / "b" / "1.png"
    bad.write_bytes(PIL.new("RGB", (8, 8)).tobytes()[:40])  # not a PNG at all
    split = load_dataset("folder", str(tmp_path), image_size=8, resize=8)
    source = make_source("folder", split, torch.device("cpu"), "none", num_workers=workers)
    with pytest.raises(ValueError) as info:
        list(source.train(list(range(len(split.train_files))), 2, 0, torch.Generator()))
    message = str(info.value)
    assert "\n" not in message and "cannot decode image" in message and str(bad) in message


@pytest.mark.parametrize("which", ["train", "test"])
def test_a_cifar_batch_with_no_images_or_string_labels_names_its_file(tmp_path, which):
    data_dir, good = cifar100(tmp_path)
    empty = {b"data": np.zeros((0, 3072), dtype=np.uint8), b"fine_labels": [], b"coarse_labels": []}
    cifar100(tmp_path, **{which: empty})
    with pytest.raises(ValueError, match=f"cifar-100-python/{which}: the batch holds 0 images"):
        load_dataset("cifar100", data_dir)
    words = {**good, b"fine_labels": [f"class{y}" for y in good[b"fine_labels"]]}
    cifar100(tmp_path, **{which: words})
    with pytest.raises(ValueError, match=f"{which}: 'fine_labels' should hold integer class indices, got '"):
        load_dataset("cifar100", data_dir)


def test_a_test_label_unseen_in_training_names_the_test_file_and_line(tmp_path):
    PIL.new("RGB", (8, 8)).save(_mk(tmp_path / "images" / "002.B" / "y.png"))
    data_dir = _lists(tmp_path, b"001.A/x.png;0\n", "001.A/x.png;0\n002.B/y.png;1\n")
    with pytest.raises(ValueError, match="test_list.txt: line 2 has label 1, which no training image has"):
        load_dataset("finegrained", data_dir)
    _lists(tmp_path, b"001.A/x.png;0\n001.A/x.png;2\n", "001.A/x.png;0\n")
    with pytest.raises(ValueError, match="train_list.txt: labels must be 0..K-1 with no gap: class\\(es\\) "
                                         "\\[1\\]"):
        load_dataset("finegrained", data_dir)
    _lists(tmp_path, b"001.A/x.png;0\n", "001.A/x.png;-1\n")
    with pytest.raises(ValueError, match="test_list.txt: line 1 has label -1"):
        load_dataset("finegrained", data_dir)


def test_a_cub_class_only_in_the_test_split_names_the_image(tmp_path):
    for rel in ("001.A/a.png", "002.B/b.png"):
        PIL.new("RGB", (8, 8)).save(_mk(tmp_path / "images" / rel))
    (tmp_path / "images.txt").write_text("1 001.A/a.png\n2 002.B/b.png\n")
    (tmp_path / "image_class_labels.txt").write_text("1 1\n2 2\n")
    (tmp_path / "train_test_split.txt").write_text("1 1\n2 0\n")
    with pytest.raises(ValueError, match="image_class_labels.txt: image 2 has label 2, which no training"):
        load_dataset("cub", str(tmp_path))
