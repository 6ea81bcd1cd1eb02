"""PS-KD: progressive self-knowledge distillation, each sample taught by its own last prediction.

Kim et al., "Self-Knowledge Distillation with Progressive Refinement of Targets", ICCV 2021
(official code ``lgcnsai/PS-KD-Pytorch``, ``main.py``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..distributed import all_reduce_sum
from ..utils.tracing import compiling
from .base import check_unit_interval
from .functional import reduce_rows, upcast
from .per_sample import PerSampleShards
from .step_reminder import StepReminder


class ProgressiveSelfKD(StepReminder, PerSampleShards):
    r"""Cross-entropy against ``(1 - alpha_t) * onehot(y) + alpha_t * p_prev(x)``.

    ``p_prev(x)`` is the softmax the model gave the *same sample* in the previous epoch
    (one-hot before a sample's first epoch ends, as the official code stores the one-hot
    label during epoch 0). ``alpha_t`` rises linearly with the epoch ``t`` (0-based):

        alpha_t = alpha_T * (t + 1) / epochs,       alpha_T = 0.8

    (``main.py``: ``args.alpha_T * ((epoch + 1) / args.end_epoch)``). The epoch comes from
    the run's progress (:meth:`set_progress`, fed by the engine, ``OLSCallback`` and
    ``OLSTrainerHook`` at every epoch start, as for MaxSup) and ``epochs`` (the engine passes
    its own). Until the first progress report ``alpha_t`` is that of epoch 0.

    **Shapes.** ``forward(logits (B, K), target (B,), index (B,))``; ``index`` holds each
    sample's position in the training set, ``[0, num_samples)``.

    **State** (saved by ``state_dict()``): ``previous`` ``(N, K)`` float32, the last epoch's
    predictions, and ``known`` ``(N,)``, which samples have one; this epoch's predictions are
    gathered rank-locally (invisible to DDP's buffer broadcast). Where the official code
    overwrites a sample's stored prediction during the epoch, here it is replaced at the
    epoch's end; each sample is seen once an epoch, so the targets are the same.

    **Under DDP**, two layouts:

    * replicated (``sharded=False``, the default): this epoch's rows are all-reduced at
      :meth:`step`, so every rank holds all ``N`` rows, ``2 * N * K`` floats (40 MB for
      CIFAR-100, 10 GB for ImageNet-1k), and any sampler works (Lightning's, the HF Trainer's);
    * sharded (``sharded=True``; ``ols train`` under ``torchrun`` chooses it): rank ``r`` holds
      the rows of the samples with ``index % W == r`` only, ``2 * ceil(N / W) * K`` floats
      (1.3 GB a rank for ImageNet-1k on 8 GPUs), and :meth:`step` needs no collective. Each
      rank must then be fed its own shard every epoch (the engine's
      :func:`~ols.run_setup.sharded_epoch_order`); a sample of another rank's shard is a bad
      input (a NaN row, raised at :meth:`step`). :meth:`gathered_state` (a collective) gives
      rank 0 the whole state in the replicated layout, which is what a checkpoint holds, and
      loading a replicated-layout state into a sharded loss keeps the rank's own rows: a run
      resumes on any number of ranks.

    Not linear in its target (the teacher row depends on the sample), so Mixup is refused.

    Args:
        num_classes: ``K``.
        num_samples: ``N``, the size of the training set.
        epochs: the run's length in epochs (``alpha_t``'s denominator).
        alpha_T: ``alpha`` at the last epoch.
        sharded: under ``torch.distributed``, keep this rank's shard of the samples only (above).
    """

    needs_index = True
    update_every = None  # one period per epoch: the training loop steps it
    linear_in_target = False
    keep_float32 = ("previous",)

    def __init__(self, num_classes: int, num_samples: int, epochs: int, alpha_T: float = 0.8,
                 sharded: bool = False, ignore_index: int = -100, reduction: str = "mean",
                 validate: bool = True):
        super().__init__(num_classes, ignore_index, reduction, validate)
        if not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be a positive integer (the run's length), got {epochs!r}")
        self.alpha_T = check_unit_interval("alpha_T", alpha_T)
        self.epochs = epochs
        n, k = self.init_shards(num_samples, sharded), num_classes  # this rank's rows: ceil(N / W)
        self.register_buffer("previous", torch.zeros(n, k))
        self.register_buffer("known", torch.zeros(n, dtype=torch.bool))
        self.register_buffer("alpha_t", torch.tensor(self.alpha_T / epochs))
        self.register_rank_local("epoch_sums", torch.zeros(n, k))
        self.register_rank_local("epoch_counts", torch.zeros(n, dtype=torch.long))

    def set_progress(self, fraction: float) -> None:
        """Training is ``fraction`` done at this epoch's start: epoch ``t = floor(fraction * epochs)``."""
        fraction = check_unit_interval("fraction", fraction)
        t = min(math.floor(fraction * self.epochs + 1e-6), self.epochs - 1)
        self.alpha_t.fill_(self.alpha_T * (t + 1) / self.epochs)

    def forward(self, logits: Tensor, target: Tensor, index: Tensor = None) -> Tensor:  # type: ignore[override]
        """The loss of a batch; ``index`` ``(B,)`` is required. No host read."""
        rows, index = self.own_rows(*self.indexed_rows(logits, target, index, self.num_samples, "pskd"))
        logp = F.log_softmax(upcast(logits), dim=1)  # (B, K)
        onehot = F.one_hot(rows.labels, self.num_classes).to(logp.dtype)
        teacher = torch.where(self.known.index_select(0, index).unsqueeze(1),
                              self.previous.index_select(0, index).to(logp.dtype), onehot)  # (B, K)
        a = self.alpha_t.to(logp.dtype)
        per_sample = -((1 - a) * onehot + a * teacher).mul(logp).sum(1)
        if self.training:
            if not compiling():
                self._note_training_forward()
            with torch.no_grad():
                seen = rows.keep & torch.isfinite(per_sample)
                self.epoch_sums.index_add_(0, index, torch.where(seen.unsqueeze(1), logp.exp(), 0.0).float())
                self.epoch_counts.index_add_(0, index, seen.long())
        return reduce_rows(per_sample, rows.keep, rows.fill, self.reduction)

    @torch.no_grad()
    def step(self) -> None:
        """Keep this epoch's predictions as the next epoch's teachers; a collective under DDP."""
        self.raise_bad_inputs()
        self._note_step()
        if not self.sharded:  # a sharded rank saw its own samples only
            all_reduce_sum(self.epoch_sums, self.epoch_counts)
        have = self.epoch_counts > 0
        mean = self.epoch_sums / self.epoch_counts.clamp(min=1).unsqueeze(1).float()
        self.previous.copy_(torch.where(have.unsqueeze(1), mean, self.previous))
        self.known.logical_or_(have)
        self.epoch_sums.zero_()
        self.epoch_counts.zero_()

    #: the per-sample tensors (:class:`~ols.losses.per_sample.PerSampleShards` gathers and shards them)
    per_sample_state = ("previous", "known", "epoch_sums", "epoch_counts")
