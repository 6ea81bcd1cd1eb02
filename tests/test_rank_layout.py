"""A checkpoint taken in the middle of a period on W ranks resumes on W' ranks with the state one
process would hold: the rank-local statistics of every stateful loss, the rest of an open epoch,
and the schedule."""

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ols import OnlineLabelSmoothing
from ols.losses import OnlineLabelSmoothingSingle, TopKSoftLabels, create_loss
from ols.rank_layout import align_schedule, gather_rank_local, own_partial, rest_of_epoch, restore_rank_local
from ols.run_setup import epoch_order
from procs import free_port, gloo_group

K, BATCHES, BATCH, N = 6, 4, 16, 64


def _stream():
    g = torch.Generator().manual_seed(0)
    out = []
    for b in range(BATCHES):
        y = torch.randint(0, K, (BATCH,), generator=g)
        z = torch.randn(BATCH, K, generator=g)
        z[torch.arange(BATCH), y] += 2.0 * torch.rand(BATCH, generator=g)
        out.append((z, y, torch.arange(b * BATCH, (b + 1) * BATCH)))
    return out


def _losses():
    return {"dense": OnlineLabelSmoothing(K),
            "topk": OnlineLabelSmoothing(K, store=TopKSoftLabels(K, 3, slots=K, feed=K)),  # room: exact
            "single": OnlineLabelSmoothingSingle(K, num_samples=N, seed=3),
            "pskd": create_loss("pskd", K, num_samples=N, epochs=2, sharded=False)}


def _feed(losses, batches, rank=0, world=1):
    for z, y, index in batches:
        part = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
        for name, loss in losses.items():
            if name in ("single", "pskd"):
                loss(z[part], y[part], index=index[part])
            else:
                loss(z[part], y[part])


def _finals(losses):
    out = {}
    for name, loss in losses.items():
        loss.step()
        out[name] = {k: v.clone() for k, v in loss.state_dict().items()}
    return out


def _reference():
    losses = _losses()
    _feed(losses, _stream())
    return _finals(losses)


def _worker(rank, world, port, tmp):
    half = BATCHES // 2
    with gloo_group(rank, world, port):
        # two ranks, each half of every batch; a checkpoint in the middle of the period
        losses = _losses()
        _feed(losses, _stream()[:half], rank, world)
        ckpt = {name: (loss.state_dict(), gather_rank_local(loss, world)) for name, loss in losses.items()}
        own = {name: {k: v.clone() for k, v in loss.state_dict().items()} for name, loss in losses.items()}
        if rank == 0:
            torch.save(ckpt, os.path.join(tmp, "two_ranks.pt"))
        ckpt = [ckpt]
        dist.broadcast_object_list(ckpt, src=0)
        # resumed on the same two ranks: each gets its own part back, exactly
        fresh = _losses()
        for name, loss in fresh.items():
            state, parts = ckpt[0][name]
            loss.load_state_dict(state)
            restore_rank_local(loss, parts, rank, world)
            for key, value in loss.state_dict().items():
                assert torch.equal(value, own[name][key]), (name, key)
        _feed(fresh, _stream()[half:], rank, world)
        finals = _finals(fresh)
        # one process's mid-period checkpoint resumed on two ranks
        single = torch.load(os.path.join(tmp, "one_process.pt"))
        grown = _losses()
        for name, loss in grown.items():
            loss.load_state_dict(single[name])
            restore_rank_local(loss, None, rank, world)
        _feed(grown, _stream()[half:], rank, world)
        torch.save({"same": finals, "grown": _finals(grown)}, os.path.join(tmp, f"rank{rank}.pt"))


def _close(a, b, name):
    for key in a:
        if key.endswith(("num_updates", "num_iterations", "state_format")):  # counters of the steps taken
            continue
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=f"{name}: {key}")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*state_dict\\(\\) taken after")
def test_mid_period_checkpoints_resume_on_any_number_of_ranks(tmp_path):
    half = BATCHES // 2
    reference = _reference()
    one = _losses()
    _feed(one, _stream()[:half])
    torch.save({name: loss.state_dict() for name, loss in one.items()}, tmp_path / "one_process.pt")
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for name in reference:
        _close(results[0]["same"][name], reference[name], f"2 -> 2 {name}")  # the uninterrupted run's state
        _close(results[0]["grown"][name], reference[name], f"1 -> 2 {name}")
        for key in ("store.soft_labels", "previous", "store.value"):
            if key in reference[name]:  # both ranks agree after the period's all-reduce
                assert torch.equal(results[0]["grown"][name][key], results[1]["grown"][name][key])
    # two ranks' checkpoint resumed on one process: rank 0 takes the merged statistics
    saved = torch.load(tmp_path / "two_ranks.pt")
    merged = _losses()
    for name, loss in merged.items():
        state, parts = saved[name]
        assert parts["world_size"] == 2 and parts["parts"]
        loss.load_state_dict(state)
        restore_rank_local(loss, parts, 0, 1)
    _feed(merged, _stream()[half:])
    for name, state in _finals(merged).items():
        _close(state, reference[name], f"2 -> 1 {name}")


