"""The run's set-up: seeded sample orders and augmentation streams, devices, and the loss from a config."""

import numpy as np
import pytest
import torch

from ols.config import TrainConfig
from ols.run_setup import augmentation_generator, build_loss, epoch_order, sharded_epoch_order
from ols.utils.device import resolve_device


def test_epoch_order_is_a_permutation_split_over_ranks():
    one = epoch_order(10, seed=3, epoch=2)
    assert sorted(one) == list(range(10)) and one == epoch_order(10, 3, 2) and one != epoch_order(10, 3, 3)
    shards = [epoch_order(10, 3, 2, rank=r, world_size=3) for r in range(3)]
    assert all(len(s) == 4 for s in shards) and set(sum(shards, [])) == set(range(10))


def test_sharded_order_keeps_each_sample_on_its_rank_and_pads_to_equal_steps():
    train_index = np.setdiff1d(np.arange(23), [4, 9, 10])  # held-out samples leave uneven shards
    for epoch in (0, 1):
        parts = [sharded_epoch_order(train_index, 7, epoch, r, 3) for r in range(3)]
        assert len({len(p) for p in parts}) == 1  # the same number of steps on every rank
        for r, part in enumerate(parts):
            assert all(i % 3 == r for i in part)  # the rank's own shard only
            assert sorted(set(part)) == [int(i) for i in train_index if i % 3 == r]  # all of it
        assert parts[0] == sharded_epoch_order(train_index, 7, epoch, 0, 3)  # a function of its inputs
    assert sharded_epoch_order(train_index, 7, 0, 0, 3) != sharded_epoch_order(train_index, 7, 1, 0, 3)
    assert sharded_epoch_order(train_index, 7, 0, 0, 1) != sorted(train_index.tolist())  # shuffled
    assert sorted(sharded_epoch_order(train_index, 7, 0, 0, 1)) == sorted(train_index.tolist())


def test_augmentation_generator_depends_on_seed_epoch_rank():
    draw = [torch.rand(3, generator=augmentation_generator(torch.device("cpu"), *a)) for a in
            [(0, 1, 0), (0, 1, 0), (0, 2, 0), (0, 1, 1), (1, 1, 0)]]
    assert torch.equal(draw[0], draw[1])
    assert all(not torch.equal(draw[0], d) for d in draw[2:])
    # the seed is the top 63 bits of SeedSequence's first 64-bit word: a resumed run draws as before
    word = np.random.SeedSequence((3, 4, 1)).generate_state(2, np.uint32)  # the same word, as two halves
    expected = (int(word[1]) << 31) | (int(word[0]) >> 1)
    assert augmentation_generator(torch.device("cpu"), 3, 4, 1).initial_seed() == expected


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


def test_the_loop_reads_its_settings_not_the_config(tmp_path):
    """Set-up resolves the loop's settings once; the loop then runs on them alone (the Run holds no
    config), and no function of the trainer past set-up names ``cfg``."""
    import ast
    import dataclasses
    import inspect

    from ols import trainer
    from ols.distributed import DistContext
    from ols.engine import Precision
    from ols.loop_settings import LoopSettings
    from ols.run_setup import build_run
    from ols.run_state import RunState

    cfg = TrainConfig(dataset="digits", model="cnn", epochs=5, batch_size=256, lr=0.05, out=str(tmp_path),
                      save_every=0, progress=False)
    r = build_run(cfg, DistContext(device=torch.device("cpu")))
    assert not hasattr(r, "cfg") and r.precision == Precision(amp=False, channels_last=False)
    assert r.settings == LoopSettings.from_config(cfg) and r.settings.config == cfg.to_dict()
    r.settings = dataclasses.replace(r.settings, epochs=2)  # the loop follows the settings, not cfg.epochs
    metrics = trainer.train_epochs(r, RunState(), verbose=False)
    logged = trainer.read_jsonl(tmp_path / "metrics.jsonl")
    assert metrics["epoch"] == 2 and [m["epoch"] for m in logged] == [1, 2]

    set_up = {"fit", "resume", "resume_same", "run", "_run", "run_config"}
    tree = ast.parse(inspect.getsource(trainer))
    loop = [f for f in tree.body if isinstance(f, ast.FunctionDef) and f.name not in set_up]
    assert len(loop) >= 6
    reads = sorted({f.name for f in loop for n in ast.walk(f) if isinstance(n, ast.Name) and n.id == "cfg"})
    assert reads == [], f"the loop reads the config in {reads}"
