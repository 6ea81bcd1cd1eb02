"""The optimiser (SGD or AdamW) and the learning-rate schedule, as a pure function of the iteration.

``lr_factor(step, ...)`` is the multiplier of the base rate at iteration ``step``
(0-based): a linear warm-up over ``warmup_epochs``, then cosine decay to 0 over the rest
of training, a multistep decay by ``gamma`` at each epoch milestone, or a constant. The
scheduler is a ``LambdaLR`` over it, stepped every iteration, so a resumed run with more
epochs simply re-reads the schedule.
"""

from __future__ import annotations

import bisect
import math
from functools import partial
from typing import Any, Dict, List

import torch
from torch import nn

from .config import TrainConfig


def lr_factor(step: int, steps_per_epoch: int, epochs: int, schedule: str, milestones=(),
              gamma: float = 0.1, warmup_epochs: float = 0.0) -> float:
    """Multiplier of the base learning rate at iteration ``step``."""
    warmup = int(round(warmup_epochs * steps_per_epoch))
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        total = max(epochs * steps_per_epoch - warmup, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, total) / total))
    if schedule == "multistep":
        return gamma ** bisect.bisect_right(list(milestones), step // steps_per_epoch)
    return 1.0


def parameter_groups(model: nn.Module, weight_decay: float,
                     decay_norm_bias: bool = True) -> List[Dict[str, Any]]:
    """The optimiser's parameter groups: one with ``weight_decay``, and one without it.

    With ``decay_norm_bias=False``, every parameter with one dimension or less (normalisation
    weights, biases) or named ``*.bias`` goes to the group without decay: the rule of timm's
    ``param_groups_weight_decay`` (timm/optim/_param_groups.py). Frozen parameters are left out.
    """
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if decay_norm_bias:
        return [{"params": [p for _, p in params], "weight_decay": weight_decay}]
    exempt = [p.ndim <= 1 or name.endswith(".bias") for name, p in params]
    groups = [{"params": [p for (_, p), e in zip(params, exempt) if not e], "weight_decay": weight_decay},
              {"params": [p for (_, p), e in zip(params, exempt) if e], "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: TrainConfig, graph: bool = False) -> torch.optim.Optimizer:
    """SGD with momentum (Nesterov if asked), or AdamW; weight decay as :func:`parameter_groups` says.

    ``graph=True`` (``--cuda-graph``, SGD only): the fused SGD kernel with the learning rate
    as a tensor on the parameters' device, which the schedule fills in place and a captured
    step reads (a Python float would be frozen into the graph).
    """
    groups = parameter_groups(model, cfg.weight_decay, cfg.decay_norm_bias)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
    nesterov = cfg.nesterov and cfg.momentum > 0
    if not graph:
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=nesterov,
                               weight_decay=cfg.weight_decay)
    optimizer = torch.optim.SGD(groups, lr=torch.tensor(cfg.lr), momentum=cfg.momentum,
                                nesterov=nesterov, weight_decay=cfg.weight_decay, fused=True)
    lr_on_device(optimizer, next(model.parameters()).device)  # built on the host: SGD's checks read it
    return optimizer


def lr_on_device(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Put tensor learning rates back on ``device`` after ``load_state_dict`` (which copies them as saved)."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"] = group["lr"].to(device=device, dtype=torch.float32)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-iteration ``LambdaLR`` over :func:`lr_factor` with ``cfg``'s schedule."""
    fn = partial(lr_factor, steps_per_epoch=steps_per_epoch, epochs=cfg.epochs, schedule=cfg.schedule,
                 milestones=tuple(cfg.milestones), gamma=cfg.gamma, warmup_epochs=cfg.warmup_epochs)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
