"""Two-view self-distillation (Xu et al.): both augmented views of a batch in one forward of 2B."""

from __future__ import annotations

from typing import Any, Dict, Optional

from torch import Tensor, nn

from ..data.batches import augmentation_ops
from ..losses.protocol import views_of
from .base import Task, refuse_mixing


class TwoViewTask(Task):
    """``task(model, x, y, idx)`` for ``x`` ``(2B, ...)``: view ``a`` of the ``B`` images, then view ``b``.

    The batch source draws both views with the epoch's augmentation generator, one after the
    other, so a resumed epoch replays the second view too. One forward of the concatenated
    batch (batch norm sees both views), then ``criterion(z_a, z_b, y)``
    (:class:`~ols.losses.ddgsd.DataDistortionSelfDistillation`). ``logits`` are view ``a``'s.

    Args:
        criterion: a loss with ``views = 2``.
        feature_layer: the module whose *input* is the penultimate feature (the
            classifier head); its features are passed on when the loss has ``mu > 0``.
    """

    views = 2  # the run's data source draws both, so a resumed epoch replays them

    @classmethod
    def wanted(cls, cfg: Any, criterion: nn.Module, model: nn.Module) -> bool:
        return views_of(criterion) > 1

    @classmethod
    def from_settings(cls, cfg: Any, criterion: nn.Module, model: nn.Module, rank: int = 0) -> Task:
        refuse_mixing(cfg, cfg.loss)
        if not augmentation_ops(cfg.dataset, cfg.augment):
            auto = f" (none for {cfg.dataset})" if cfg.augment == "auto" else ""
            which = f"--augment {cfg.augment}{auto}"
            raise ValueError(f"loss {cfg.loss!r} learns from two augmented views of each image, and {which} "
                             "makes them identical; use e.g. --augment crop,flip")
        return cls(criterion, getattr(getattr(model, "net", None), "head", None))

    def __init__(self, criterion: nn.Module, feature_layer: Optional[nn.Module] = None):
        super().__init__()
        self.criterion = criterion
        self._features: Optional[Tensor] = None
        if getattr(criterion, "mu", 0):
            if feature_layer is None:
                raise ValueError("--loss-arg mu > 0 needs the penultimate features, and this model has no "
                                 "linear head to read them from; use a ResNet or the cnn, or mu=0")
            feature_layer.register_forward_pre_hook(self._keep_features)

    def _keep_features(self, module: nn.Module, inputs) -> None:
        self._features = inputs[0]

    def forward(self, model: nn.Module, x: Tensor, y: Tensor, idx: Tensor) -> Dict[str, Tensor]:
        logits = model(x)  # (2B, K)
        if logits.shape[0] != 2 * y.shape[0]:
            raise ValueError(f"a two-view batch holds 2B = {2 * y.shape[0]} images, got {logits.shape[0]}")
        z_a, z_b = logits.chunk(2)
        feats = {}
        if self._features is not None:
            h_a, h_b = self._features.flatten(1).chunk(2)
            feats, self._features = {"features_a": h_a, "features_b": h_b}, None
        return {"loss": self.criterion(z_a, z_b, y, **feats), "logits": z_a}
