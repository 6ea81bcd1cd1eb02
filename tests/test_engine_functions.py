import pytest
import torch

from ols.engine import EpochState, epoch_training_metrics
from ols.run_setup import augmentation_generator, epoch_order


def test_epoch_training_metrics_by_hand():
    noisy = torch.tensor([0, 1, 2, 0, 1, 2])
    true = torch.tensor([0, 1, 2, 1, 1, 0])
    flipped = noisy != true  # samples 3 and 5
    state = EpochState.new(6, torch.device("cpu"))
    state.preds = torch.tensor([0, 2, 2, 1, 1, 2])  # sample 3 predicted as its true class
    state.loss_sum = torch.tensor(3.0, dtype=torch.float64)
    state.seen = torch.tensor(6.0, dtype=torch.float64)
    m = epoch_training_metrics(state, noisy, true, flipped)
    assert m["train_loss"] == 0.5
    assert m["train_err"] == pytest.approx(100 * 2 / 6)  # samples 1 and 3 disagree with the noisy label
    assert m["train_err_noisy_vs_noisy"] == pytest.approx(50.0)  # 3 wrong, 5 memorised
    assert m["train_err_noisy_vs_true"] == pytest.approx(50.0)  # 3 right, 5 wrong
    assert m["train_err_clean"] == pytest.approx(25.0)  # sample 1
    clean = epoch_training_metrics(state, noisy, noisy, torch.zeros(6, dtype=torch.bool))
    assert "train_err_clean" not in clean


def test_epoch_order_is_a_permutation_split_over_ranks():
    one = epoch_order(10, seed=3, epoch=2)
    assert sorted(one) == list(range(10)) and one == epoch_order(10, 3, 2) and one != epoch_order(10, 3, 3)
    shards = [epoch_order(10, 3, 2, rank=r, world_size=3) for r in range(3)]
    assert all(len(s) == 4 for s in shards) and set(sum(shards, [])) == set(range(10))


def test_augmentation_generator_depends_on_seed_epoch_rank():
    draw = [torch.rand(3, generator=augmentation_generator(torch.device("cpu"), *a)) for a in
            [(0, 1, 0), (0, 1, 0), (0, 2, 0), (0, 1, 1), (1, 1, 0)]]
    assert torch.equal(draw[0], draw[1])
    assert all(not torch.equal(draw[0], d) for d in draw[2:])
