"""The canvas detection set: exact boxes around the pasted items, seeded, split-separated."""

import os
from pathlib import Path

import pytest
import torch

from ols.data.idx import FASHION_MNIST_DIR, FILES
from ols.detection.canvas import CanvasDetection, ItemSource, load_items


def block_items(n=6):
    """28x28 items that are 0 but for a block of ones at rows 10-17, columns 4-23; labels 0..n-1."""
    x = torch.zeros(n, 28, 28)
    x[:, 10:18, 4:24] = 1.0
    y = torch.arange(n)
    return ItemSource(x, y, x.clone(), y.clone(), tuple(str(i) for i in range(n)), "blocks")


def test_boxes_are_exactly_the_pasted_ink():
    data = CanvasDetection(num_images=20, size=64, max_objects=3, scale=(28, 28), items=block_items())
    seen = 0
    for i in range(len(data)):
        image, target = data[i]
        assert image.shape == (1, 64, 64) and 0 <= image.min() and image.max() <= 1
        for box in target["boxes"].long().tolist():
            x1, y1, x2, y2 = box
            assert (x2 - x1, y2 - y1) == (20, 8)  # the block's 20 x 8 ones at scale 28 (no resampling)
            assert torch.all(image[0, y1:y2, x1:x2] == 1.0)
            seen += 1
        b = target["boxes"]
        if len(b) > 1:  # boxes kept apart: IoU at most 0.3
            from ols.detection import box_iou

            iou = box_iou(b.double().numpy(), b.double().numpy())
            assert (iou[~torch.eye(len(b), dtype=torch.bool).numpy()] <= 0.3 + 1e-9).all()
    assert seen > 20


def test_seeded_and_splits_draw_their_own_items(tmp_path):
    a = CanvasDetection(num_images=5, seed=1, items=block_items())
    b = CanvasDetection(num_images=5, seed=1, items=block_items())
    c = CanvasDetection(num_images=5, seed=2, items=block_items())
    assert torch.equal(a[3][0], b[3][0]) and torch.equal(a[3][1]["boxes"], b[3][1]["boxes"])
    assert not torch.equal(a[3][0], c[3][0])
    test = CanvasDetection("test", num_images=5, seed=1, items=block_items())
    assert not torch.equal(a[0][0], test[0][0])
    with pytest.raises(IndexError):
        a[5]


def test_items_fall_back_to_digits_and_fashion_mnist_is_used_when_there(tmp_path):
    digits = load_items("auto", data_dir=str(tmp_path))  # no idx files there
    assert digits.name == "digits" and digits.train_x.shape[1:] == (8, 8)
    with pytest.raises(ValueError, match="apt-get install dataset-fashion-mnist"):
        load_items("fashion-mnist", data_dir=str(tmp_path))
    data = CanvasDetection(num_images=3, items=digits, scale=(12, 24))
    image, target = data[0]
    assert len(target["labels"]) >= 1 and target["labels"].max() < 10


def test_bad_options_are_one_line():
    with pytest.raises(ValueError, match="canvas: split must be train or test"):
        CanvasDetection("val", items=block_items())
    with pytest.raises(ValueError, match=r"canvas: scale must be .* got \(2, 80\)"):
        CanvasDetection(scale=(2, 80), items=block_items())


HAVE_FASHION = Path(FASHION_MNIST_DIR, FILES[0] + ".gz").is_file()


@pytest.mark.skipif(
    not HAVE_FASHION and os.environ.get("OLS_REQUIRE_FASHION_MNIST") != "1",
    reason="Fashion-MNIST is not installed: apt-get install dataset-fashion-mnist",
)
def test_fashion_mnist_items_where_installed():
    items = load_items("auto")
    assert items.name == "fashion-mnist" and items.train_x.shape == (60000, 28, 28)
    assert items.class_names[0] == "T-shirt/top" and 0 <= items.train_x.min() and items.train_x.max() <= 1
    image, target = CanvasDetection(num_images=2, items=items)[1]
    assert image.shape == (1, 64, 64) and len(target["boxes"]) >= 1
