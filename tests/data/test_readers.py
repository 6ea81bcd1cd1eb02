"""Every on-disk reader, on small fixtures written here in the real formats."""

import pickle

import numpy as np
import pytest
import torch

from ols.data import FileSplit, load_dataset

PIL = pytest.importorskip("PIL.Image")


def write_pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def cifar_batch(rng, n, num_classes, fine=False):
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, num_classes, size=n)]
    if fine:  # CIFAR-100: 5 fine classes per coarse class
        return {b"data": data, b"fine_labels": labels, b"coarse_labels": [y // 5 for y in labels]}
    return {b"data": data, b"labels": labels, b"batch_label": b"x"}


@pytest.fixture
def cifar10_dir(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    batches = [cifar_batch(rng, 4, 10) for _ in range(5)]
    for i, b in enumerate(batches, 1):
        write_pickle(root / f"data_batch_{i}", b)
    test = cifar_batch(rng, 3, 10)
    write_pickle(root / "test_batch", test)
    write_pickle(root / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    return tmp_path, batches, test


def test_cifar10_reads_pickles_in_planar_rgb_order(cifar10_dir):
    root, batches, test = cifar10_dir
    split = load_dataset("cifar10", str(root))
    assert split.train_x.shape == (20, 3, 32, 32) and split.train_x.dtype == torch.uint8
    first = batches[0][b"data"][0]
    # pixel (row 0, col 1) of channel G is byte 1024 + 1 of the row (R block, then G, then B)
    assert int(split.train_x[0, 1, 0, 1]) == first[1024 + 1]
    assert int(split.train_x[0, 2, 31, 31]) == first[3071]
    assert split.train_y.tolist() == sum((b[b"labels"] for b in batches), [])
    assert split.test_y.tolist() == test[b"labels"] and split.class_names[3] == "c3"
    expected_mean = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 1024).mean(axis=(0, 2)) / 255
    assert np.allclose(split.mean, expected_mean)
    # the folder itself works as --data-dir too
    assert torch.equal(load_dataset("cifar10", str(root / "cifar-10-batches-py")).test_x, split.test_x)


def test_cifar100_with_coarse_groups(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    train = cifar_batch(rng, 400, 100, fine=True)
    write_pickle(root / "train", train)
    write_pickle(root / "test", cifar_batch(rng, 10, 100, fine=True))
    write_pickle(root / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                                 b"coarse_label_names": [f"g{i}".encode() for i in range(20)]})
    split = load_dataset("cifar100", str(tmp_path))
    assert split.num_classes == 100 and split.class_names[99] == "f99"
    seen = set(train[b"fine_labels"])
    assert all(split.groups[k] == k // 5 for k in seen)


def test_cifar_errors_name_the_file_and_layout(tmp_path, cifar10_dir):
    with pytest.raises(ValueError, match="(?s)data_batch_1.*Expected layout.*download it yourself"):
        load_dataset("cifar10", str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="needs --data-dir"):
        load_dataset("cifar100")
    root, _, _ = cifar10_dir
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="test_batch.*not a CIFAR pickle batch"):
        load_dataset("cifar10", str(root))


def write_png(path, colour, size=(12, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.new("RGB", size, colour).save(path)


def test_image_folder_reader_and_decoding(tmp_path):
    for split in ("train", "val"):
        for name, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            for i in range(2):
                write_png(tmp_path / split / name / f"{i}.png", colour)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    split = load_dataset("folder", str(tmp_path), image_size=8, resize=9)
    assert isinstance(split, FileSplit) and split.class_names == ("cat", "dog")
    assert split.train_y.tolist() == [0, 0, 1, 1] and len(split.test_files) == 4

    from ols.data.images import ImageFiles

    image, index = ImageFiles(split.test_files, 8, 9)[2]
    assert image.shape == (3, 8, 8) and image.dtype == torch.uint8 and index == 2
    assert image[2].min() == 255 and image[0].max() == 0  # a blue dog
    train = ImageFiles(split.train_files, 8, 9, crop=True, flip=True, seed=3)
    assert torch.equal(train[0][0], train[0][0])  # the same (seed, epoch, index), the same crop


def test_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="(?s)image folder not found.*train/<class name>"):
        load_dataset("folder", str(tmp_path))
    write_png(tmp_path / "train" / "a" / "0.png", (0, 0, 0))
    write_png(tmp_path / "val" / "b" / "0.png", (0, 0, 0))
    with pytest.raises(ValueError, match="class folders not in train/"):
        load_dataset("folder", str(tmp_path))


def test_list_files_reader(tmp_path):
    for rel in ("001.A/x.png", "001.A/y.png", "002.B/z.png"):
        write_png(tmp_path / "images" / rel, (10, 20, 30))
    (tmp_path / "train_list.txt").write_text("001.A/x.png;0\n002.B/z.png;1\n")
    (tmp_path / "test_list.txt").write_text("001.A/y.png;0\n\n")
    split = load_dataset("finegrained", str(tmp_path))
    assert split.num_classes == 2 and split.train_y.tolist() == [0, 1]
    assert split.test_files == [str(tmp_path / "images" / "001.A/y.png")]

    (tmp_path / "test_list.txt").write_text("001.A/y.png 0\n")
    with pytest.raises(ValueError, match="line 1 is not 'relative/path;label'"):
        load_dataset("finegrained", str(tmp_path))
    (tmp_path / "test_list.txt").write_text("001.A/missing.png;0\n")
    with pytest.raises(ValueError, match="missing.png.*an image listed in test_list.txt is missing"):
        load_dataset("finegrained", str(tmp_path))


def test_cub_native_files(tmp_path):
    rels = ["001.Albatross/a.jpg", "001.Albatross/b.jpg", "002.Auklet/c.jpg", "002.Auklet/d.jpg"]
    for rel in rels:
        write_png(tmp_path / "images" / rel, (0, 128, 0))
    (tmp_path / "images.txt").write_text("".join(f"{i} {r}\n" for i, r in enumerate(rels, 1)))
    (tmp_path / "image_class_labels.txt").write_text("1 1\n2 1\n3 2\n4 2\n")
    (tmp_path / "train_test_split.txt").write_text("1 1\n2 0\n3 1\n4 0\n")
    (tmp_path / "classes.txt").write_text("1 001.Albatross\n2 002.Auklet\n")
    split = load_dataset("cub", str(tmp_path))
    assert split.class_names == ("001.Albatross", "002.Auklet")
    assert split.train_y.tolist() == [0, 1] and split.test_y.tolist() == [0, 1]
    assert split.train_files[1].endswith("002.Auklet/c.jpg")
    (tmp_path / "train_test_split.txt").write_text("1 1\n2 0\n")
    with pytest.raises(ValueError, match="train_test_split.txt.*image ids differ"):
        load_dataset("cub", str(tmp_path))
    with pytest.raises(ValueError, match="images.txt.*file not found"):
        load_dataset("cub", str(tmp_path / "elsewhere"))


def test_synthetic_hierarchy_is_seeded_and_grouped():
    a = load_dataset("synthetic", groups=4, classes_per_group=3, train_per_class=10, test_per_class=4)
    b = load_dataset("synthetic", groups=4, classes_per_group=3, train_per_class=10, test_per_class=4)
    assert torch.equal(a.train_x, b.train_x) and a.groups == (0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3)
    assert a.train_x.shape == (120, 3, 16, 16) and a.test_y.shape == (48,)
    # class means of one group are closer to each other than to other groups' classes
    means = torch.stack([a.train_x[a.train_y == k].float().mean(0).flatten() for k in range(12)])
    dist = torch.cdist(means, means)
    group = torch.tensor(a.groups)
    same = (group[:, None] == group[None, :]) & ~torch.eye(12, dtype=torch.bool)
    assert dist[same].mean() < 0.7 * dist[group[:, None] != group[None, :]].mean()
    c = load_dataset("synthetic-cifar", num_classes=3, train_per_class=5, test_per_class=2)
    assert c.train_x.shape == (15, 3, 32, 32) and c.train_x.dtype == torch.uint8


def test_unknown_dataset_option():
    with pytest.raises(ValueError, match="--data-arg colour: dataset 'digits' has no such option; its "
                                         "options: test_fraction=0.2, split_seed="):
        load_dataset("digits", colour=True)
    with pytest.raises(ValueError, match="did you mean 'train_per_class'"):
        load_dataset("fashion-mnist", train_per_clas=3)
    with pytest.raises(ValueError, match="dataset 'synthetic': its test split holds no images"):
        load_dataset("synthetic", test_per_class=0, train_per_class=1)
