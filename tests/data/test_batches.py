"""File batches: persistent workers that still see each epoch's crops, in the order the engine asks."""

import numpy as np
import torch

from ols.data import load_dataset
from ols.data.batches import make_source


def _folder(tmp_path, n=6):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for i in range(n):
            img = rng.integers(0, 255, (20 + i, 24, 3), dtype=np.uint8)
            path = tmp_path / split / f"c{i % 2}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(path)
    return load_dataset("folder", str(tmp_path), image_size=8, resize=10)


def test_workers_persist_across_epochs_and_each_epoch_has_its_own_crops(tmp_path):
    split = _folder(tmp_path)
    source = make_source("folder", split, torch.device("cpu"), "crop,flip", num_workers=2, seed=5)
    gen = torch.Generator().manual_seed(0)
    order = [4, 0, 5, 1, 3, 2]
    pids, epochs = [], []
    for epoch in (1, 2):
        batches = list(source.train(order, 4, 0, gen, epoch))
        loader = source._loaders["train"][0]
        pids.append(sorted(w.pid for w in loader._iterator._workers))
        epochs.append(torch.cat([x for x, _ in batches]))
        assert torch.cat([i for _, i in batches]).tolist() == order
        # what the workers made equals the dataset's crops for that epoch, read directly
        direct = torch.stack([source.train_set[(i, epoch, 1)][0] for i in order]).float() / 255
        torch.testing.assert_close(epochs[-1], direct)
    assert pids[0] == pids[1]  # the same worker processes both epochs
    assert not torch.equal(epochs[0], epochs[1])  # but new crops
    resumed = torch.cat([x for x, _ in source.train(order, 4, 1, gen, 2)])  # epoch 2 from its second batch
    torch.testing.assert_close(resumed, epochs[1][4:])
