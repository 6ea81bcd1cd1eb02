"""Two gloo processes on the CPU end with identical soft labels, equal to one process
that saw all the data."""

import os

import pytest
import torch
import torch.multiprocessing as mp

from ols import OnlineLabelSmoothing
from ols.detection import DetectionOLS
from ols.losses import OnlineLabelSmoothingSingle, TopKSoftLabels, create_loss
from procs import free_port, gloo_group

K, BATCHES, BATCH = 6, 4, 16


def _stream(seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(BATCHES):
        y = torch.randint(0, K, (BATCH,), generator=g)
        z = torch.randn(BATCH, K, generator=g)
        z[torch.arange(BATCH), y] += 2.0 * torch.rand(BATCH, generator=g)
        out.append((z, y))
    return out


def _save(result_dir, rank, **losses):
    path = os.path.join(result_dir, f"rank{rank}.pt")
    torch.save({name: loss.state_dict() for name, loss in losses.items()}, path)


class _WithLoss(torch.nn.Module):
    """The Lightning placement: the losses are submodules of the module that DDP wraps, and
    the forward computes them. ``scale`` (1.0) gives DDP a parameter to reduce."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.crit = OnlineLabelSmoothing(K)
        self.single = OnlineLabelSmoothingSingle(K, num_samples=BATCHES * BATCH, seed=3)
        self.pskd = create_loss("pskd", K, num_samples=BATCHES * BATCH, epochs=2)
        self.det = DetectionOLS(K, statistic="raw_sigmoid")  # two period tensors: sums and counts

    def forward(self, z, y, index):
        z = z * self.scale
        out = self.crit(z, y) + self.single(z, y, index=index) + self.pskd(z, y, index=index)
        return out + self.det(z, y)


def _worker(rank, world, port, result_dir, placement):
    with gloo_group(rank, world, port):
        _train_two_periods(rank, result_dir, placement)


def _train_two_periods(rank, result_dir, placement):
    holder = _WithLoss()
    crit, single, pskd, det = holder.crit, holder.single, holder.pskd, holder.det
    # broadcast_buffers=True (the default) copies rank 0's buffers before every forward
    wrapped = torch.nn.parallel.DistributedDataParallel(holder) if placement == "inside" else None
    for period in range(2):
        pskd.set_progress(period / 2)
        for b, (z, y) in enumerate(_stream(period)):
            half = slice(rank * BATCH // 2, (rank + 1) * BATCH // 2)  # each rank: half
            index = torch.arange(b * BATCH, (b + 1) * BATCH)[half]
            if wrapped is not None:
                wrapped(z[half], y[half], index).backward()
            else:
                crit(z[half], y[half])
                single(z[half], y[half], index=index)
                pskd(z[half], y[half], index=index)
                det(z[half], y[half])
        crit.step()
        single.step()
        pskd.step()
        det.step()
    _save(result_dir, rank, ols=crit, single=single, pskd=pskd, det=det)


@pytest.mark.slow
@pytest.mark.parametrize("placement", ["outside", "inside"])
def test_two_ranks_match_one_process(tmp_path, placement):
    """Outside DDP, or inside the DDP-wrapped module (whose buffers DDP broadcasts from rank 0
    before each forward): either way the soft labels come from both ranks' data."""
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path), placement), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    for key in ("ols", "single", "pskd", "det"):
        for name in r0[key]:
            torch.testing.assert_close(r0[key][name], r1[key][name], rtol=0, atol=0)

    crit = OnlineLabelSmoothing(K)
    single = OnlineLabelSmoothingSingle(K, num_samples=BATCHES * BATCH, seed=3)
    pskd = create_loss("pskd", K, num_samples=BATCHES * BATCH, epochs=2)
    det = DetectionOLS(K, statistic="raw_sigmoid")
    for period in range(2):
        pskd.set_progress(period / 2)
        for b, (z, y) in enumerate(_stream(period)):
            crit(z, y)
            single(z, y, index=torch.arange(b * BATCH, (b + 1) * BATCH))
            pskd(z, y, index=torch.arange(b * BATCH, (b + 1) * BATCH))
            det(z, y)
        crit.step()
        single.step()
        pskd.step()
        det.step()
    torch.testing.assert_close(r0["ols"]["store.soft_labels"], crit.soft_labels)
    assert int(r0["ols"]["store.num_updates"]) == 2
    torch.testing.assert_close(r0["single"]["previous"], single.previous)
    torch.testing.assert_close(r0["single"]["partner"], single.partner)
    torch.testing.assert_close(r0["pskd"]["previous"], pskd.previous)  # PS-KD's teachers: every rank's rows
    assert bool(r0["pskd"]["known"].all())
    torch.testing.assert_close(r0["det"]["store.soft_labels"], det.soft_labels)  # both ranks' counts too


