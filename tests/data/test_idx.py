"""The idx reader (Fashion-MNIST, MNIST): equal to a direct parse, and one line for every broken file."""

import gzip
import os
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from ols.data import load_dataset
from ols.data.idx import FASHION_MNIST_DIR, FILES, read_idx


def write_idx(path: Path, array: np.ndarray, code: int = 0x08) -> None:
    """An idx file written by hand: magic (0, 0, type, ndim), big-endian dims, the values."""
    raw = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)


def fixture(root: Path, gz: bool = True, n_train: int = 12, n_test: int = 5, seed: int = 0):
    g = np.random.default_rng(seed)
    arrays = (g.integers(0, 256, (n_train, 6, 7), dtype=np.uint8), g.integers(0, 10, n_train, dtype=np.uint8),
              g.integers(0, 256, (n_test, 6, 7), dtype=np.uint8), g.integers(0, 10, n_test, dtype=np.uint8))
    root.mkdir(parents=True, exist_ok=True)
    for stem, array in zip(FILES, arrays):
        write_idx(root / (stem + (".gz" if gz else "")), array)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_the_reader_gives_back_what_was_written(tmp_path, gz):
    train_x, train_y, test_x, test_y = fixture(tmp_path, gz)
    data = load_dataset("mnist", data_dir=str(tmp_path))
    assert torch.equal(data.train_x, torch.from_numpy(train_x).unsqueeze(1))
    assert torch.equal(data.test_x, torch.from_numpy(test_x).unsqueeze(1))
    assert torch.equal(data.train_y, torch.from_numpy(train_y.astype(np.int64)))
    assert torch.equal(data.test_y, torch.from_numpy(test_y.astype(np.int64)))
    assert data.train_x.dtype == torch.uint8 and data.input_shape == (1, 6, 7)
    assert data.mean[0] == pytest.approx(train_x.mean() / 255)


def test_other_value_types_read_big_endian(tmp_path):
    values = np.arange(-6, 6, dtype=">i4").reshape(3, 4)
    write_idx(tmp_path / "ints", values, code=0x0C)
    assert np.array_equal(read_idx(tmp_path / "ints"), values)


def _damage(root: Path, how: str) -> str:
    images = root / (FILES[0] + ".gz")
    if how == "truncated":
        with gzip.open(images) as f:
            raw = f.read()
        with gzip.open(images, "wb") as f:
            f.write(raw[:-5])
        return re.escape("holds 499 bytes of values where its header (12, 6, 7) says 504")
    if how == "corrupt":
        raw = images.read_bytes()
        images.write_bytes(raw[:10] + bytes(range(256)) + raw[266:])  # the gzip header, then garbage
        return "cannot read it"
    if how == "not idx":
        with gzip.open(images, "wb") as f:
            f.write(b"hello, world")
        return "not an idx file"
    if how == "counts":
        write_idx(root / (FILES[1] + ".gz"), np.zeros(11, dtype=np.uint8))
        return "11 labels for the 12 images"
    if how == "labels":
        write_idx(root / (FILES[3] + ".gz"), np.full(5, 10, dtype=np.uint8))
        return "a label is 10, outside \\[0, 10\\)"
    (root / (FILES[2] + ".gz")).unlink()
    return "no t10k-images-idx3-ubyte\\[.gz\\]; pass the folder holding"


@pytest.mark.parametrize("how", ["truncated", "corrupt", "not idx", "counts", "labels", "missing"])
def test_a_broken_file_is_one_line_naming_it(tmp_path, how):
    fixture(tmp_path)
    message = _damage(tmp_path, how)
    with pytest.raises(ValueError, match=message) as err:
        load_dataset("mnist", data_dir=str(tmp_path))
    assert "\n" not in str(err.value) and str(tmp_path) in str(err.value)


def test_missing_fashion_mnist_says_how_to_install_it(tmp_path):
    with pytest.raises(ValueError, match="apt-get install dataset-fashion-mnist") as err:
        load_dataset("fashion-mnist", data_dir=str(tmp_path / "nowhere"))
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="mnist needs --data-dir|MNIST needs --data-dir"):
        load_dataset("mnist")


HAVE_FASHION = Path(FASHION_MNIST_DIR, FILES[0] + ".gz").is_file()
# CI installs the Debian package and sets this, so there the real-data tests cannot skip
REQUIRED = os.environ.get("OLS_REQUIRE_FASHION_MNIST") == "1"


