"""The whole training step as one CUDA graph: ``--cuda-graph``.

A ResNet-56 step at batch 128 is about 600 small kernels. In eager mode the CPU launches
them one by one (about 20 ms a step on an H200, whatever the GPU), so the GPU waits. A CUDA
graph records the launches once and replays them with one call (PyTorch's "whole network
capture", ``torch.cuda.graphs``):

* the batch is copied into **static buffers**: the task's prepared inputs
  (:meth:`~ols.tasks.base.Task.prepare`), ``x`` ``(B, C, H, W)``, ``y`` ``(B,)``, ``idx``
  ``(B,)`` for most tasks, ``x_mixed, y_a, y_b, lam`` for Mixup/CutMix; augmentation and
  the mixing have already run on the device, outside the graph, with each batch's own draws;
* the graph holds the forward, the loss, the backward and SGD's update (fused, its learning
  rate a device tensor that the per-iteration schedule fills in place);
* the first ``warmup`` full batches train eagerly on a side stream (lazy state such as
  momentum buffers is created there), the next one is captured, then every full batch is
  a copy and a replay. A batch of another size (the epoch's ragged last batch) trains
  eagerly through the same parameters, so every sample is trained on as in eager mode.
  When the task's inputs change form (Mixup turned off at ``--mix-off-epoch``), the old
  graph is dropped and the new form warmed up and captured;
* what changes between periods (OLS's soft labels at ``step()``, BatchNorm statistics, the
  learning rate) is written in place, so the captured addresses stay valid;
* the losses' host bookkeeping of a forward (OLS's ``update_every`` counter, which may call
  ``step()``) runs after each step, replay or eager, not inside it
  (:func:`~ols.utils.tracing.kept_counts`): a replay does not run the forward's Python;
* under DDP (``torchrun``) every rank captures its own graph, and the graph holds DDP's
  gradient all-reduce (NCCL collectives can be captured from NCCL 2.9.6 on). PyTorch's CUDA
  notes ("Usage with DistributedDataParallel") give three conditions, all met: NCCL's
  asynchronous error handling off before the group starts (:func:`~ols.distributed.setup`),
  the DDP wrapper built on a side stream (:func:`~ols.distributed.wrap_ddp`, which also turns
  DDP's sampled runtime timing off), and at least 11 DDP-enabled eager iterations before the
  capture (``DDP_WARMUP``). Every rank has the same number of full batches and the same
  ragged one (the shards are padded to one length), so the ranks replay, capture and step
  eagerly in lockstep, as NCCL requires.

``capture=False`` runs the same static-buffer step without capturing it: the CPU's twin,
which the tests compare with the plain eager step.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import torch
from torch import Tensor, nn

from .distributed import same_on_all_ranks
from .engine import autocast, prepared_step
from .utils.tracing import Count, kept_counts

Outputs = Tuple[Tensor, Tensor]
DDP_WARMUP = 11  # eager DDP iterations before a capture (PyTorch's CUDA notes); DDP logs its first 10


class GraphedStep:
    """``step(x, y, idx) -> (loss, logits)`` for full batches, captured and replayed.

    Args:
        model, task, optimizer: what :func:`~ols.engine.train_one_epoch` trains with; the
            optimizer's learning rates must be device tensors (:func:`~ols.optim.build_optimizer`
            with ``graph=True``) so the schedule reaches the graph.
        batch_size: the size of a full batch: only those are captured and replayed.
        use_amp: bf16 autocast (its weight cache off, as capture needs).
        capture: False runs the static-buffer step eagerly (no CUDA needed).
        warmup: eager full batches before the capture; at least ``DDP_WARMUP`` when ``model``
            is wrapped in ``DistributedDataParallel``.
    """

    def __init__(self, model: nn.Module, task: nn.Module, optimizer: torch.optim.Optimizer,
                 batch_size: int, use_amp: bool = False, capture: bool = True, warmup: int = 3):
        if isinstance(model, nn.parallel.DistributedDataParallel):
            warmup = max(warmup, DDP_WARMUP)
        self.model, self.task, self.optimizer = model, task, optimizer
        self.batch_size, self.use_amp, self.capture, self.warmup = batch_size, use_amp, capture, warmup
        self.static: Optional[Tuple[Tensor, ...]] = None
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.outputs: Optional[Outputs] = None
        self.counts: List[Count] = []  # the captured forward's host bookkeeping, run after each replay
        self.warmed = 0

    def fits(self, idx: Tensor) -> bool:
        """True for a full batch (the graph's shape); a ragged one trains eagerly."""
        return idx.shape[0] == self.batch_size

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def __call__(self, x: Tensor, y: Tensor, idx: Tensor) -> Outputs:
        """Train on one full batch; the returned tensors are overwritten by the next call."""
        inputs = self.task.prepare(x, y, idx)
        if self.static is not None and len(self.static) != len(inputs):
            self._drop()  # the task's step changed form: warm up and capture the new one
        if self.static is None:  # empty_like keeps x's memory format (channels_last on CUDA)
            self.static = tuple(torch.empty_like(t) for t in inputs)
        elif self.static[0].shape != inputs[0].shape:
            raise ValueError(f"--cuda-graph: a full batch must keep its shape; got {tuple(inputs[0].shape)} "
                             f"after {tuple(self.static[0].shape)}")
        for buffer, value in zip(self.static, inputs):
            buffer.copy_(value)
        if not self.capture:
            return self._eager()
        if self.graph is None:
            if self.warmed < self.warmup:
                self.warmed += 1
                return _on_side_stream(self._eager)
            self._record()
        assert self.graph is not None and self.outputs is not None
        self.graph.replay()
        for count in self.counts:
            count()
        return self.outputs

    def _body(self) -> Outputs:
        """What the graph holds: forward and loss on the static batch, backward, the update."""
        assert self.static is not None
        with autocast(self.static[0].device, self.use_amp, cache=False):
            out = self.task.compute(self.model, *self.static)
        out["loss"].backward()
        self.optimizer.step()
        return out["loss"].detach(), out["logits"].detach()

    def _eager(self) -> Outputs:
        """The same step on the static buffers, un-captured, with the host bookkeeping after it.

        :func:`~ols.engine.prepared_step`; the losses' counts run after the step, as after a replay.
        """
        assert self.static is not None
        with kept_counts() as counts:
            out = prepared_step(self.model, self.task, self.optimizer, self.static, self.use_amp)
        for count in counts:
            count()
        return out

    def _drop(self) -> None:
        """Forget the buffers and the graph (its memory pool goes with it); the next call starts over."""
        self.static, self.graph, self.outputs, self.counts, self.warmed = None, None, None, [], 0

    def _record(self) -> None:
        # gradients set to None here are allocated by the captured backward from the graph's own
        # memory pool, so every replay writes them afresh (no accumulation across replays)
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with kept_counts() as counts, torch.cuda.graph(graph):
            self.outputs = self._body()
        self.graph, self.counts = graph, counts


def _on_side_stream(fn: Callable[[], Outputs]) -> Outputs:
    """Run ``fn`` on a fresh CUDA stream that waits for, and is waited on by, the current one."""
    side, main = torch.cuda.Stream(), torch.cuda.current_stream()
    side.wait_stream(main)
    with torch.cuda.stream(side):
        out = fn()
    main.wait_stream(side)
    return out


def check_ranks_agree(model: nn.Module, epoch: int) -> None:
    """Under ``torchrun`` with ``--cuda-graph``: every rank ends ``epoch`` with rank 0's weights.

    DDP keeps the replicas equal by all-reducing the gradients; under the graph that all-reduce
    is a captured NCCL call, replayed. If it did not run as in eager mode the ranks would drift
    apart and train on silently; this check (a fingerprint of each parameter, one collective an
    epoch, outside the step) stops the run with one line instead. Buffers are not compared:
    BatchNorm's running statistics are each rank's own until DDP broadcasts rank 0's.
    """
    fingerprint = torch.stack([p.detach().double().sum() for p in model.parameters()])
    if not same_on_all_ranks(fingerprint):
        raise ValueError(f"--cuda-graph under torchrun: the ranks' weights differ after epoch {epoch}, so "
                         "DDP's captured gradient all-reduce did not keep them equal; rerun without "
                         "--cuda-graph (the checkpoint of the epoch before is kept)")


def graph_refusal(device: torch.device, *, tensor_data: bool, dataset: str, compile: bool) -> Optional[str]:
    """Why ``--cuda-graph`` cannot run this configuration (one line), or ``None`` when it can."""
    if device.type != "cuda":
        return f"--cuda-graph needs a CUDA device, and this run is on {device}; drop --cuda-graph"
    if not tensor_data:
        return (f"--cuda-graph needs batches made on the device, and --dataset {dataset} decodes image files "
                "with Pillow in DataLoader workers; add --decode gpu, or drop --cuda-graph")
    if compile:
        return ("--cuda-graph captures the eager step, and --compile compiles it; use one of the two "
                "(--cuda-graph is the faster on small CIFAR networks)")
    return None
