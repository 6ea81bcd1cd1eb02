"""The meta-learning steps of Ren et al. (``l2rw``) and Meta-Weight-Net (``mwnet``): one engine step each.

:meth:`~MetaTask.prepare` draws the step's clean held-out batch (outside the step, on the host, from
``(seed, epoch, batch)``, so a resumed epoch draws the same); :meth:`~MetaTask.compute` runs the
virtual SGD step with ``torch.func.functional_call`` on the model's own parameters (no copied
"meta" modules), derives the weights, and returns the weighted loss of an ordinary forward, which
the engine backpropagates and steps as any other. The formulas and options are the losses'
(:mod:`ols.losses.noisy.reweight`).

**Batch norm.** The virtual passes run the model in training mode on copies of its buffers, so
each batch is normalised by its own statistics (as the official code's virtual models, and as
the real forward) and the running statistics they would move are thrown away; the real forward
moves them once.
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ..distributed import all_reduce_sum, is_distributed, rank_and_world, sum_over_ranks
from ..losses.noisy.reweight import clipped_normalised
from .base import Task, refuse_mixing


def plain_module(model: nn.Module) -> nn.Module:
    """The module under ``torch.compile`` and ``DistributedDataParallel`` wrappers."""
    model = getattr(model, "_orig_mod", model)
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    return getattr(model, "_orig_mod", model)


@contextlib.contextmanager
def plain_in_eval(model: nn.Module) -> Iterator[nn.Module]:
    """The plain module (:func:`plain_module`) in eval mode for the block, in training mode after.

    For a forward inside a step that must not go through DDP (no buffer copy after the forward
    whose backward is pending) and must use the running statistics.
    """
    plain = plain_module(model)
    plain.eval()
    try:
        yield plain
    finally:
        plain.train()


def trainable(module: nn.Module) -> Dict[str, Tensor]:
    """The module's parameters that train, by name."""
    return {name: p for name, p in module.named_parameters() if p.requires_grad}


def scratch_buffers(module: nn.Module) -> Dict[str, Tensor]:
    """Copies of the module's buffers: what a virtual pass may update (batch-norm statistics) and loses."""
    return {name: b.clone() for name, b in module.named_buffers()}


def forward_with(module: nn.Module, params: Dict[str, Tensor], buffers: Dict[str, Tensor],
                 x: Tensor) -> Tensor:
    """``module(x)`` with ``params`` and ``buffers`` in place of its own (``torch.func.functional_call``)."""
    return functional_call(module, (params, buffers), (x,))


def virtual_step(params: Dict[str, Tensor], loss: Tensor, lr: float) -> Dict[str, Tensor]:
    """``theta' = theta - lr * grad_theta(loss)``, differentiable in whatever ``loss`` depends on.

    ``loss`` is this rank's part of a loss summed over the ranks: under ``torchrun`` the gradient is
    summed over them (:func:`~ols.distributed.sum_over_ranks`, one flat all-reduce), so ``theta'``
    is the same on every rank and the meta-gradient flows back to each rank's own samples.
    """
    names = list(params)
    grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=True, allow_unused=True)
    grads = [torch.zeros_like(params[n]) if g is None else g for n, g in zip(names, grads)]
    if is_distributed():
        flat = sum_over_ranks(torch.cat([g.reshape(-1) for g in grads]))
        grads = list(flat.split([g.numel() for g in grads]))
        grads = [g.view_as(params[n]) for g, n in zip(grads, names)]
    return {n: params[n] - lr * g for n, g in zip(names, grads)}


