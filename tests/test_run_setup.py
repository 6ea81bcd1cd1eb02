"""The run's set-up: seeded sample orders and augmentation streams, devices, and the loss from a config."""

import pytest
import torch

from ols.config import TrainConfig
from ols.run_setup import augmentation_generator, build_loss, epoch_order
from ols.utils.device import resolve_device


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


def test_build_loss_passes_alpha_and_samples_and_refuses_a_stray_alpha():
    crit = build_loss(TrainConfig(loss="ols", alpha=0.3, loss_args={"update_every": 5}), 4, 100)
    assert crit.alpha == 0.3 and crit.update_every == 5
    single = build_loss(TrainConfig(loss="ols_single", seed=7), 4, 100)
    assert single.num_samples == 100 and single.seed == 7
    with pytest.raises(ValueError, match="--alpha was given but loss 'ce' has no alpha parameter"):
        build_loss(TrainConfig(loss="ce", alpha=0.3), 4, 100)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown --device 'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available here; use --device cpu"):
            resolve_device("cuda")


def test_loss_args_take_the_type_the_loss_declares():
    # KEY=VALUE text is parsed before its target is known: "3" became an int, "1" too
    crit = build_loss(TrainConfig(loss="ols", loss_args={"update_every": 3, "freeze_above": 1}), 4, 10)
    assert crit.update_every == 3 and crit.store.freeze_above == 1.0
    with pytest.raises(ValueError, match="--loss-arg update_every=2.5: loss 'ols' takes update_every as int"):
        build_loss(TrainConfig(loss="ols", loss_args={"update_every": 2.5}), 4, 10)
    with pytest.raises(ValueError, match="--loss-arg eps='big': loss 'ls' takes eps as float, got str"):
        build_loss(TrainConfig(loss="ls", loss_args={"eps": "big"}), 4, 10)


@pytest.mark.parametrize("reduction,text", [(None, "none"), ("none", "none"), ("sum", "sum")])
def test_a_loss_that_does_not_reduce_to_the_mean_is_refused(reduction, text):
    # `--loss-arg reduction=none` arrives as None (KEY=VALUE text is parsed before its target is known)
    with pytest.raises(ValueError, match=f"--loss-arg reduction={text}: the engine trains on the batch"):
        build_loss(TrainConfig(loss="ols", loss_args={"reduction": reduction}), 4, 100)
    assert build_loss(TrainConfig(loss="ols", loss_args={"reduction": "mean"}), 4, 100).reduction == "mean"
