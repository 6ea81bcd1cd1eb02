"""PENCIL, Yi & Wu, "Probabilistic end-to-end noise correction for learning with noisy labels" (CVPR 2019)."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ...distributed import rank_and_world
from ..functional import reduce_rows, upcast
from ..per_sample import PerSampleShards
from .base import NoisyLabelMethod, check_positive, epoch_span, one_hot, phase_epochs

FORMS = ("paper", "code")
#: the official schedule (``PENCIL.py``): stage 1 ends at epoch 70, stage 2 at 200, of 320
BACKBONE_SHARE, JOINT_SHARE = 70 / 320, 130 / 320


def pencil_terms(logits: Tensor, label_logits: Tensor, noisy: Tensor, log_target: Tensor, form: str = "code"):
    """``(L_c, L_o, L_e)`` per sample ``(B,)`` each, for PENCIL's three terms.

    ``logits`` ``(B, K)`` are the network's, ``label_logits`` ``(B, K)`` the samples' ``y~`` (``y^d =
    softmax(y~)``), ``noisy`` ``(B,)`` the noisy labels, ``log_target`` ``(B, K)`` the log of the
    distribution the classification term fits (``log y^d``, or of OLS's ``q(y^d)``). ``form="paper"``
    (Eqs. (6)-(8)):

        L_c = KL(f || target) = sum_k f_k (log f_k - log target_k)
        L_o = -log y^d_{noisy}                         the compatibility with the noisy label
        L_e = -sum_k f_k log f_k                       the prediction's entropy

    ``form="code"`` the official ``PENCIL.py``: ``L_c`` and ``L_e`` averaged over the classes too (their
    ``torch.mean`` over ``B x K``, i.e. the paper's divided by ``K``), ``L_o`` a cross-entropy of
    ``softmax(y^d)`` (its ``CrossEntropyLoss`` applied to probabilities). Logs of ``y^d`` are taken as
    ``log_softmax(y~)``, finite where the official ``log(softmax(y~))`` underflows to ``-inf``.
    """
    logf = F.log_softmax(upcast(logits), dim=1)
    f = logf.exp()
    l_c = (f * (logf - log_target.to(logf.dtype))).sum(1)
    l_e = -(f * logf).sum(1)
    log_dist = F.log_softmax(label_logits.float(), dim=1)
    if form == "code":
        k = logits.shape[1]
        return l_c / k, F.cross_entropy(log_dist.exp(), noisy, reduction="none"), l_e / k
    return l_c, -log_dist.gather(1, noisy.unsqueeze(1)).squeeze(1), l_e


class PENCIL(PerSampleShards, NoisyLabelMethod):
    r"""PENCIL (Yi & Wu, CVPR 2019): ``pencil``, every sample's label distribution learned with the network.

    Each training sample ``i`` has label logits ``y~_i`` ``(K,)`` and a label distribution
    ``y^d_i = softmax(y~_i)``. Three stages (the official ``PENCIL.py``: 70, 130 and 120 of 320 epochs,
    here those shares of ``--epochs``):

    1. **backbone learning** (``backbone_epochs``): the base loss on the noisy labels; each visit sets
       ``y~_i = label_init * onehot(y_i)`` (10, as the official code);
    2. **joint learning** (``joint_epochs``): ``L = L_c + compatibility * L_o + entropy * L_e``
       (:func:`pencil_terms`), and after the network's gradient, the labels take their own step,
       ``y~_i <- y~_i - label_lr * dL/dy~_i`` (plain gradient descent, no momentum);
    3. **fine-tuning**: ``L = L_c`` with ``y^d`` frozen.

    The gradient of the labels is that of the batch-mean loss over the global batch (under
    ``torchrun``, each rank's own samples', divided by the global batch size), as the official code
    takes it from its batch-mean loss. Defaults are the paper's Section 4.2 values as quoted in
    yikun2019/PENCIL#4: ``compatibility`` (alpha) 0.1, ``entropy`` (beta) 0.4, ``label_lr`` (lambda)
    600; the official script's argparse defaults swap alpha and beta (0.4 and 0.1).

    **Which form.** ``form="code"`` (default) is the official script's: ``L_c`` and ``L_e`` averaged over
    ``B x K`` and ``L_o`` its ``CrossEntropyLoss`` applied to probabilities. ``form="paper"`` is the
    paper's Eqs. (6)-(8): sums over the classes and ``L_o = -log y^d_y``. The published numbers, and
    lambda = 600, come from the script; under the paper's sums one visit moves the label logits ``K``
    times further (at ``K = 10``, batch 32 and lambda 600, about 19 units against an initial 10: the
    labels follow the network's early predictions: on the 2,000-image Fashion-MNIST subset with 40 %
    noise, their accuracy fell from 60 % to 27 % in one joint epoch, against 60.0 % to 60.1 % with the
    script's form). Either way the step is that of a batch mean, so it shrinks as the batch
    grows: the official batch is 128, and ``label_lr * B / 128`` keeps its step at another batch size
    ``B``. The official stage-3 learning rate floors to 0 (``0.2 // 10``); here the run's
    ``--schedule`` applies throughout.

    **With OLS** the classification term fits ``q(y^d) = alpha * y^d + (1 - alpha) * y^d @ S`` in
    place of ``y^d`` (stage 1: OLS on the noisy labels), and OLS's statistics count each correct
    row for ``argmax y^d`` (for ``y`` in stage 1).

    **State**: ``label_logits`` ``(N, K)`` and ``started`` ``(N,)`` (which samples have them), per sample,
    sharded by sample under ``torchrun`` (:class:`~ols.losses.per_sample.PerSampleShards`), saved in one
    layout. ``corrected_labels()`` gives ``argmax y^d`` (saved as ``corrected_labels.npy``).

    Args:
        num_samples: ``N``.
        compatibility, entropy, label_lr, label_init: alpha, beta, lambda and K above.
        backbone_epochs, joint_epochs: the stages' lengths; 70/320 and 130/320 of ``--epochs`` when ``None``.
        form: ``"code"`` (the official script, default) or ``"paper"`` (the paper's equations).
        sharded: keep this rank's shard of the samples only (``ols train`` under ``torchrun`` sets it).
        base, alpha, epochs: as :class:`~ols.losses.noisy.base.NoisyLabelMethod`.
    """

    key = "pencil"

    needs_index = True
    cuda_graph_refusal = "it updates every sample's label distribution by a gradient step inside its loss"

    def __init__(self, num_classes: int, num_samples: int, base: str = "ce", alpha: Optional[float] = None,
                 epochs: int = 1, compatibility: float = 0.1, entropy: float = 0.4, label_lr: float = 600.0,
                 label_init: float = 10.0, backbone_epochs: Optional[int] = None,
                 joint_epochs: Optional[int] = None, form: str = "code", sharded: bool = False,
                 ignore_index: int = -100, reduction: str = "mean", validate: bool = True):
        super().__init__(num_classes, base, alpha, epochs, ignore_index, reduction, validate)
        if form not in FORMS:
            raise ValueError(f"--loss-arg form={form!r}: use paper or code")
        self.compatibility = check_positive("compatibility", compatibility, zero=True)
        self.entropy = check_positive("entropy", entropy, zero=True)
        self.label_lr = check_positive("label_lr", label_lr)
        self.label_init = check_positive("label_init", label_init)
        self.form = form
        self.backbone_epochs = phase_epochs("backbone_epochs", backbone_epochs, BACKBONE_SHARE, epochs)
        self.joint_epochs = phase_epochs("joint_epochs", joint_epochs, JOINT_SHARE, epochs,
                                         most=epochs - self.backbone_epochs)
        rows = self.init_shards(num_samples, sharded)
        self.register_buffer("label_logits", torch.zeros(rows, num_classes))
        self.register_buffer("started", torch.zeros(rows, dtype=torch.bool))
        self.epoch_index = 0  # 0-based, from set_progress

    per_sample_state = ("label_logits", "started")

    def set_progress(self, fraction: float) -> None:
        """The engine's epoch start: epoch ``floor(fraction * epochs)`` (0-based) picks the stage."""
        self.epoch_index = min(math.floor(float(fraction) * self.epochs + 1e-6), self.epochs - 1)

    @property
    def stage(self) -> int:
        """1, 2 or 3 (backbone, joint, fine-tuning) for the current epoch."""
        if self.epoch_index < self.backbone_epochs:
            return 1
        return 2 if self.epoch_index < self.backbone_epochs + self.joint_epochs else 3

    def forward(self, logits: Tensor, target: Tensor, index: Tensor = None) -> Tensor:  # type: ignore[override]
        """The stage's loss of ``logits`` ``(B, K)``, ``target`` ``(B,)``, ``index`` ``(B,)``; no host read.

        In stage 2, in training mode, the batch's label logits take their step too.
        """
        rows, at = self.own_rows(*self.indexed_rows(logits, target, index, self.num_samples, "pencil"))
        start = self.label_init * one_hot(rows.labels, self.num_classes)
        stage, learning = self.stage, self.training and torch.is_grad_enabled()
        if stage == 1:
            per = self.base_loss(logits, rows.labels)
            if learning:
                with torch.no_grad():  # every visit: y~ = K * onehot(y), as the official stage 1
                    self.label_logits.index_copy_(0, at, start)
                    self.started.index_fill_(0, at, True)
                self.observe(logits, rows.labels, rows.keep)
            return reduce_rows(per, rows.keep, rows.fill, self.reduction)
        have = self.started.index_select(0, at).unsqueeze(1)
        label_logits = torch.where(have, self.label_logits.index_select(0, at), start)  # (B, K)
        if stage == 2 and learning:
            label_logits = label_logits.detach().requires_grad_(True)
        per = self._stage_loss(logits, label_logits.detach(), rows.labels, stage)  # the network's loss
        if stage == 2 and learning:
            self._step_labels(logits.detach(), label_logits, rows, at)
        if learning:
            self.observe(logits, label_logits.detach().argmax(1), rows.keep)
        return reduce_rows(per, rows.keep, rows.fill, self.reduction)

    def _stage_loss(self, logits: Tensor, label_logits: Tensor, noisy: Tensor, stage: int) -> Tensor:
        log_dist = F.log_softmax(label_logits.float(), dim=1)
        if self.periodic:  # OLS's q(y^d); a zero entry (a class no soft label reaches) is floored at 1e-30
            log_target = self.base.target_distribution(log_dist.exp()).clamp_min(1e-30).log()
        else:
            log_target = log_dist
        l_c, l_o, l_e = pencil_terms(logits, label_logits, noisy, log_target, self.form)
        return l_c + self.compatibility * l_o + self.entropy * l_e if stage == 2 else l_c

    def _step_labels(self, logits: Tensor, label_logits: Tensor, rows, at: Tensor) -> None:
        """``y~ <- y~ - label_lr * d(global batch-mean loss)/d y~`` for the batch's rows (stage 2)."""
        per = self._stage_loss(logits, label_logits, rows.labels, 2)
        count = rows.keep.sum() * rank_and_world()[1]
        total = torch.where(rows.keep, per, 0.0).sum() / count.clamp_min(1)
        (grad,) = torch.autograd.grad(total, label_logits)
        with torch.no_grad():
            self.label_logits.index_copy_(0, at, label_logits - self.label_lr * grad)
            self.started.index_fill_(0, at, True)

    def corrected_labels(self) -> Optional[Tensor]:
        """``(N,)`` ``argmax y^d`` of each sample with label logits, -1 elsewhere (sharded: a collective)."""
        state = self.gathered_state()
        if state is None:  # another rank of a sharded run: rank 0 gathered
            return torch.full((self.num_samples,), -1, dtype=torch.long)
        labels = state["label_logits"].argmax(1)
        return torch.where(state["started"].bool(), labels, torch.full_like(labels, -1))

    def phases(self) -> str:
        b, j = self.backbone_epochs, self.joint_epochs
        return (f"{self.name} (Yi & Wu 2019): {epoch_span(1, b)} backbone learning on the noisy labels; "
                f"{epoch_span(b + 1, b + j)} joint learning, each sample's label distribution learned at "
                f"label_lr {self.label_lr:g}; {epoch_span(b + j + 1, self.epochs)} fine-tuning with the "
                f"labels frozen (backbone_epochs={b}, joint_epochs={j}: the paper's 70 and 130 of 320)")

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, compatibility={self.compatibility}, entropy={self.entropy}, "
                f"label_lr={self.label_lr}, form={self.form!r}")
