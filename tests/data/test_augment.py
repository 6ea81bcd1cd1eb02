import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ols.data.augment import BatchAugment, cutout, parse_ops, random_crop, random_flip
from ols.data.batches import TensorSource, to_unit
from ols.data.images import centre_box, random_resized_box


def offsets(seed, b, pad):
    g = torch.Generator().manual_seed(seed)
    dy = torch.randint(0, 2 * pad + 1, (b, 1), generator=g)
    dx = torch.randint(0, 2 * pad + 1, (b, 1), generator=g)
    return dy.flatten().tolist(), dx.flatten().tolist()


def test_random_crop_matches_a_per_image_loop():
    x = torch.rand(6, 3, 8, 8)
    out = random_crop(x, 2, torch.Generator().manual_seed(5))
    dy, dx = offsets(5, 6, 2)
    padded = F.pad(x, (2, 2, 2, 2))
    for i in range(6):
        assert torch.equal(out[i], padded[i, :, dy[i] : dy[i] + 8, dx[i] : dx[i] + 8])
    assert random_crop(x, 0, torch.Generator()) is x


def test_random_flip_matches_a_per_image_loop():
    x = torch.rand(16, 2, 4, 5)
    out = random_flip(x, torch.Generator().manual_seed(1))
    flips = torch.rand(16, generator=torch.Generator().manual_seed(1)) < 0.5
    assert 0 < int(flips.sum()) < 16
    for i in range(16):
        assert torch.equal(out[i], x[i].flip(2) if flips[i] else x[i])


def test_cutout_matches_a_per_image_loop():
    x = torch.rand(8, 3, 10, 10)
    fill = torch.tensor([0.1, 0.2, 0.3])
    out = cutout(x, 4, fill, torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)
    cy = torch.randint(0, 10, (8, 1, 1), generator=g).flatten().tolist()
    cx = torch.randint(0, 10, (8, 1, 1), generator=g).flatten().tolist()
    for i in range(8):
        ref = x[i].clone()
        y0, x0 = max(cy[i] - 2, 0), max(cx[i] - 2, 0)
        ref[:, y0 : cy[i] + 2, x0 : cx[i] + 2] = fill.view(3, 1, 1)
        assert torch.equal(out[i], ref)


def test_pipeline_is_seeded_and_parse_ops_checks_names():
    aug = BatchAugment(parse_ops("crop,flip,cutout"), 4, 8, (0.5, 0.5, 0.5))
    x = torch.rand(5, 3, 32, 32)
    a = aug(x, torch.Generator().manual_seed(0))
    b = aug(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and not torch.equal(a, x)
    assert parse_ops("none") == ()
    with pytest.raises(ValueError, match="unknown augmentation 'mixup'"):
        parse_ops("crop,mixup")


def test_tensor_source_batches_follow_the_order_and_resume_at_a_batch():
    from ols.data.splits import TensorSplit

    x = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 2, 2).contiguous()
    split = TensorSplit(x, torch.zeros(10, dtype=torch.long), x[:3], torch.zeros(3, dtype=torch.long), 2,
                        ("a", "b"), (0.0,), (1.0,))
    source = TensorSource(split, torch.device("cpu"), BatchAugment(()))
    order = [3, 1, 4, 0, 5, 9, 2, 6, 8, 7]
    got = [idx.tolist() for _, idx in source.train(order, 4, 1, torch.Generator())]
    assert got == [[5, 9, 2, 6], [8, 7]]
    xb, idx = next(source.train(order, 4, 0, torch.Generator()))
    assert torch.allclose(xb[:, 0, 0, 0], torch.tensor([3, 1, 4, 0]) / 255.0)
    assert to_unit(torch.tensor([255], dtype=torch.uint8)).item() == 1.0


def test_random_resized_box_bounds():
    rng = np.random.default_rng(0)
    for _ in range(200):
        left, top, w, h = random_resized_box(50, 30, rng)
        assert 0 <= left and left + w <= 50 and 0 <= top and top + h <= 30
        assert 0.08 * 1500 * 0.9 <= w * h <= 1500 or (w, h) == (30, 30)
        assert 3 / 4 - 0.1 <= w / h <= 4 / 3 + 0.1 or (w, h) == (30, 30)
    # the test crop: 224 of a 256 short-side resize covers 7/8 of the short side, centred
    assert centre_box(512, 256, 256, 224) == (144, 16, 224, 224)
    left, top, w, h = centre_box(300, 600, 256, 224)
    assert w == h and abs(w - 300 * 224 / 256) <= 0.5 and (left, top) == ((300 - w) // 2, (600 - h) // 2)
