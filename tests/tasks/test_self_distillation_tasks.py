"""The multi-exit and two-view tasks, and the two-view batches they train on."""

import numpy as np
import pytest
import torch

from ols.data.augment import BatchAugment
from ols.data.batches import FileSource, TensorSource
from ols.data.splits import FileSplit, TensorSplit
from ols.losses import create_loss
from ols.models import Classifier, create_model
from ols.tasks import MultiExitTask, TwoViewTask

PIL = pytest.importorskip("PIL.Image")


def tensor_split(n=12, side=8):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, side, side), generator=g, dtype=torch.uint8)
    y = torch.arange(n) % 3
    return TensorSplit(x, y, x[:4], y[:4], 3, ("a", "b", "c"), (0.5,) * 3, (0.25,) * 3)


def test_two_views_are_two_draws_of_the_epoch_generator_and_replay():
    split = tensor_split()
    source = TensorSource(split, torch.device("cpu"), BatchAugment(("crop", "flip"), crop_padding=2))
    order = list(range(12))
    gen = torch.Generator().manual_seed(5)
    (x2, idx), *_ = source.train(order, 4, 0, gen, views=2)
    assert x2.shape == (8, 3, 8, 8) and idx.tolist() == [0, 1, 2, 3]
    assert not torch.equal(x2[:4], x2[4:])  # independent augmentations of the same images
    gen = torch.Generator().manual_seed(5)
    raw = split.train_x[:4].float() / 255
    aug = BatchAugment(("crop", "flip"), crop_padding=2)
    first, second = aug(raw, gen), aug(raw, gen)  # by hand: view a, then view b, from one generator
    assert torch.equal(x2, torch.cat([first, second]))
    gen = torch.Generator().manual_seed(5)
    state = None
    for i, (x, _) in enumerate(source.train(order, 4, 0, gen, views=2)):
        if i == 0:
            state = gen.get_state()  # what a mid-epoch checkpoint saves after batch 1
        if i == 1:
            batch2 = x
    resumed = torch.Generator()
    resumed.set_state(state)
    (again, _), *_ = source.train(order, 4, 1, resumed, views=2)
    assert torch.equal(again, batch2)  # the second view replays too


def test_file_views_are_independent_crops_and_view_zero_is_the_single_view_crop(tmp_path):
    files = []
    rng = np.random.default_rng(0)
    for i in range(3):
        path = tmp_path / f"{i}.png"
        PIL.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(path)
        files.append(str(path))
    split = FileSplit(files, torch.tensor([0, 1, 0]), files, torch.tensor([0, 1, 0]), 2, ("a", "b"),
                      image_size=8, resize=9)
    source = FileSource(split, torch.device("cpu"), BatchAugment(("crop", "flip")), num_workers=0, seed=1)
    (one, _), = source.train([0, 1, 2], 3, 0, torch.Generator(), epoch=2)
    (two, idx), = source.train([0, 1, 2], 3, 0, torch.Generator(), epoch=2, views=2)
    assert two.shape == (6, 3, 8, 8) and idx.tolist() == [0, 1, 2]
    assert torch.equal(two[:3], one) and not torch.equal(two[:3], two[3:])


def test_the_two_view_task_runs_one_forward_and_splits_it():
    torch.manual_seed(0)
    model = Classifier(create_model("resnet20", 3), (0.5,) * 3, (0.25,) * 3).train()
    crit = create_loss("ddgsd", 3, mu=0.1)
    task = TwoViewTask(crit, model.net.head)
    x, y = torch.rand(8, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    torch.manual_seed(1)
    out = task(model, x, y, torch.arange(4))
    torch.manual_seed(1)
    z = model(x)  # the same batch-norm statistics: one forward of all 2B images
    with torch.no_grad():
        h = model.net.features(model.normalise(x))
    want = crit(z[:4], z[4:], y, h[:4], h[4:])
    assert torch.allclose(out["loss"], want, atol=1e-6) and torch.allclose(out["logits"], z[:4])
    with pytest.raises(ValueError, match="2B = 8 images, got 4"):
        task(model, x[:4], y, torch.arange(4))
    with pytest.raises(ValueError, match="mu > 0 needs the penultimate features"):
        TwoViewTask(crit, None)


def test_the_multi_exit_task_trains_every_exit_and_tracks_the_deepest():
    torch.manual_seed(0)
    model = Classifier(create_model("resnet20", 3, exits="byot"), (0.5,) * 3, (0.25,) * 3).train()
    crit = create_loss("byot", 3, num_exits=3)
    x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    torch.manual_seed(1)
    out = MultiExitTask(crit)(model, x, y, torch.arange(4))
    torch.manual_seed(1)
    zs = model(x)
    assert torch.allclose(out["loss"], crit(zs, y)) and torch.allclose(out["logits"], zs[0])
    with pytest.raises(ValueError, match="takes one output, but the model has several exits"):
        MultiExitTask(create_loss("ce", 3))
    plain = Classifier(create_model("resnet20", 3), (0.5,) * 3, (0.25,) * 3).train()
    with pytest.raises(ValueError, match="gave one output in training mode"):
        MultiExitTask(crit)(plain, x, y, torch.arange(4))
