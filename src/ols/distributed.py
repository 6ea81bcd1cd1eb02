"""Running under ``torchrun``: the process group, who is rank 0, and collective helpers.

Outside ``torch.distributed`` every helper is a no-op, so single-process code calls
them unconditionally.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """True inside an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(*tensors: Tensor) -> None:
    """Sum each tensor in place over all ranks. A collective: every rank calls it, in the same order."""
    if is_distributed():
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)


def all_reduce_max(*tensors: Tensor) -> None:
    """Element-wise maximum in place over all ranks (a collective)."""
    if is_distributed():
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.MAX)


class _SumOverRanks(torch.autograd.Function):
    """``all_reduce`` (sum) that autograd can go through: its gradient is the gradients' sum over ranks."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        out = x.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        out = grad.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out


def sum_over_ranks(x: Tensor) -> Tensor:
    """``x`` summed over all ranks, differentiably (``x`` itself outside a process group).

    ``y = sum_r x_r`` on every rank; backward gives each rank ``sum_r dL_r/dy``, so a loss summed
    over the ranks is differentiated as one. A collective, forward and backward: every rank calls it,
    and every rank backpropagates through it, in the same order (the meta-learning tasks' virtual step).
    """
    return _SumOverRanks.apply(x) if is_distributed() else x


def rank_and_world() -> tuple:
    """``(rank, world size)`` of this process: ``(0, 1)`` outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_strided_rows(local: Tensor, total: int, chunk: int = 65_536):
    """Rank 0 gets the ``(total, ...)`` CPU tensor whose row ``i`` is rank ``i % W``'s row ``i // W``.

    ``local`` ``(ceil(total / W), ...)`` is this rank's rows (the same shape on every rank); other
    ranks get ``None``. A collective, in chunks of ``chunk`` rows so the transient copies stay
    small; bool tensors travel as uint8.
    """
    rank, world = rank_and_world()
    wire = local.to(torch.uint8) if local.dtype == torch.bool else local
    out = torch.empty((total, *local.shape[1:]), dtype=local.dtype) if rank == 0 else None
    for start in range(0, local.shape[0], chunk):
        part = wire[start:start + chunk].contiguous()
        parts = [torch.empty_like(part) for _ in range(world)]
        dist.all_gather(parts, part)
        if out is not None:
            for r, got in enumerate(parts):
                rows = torch.arange(start, start + got.shape[0]) * world + r
                keep = rows < total
                out[rows[keep]] = got[keep].cpu().to(local.dtype)
    return out


def same_on_all_ranks(tensor: Tensor) -> bool:
    """True when every rank holds exactly the values rank 0 holds (a collective)."""
    if not is_distributed():
        return True
    reference = tensor.clone()
    dist.broadcast(reference, src=0)
    agree = torch.tensor([int(torch.equal(reference, tensor))], device=tensor.device)
    dist.all_reduce(agree, op=dist.ReduceOp.MIN)
    return bool(agree.item())


def on_rank_zero_first(work: Callable[[], Any], ctx: DistContext) -> None:
    """Run ``work`` on rank 0 alone while the others wait; a failure there is raised on every rank.

    For set-up that writes shared files (a download): the other ranks see rank 0's one-line error
    rather than waiting forever at a barrier.
    """
    error = None
    if ctx.is_main:
        try:
            work()
        except ValueError as err:
            error = str(err)
    if is_distributed():
        failed = torch.tensor([int(error is not None)], device=ctx.device)
        dist.all_reduce(failed, op=dist.ReduceOp.MAX)
        if failed.item() and error is None:
            raise ValueError("rank 0 failed to prepare the data (its message is above)")
    if error is not None:
        raise ValueError(error)


def barrier() -> None:
    """Wait for every rank (a collective)."""
    if is_distributed():
        dist.barrier()


@dataclass
class DistContext:
    """The process's place in the job: ``rank`` of ``world_size``, and its device."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        """Destroy the process group this context created, once every rank is done with it.

        The garbage collection first frees a ``DistributedDataParallel`` wrapper that is
        only held by reference cycles: destroyed after its group, its reducer aborts the
        process. The barrier keeps a rank that finished early (every rank but 0, which
        still writes the run directory) from tearing down gloo under the others.
        """
        if self.owns_group and dist.is_initialized():
            gc.collect()
            dist.barrier()
            dist.destroy_process_group()


def setup(device: torch.device, cuda_graph: bool = False) -> DistContext:
    """Join the ``torchrun`` job described by ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``, if any.

    On CUDA, rank ``r`` uses GPU ``LOCAL_RANK`` with NCCL; on the CPU, gloo. ``cuda_graph``
    (``--cuda-graph`` on CUDA) turns NCCL's asynchronous error handling off before the group
    starts, the first of PyTorch's three steps for capturing DDP's backward (its CUDA notes,
    "Usage with DistributedDataParallel"; the others are in :func:`wrap_ddp` and
    :class:`~ols.graph_step.GraphedStep`).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(device=device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        init_group(device, cuda_graph)
    return DistContext(rank, world, device, owns)


def init_group(device: torch.device, cuda_graph: bool = False, **kwargs) -> None:
    """Start the process group for ``device``: NCCL on CUDA, gloo on the CPU.

    ``kwargs`` go to ``init_process_group`` (``rank``, ``world_size``; the environment's by
    default). With ``cuda_graph`` on CUDA, NCCL's asynchronous error handling is turned off first, as
    PyTorch's CUDA notes ask before DDP's backward is captured ("Usage with
    DistributedDataParallel").
    """
    if cuda_graph and device.type == "cuda":
        os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] = "0"
    backend = "nccl" if device.type == "cuda" else "gloo"
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if not kwargs and restart not in ("", "0"):
        # a worker torchrun restarted: the store still holds the last round's addresses, and a rank
        # reading one before its peer rewrote it connects to a dead port; a fresh prefix a round
        store, rank, world = next(dist.rendezvous("env://"))
        kwargs = {"store": dist.PrefixStore(f"ols-restart-{restart}/", store), "rank": rank,
                  "world_size": world}
    dist.init_process_group(backend, **kwargs)


def wrap_ddp(model: torch.nn.Module, device: torch.device,
             cuda_graph: bool = False) -> torch.nn.parallel.DistributedDataParallel:
    """``model`` in ``DistributedDataParallel`` on ``device`` (its one GPU, or the CPU).

    With ``cuda_graph`` on CUDA the wrapper is built on a side stream, as a whole-step capture
    of DDP's backward needs (PyTorch's CUDA notes). With ``cuda_graph`` DDP also stops timing
    its iterations after the first 10 (it times every 100th by default, with CUDA events that
    a capture would record and a later eager step would then query).
    """
    ddp = torch.nn.parallel.DistributedDataParallel
    if device.type != "cuda":
        wrapped = ddp(model)
    elif not cuda_graph:
        wrapped = ddp(model, device_ids=[device.index])
    else:
        side, main = torch.cuda.Stream(device), torch.cuda.current_stream(device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            wrapped = ddp(model, device_ids=[device.index])
        main.wait_stream(side)
    set_sample_rate = getattr(wrapped, "_set_ddp_runtime_logging_sample_rate", None)  # a prototype API
    if cuda_graph and set_sample_rate is not None:
        set_sample_rate(2**31 - 1)
    return wrapped
