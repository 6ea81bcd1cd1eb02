"""Han et al.'s self-learning (``self_learning``): the plain step, and the label correction once an epoch.

The step is :class:`~ols.tasks.classification.ClassificationTask`'s (the loss,
:class:`~ols.losses.noisy.self_learning.SelfLearning`, reads each sample's corrected label by
index). :meth:`SelfLearningTask.end_epoch` chooses every class's prototypes from the features of
sampled images and corrects every training sample's label, outside the step.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..losses.noisy.self_learning import class_similarity, select_prototypes
from .base import Task, refuse_mixing
from .classification import ClassificationTask
from .dense_votes import last_pool_and_head
from .passes import InputOf, over_samples


class SelfLearningTask(ClassificationTask):
    """``task(model, x, y, idx)`` as plain classification; :meth:`end_epoch` corrects the labels.

    ``head`` is the model's last linear layer; its input is the feature ``G(x)`` of Han et al.
    """

    def __init__(self, criterion: nn.Module, head: nn.Linear, seed: int = 0):
        super().__init__(criterion)
        self._head = [head]  # not a submodule: the model owns it
        self.seed = seed

    @classmethod
    def wanted(cls, cfg: Any, criterion: nn.Module, model: nn.Module) -> bool:
        return bool(getattr(criterion, "self_learning", False))

    @classmethod
    def from_settings(cls, cfg: Any, criterion: nn.Module, model: nn.Module, rank: int = 0) -> Task:
        refuse_mixing(cfg, cfg.loss, "self-learning, whose corrected labels are per sample,")
        _, head = last_pool_and_head(model)
        if head is None:
            raise ValueError(f"loss {cfg.loss!r} compares the features that enter the model's last linear "
                             f"layer, and {cfg.model} has none; use a ResNet, cnn or mobilenetv2")
        return cls(criterion, head, cfg.seed)

    def end_epoch(self, epoch: int, model: nn.Module) -> None:
        """After ``initial_epochs`` and every epoch then (not after the last): prototypes, then labels."""
        crit, data = self.criterion, self.data
        if epoch < crit.initial_epochs or epoch >= data.epochs:
            return
        head, device = self._head[0], data.labels.device
        features = InputOf(head)

        def feature(x: Tensor, idx: Tensor) -> Tensor:
            model(x)
            return features.take()

        try:
            prototypes, owner = self.prototypes(model, feature, epoch)

            def corrected(x: Tensor, idx: Tensor) -> Tensor:
                return class_similarity(feature(x, idx), prototypes, owner, crit.num_classes).argmax(1)

            labels = over_samples(model, data.source, data.train_index, data.eval_batch_size, corrected, 1,
                                  device)
        finally:
            features.handle.remove()
        crit.set_corrected(torch.as_tensor(data.train_index, device=device), labels[:, 0].round().long())

    def prototypes(self, model: nn.Module, feature, epoch: int):
        """``(prototypes (P, D), their classes (P,))`` from ``samples_per_class`` images a class."""
        crit, data = self.criterion, self.data
        device, width = data.labels.device, self._head[0].in_features
        noisy = data.labels.cpu().numpy()
        rng = np.random.default_rng((self.seed, epoch, 0x5E1F))
        chosen, owner = [], []
        for c in range(crit.num_classes):
            members = data.train_index[noisy[data.train_index] == c]
            if not len(members):
                continue
            pick = np.sort(rng.choice(members, size=min(crit.samples_per_class, len(members)), replace=False))
            feats = over_samples(model, data.source, pick, data.eval_batch_size, feature, width, device)
            keep = select_prototypes(feats, crit.prototypes, crit.density_quantile, crit.similarity_max)
            chosen.append(feats.index_select(0, keep.to(device)))
            owner += [c] * len(keep)
        return torch.cat(chosen), torch.as_tensor(owner, device=device)
