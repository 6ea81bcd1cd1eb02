"""``--decode gpu``: workers read bytes, the device decodes; its CPU twin equals the Pillow path.

The decoder's code is the same on every device; here it runs on the CPU with torchvision's
libjpeg decoder (in CI's vision environment, see the Makefile) and is compared with
:class:`~ols.data.images.ImageFiles`, the Pillow path, image by image.
"""

import numpy as np
import pytest
import torch

from conftest import vision_or_skip
from ols.data import load_dataset
from ols.data.batches import make_source
from ols.data.images import ImageFiles
from ols.data.jpeg_device import DeviceDecoder, EncodedFiles, device_decodable

KINDS = [("rgb", "jpg"), ("progressive", "jpg"), ("grey", "jpg"), ("cmyk", "jpg"), ("png", "png")]


def write_images(folder, seed=0):
    """One file of each kind, with content that a mirror or a shifted crop would change."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (kind, ext) in enumerate(KINDS):
        h, w = 90 + 7 * i, 120 - 5 * i
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 255 // (w + h)], -1)
        img = Image.fromarray((img + rng.integers(0, 20, img.shape)).clip(0, 255).astype(np.uint8))
        path = folder / f"{i}.{ext}"
        if kind == "png":
            img.save(path)
        else:
            mode = {"grey": "L", "cmyk": "CMYK"}.get(kind, "RGB")
            img.convert(mode).save(path, quality=90, progressive=kind == "progressive")
        paths.append(str(path))
    return paths


def test_which_files_the_device_decodes_agrees_with_pillow(tmp_path):
    """A 3-component Huffman JPEG goes to the device; Pillow says which files those are."""
    from PIL import Image

    for path, (kind, _) in zip(write_images(tmp_path), KINDS):
        with Image.open(path) as im:
            expected = im.format == "JPEG" and im.mode == "RGB"
        assert device_decodable(open(path, "rb").read()) is expected, kind
    assert not device_decodable(b"\xff\xd8\xff")  # cut short inside the header
    assert not device_decodable(b"GIF89a")


def test_workers_send_bytes_for_jpegs_and_pillow_images_for_the_rest(tmp_path):
    paths = write_images(tmp_path)
    encoded = EncodedFiles(ImageFiles(paths, 16, 18))
    for i, (kind, _) in enumerate(KINDS):
        tensor, is_bytes, key = encoded[(i, 2, 1)]
        assert key == (i, 2, 1)
        if kind in ("rgb", "progressive"):
            assert is_bytes and torch.equal(tensor, torch.tensor(list(open(paths[i], "rb").read()),
                                                                  dtype=torch.uint8))
        else:
            assert not is_bytes and tensor.dtype == torch.uint8 and tensor.shape[0] == 3


@pytest.mark.parametrize("crop", [True, False])
def test_the_decoders_crops_equal_the_pillow_paths(tmp_path, crop):
    """Same boxes and mirrors from (seed, epoch, index); pixels within 3 levels (resize rounding)."""
    vision_or_skip("torchvision")
    paths = write_images(tmp_path)
    images = ImageFiles(paths, 32, 36, crop=crop, flip=crop, seed=3)
    decoder, encoded = DeviceDecoder(images, torch.device("cpu")), EncodedFiles(images)
    for epoch in range(3):
        keys = [(i, epoch, 1) for i in range(len(paths))]
        x, idx = decoder([encoded[k] for k in keys])
        pillow = torch.stack([images[k][0] for k in keys])
        assert x.shape == pillow.shape == (len(paths), 3, 32, 32) and x.dtype == torch.uint8
        assert idx.tolist() == list(range(len(paths)))
        diff = (x.int() - pillow.int()).abs()
        assert diff.amax() <= 3 and diff.float().mean() < 0.5
        mirrored = (x.flip(-1).int() - pillow.int()).abs().float().mean()
        assert mirrored > 10 * diff.float().mean()  # a wrong mirror (or box) would show


def test_two_views_are_the_pillow_paths_two_views(tmp_path):
    vision_or_skip("torchvision")
    paths = write_images(tmp_path)
    images = ImageFiles(paths, 16, 18, crop=True, flip=True, seed=1)
    decoder, encoded = DeviceDecoder(images, torch.device("cpu")), EncodedFiles(images)
    x, _ = decoder([encoded[(i, 4, 2)] for i in range(len(paths))])
    pillow = torch.stack([images[(i, 4, 2)][0] for i in range(len(paths))])
    assert x.shape == pillow.shape == (len(paths), 2, 3, 16, 16)
    assert (x.int() - pillow.int()).abs().amax() <= 3


def test_a_broken_jpeg_names_its_file(tmp_path):
    vision_or_skip("torchvision")
    good = write_images(tmp_path)[0]
    data = open(good, "rb").read()
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(data[: len(data) // 3])
    images = ImageFiles([str(bad)], 16, 18)
    item = EncodedFiles(images)[0]
    assert item[1]  # the header is intact: it goes to the decoder
    with pytest.raises(ValueError, match=r"cut\.jpg.*use --decode pillow"):
        DeviceDecoder(images, torch.device("cpu"))([item])


def test_decode_gpu_is_refused_where_it_cannot_run(tmp_path, monkeypatch):
    write_images(tmp_path / "train" / "a")
    write_images(tmp_path / "val" / "a")
    split = load_dataset("folder", str(tmp_path), image_size=16, resize=18)
    with pytest.raises(ValueError, match="--decode gpu decodes JPEGs with nvJPEG on a CUDA device, and this "
                                         "run is on cpu"):
        make_source("folder", split, torch.device("cpu"), decode="gpu")
    with pytest.raises(ValueError, match="unknown --decode 'nvjpeg'"):
        make_source("folder", split, torch.device("cpu"), decode="nvjpeg")
    digits = load_dataset("digits")
    with pytest.raises(ValueError, match="--decode gpu applies to image-file datasets"):
        make_source("digits", digits, torch.device("cpu"), decode="gpu")
    monkeypatch.setitem(__import__("sys").modules, "torchvision", None)  # as if not installed
    with pytest.raises(ValueError, match=r"--decode gpu needs torchvision: pip install 'ols\[vision\]' "
                                         r"torch==[0-9.]+ "):
        DeviceDecoder(split, torch.device("cpu"))