@pytest.mark.skipif(not HAVE_FASHION and not REQUIRED,
                    reason="Fashion-MNIST is not installed: apt-get install dataset-fashion-mnist")
def test_fashion_mnist_from_debian_equals_a_direct_parse():
    data = load_dataset("fashion-mnist")
    for split, (images_stem, labels_stem) in (("train", FILES[:2]), ("test", FILES[2:])):
        with gzip.open(Path(FASHION_MNIST_DIR, images_stem + ".gz")) as f:
            images = np.frombuffer(f.read(), dtype=np.uint8, offset=16)  # the 16-byte header of a 3-d idx
        with gzip.open(Path(FASHION_MNIST_DIR, labels_stem + ".gz")) as f:
            labels = np.frombuffer(f.read(), dtype=np.uint8, offset=8)
        x, y = getattr(data, f"{split}_x"), getattr(data, f"{split}_y")
        assert torch.equal(x.reshape(-1), torch.from_numpy(images.copy()))
        assert torch.equal(y, torch.from_numpy(labels.astype(np.int64)))
    assert data.train_x.shape == (60_000, 1, 28, 28) and data.test_x.shape == (10_000, 1, 28, 28)
    assert torch.bincount(data.train_y).tolist() == [6_000] * 10
    assert data.mean[0] == pytest.approx(0.2860, abs=1e-4)  # the published train mean
    assert data.class_names[0] == "T-shirt/top" and data.groups[6] == data.groups[0]  # shirt is a top


def test_per_class_subsets_keep_the_first_images_of_each_class_in_file_order(tmp_path):
    train_x, train_y, test_x, test_y = fixture(tmp_path, n_train=60, n_test=30, seed=3)
    data = load_dataset("mnist", data_dir=str(tmp_path), train_per_class=2, test_per_class=1)
    want = [i for i in range(60) if list(train_y[:i]).count(train_y[i]) < 2]  # a plain loop over the file
    assert torch.equal(data.train_x, torch.from_numpy(train_x[want]).unsqueeze(1))
    assert data.train_y.tolist() == train_y[want].tolist()
    want_test = [i for i in range(30) if list(test_y[:i]).count(test_y[i]) < 1]
    assert data.test_y.tolist() == test_y[want_test].tolist()
    with pytest.raises(ValueError, match="train_per_class/test_per_class must be >= 0"):
        load_dataset("mnist", data_dir=str(tmp_path), train_per_class=-1)


def test_a_gzip_file_without_the_gz_name_is_read(tmp_path):
    train_x, train_y, test_x, test_y = fixture(tmp_path, gz=True)
    for stem in FILES:  # gzipped bytes under the raw names
        os.rename(tmp_path / (stem + ".gz"), tmp_path / stem)
    data = load_dataset("mnist", data_dir=str(tmp_path))
    assert torch.equal(data.test_x, torch.from_numpy(test_x).unsqueeze(1))


@pytest.mark.parametrize("labels, code, message", [
    (np.array([1, -1, 2, 3], dtype=np.int8), 0x09, r"a label is -1, outside \[0, 10\)"),
    (np.array([1.0, 2.7, 3.0, 0.0], dtype=">f4"), 0x0D, r"a label is 2.7, not a whole number"),
])
def test_negative_or_fractional_labels_name_the_file(tmp_path, labels, code, message):
    fixture(tmp_path, gz=False, n_train=4)
    write_idx(tmp_path / FILES[1], labels, code=code)
    with pytest.raises(ValueError, match=rf"{re.escape(FILES[1])}: {message}"):
        load_dataset("mnist", data_dir=str(tmp_path))


def test_an_empty_test_split_is_refused_naming_the_file(tmp_path, capsys):
    fixture(tmp_path, gz=False, n_test=0)
    with pytest.raises(ValueError, match=rf"{re.escape(FILES[2])}: holds no images; the test split needs"):
        load_dataset("mnist", data_dir=str(tmp_path))
    from ols.cli import main

    out = tmp_path / "run"
    assert main(["train", "--dataset", "mnist", "--data-dir", str(tmp_path), "--out", str(out)]) == 2
    assert "holds no images" in capsys.readouterr().err and not out.exists()  # before any training