def test_merged_statistics_equal_one_process_fed_both_halves():
    """Without processes: two losses each fed half of every batch, their parts stacked as the
    checkpoint stacks them, merge into the one loss fed everything (top-k tables included)."""
    ranks = [_losses(), _losses()]
    for r, losses in enumerate(ranks):
        _feed(losses, _stream(), r, 2)
    reference = _losses()
    _feed(reference, _stream())
    for name in reference:
        names = [n for n in ranks[0][name].store._saved_rank_local()] if hasattr(ranks[0][name], "store") \
            else ranks[0][name]._saved_rank_local()
        sub = lambda m: m.store if hasattr(m, "store") else m  # noqa: E731
        parts = {n: torch.stack([getattr(sub(ranks[r][name]), n) for r in (0, 1)]) for n in names}
        merged = sub(ranks[0][name]).merge_rank_local(parts)
        target = _losses()[name]
        with torch.no_grad():
            for n, value in merged.items():
                getattr(sub(target), n).copy_(value)
        if name == "single":  # the labels seen: a max over ranks, -1 where unseen
            assert torch.equal(merged["epoch_labels"], sub(reference[name]).epoch_labels)
        target.step()
        reference[name].step()
        _close(target.state_dict(), reference[name].state_dict(), name)
    cleared = _losses()["topk"]
    _feed({"topk": cleared}, _stream()[:1])
    cleared.store.clear_rank_local()
    fresh = _losses()["topk"].store
    for n in fresh._saved_rank_local():
        assert torch.equal(getattr(cleared.store, n), getattr(fresh, n)), n


@pytest.mark.parametrize("sharded", [False, True])
@pytest.mark.parametrize("old,new", [(2, 1), (1, 2), (2, 3), (3, 2)])
def test_the_rest_of_an_epoch_is_every_sample_not_yet_trained(old, new, sharded):
    n, batch, done = 50, 4, 3
    index = np.arange(n)
    if sharded:
        from ols.run_setup import sharded_epoch_order

        orders = [sharded_epoch_order(index, 7, 2, r, old) for r in range(old)]
    else:
        orders = [epoch_order(n, 7, 2, r, old) for r in range(old)]
    trained = [i for o in orders for i in o[:done * batch]]
    rest = [rest_of_epoch(orders, done, batch, r, new, sharded) for r in range(new)]
    assert len({len(part) for part in rest}) == 1  # every rank takes the same number of steps
    assert set(trained) | {i for part in rest for i in part} == set(range(n))
    # nothing trained twice but for the padding that equal shares need
    left = {i for o in orders for i in o[done * batch:]}
    assert len(set(trained) & {i for part in rest for i in part}) <= len(left & set(trained))
    if sharded:
        assert all(i % new == r for r, part in enumerate(rest) for i in part)  # the sample's own rank
    if old == new:  # the same ranks: each its own remaining samples, in order
        assert rest == [list(o[done * batch:]) for o in orders]


def test_same_number_of_ranks_keeps_each_rank_its_part_and_another_merges_it():
    partial = {"batches": 5, "world_size": 2, "preds": torch.tensor([1, -1, 0]),
               "loss_sum": torch.tensor([3.0, 4.0], dtype=torch.float64),
               "seen": torch.tensor([10.0, 12.0], dtype=torch.float64), "step_loss": torch.ones(3),
               "aug_rngs": [torch.tensor([1], dtype=torch.uint8), torch.tensor([2], dtype=torch.uint8)],
               "lr": 0.1}
    mine = own_partial(partial, 1, 2)
    assert not mine["redeal"] and float(mine["loss_sum"]) == 4.0 and int(mine["aug_rng"][0]) == 2
    first, other = own_partial(partial, 0, 1), own_partial(partial, 1, 3)
    assert first["redeal"] and float(first["loss_sum"]) == 7.0 and float(first["seen"]) == 22.0
    assert float(other["loss_sum"]) == 0.0 and other["aug_rng"] is None
    old = {"batches": 2, "preds": torch.tensor([0]), "loss_sum": torch.tensor(1.5, dtype=torch.float64),
           "seen": torch.tensor(3.0, dtype=torch.float64), "aug_rng": torch.tensor([9], dtype=torch.uint8)}
    kept = own_partial(old, 0, 1)  # a checkpoint written before several ranks could write one mid-epoch
    assert not kept["redeal"] and float(kept["loss_sum"]) == 1.5 and int(kept["aug_rng"][0]) == 9


def test_align_schedule_puts_the_rate_where_stepping_would():
    def build():
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.4)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))

    opt, sched = build()
    for _ in range(7):
        opt.step()
        sched.step()
    opt2, sched2 = build()
    align_schedule(sched2, opt2, 7)
    assert sched2.last_epoch == sched.last_epoch == 7
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == pytest.approx(0.05)
    opt2.step()
    sched2.step()
    opt.step()
    sched.step()
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