def _topk_worker(rank, world, port, result_dir):
    with gloo_group(rank, world, port):
        roomy = OnlineLabelSmoothing(K, store=TopKSoftLabels(K, 3, slots=K, feed=K))  # never evicts: exact
        tight = OnlineLabelSmoothing(K, store=TopKSoftLabels(K, 2, slots=2, feed=2))  # evicts: Misra-Gries
        for period in range(2):
            for z, y in _stream(period):
                half = slice(rank * BATCH // 2, (rank + 1) * BATCH // 2)
                roomy(z[half], y[half])
                tight(z[half], y[half])
            roomy.step()
            tight.step()
        _save(result_dir, rank, roomy=roomy, tight=tight)


@pytest.mark.slow
def test_topk_two_ranks_agree_and_match_one_process():
    """The top-k tables are all-gathered and merged in rank order: every rank gets the same rows;
    with room for every class they are the one-process rows."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_topk_worker, args=(2, free_port(), tmp), nprocs=2, join=True)
        r0, r1 = (torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in (0, 1))
    for key in ("roomy", "tight"):
        for name in r0[key]:
            torch.testing.assert_close(r0[key][name], r1[key][name], rtol=0, atol=0)
    one = OnlineLabelSmoothing(K, store=TopKSoftLabels(K, 3, slots=K, feed=K))
    for period in range(2):
        for z, y in _stream(period):
            one(z, y)
        one.step()
    for name in ("store.index", "store.value", "store.rest"):
        torch.testing.assert_close(r0["roomy"][name], one.state_dict()[name], rtol=1e-5, atol=1e-6)
    assert int(r0["tight"]["store.num_updates"]) == 2


def _sharded_pskd_worker(rank, world, port, result_dir):
    """PS-KD with sharded=True: each rank is fed the samples of its own shard (index % 2 == rank)."""
    with gloo_group(rank, world, port):
        pskd = create_loss("pskd", K, num_samples=BATCHES * BATCH, epochs=2, sharded=True)
        assert pskd.sharded and pskd.previous.shape == (BATCHES * BATCH // 2, K)
        for period in range(2):
            pskd.set_progress(period / 2)
            for b, (z, y) in enumerate(_stream(period)):
                index = torch.arange(b * BATCH, (b + 1) * BATCH)
                mine = index % world == rank
                pskd(z[mine], y[mine], index=index[mine])
            pskd.step()
        full = pskd.gathered_state()  # a collective: rank 0 gets the replicated layout
        fresh = create_loss("pskd", K, num_samples=BATCHES * BATCH, epochs=2, sharded=True)
        if rank == 0:
            torch.save(full, os.path.join(result_dir, "full.pt"))
            fresh.load_state_dict({**pskd.state_dict(), **full})  # a checkpoint loads as the own shard
            torch.testing.assert_close(fresh.previous, pskd.previous, rtol=0, atol=0)
        wrong = torch.tensor([1 - rank])  # a sample of the other rank's shard: one line at step()
        try:
            pskd(torch.randn(1, K), torch.tensor([0]), index=wrong)
            pskd.step()
            message = ""
        except ValueError as err:
            message = str(err)
        torch.save({"bytes": pskd.previous.numel(), "message": message},
                   os.path.join(result_dir, f"rank{rank}.pt"))


@pytest.mark.slow
def test_sharded_pskd_keeps_half_the_rows_a_rank_and_equals_one_process(tmp_path):
    mp.spawn(_sharded_pskd_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    one = create_loss("pskd", K, num_samples=BATCHES * BATCH, epochs=2)
    for period in range(2):
        one.set_progress(period / 2)
        for b, (z, y) in enumerate(_stream(period)):
            one(z, y, index=torch.arange(b * BATCH, (b + 1) * BATCH))
        one.step()
    full = torch.load(tmp_path / "full.pt")
    torch.testing.assert_close(full["previous"], one.previous)
    assert torch.equal(full["known"], one.known) and bool(one.known.all())
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["bytes"] == one.previous.numel() // 2
        assert "got a sample of another rank's shard" in got["message"]


GRAPH_N, GRAPH_B = 70, 8  # 35 samples a rank: 4 full batches of 8 and a ragged one of 3


def _graph_ddp_worker(rank, world, port, result_dir):
    with gloo_group(rank, world, port):
        _eager_and_static_buffer_steps_under_ddp(rank, world, result_dir)


def _eager_and_static_buffer_steps_under_ddp(rank, world, result_dir):
    """Two epochs of OLS training through DDP, once eagerly and once through ``GraphedStep``
    (un-captured: the very step a rank's graph holds), from the same weights and batches."""
    from conftest import small_cnn_training, train_epoch
    from ols.distributed import wrap_ddp
    from ols.graph_step import GraphedStep, check_ranks_agree
    from ols.run_setup import epoch_order
    from ols.tasks import ClassificationTask

    gen = torch.Generator().manual_seed(1)
    x = torch.rand(GRAPH_N, 1, 12, 12, generator=gen)
    labels = torch.randint(0, K, (GRAPH_N,), generator=gen)
    out = {}
    for graphed in (False, True):
        task = ClassificationTask(OnlineLabelSmoothing(K))
        run = small_cnn_training(graphed, task, -(-(GRAPH_N // world) // GRAPH_B), K)
        model, optimizer = run[0], run[2]
        ddp = wrap_ddp(model, torch.device("cpu"), cuda_graph=graphed)
        step = GraphedStep(ddp, task, optimizer, GRAPH_B, capture=False) if graphed else None
        calls = []
        if step is not None:
            step._eager = (lambda inner, seen: lambda: seen.append(1) or inner())(step._eager, calls)
        for epoch in (1, 2):
            order = torch.tensor(epoch_order(GRAPH_N, 0, epoch, rank, world))
            state = train_epoch(ddp, *run[1:], x, labels, order, graph=step, batch=GRAPH_B)
        out["graph" if graphed else "eager"] = {
            "params": [p.detach().clone() for p in model.parameters()],
            "soft": task.criterion.soft_labels.clone(), "loss_sum": state.loss_sum.clone(),
            "warmup": None if step is None else step.warmup, "calls": len(calls)}
    check_ranks_agree(model, 2)  # the engine's check after every graphed epoch: equal weights pass
    with torch.no_grad():
        next(model.parameters())[0].add_(1e-3 * rank)  # rank 1 drifts, as a broken all-reduce would leave it
    try:
        check_ranks_agree(model, 3)
        out["drift"] = ""
    except ValueError as err:
        out["drift"] = str(err)
    torch.save(out, os.path.join(result_dir, f"rank{rank}.pt"))


@pytest.mark.slow
def test_the_graph_step_under_ddp_equals_the_eager_ddp_step_and_the_ranks_agree(tmp_path):
    """``--cuda-graph`` under torchrun: each rank's static-buffer step (what its graph captures,
    DDP's all-reduce included) trains exactly as eager DDP; the ranks see different data and end
    with the same weights, so the gradients were reduced inside the step. A DDP model waits 11
    batches before the capture, as PyTorch's CUDA notes ask, and a rank whose weights drift stops
    every rank."""
    from ols.graph_step import DDP_WARMUP

    mp.spawn(_graph_ddp_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for got in ranks:
        eager, graph = got["eager"], got["graph"]
        for p_eager, p_graph in zip(eager["params"], graph["params"]):
            torch.testing.assert_close(p_graph, p_eager, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(graph["soft"], eager["soft"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(graph["loss_sum"], eager["loss_sum"], rtol=1e-5, atol=1e-6)
        assert graph["warmup"] == DDP_WARMUP == 11
        assert graph["calls"] == 2 * 4  # the full batches through the static buffers; the ragged eagerly
    for a, b in zip(ranks[0]["graph"]["params"], ranks[1]["graph"]["params"]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(ranks[0]["graph"]["soft"], ranks[1]["graph"]["soft"], rtol=0, atol=0)
    # the ranks trained on different samples: their epoch losses differ, their weights do not
    assert not torch.equal(ranks[0]["graph"]["loss_sum"], ranks[1]["graph"]["loss_sum"])
    for got in ranks:  # one rank's weights moved: every rank stops with the same one line
        assert "the ranks' weights differ after epoch 3" in got["drift"] and "\n" not in got["drift"]


def _elr_steps(model, crit, world, rank, steps=3):
    """Three SGD steps of a linear model under ELR on the fixed stream; rank ``rank`` of ``world`` takes the
    samples of its shard (index % world == rank), so the ranks' batches together are one process's."""
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(BATCHES * BATCH, 4, generator=g)
    y = torch.randint(0, K, (BATCHES * BATCH,), generator=g)
    for _ in range(steps):
        for b in range(BATCHES):
            index = torch.arange(b * BATCH, (b + 1) * BATCH)
            mine = index % world == rank
            opt.zero_grad()
            crit(model(x[index[mine]]), y[index[mine]], index=index[mine]).backward()
            opt.step()
        crit.step()


def _elr_ddp_worker(rank, world, port, result_dir):
    from torch.nn.parallel import DistributedDataParallel

    with gloo_group(rank, world, port):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, K)
        crit = create_loss("elr", K, num_samples=BATCHES * BATCH, base="ols", sharded=True)
        _elr_steps(DistributedDataParallel(model), crit, world, rank)
        full = crit.gathered_state()
        if rank == 0:
            torch.save({"model": model.state_dict(), "target": full["target"], "soft": crit.soft_labels},
                       os.path.join(result_dir, "elr.pt"))


@pytest.mark.slow
def test_elr_on_two_ranks_with_sharded_targets_equals_one_process(tmp_path):
    """ELR's loss is a mean over samples and its state is per sample: with each rank fed its shard, DDP's
    averaged gradient and the gathered running targets equal one process on the whole batch; OLS inside
    it too (its statistics summed over the ranks)."""
    mp.spawn(_elr_ddp_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, K)
    crit = create_loss("elr", K, num_samples=BATCHES * BATCH, base="ols")
    _elr_steps(model, crit, 1, 0)
    got = torch.load(tmp_path / "elr.pt")
    for key, value in model.state_dict().items():
        torch.testing.assert_close(got["model"][key], value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got["target"], crit.target, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got["soft"], crit.soft_labels, rtol=1e-5, atol=1e-6)
    assert bool((crit.target.sum(1) > 0).all())
