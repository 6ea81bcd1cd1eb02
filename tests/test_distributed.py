"""``ols.distributed``'s group start-up, without starting a group: the backend for the device, and the
NCCL setting that a capture of DDP's backward needs (``--cuda-graph`` on CUDA only)."""

import pytest
import torch

from ols import distributed

VAR = "TORCH_NCCL_ASYNC_ERROR_HANDLING"


@pytest.fixture
def started(monkeypatch):
    """The calls ``init_process_group`` got (it starts nothing here), with the NCCL variable at each."""
    calls = []
    monkeypatch.delenv(VAR, raising=False)
    monkeypatch.setattr(distributed.dist, "init_process_group",
                        lambda backend, **kw: calls.append((backend, kw, distributed.os.environ.get(VAR))))
    return calls


@pytest.mark.parametrize("device,cuda_graph,backend,var", [
    ("cuda", True, "nccl", "0"),  # set before the group starts: the group reads it then
    ("cuda", False, "nccl", None),
    ("cpu", True, "gloo", None),  # gloo has no such handling; a CPU run is never captured
    ("cpu", False, "gloo", None),
])
def test_init_group_picks_the_backend_and_turns_nccl_error_handling_off_only_for_a_capture(
        started, device, cuda_graph, backend, var):
    distributed.init_group(torch.device(device), cuda_graph, rank=0, world_size=1)
    assert started == [(backend, {"rank": 0, "world_size": 1}, var)]


def test_setup_starts_no_group_for_one_process_and_one_through_init_group_under_torchrun(
        started, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = distributed.setup(torch.device("cpu"), cuda_graph=True)
    assert started == [] and (ctx.rank, ctx.world_size, ctx.owns_group) == (0, 1, False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    ctx = distributed.setup(torch.device("cpu"), cuda_graph=True)
    assert started == [("gloo", {}, None)]
    assert (ctx.rank, ctx.world_size, ctx.owns_group, ctx.is_main) == (1, 2, True, False)
