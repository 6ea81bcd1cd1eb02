"""A checkpoint that any number of ranks can resume: the per-rank parts, gathered and dealt out again.

Under ``torchrun`` each rank holds its own share of what a checkpoint must keep: the open
epoch's sums (loss, samples seen), its augmentation generator, and the loss's rank-local period
statistics (OLS's sums, the top-k store's tables; :mod:`ols.losses.rank_local`). A checkpoint
keeps every rank's part side by side with the number of ranks ``W`` that wrote it.

A resume on the same ``W`` gives each rank its own part back, so it is exact. On another
``W'`` rank 0 takes the parts merged (what one process would hold: sums added, top-k tables
merged) and the other ranks start empty; an open epoch's remaining samples are dealt out to
the ``W'`` ranks (:func:`rest_of_epoch`), and the schedule is put at the same share of the
run (:func:`align_schedule`). Per-sample state sharded by sample (PS-KD, PENCIL) is gathered
into one layout by the loss itself (:class:`~ols.losses.per_sample.PerSampleShards`).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .distributed import all_reduce_max, is_distributed
from .losses.rank_local import RankLocalState


def gather_objects(obj: Any) -> List[Any]:
    """Every rank's ``obj`` in rank order (a collective under ``torch.distributed``); ``[obj]`` alone."""
    if not is_distributed():
        return [obj]
    out: List[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def rank_local_modules(criterion: nn.Module) -> Dict[str, RankLocalState]:
    """The loss's submodules that keep saved rank-local tensors, by their ``state_dict`` prefix."""
    return {(f"{name}." if name else ""): sub for name, sub in criterion.named_modules()
            if isinstance(sub, RankLocalState) and _parts_of(sub)}


def _parts_of(sub: RankLocalState) -> List[str]:
    """The rank-local tensors this layout carries: per-sample shards are gathered by the loss itself."""
    sharded = set(getattr(sub, "per_sample_state", ())) if getattr(sub, "sharded", False) else set()
    return [name for name in sub._saved_rank_local() if name not in sharded]


def gather_rank_local(criterion: nn.Module, world_size: int) -> Optional[Dict[str, Any]]:
    """``{"world_size": W, "parts": {key: (W, ...)}}`` of every rank's rank-local tensors, on rank 0.

    A collective under ``torch.distributed`` (every rank calls it; the others get ``None``);
    ``None`` on one process, whose ``state_dict()`` already holds them.
    """
    if world_size <= 1:
        return None
    parts: Dict[str, Tensor] = {}
    main = torch.distributed.get_rank() == 0
    for prefix, sub in rank_local_modules(criterion).items():
        for name in _parts_of(sub):
            local = getattr(sub, name)
            pieces = [torch.empty_like(local) for _ in range(world_size)]
            torch.distributed.all_gather(pieces, local.contiguous())
            if main:
                parts[prefix + name] = torch.stack([p.cpu() for p in pieces])
    return {"world_size": world_size, "parts": parts} if main else None


def restore_rank_local(criterion: nn.Module, saved: Optional[Dict[str, Any]], rank: int,
                       world_size: int) -> None:
    """Give this rank its part of the rank-local tensors after ``load_state_dict`` loaded rank 0's.

    ``saved``: :func:`gather_rank_local`'s dict, or ``None`` (a checkpoint of one process). Same
    number of ranks: each rank its own part. Otherwise rank 0 holds the merge and the others
    start empty, so the period's all-reduce adds up to what one process would hold.
    """
    same = saved is not None and int(saved["world_size"]) == world_size
    for prefix, sub in rank_local_modules(criterion).items():
        names = _parts_of(sub)
        stacked = {n: saved["parts"][prefix + n] for n in names if saved and prefix + n in saved["parts"]}
        if same and len(stacked) == len(names):
            values = {n: stacked[n][rank] for n in names}
        elif rank != 0:
            sub.clear_rank_local()
            continue
        elif len(stacked) == len(names):
            values = sub.merge_rank_local(stacked)
        else:  # one process's checkpoint: rank 0 keeps what load_state_dict gave it
            continue
        with torch.no_grad():
            for name, value in values.items():
                getattr(sub, name).copy_(value)


def gather_partial(batches: int, loss_sum: Tensor, seen: Tensor, preds: Tensor,
                   step_loss: Optional[Tensor], aug_rng: Tensor, lr: float) -> Dict[str, Any]:
    """An open epoch's state on every rank, as one checkpoint entry (a collective under ``torchrun``).

    ``loss_sum``, ``seen``: this rank's 0-d sums; ``preds`` ``(N,)`` its predictions, ``-1``
    where another rank trained; ``aug_rng`` its augmentation generator's state. Returns
    per-rank ``loss_sum``/``seen`` ``(W,)``, the union of the predictions, rank 0's step losses,
    and each rank's generator state.
    """
    union = preds.clone()
    all_reduce_max(union)
    mine = gather_objects({"loss_sum": loss_sum.detach().cpu(), "seen": seen.detach().cpu(),
                           "aug_rng": aug_rng.cpu()})
    return {"batches": batches, "world_size": len(mine), "preds": union.cpu(),
            "loss_sum": torch.stack([m["loss_sum"] for m in mine]).reshape(-1),
            "seen": torch.stack([m["seen"] for m in mine]).reshape(-1),
            "step_loss": None if step_loss is None else step_loss.cpu(),
            "aug_rngs": [m["aug_rng"] for m in mine], "lr": lr}


def own_partial(partial: Dict[str, Any], rank: int, world_size: int) -> Dict[str, Any]:
    """The rank's share of :func:`gather_partial`'s entry (or of a one-process checkpoint's).

    Same ``W``: its own sums and generator. Otherwise rank 0 takes the summed sums, the others
    zero, and ``"redeal"`` says the epoch's rest must be dealt out again (no generator state).
    """
    saved_world = int(partial.get("world_size", 1))
    loss_sum = torch.as_tensor(partial["loss_sum"], dtype=torch.float64).reshape(-1)
    seen = torch.as_tensor(partial["seen"], dtype=torch.float64).reshape(-1)
    rngs = partial.get("aug_rngs") or [partial.get("aug_rng")]
    out = {"batches": int(partial["batches"]), "preds": partial["preds"], "lr": partial.get("lr"),
           "step_loss": partial.get("step_loss"), "saved_world_size": saved_world}
    if saved_world == world_size:
        return {**out, "loss_sum": loss_sum[rank].clone(), "seen": seen[rank].clone(),
                "aug_rng": rngs[rank], "redeal": False}
    keep = rank == 0
    return {**out, "loss_sum": loss_sum.sum() if keep else torch.zeros((), dtype=torch.float64),
            "seen": seen.sum() if keep else torch.zeros((), dtype=torch.float64), "aug_rng": None,
            "step_loss": None, "redeal": True}


def rest_of_epoch(orders: Sequence[Sequence[int]], done: int, batch_size: int, rank: int, world_size: int,
                  by_index: bool) -> List[int]:
    """The samples ``orders`` (one list per old rank) had left after ``done`` batches, for ``rank``.

    The old ranks' remaining samples are interleaved back into the epoch's global order
    (``DistributedSampler`` gave rank ``r`` positions ``r, r + W, ...``), then dealt out as the
    sampler would to ``world_size`` ranks: positions ``rank, rank + W', ...``, padded to equal
    lengths by repeating the first. ``by_index``: a loss that shards per-sample state keeps each
    sample on rank ``index % W'`` (padded to the longest share).
    """
    start = done * batch_size
    left = [int(o[p]) for p in range(start, max(len(o) for o in orders)) for o in orders if p < len(o)]
    if not left:
        return []
    if by_index:
        own = [i for i in left if i % world_size == rank]
        longest = max(sum(1 for i in left if i % world_size == r) for r in range(world_size))
        return np.resize(np.asarray(own, dtype=np.int64), longest).tolist() if own else []
    padded = np.resize(np.asarray(left, dtype=np.int64), -(-len(left) // world_size) * world_size)
    return padded[rank::world_size].tolist()


def align_schedule(scheduler: Any, optimizer: torch.optim.Optimizer, step: int) -> None:
    """Put a per-iteration ``LambdaLR`` at iteration ``step``: its count and every group's rate.

    A resume on another number of ranks has another number of steps an epoch; this keeps the
    rate at the same share of the run. On the same number of ranks it changes nothing.
    """
    scheduler.last_epoch = step
    rates = [base * fn(step) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, rate in zip(optimizer.param_groups, rates):
        if isinstance(group["lr"], Tensor):
            group["lr"].fill_(rate)  # --cuda-graph reads the tensor in place
        else:
            group["lr"] = rate
    scheduler._last_lr = [float(g["lr"]) for g in optimizer.param_groups]
