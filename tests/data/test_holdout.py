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
