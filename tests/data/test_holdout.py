"""The held-out split: stratified, seeded, disjoint from what trains, and never trained on."""

import numpy as np
import pytest
import torch

from ols.config import TrainConfig
from ols.data.batches import to_unit
from ols.data.holdout import held_out_split
from ols.distributed import DistContext
from ols.run_setup import build_run


def test_each_class_gives_its_share_and_the_split_is_a_function_of_the_seed():
    labels = np.repeat(np.arange(4), [50, 30, 2, 1])
    train, held = held_out_split(labels, 0.1, seed=7)
    assert np.bincount(labels[held], minlength=4).tolist() == [5, 3, 1, 0]  # one at least; a single one stays
    assert sorted(np.concatenate([train, held]).tolist()) == list(range(len(labels)))
    again_train, again_held = held_out_split(labels, 0.1, seed=7)
    assert np.array_equal(held, again_held) and np.array_equal(train, again_train)
    assert not np.array_equal(held, held_out_split(labels, 0.1, seed=8)[1])
    everything, none = held_out_split(labels, 0.0, seed=7)
    assert np.array_equal(everything, np.arange(len(labels))) and none.size == 0
    with pytest.raises(ValueError, match="--val-fraction must be in"):
        held_out_split(labels, 1.0, seed=0)


def test_the_run_never_trains_on_the_held_out_samples(tmp_path):
    cfg = TrainConfig(dataset="digits", model="cnn", val_fraction=0.2, batch_size=100, out=str(tmp_path))
    r = build_run(cfg, DistContext())
    seen = torch.cat([idx for _, idx in r.epoch_batches(1, 0, torch.Generator().manual_seed(0))]).tolist()
    assert sorted(seen) == r.train_index.tolist()
    assert not set(seen) & set(r.held_index.tolist())
    assert abs(len(r.held_index) - 0.2 * r.num_samples) <= 10
    assert r.steps_per_epoch == -(-len(r.train_index) // 100)
    held = torch.cat([x for x, _ in r.source.held_out(r.held_index, 64)])
    direct = to_unit(r.source.train_x[torch.as_tensor(r.held_index)])
    torch.testing.assert_close(held, direct)  # the held-out images, unaugmented, in that order


def test_the_clean_set_is_class_balanced_seeded_and_sized_by_count_or_fraction():
    from ols.data.holdout import clean_held_out

    labels = np.repeat(np.arange(100), 500)  # CIFAR-100's training labels
    meta = clean_held_out(labels, 1000, seed=3)
    assert len(meta) == 1000 and np.bincount(labels[meta]).tolist() == [10] * 100  # as Meta-Weight-Net's
    assert np.array_equal(meta, clean_held_out(labels, 1000, seed=3))
    assert not np.array_equal(meta, clean_held_out(labels, 1000, seed=4))
    uneven = np.repeat(np.arange(4), [50, 30, 4, 1])
    counts = np.bincount(uneven[clean_held_out(uneven, 0.2, seed=0)], minlength=4)
    assert counts.sum() == 17 and counts[2] <= 2 and counts[3] == 0  # no class gives over half of itself
    assert clean_held_out(labels, 0, seed=0).size == 0


@pytest.mark.parametrize("size,words", [
    (10.5, "neither a whole number of images nor a fraction"), (0.0001, "is no image"),
    (40_000, "over half of them"), (float("nan"), "a count (>= 1) or a fraction"),
])
def test_a_bad_clean_set_size_is_one_line(size, words):
    from ols.data.holdout import clean_held_out

    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        clean_held_out(np.repeat(np.arange(10), 500), size, seed=0)


def test_the_noise_is_drawn_after_the_clean_set_is_taken_out(tmp_path):
    cfg = TrainConfig(dataset="digits", model="cnn", meta_size=100, noise_rate=0.4, out=str(tmp_path))
    r = build_run(cfg, DistContext())
    true = r.true_y.numpy()
    assert len(r.meta_index) == 100 and np.array_equal(r.noisy[r.meta_index], true[r.meta_index])
    assert not r.flipped[r.meta_index].any()
    rest = np.setdiff1d(np.arange(len(true)), r.meta_index)
    assert r.flipped[rest].sum() == round(0.4 * len(rest))  # the rate holds over what trains
    assert not set(r.meta_index.tolist()) & set(r.train_index.tolist())
    assert len(r.train_index) + 100 == len(true)
    seen = torch.cat([idx for _, idx in r.epoch_batches(1, 0, torch.Generator().manual_seed(0))]).tolist()
    assert sorted(seen) == r.train_index.tolist()  # never trained on as data


def test_temperature_is_fitted_on_the_clean_set_with_clean_labels_when_there_is_one():
    from ols.data.holdout import temperature_split

    true, noisy = np.array([0, 1, 2, 3, 4, 5]), np.array([0, 2, 2, 1, 4, 0])
    index, labels, what = temperature_split(np.array([1, 3]), np.array([0, 5]), true, noisy)
    assert index.tolist() == [1, 3] and labels.tolist() == [1, 3] and "clean held-out set (2 images" in what
    index, labels, what = temperature_split(np.array([], dtype=np.int64), np.array([0, 5]), true, noisy)
    assert labels.tolist() == [0, 0] and "with their noise" in what
    assert temperature_split(np.array([], dtype=np.int64), np.array([], dtype=np.int64), true, noisy)[2] == ""
