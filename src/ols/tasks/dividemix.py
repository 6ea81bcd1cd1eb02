"""The DivideMix step and its division once an epoch (the formulas: :mod:`ols.losses.noisy.dividemix`).

A batch holds two augmented views of ``B`` samples (``x`` ``(2B, ...)``: view 1, then view 2).

* **warm-up**: each network's base loss (CE, or OLS with its statistics) on view 1.
* **after it**: one no-gradient forward of the pair on both views in training mode (each network's
  own predictions) and one in eval mode (each network's guesses for its peer), then, for network
  ``m``, the targets (co-refined where its peer's clean probability passes ``p_threshold``,
  co-guessed elsewhere), the 2B rows mixed with a partner by ``prepare``'s draws, and one forward
  of the pair with each network on its own mixed rows (``apart``): DDP sees one forward a step.
* :meth:`DivideMixTask.end_epoch` fits the mixtures from the warm-up's last epoch on.

``prepare`` draws each network's ``lambda`` and permutation on the host from ``(seed, epoch, rank,
batch)``, so a resumed epoch draws the same. No host read in the step.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..losses.noisy.base import one_hot
from ..losses.noisy.dividemix import (
    DivideMix,
    co_guess,
    co_refine,
    lambda_u_ramp,
    mix_draws,
    mixmatch_terms,
)
from ..models.pair import ensemble_log_probs
from .base import Task, refuse_mixing
from .meta_reweight import plain_in_eval
from .passes import over_samples


class DivideMixTask(Task):
    """``task(pair, x (2B, ...), y (B,), idx (B,)) -> {"loss", "logits"}`` for ``dividemix``."""

    views = 2

    def __init__(self, criterion: DivideMix, seed: int = 0, rank: int = 0, steps: int = 1):
        super().__init__()
        self.criterion, self.seed, self.rank, self.steps = criterion, seed, rank, max(1, steps)
        self.epoch, self.batch = 1, 0

    @classmethod
    def wanted(cls, cfg: Any, criterion: nn.Module, model: nn.Module) -> bool:
        return isinstance(criterion, DivideMix)

    @classmethod
    def from_settings(cls, cfg: Any, criterion: nn.Module, model: nn.Module, rank: int = 0) -> Task:
        refuse_mixing(cfg, cfg.loss, "DivideMix, which mixes with its own --loss-arg mixup_alpha (4),")
        return cls(criterion, cfg.seed, rank)

    def attach(self, data) -> None:
        super().attach(data)
        self.steps = max(1, data.steps_per_epoch)  # lambda_u's ramp is in epochs and their fractions

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.batch = epoch, start_batch

    def prepare(self, x: Tensor, y: Tensor, idx: Tensor) -> Tuple[Tensor, ...]:
        """``(x, y, idx, perms (2, 2B), lams (2,), lambda_u ())``: each network's mixing draws; the ramp."""
        crit, batch = self.criterion, self.batch
        self.batch += 1
        draws = mix_draws(self.seed, self.epoch, self.rank, batch, x.shape[0], crit.mixup_alpha)
        perms = torch.stack([torch.as_tensor(p) for _, p in draws]).to(x.device, non_blocking=True)
        lams = torch.tensor([lam for lam, _ in draws], dtype=torch.float32).to(x.device, non_blocking=True)
        progress = self.epoch - 1 + batch / self.steps
        lam_u = lambda_u_ramp(progress, crit.warmup_epochs, crit.ramp_epochs, crit.lambda_u)
        lam_u = torch.tensor(lam_u, dtype=torch.float32).to(x.device, non_blocking=True)
        return x, y, idx, perms, lams, lam_u

    def forward(self, model: nn.Module, x: Tensor, y: Tensor, idx: Tensor) -> Dict[str, Tensor]:
        return self.compute(model, *self.prepare(x, y, idx))

    def compute(self, model: nn.Module, *inputs: Tensor) -> Dict[str, Tensor]:
        x, y, idx, perms, lams, lam_u = inputs
        crit = self.criterion
        b = y.shape[0]
        if x.shape[0] != 2 * b:
            raise ValueError(f"a DivideMix batch holds two views of each image, 2B = {2 * b}, got "
                             f"{x.shape[0]}")
        if crit.warming_up(self.epoch):
            logits = model(x[:b], members=True)  # (2, B, K): view 1
            rows = crit.rows(logits[0], y)
            loss = logits.new_zeros((), dtype=torch.float32)
            for m in range(2):
                base = crit.member_base(m)
                per = base(logits[m], rows.labels)  # OLS counts its statistics here (training mode)
                loss = loss + torch.where(rows.keep, per, rows.fill).sum() / rows.keep.sum().clamp_min(1)
            return {"loss": loss, "logits": ensemble_log_probs(logits.detach())}
        with torch.no_grad():
            own = model(x, members=True).float()  # (2, 2B, K) in training mode
            guess = self._eval_logits(model, x)  # (2, 2B, K) in eval mode
        rows = crit.rows(own[0, :b], y)
        p_own = F.softmax(own, dim=2)
        p_guess = F.softmax(guess, dim=2)
        y1 = one_hot(rows.labels, crit.num_classes)
        mixed_x, mixed_t, labelled_rows = [], [], []
        for m in range(2):
            clean = crit.clean[1 - m].index_select(0, idx)  # the peer's division (co-divide)
            labelled = (clean > crit.p_threshold) & rows.keep  # (B,)
            refined = co_refine(y1, clean, (p_own[m, :b] + p_own[m, b:]) / 2, crit.temperature)
            views = torch.stack([p_own[m, :b], p_own[m, b:], p_guess[1 - m, :b], p_guess[1 - m, b:]])
            guessed = co_guess(views, crit.temperature)
            t = torch.where(labelled.unsqueeze(1), refined, guessed)
            t2 = torch.cat([t, t])  # (2B, K): each sample's two views
            lam, perm = lams[m], perms[m]
            mixed_x.append(lam * x + (1 - lam) * x.index_select(0, perm))
            mixed_t.append(lam * t2 + (1 - lam) * t2.index_select(0, perm))
            labelled_rows.append(torch.cat([labelled, labelled]))
            if crit.periodic:  # OLS's statistics: the labelled samples' un-mixed predictions, for their label
                crit.observe_member(m, own[m, :b], rows.labels, labelled.float())
        logits = model(torch.stack(mixed_x), apart=True)  # (2, 2B, K), each network on its own rows
        loss = logits.new_zeros((), dtype=torch.float32)
        for m in range(2):
            l_x, l_u, penalty = mixmatch_terms(logits[m], mixed_t[m], labelled_rows[m])
            if crit.periodic:  # OLS's target q(t) for the labelled rows' mixed labels
                lab = labelled_rows[m].float()
                per = crit.member_loss_probs(m, logits[m], mixed_t[m])
                l_x = (per * lab).sum() / lab.sum().clamp_min(1)
            loss = loss + l_x + lam_u * l_u + penalty
        loss = loss + torch.where(rows.keep, 0.0, rows.fill).sum()  # a bad label makes the loss NaN
        return {"loss": loss, "logits": ensemble_log_probs(own[:, :b])}

    @staticmethod
    def _eval_logits(model: nn.Module, x: Tensor) -> Tensor:
        """``(2, 2B, K)`` of the plain pair in eval mode (no DDP buffer copy after the step's forward)."""
        with plain_in_eval(model) as plain:
            return plain(x, members=True).float()

    def end_epoch(self, epoch: int, model: nn.Module) -> None:
        """From the warm-up's last epoch on (not after the last), fit each network's mixture."""
        crit, data = self.criterion, self.data
        if epoch < crit.warmup_epochs or epoch >= data.epochs:
            return

        def losses(x: Tensor, idx: Tensor) -> Tensor:
            logits = model(x, members=True).float()  # (2, b, K)
            labels = data.labels.index_select(0, idx)
            return torch.stack([F.cross_entropy(z, labels, reduction="none") for z in logits], dim=1)

        out = over_samples(model, data.source, data.train_index, data.eval_batch_size, losses, 2,
                           data.labels.device)
        index = torch.as_tensor(data.train_index, device=crit.clean.device)
        crit.set_division(index, out.cpu().numpy())  # once an epoch, on the host

    def epoch_metrics(self) -> Dict[str, float]:
        """The division's metrics (read once an epoch, after a fit).

        ``dividemix_labelled``: the share of training samples a network's split calls clean (the mean
        of the two, %); ``dividemix_labelled_clean``: of those, the share whose label is not flipped (%).
        """
        crit, data = self.criterion, getattr(self, "data", None)
        if data is None or not bool(crit.fitted):
            return {}
        index = torch.as_tensor(data.train_index, device=crit.clean.device)
        labelled = crit.clean.index_select(1, index) > crit.p_threshold  # (2, n)
        clean = ~data.flipped.to(crit.clean.device).index_select(0, index)
        share = labelled.double().mean()
        right = (labelled & clean).double().sum() / labelled.double().sum().clamp_min(1)
        share, right = torch.stack([share, right]).tolist()
        return {"dividemix_labelled": 100.0 * share, "dividemix_labelled_clean": 100.0 * right}

    def epoch_text(self, metrics: Dict[str, float]) -> str:
        if "dividemix_labelled" not in metrics:
            return ""
        return (f", split {metrics['dividemix_labelled']:.1f}% labelled "
                f"({metrics['dividemix_labelled_clean']:.1f}% of them clean)")
