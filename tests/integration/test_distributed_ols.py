"""Two gloo processes on the CPU end with identical soft labels, equal to one process
that saw all the data."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ols import OnlineLabelSmoothing, OnlineLabelSmoothingSingle

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


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, result_dir):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        crit = OnlineLabelSmoothing(K)
        single = OnlineLabelSmoothingSingle(K, num_samples=BATCHES * BATCH, seed=3)
        for period in range(2):
            for b, (z, y) in enumerate(_stream(period)):
                half = slice(rank * BATCH // 2, (rank + 1) * BATCH // 2)  # each rank: half
                crit(z[half], y[half])
                index = torch.arange(b * BATCH, (b + 1) * BATCH)[half]
                single(z[half], y[half], index=index)
            crit.step()
            single.step()
        torch.save({"ols": crit.state_dict(), "single": single.state_dict()},
                   os.path.join(result_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_match_one_process(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    for key in ("ols", "single"):
        for name in r0[key]:
            torch.testing.assert_close(r0[key][name], r1[key][name], rtol=0, atol=0)

    crit = OnlineLabelSmoothing(K)
    single = OnlineLabelSmoothingSingle(K, num_samples=BATCHES * BATCH, seed=3)
    for period in range(2):
        for b, (z, y) in enumerate(_stream(period)):
            crit(z, y)
            single(z, y, index=torch.arange(b * BATCH, (b + 1) * BATCH))
        crit.step()
        single.step()
    torch.testing.assert_close(r0["ols"]["store.soft_labels"], crit.soft_labels)
    assert int(r0["ols"]["store.num_updates"]) == 2
    torch.testing.assert_close(r0["single"]["previous"], single.previous)
    torch.testing.assert_close(r0["single"]["partner"], single.partner)