class MetaTask(Task):
    """What ``l2rw`` and ``mwnet`` share: the clean batch of each step and the weighted real step.

    ``prepare(x, y, idx) -> (x, y, idx, x_clean, y_clean)``: ``M`` clean held-out images per rank
    (``meta_batch_size``, the run's batch size by default), drawn without replacement from
    ``(seed, epoch, batch)`` for the global batch and split among the ranks, augmented as the
    training batches are.
    """

    name = ""

    def __init__(self, criterion: nn.Module, seed: int = 0, rank: int = 0):
        super().__init__()
        self.criterion, self.seed, self.rank = criterion, seed, rank
        self.epoch, self.batch = 1, 0

    @classmethod
    def wanted(cls, cfg: Any, criterion: nn.Module, model: nn.Module) -> bool:
        return getattr(criterion, "meta_reweight", None) == cls.name

    @classmethod
    def from_settings(cls, cfg: Any, criterion: nn.Module, model: nn.Module, rank: int = 0) -> Task:
        refuse_mixing(cfg, cfg.loss, "the meta-learning loss")
        return cls(criterion, cfg.seed, rank)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.batch = epoch, start_batch

    def clean_batch(self) -> Tuple[Tensor, Tensor]:
        """``(x (M, C, H, W), y (M,))``: this step's clean held-out batch, on the device."""
        data = self.data
        size = self.criterion.meta_batch_size or data.batch_size
        rng = np.random.default_rng((self.seed, self.epoch, self.batch, 0x3E7A))
        total = min(size * data.world_size, len(data.meta_index))
        chosen = rng.choice(data.meta_index, size=total, replace=False)[self.rank::data.world_size]
        seed = int(rng.integers(2**62)) + self.rank
        x = data.source.extra_batch(chosen.tolist(), seed, key=(self.epoch << 20) + self.batch)
        return x, data.labels.index_select(0, torch.as_tensor(chosen, device=data.labels.device))

    def prepare(self, x: Tensor, y: Tensor, idx: Tensor) -> Tuple[Tensor, ...]:
        x_clean, y_clean = self.clean_batch()
        self.batch += 1
        return x, y, idx, x_clean, y_clean

    def forward(self, model: nn.Module, x: Tensor, y: Tensor, idx: Tensor) -> Dict[str, Tensor]:
        return self.compute(model, *self.prepare(x, y, idx))

    def weighted_step(self, model: nn.Module, x: Tensor, y: Tensor, weight_of) -> Dict[str, Tensor]:
        """The real step: ``sum_i w_i l_i`` of a forward of ``model``, with ``w = weight_of(l)`` ``(B,)``.

        ``w`` has no gradient and is already divided by its global normaliser; OLS observes each row
        with its weight.

        Under ``torchrun`` each rank's sum is scaled by the number of ranks, so DDP's mean of the
        ranks' gradients is the gradient of the global weighted sum.
        """
        logits = model(x)  # (B, K)
        per = self.criterion.base_loss(logits, y)  # (B,)
        with torch.no_grad():
            w = weight_of(per)
        self.criterion.observe(logits, y, w)
        loss = (w * per).sum() * rank_and_world()[1]
        return {"loss": loss, "logits": logits}


class ReweightTask(MetaTask):
    """Ren et al.'s step (:class:`~ols.losses.noisy.reweight.LearningToReweight`, ``l2rw``)."""

    name = "l2rw"

    def sample_weights(self, model: nn.Module, x: Tensor, y: Tensor, x_clean: Tensor,
                       y_clean: Tensor) -> Tensor:
        """``(B,)`` weights from the virtual step at ``eps = 0``: ``max(u, 0)`` normalised, u = -dL/deps."""
        plain = plain_module(model)
        params, buffers = trainable(plain), scratch_buffers(plain)
        eps = torch.zeros(y.shape[0], device=y.device, requires_grad=True)
        per = self.criterion.base_loss(forward_with(plain, params, buffers, x), y)  # (B,)
        virtual = virtual_step(params, (eps * per).sum(), self.data.lr())
        meta = F.cross_entropy(forward_with(plain, virtual, buffers, x_clean).float(), y_clean)
        (grad,) = torch.autograd.grad(meta / rank_and_world()[1], eps)  # each rank: d(global meta loss)/d eps
        return clipped_normalised(-grad).detach()

    def compute(self, model: nn.Module, *inputs: Tensor) -> Dict[str, Tensor]:
        x, y, idx, x_clean, y_clean = inputs
        w = self.sample_weights(model, x, y, x_clean, y_clean)
        return self.weighted_step(model, x, y, lambda per: w)


class MetaWeightNetTask(MetaTask):
    """Meta-Weight-Net's step (:class:`~ols.losses.noisy.reweight.MetaWeightNet`, ``mwnet``)."""

    name = "mwnet"

    def meta_update(self, model: nn.Module, x: Tensor, y: Tensor, x_clean: Tensor, y_clean: Tensor) -> Tensor:
        """One step of ``V``'s optimiser on the clean batch's loss after the virtual step; returns it."""
        crit = self.criterion
        plain = plain_module(model)
        params, buffers = trainable(plain), scratch_buffers(plain)
        per = crit.base_loss(forward_with(plain, params, buffers, x), y)  # (B,)
        v = crit.weights(per)  # (B,), a function of V's parameters
        virtual = virtual_step(params, (v * per).sum() / crit.normaliser(v), self.data.lr())
        meta = F.cross_entropy(forward_with(plain, virtual, buffers, x_clean).float(), y_clean)
        theta = list(crit.net.parameters())
        grads = torch.autograd.grad(meta / rank_and_world()[1], theta)  # this rank's share of dL_meta/dTheta
        all_reduce_sum(*grads)
        for p, g in zip(theta, grads):
            p.grad = g
        crit.meta_optimizer.step()
        crit.meta_optimizer.zero_grad(set_to_none=True)
        return meta.detach()

    def compute(self, model: nn.Module, *inputs: Tensor) -> Dict[str, Tensor]:
        x, y, idx, x_clean, y_clean = inputs
        self.meta_update(model, x, y, x_clean, y_clean)
        crit = self.criterion

        def weight_of(per: Tensor) -> Tensor:
            v = crit.weights(per)
            return v / crit.normaliser(v)

        return self.weighted_step(model, x, y, weight_of)
