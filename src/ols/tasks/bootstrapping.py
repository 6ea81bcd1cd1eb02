"""Arazo et al.'s dynamic bootstrapping (``bmm``): the step, and the beta mixture refitted once an epoch.

The formulas, options and state are the loss's
(:class:`~ols.losses.noisy.bootstrapping.DynamicBootstrapping`).
Each step follows the official ``train_mixUp_HardBootBeta``: a forward of the un-mixed batch in
training mode without gradient (``z``, ``p``), the forward of the mixed batch, then ``B`` from an
eval-mode forward of the un-mixed batch. That last forward runs the plain model, not its DDP
wrapper, so no buffer is copied in place after the mixed forward saved them for its backward.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..losses.noisy.base import one_hot
from ..losses.noisy.beta_mixture import fit_losses
from ..losses.noisy.bootstrapping import bootstrap_target, unmixed_targets
from .base import Task, refuse_mixing
from .meta_reweight import plain_in_eval
from .passes import over_samples


class BootstrappingTask(Task):
    """``task(model, x, y, idx)`` for ``bmm``; :meth:`end_epoch` refits the mixture from the warm-up's end on.

    ``prepare`` draws the batch's ``lam`` and permutation on the host from ``(seed, epoch, rank, batch)``
    (a resumed epoch draws the same) and sends them to the device without a read back.
    """

    def __init__(self, criterion: nn.Module, seed: int = 0, rank: int = 0):
        super().__init__()
        self.criterion, self.seed, self.rank = criterion, seed, rank
        self.epoch, self.batch = 1, 0

    @classmethod
    def wanted(cls, cfg: Any, criterion: nn.Module, model: nn.Module) -> bool:
        return bool(getattr(criterion, "bootstrapping", False))

    @classmethod
    def from_settings(cls, cfg: Any, criterion: nn.Module, model: nn.Module, rank: int = 0) -> Task:
        refuse_mixing(cfg, cfg.loss, "bmm, which mixes with its own --loss-arg mixup_alpha (32), the loss")
        return cls(criterion, cfg.seed, rank)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.batch = epoch, start_batch

    def prepare(self, x: Tensor, y: Tensor, idx: Tensor) -> Tuple[Tensor, ...]:
        """``(x, y, idx, perm (B,), lam ())``: this batch's mixing partner of each sample and share."""
        crit = self.criterion
        rng = np.random.default_rng((self.seed, self.epoch, self.rank, self.batch, 0xB33))
        self.batch += 1
        lam = float(rng.beta(crit.mixup_alpha, crit.mixup_alpha)) if crit.mixup else 1.0
        perm = torch.as_tensor(rng.permutation(x.shape[0])).to(x.device, non_blocking=True)
        return x, y, idx, perm, torch.tensor(lam, dtype=torch.float32).to(x.device, non_blocking=True)

    def forward(self, model: nn.Module, x: Tensor, y: Tensor, idx: Tensor) -> Dict[str, Tensor]:
        return self.compute(model, *self.prepare(x, y, idx))

    def compute(self, model: nn.Module, *inputs: Tensor) -> Dict[str, Tensor]:
        x, y, idx, perm, lam = inputs
        crit = self.criterion
        boot = crit.bootstrapping_in(self.epoch)
        plain_logits = None
        if crit.mixup and (boot or crit.periodic):  # z and p, and OLS's statistics: the un-mixed images
            with torch.no_grad():
                plain_logits = model(x)
        mixed = lam * x + (1 - lam) * x.index_select(0, perm) if crit.mixup else x
        logits = model(mixed)  # (B, K)
        if plain_logits is None:
            plain_logits = logits.detach()
        rows = crit.rows(logits, y)  # the labels checked; a bad one gives its row a NaN loss
        if boot:
            noisy = crit.noisy_probability(self.eval_losses(model, x, rows.labels))
            trusted = unmixed_targets(plain_logits, crit.variant)
            t = bootstrap_target(rows.labels, trusted, noisy, crit.num_classes)
        else:
            t = one_hot(rows.labels, crit.num_classes)
        if crit.mixup:
            t = lam * t + (1 - lam) * t.index_select(0, perm)
        per = torch.where(rows.keep, crit.base_loss_probs(logits, t), rows.fill)
        loss = per.mean()
        if boot and crit.reg:
            loss = loss + crit.reg * crit.regulariser(F.softmax(logits.float(), dim=1))
        if crit.periodic:
            label = torch.where(noisy > 0.5, plain_logits.argmax(1), rows.labels) if boot else rows.labels
            crit.observe(plain_logits, label)
        return {"loss": loss, "logits": plain_logits}

    @staticmethod
    def eval_losses(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """``(B,)`` cross-entropy of the un-mixed batch in eval mode, without gradient.

        The official ``compute_probabilities_batch``; on the plain model, so that no DDP buffer copy
        runs after the forward whose backward is pending.
        """
        with plain_in_eval(model) as plain, torch.no_grad():
            return F.cross_entropy(plain(x).float(), y, reduction="none")

    def end_epoch(self, epoch: int, model: nn.Module) -> None:
        """From the warm-up's last epoch on, fit the mixture to every training sample's eval-mode loss."""
        crit, data = self.criterion, self.data
        if epoch < crit.warmup_epochs or epoch >= data.epochs:
            return

        def loss_and_prediction(x: Tensor, idx: Tensor) -> Tensor:
            logits = model(x).float()
            loss = F.cross_entropy(logits, data.labels.index_select(0, idx), reduction="none")
            return torch.stack([loss, logits.argmax(1).float()], dim=1)

        out = over_samples(model, data.source, data.train_index, data.eval_batch_size, loss_and_prediction, 2,
                           data.labels.device)
        mixture, low, high = fit_losses(out[:, 0].cpu().numpy())  # once an epoch, on the host
        index = torch.as_tensor(data.train_index, device=data.labels.device)
        labels = data.labels.index_select(0, index)
        crit.set_fit(mixture, low, high, index, out[:, 0], out[:, 1].long(), labels)

    def run_outputs(self) -> Dict[str, np.ndarray]:
        out = super().run_outputs()
        if "corrected_labels" in out:
            out["noisy_probability"] = self.criterion.noisy_prob.cpu().numpy()
        return out
