"""OLS in torchvision's detectors: Faster R-CNN's box head, RetinaNet's and FCOS's classification heads.

::

    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(weights=None, num_classes=21)
    ols = use_ols(model, alpha=0.5)      # the class loss is now OLS; train as before
    ...                                  # at each epoch's end:
    ols.step()

* **Faster R-CNN** (softmax over ``K + 1`` with the background at 0): the sampled RoIs'
  classification loss becomes :class:`~ols.detection.soft_labels.DetectionOLS`'s softmax head
  (mean over the RoIs, as torchvision's cross-entropy); the box loss is torchvision's own
  (smooth L1 with ``beta = 1/9`` on the foreground RoIs' class boxes, summed and divided by the
  number of RoIs), recomputed here beside it.
* **RetinaNet** and **FCOS** (per-class sigmoid focal loss): the foreground anchors' one-hot targets become
  ``alpha * onehot + (1 - alpha) * S[c]`` inside the same focal loss (focal is not affine in its
  target, so this is the focal loss of the soft target, not a mixture of two focal losses);
  background anchors keep all-zero targets (RetinaNet leaves out the anchors between its IoU
  thresholds, as torchvision does). The statistic counts the foreground anchors (sigmoids
  renormalised, as for the sigmoid head). FCOS's box and centre-ness losses are its own.

The soft-label state is registered on the model (``roi_heads.ols``,
``head.classification_head.ols`` or ``head.ols``), so it is saved with ``model.state_dict()``.
Needs torchvision (the ``vision`` extra), imported when called.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .soft_labels import DetectionOLS


def _faster_rcnn_heads(base: type) -> type:
    from torchvision.models.detection import roi_heads as module

    class OLSRoIHeads(base):  # type: ignore[misc, valid-type]
        """torchvision's ``RoIHeads`` with OLS as the classification loss (see the module docstring)."""

        def forward(self, *args: Any, **kwargs: Any):
            original = module.fastrcnn_loss  # looked up by RoIHeads.forward when it is called
            module.fastrcnn_loss = self._ols_loss
            try:
                return super().forward(*args, **kwargs)
            finally:
                module.fastrcnn_loss = original

        def _ols_loss(self, class_logits: Tensor, box_regression: Tensor, labels, regression_targets):
            labels, targets = torch.cat(labels), torch.cat(regression_targets)
            classification = self.ols(class_logits, labels)
            foreground = torch.where(labels > 0)[0]
            boxes = box_regression.reshape(class_logits.shape[0], -1, 4)[foreground, labels[foreground]]
            box = F.smooth_l1_loss(boxes, targets[foreground], beta=1 / 9, reduction="sum") / labels.numel()
            return classification, box

    return OLSRoIHeads


def _retinanet_head(base: type) -> type:
    from torchvision.ops import sigmoid_focal_loss

    class OLSClassificationHead(base):  # type: ignore[misc, valid-type]
        """torchvision's RetinaNet classification head with OLS's soft targets in its focal loss."""

        BETWEEN_THRESHOLDS = -2  # torchvision's Matcher label of the anchors left out

        def compute_loss(self, targets, head_outputs, matched_idxs) -> Tensor:
            losses = []
            for target, logits, matched in zip(targets, head_outputs["cls_logits"], matched_idxs):
                foreground = matched >= 0
                n_fg = foreground.sum()
                labels = target["labels"][matched[foreground]]
                if self.ols.training and torch.is_grad_enabled():
                    self.ols.observe(logits[foreground], labels)
                soft = torch.zeros_like(logits, dtype=torch.float32)
                soft[foreground] = self.ols.soft_targets(labels)
                valid = matched != self.BETWEEN_THRESHOLDS
                loss = sigmoid_focal_loss(logits[valid].float(), soft[valid], reduction="sum")
                losses.append(loss / torch.clamp(n_fg, min=1))
            return sum(losses) / len(targets)

    return OLSClassificationHead


def _fcos_head(base: type) -> type:
    from torchvision.ops import sigmoid_focal_loss

    class OLSFCOSHead(base):  # type: ignore[misc, valid-type]
        """torchvision's FCOS head with OLS's soft targets in its classification (focal) loss."""

        def compute_loss(self, targets, head_outputs, anchors, matched_idxs):
            losses = super().compute_loss(targets, head_outputs, anchors, matched_idxs)  # boxes, centre-ness
            logits = head_outputs["cls_logits"]  # (N, HWA, K)
            foreground = torch.stack([m >= 0 for m in matched_idxs])  # (N, HWA)
            labels = torch.cat([t["labels"][m[m >= 0]] for t, m in zip(targets, matched_idxs)])
            if self.ols.training and torch.is_grad_enabled():
                self.ols.observe(logits[foreground], labels)
            soft = torch.zeros_like(logits, dtype=torch.float32)
            soft[foreground] = self.ols.soft_targets(labels)
            loss = sigmoid_focal_loss(logits.float(), soft, reduction="sum")
            losses["classification"] = loss / torch.clamp(foreground.sum(), min=1)
            return losses

    return OLSFCOSHead


def use_ols(model: nn.Module, alpha: float = 0.5, **kwargs: Any) -> DetectionOLS:
    """Put OLS into a torchvision Faster R-CNN, RetinaNet or FCOS in place; returns its :class:`DetectionOLS`.

    ``kwargs`` go to :class:`DetectionOLS` (``init``, ``statistic`` for RetinaNet). Call ``step()``
    on the returned module at each epoch's end.
    """
    try:
        from torchvision.models.detection.fcos import FCOSHead
        from torchvision.models.detection.retinanet import RetinaNetClassificationHead
        from torchvision.models.detection.roi_heads import RoIHeads
    except Exception as err:  # not installed, or built for another torch
        raise ImportError(
            "ols.detection.torchvision needs torchvision built for your torch: pip install "
            f"'ols[vision]' ({type(err).__name__}: {err})"
        ) from None
    heads = getattr(model, "roi_heads", None)
    if isinstance(heads, RoIHeads):
        k = heads.box_predictor.cls_score.out_features - 1  # K + 1 columns, background 0
        ols = DetectionOLS(k, alpha=alpha, head="softmax", background=0, **kwargs)
        heads.__class__ = _faster_rcnn_heads(type(heads))
        heads.add_module("ols", ols.to(next(model.parameters()).device))
        return ols
    head = getattr(getattr(model, "head", None), "classification_head", None)
    if isinstance(head, RetinaNetClassificationHead):
        ols = DetectionOLS(head.num_classes, alpha=alpha, head="sigmoid", **kwargs)
        head.__class__ = _retinanet_head(type(head))
        head.add_module("ols", ols.to(next(model.parameters()).device))
        return ols
    head = getattr(model, "head", None)
    if isinstance(head, FCOSHead):
        ols = DetectionOLS(head.classification_head.num_classes, alpha=alpha, head="sigmoid", **kwargs)
        head.__class__ = _fcos_head(type(head))
        head.add_module("ols", ols.to(next(model.parameters()).device))
        return ols
    raise ValueError(
        f"use_ols takes a torchvision Faster R-CNN (roi_heads), RetinaNet (head."
        f"classification_head) or FCOS (head), got a {type(model).__name__}; for your own detector call "
        "DetectionOLS on the positives' class logits"
    )
