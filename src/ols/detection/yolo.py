r"""A compact YOLOv3-style detector on MobileNetV2, the host of the paper's Table X.

The paper trains "YOLO with a MobileNetV2 backbone" on VOC; its likely codebase (argusswift's
Mobilenet-YOLO; ``../shared/research/self-distillation-and-detection.md`` §3.1) is a YOLOv3
layout. This one is written from the YOLOv3 paper (Redmon and Farhadi, 2018) and that code's
stated rules, in plain torch:

* **Backbone:** MobileNetV2 (Sandler et al., Table 2, ImageNet strides) from
  :mod:`ols.models.mobilenetv2`'s blocks, channels scaled by ``width``; feature maps at strides
  8, 16 and 32.
* **Neck and heads:** a YOLOv3 top-down path (1x1 reduce, upsample x2, concatenate, a
  depthwise-separable block) and, per scale, ``A = 3`` anchors x ``(4 box + 1 objectness + K
  classes)`` outputs.
* **Anchors:** YOLOv3's nine COCO anchors, given in pixels of a 416-pixel input and scaled
  to the input size (so they follow multi-scale training).
* **Assignment** (argusswift ``utils/datasets.py``): a ground-truth box is a positive for
  every anchor, at every scale, whose shape IoU with it (both centred) is above 0.3, in the cell
  holding its centre; a box with no such anchor takes its best one.
* **Box coding** (YOLOv3): ``x = (sigmoid(t_x) + c_x) * stride``, ``w = anchor_w * exp(t_w)``.
* **Losses**, summed over the batch and divided by its size (argusswift's normalisation):
  boxes ``(2 - w h / S^2) * (1 - GIoU)`` on positives; objectness BCE on positives (target 1)
  and on the negatives whose decoded box overlaps no ground truth by IoU 0.5 or more (YOLOv3's
  ignore rule; plain BCE, not argusswift's focal form); classes, on positives only, by a
  :class:`~ols.detection.soft_labels.DetectionOLS` with the sigmoid head: hard labels
  (``alpha = 1``), label smoothing (``onehot (1 - delta) + delta / K``, argusswift's
  ``delta = 0.01``: a frozen uniform ``S`` at ``alpha = 1 - delta``) or OLS.
"""

from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.mobilenetv2 import InvertedResidual, conv_bn_relu6
from .boxes import batched_nms, giou, pairwise_iou

#: YOLOv3's anchors (w, h) in pixels of a 416-pixel input, per scale: strides 8, 16, 32
ANCHORS = (
    ((10, 13), (16, 30), (33, 23)),
    ((30, 61), (62, 45), (59, 119)),
    ((116, 90), (156, 198), (373, 326)),
)
STRIDES = (8, 16, 32)
#: (expansion, channels, repeats, stride): MobileNetV2's Table 2 with ImageNet strides
SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
#: the outputs of these stages feed the neck: strides 8, 16, 32
TAPS = (2, 4, 6)
POSITIVE_IOU, IGNORE_IOU = 0.3, 0.5


def _ch(c: int, width: float) -> int:
    return max(8, int(round(c * width / 8)) * 8)


def _block(c_in: int, c_out: int) -> nn.Sequential:
    """1x1 to ``c_out``, a depthwise 3x3, 1x1: the neck's depthwise-separable "conv set"."""
    return nn.Sequential(
        conv_bn_relu6(c_in, c_out, 1),
        conv_bn_relu6(c_out, c_out, 3, groups=c_out),
        conv_bn_relu6(c_out, c_out, 1),
    )


class YOLOv3MobileNetV2(nn.Module):
    """``forward(x (B, C, S, S)) -> [(B, A, S/8, S/8, 5 + K), (B, A, S/16, ...), (B, A, S/32, ...)]``.

    Raw outputs: ``t_x, t_y, t_w, t_h``, the objectness logit, then ``K`` class logits. ``S`` must
    be a multiple of 32.

    Args:
        num_classes: ``K``.
        in_channels: image channels (3 for VOC, 1 for the canvas set).
        width: channel multiplier of the backbone and neck (1.0: MobileNetV2 as published).
    """

    def __init__(self, num_classes: int, in_channels: int = 3, width: float = 1.0):
        super().__init__()
        self.num_classes, self.num_anchors = num_classes, 3
        c = _ch(32, width)
        stages: List[nn.Module] = []
        layers: List[nn.Module] = [conv_bn_relu6(in_channels, c, 3, stride=2)]
        taps = []
        for t, c_out, n, s in SETTINGS:
            c_out = _ch(c_out, width)
            for i in range(n):
                layers.append(InvertedResidual(c, c_out, s if i == 0 else 1, t))
                c = c_out
            stages.append(nn.Sequential(*layers))
            layers = []
            taps.append(c)
        self.stages = nn.ModuleList(stages)
        c3, c4, c5 = (taps[i] for i in TAPS)
        n5, n4, n3 = _ch(256, width), _ch(128, width), _ch(64, width)
        self.neck5 = _block(c5, n5)
        self.reduce5 = conv_bn_relu6(n5, n4, 1)
        self.neck4 = _block(c4 + n4, n4)
        self.reduce4 = conv_bn_relu6(n4, n3, 1)
        self.neck3 = _block(c3 + n3, n3)
        out = self.num_anchors * (5 + num_classes)
        self.heads = nn.ModuleList(
            [nn.Sequential(conv_bn_relu6(n, n, 3, groups=n), nn.Conv2d(n, out, 1)) for n in (n3, n4, n5)]
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
        for head in self.heads:  # small outputs at first, objectness at p = 0.01 (a detector's usual prior)
            nn.init.normal_(head[-1].weight, std=0.01)
            bias = head[-1].bias.detach().view(self.num_anchors, 5 + num_classes)
            bias.zero_()
            bias[:, 4] = math.log(0.01 / 0.99)

    def forward(self, x: Tensor) -> List[Tensor]:
        if x.shape[-1] % 32 or x.shape[-2] % 32:
            raise ValueError(
                f"the detector takes images whose sides are multiples of 32, got {tuple(x.shape[-2:])}"
            )
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        c3, c4, c5 = (feats[i] for i in TAPS)
        p5 = self.neck5(c5)
        p4 = self.neck4(torch.cat([F.interpolate(self.reduce5(p5), scale_factor=2.0), c4], dim=1))
        p3 = self.neck3(torch.cat([F.interpolate(self.reduce4(p4), scale_factor=2.0), c3], dim=1))
        outs = []
        for head, p in zip(self.heads, (p3, p4, p5)):
            y = head(p)  # (B, A * (5 + K), H, W)
            b, _, h, w = y.shape
            outs.append(y.view(b, self.num_anchors, 5 + self.num_classes, h, w).permute(0, 1, 3, 4, 2))
        return outs


def anchors_px(size: int, device=None) -> Tensor:
    """``(3, 3, 2)`` anchors (w, h) in pixels of a ``size``-pixel input, per scale."""
    return torch.tensor(ANCHORS, dtype=torch.float32, device=device) * (size / 416.0)


def decode(outputs: Sequence[Tensor], size: int) -> Tuple[Tensor, Tensor, Tensor]:
    """``(boxes (B, N, 4) xyxy px, objectness logits (B, N), class logits (B, N, K))`` over all scales."""
    boxes, obj, cls = [], [], []
    anchors = anchors_px(size, outputs[0].device)
    for out, stride, anchor in zip(outputs, STRIDES, anchors):
        b, a, h, w, _ = out.shape
        gy, gx = torch.meshgrid(
            torch.arange(h, device=out.device), torch.arange(w, device=out.device), indexing="ij"
        )
        t = out.float()
        cx = (torch.sigmoid(t[..., 0]) + gx) * stride
        cy = (torch.sigmoid(t[..., 1]) + gy) * stride
        bw = anchor[:, 0].view(1, a, 1, 1) * torch.exp(t[..., 2].clamp(max=6.0))
        bh = anchor[:, 1].view(1, a, 1, 1) * torch.exp(t[..., 3].clamp(max=6.0))
        boxes.append(
            torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=-1).reshape(b, -1, 4)
        )
        obj.append(out[..., 4].reshape(b, -1))
        cls.append(out[..., 5:].reshape(b, -1, out.shape[-1] - 5))
    return torch.cat(boxes, 1), torch.cat(obj, 1), torch.cat(cls, 1)


def assign(targets: Sequence[Dict[str, Tensor]], size: int) -> Dict[str, Tensor]:
    """The positives of a batch, on the host from the host-side ground truth (no device read).

    Returns flat indices into :func:`decode`'s ``N`` positions per image: ``image (P,)``,
    ``position (P,)``, and their ``boxes (P, 4)`` and ``labels (P,)``. A slot claimed by two
    boxes keeps the later one (argusswift's rule).
    """
    anchors = anchors_px(size)  # (3, 3, 2)
    offsets, start = [], 0
    for stride in STRIDES:
        offsets.append(start)
        start += 3 * (size // stride) ** 2
    slots: Dict[Tuple[int, int], Tuple[Tensor, int]] = {}
    for b, target in enumerate(targets):
        for box, label in zip(target["boxes"].float(), target["labels"].tolist()):
            w, h = float(box[2] - box[0]), float(box[3] - box[1])
            if w <= 0 or h <= 0:
                continue
            cx, cy = float(box[0] + box[2]) / 2, float(box[1] + box[3]) / 2
            inter = torch.minimum(anchors[..., 0], torch.tensor(w)) * torch.minimum(
                anchors[..., 1], torch.tensor(h)
            )
            iou = inter / (w * h + anchors[..., 0] * anchors[..., 1] - inter)  # (3 scales, 3 anchors)
            chosen = (iou > POSITIVE_IOU).nonzero().tolist() or [list(divmod(int(iou.argmax()), 3))]
            for scale, a in chosen:
                stride, grid = STRIDES[scale], size // STRIDES[scale]
                gx, gy = min(int(cx // stride), grid - 1), min(int(cy // stride), grid - 1)
                position = offsets[scale] + (a * grid + gy) * grid + gx
                slots[(b, position)] = (box, label)
    keys = sorted(slots)
    return {
        "image": torch.tensor([k[0] for k in keys], dtype=torch.long),
        "position": torch.tensor([k[1] for k in keys], dtype=torch.long),
        "boxes": torch.stack([slots[k][0] for k in keys]) if keys else torch.zeros(0, 4),
        "labels": torch.tensor([slots[k][1] for k in keys], dtype=torch.long),
    }


def padded_truth(targets: Sequence[Dict[str, Tensor]]) -> Tuple[Tensor, Tensor]:
    """``(boxes (B, M, 4), valid (B, M))``: each image's ground truth padded to the batch's most."""
    m = max([len(t["boxes"]) for t in targets] + [1])
    boxes = torch.zeros(len(targets), m, 4)
    valid = torch.zeros(len(targets), m, dtype=torch.bool)
    for b, t in enumerate(targets):
        boxes[b, : len(t["boxes"])] = t["boxes"].float()
        valid[b, : len(t["boxes"])] = True
    return boxes, valid


def yolo_loss(
    outputs: Sequence[Tensor],
    positives: Dict[str, Tensor],
    truth: Tuple[Tensor, Tensor],
    size: int,
    class_loss: nn.Module,
) -> Dict[str, Tensor]:
    """``{"loss", "box", "obj", "cls"}`` of a batch (see the module docstring); device tensors only.

    ``positives`` from :func:`assign` and ``truth`` from :func:`padded_truth`, already on the
    outputs' device; ``class_loss`` a :class:`~ols.detection.soft_labels.DetectionOLS` (sigmoid
    head, ``reduction="sum"``).
    """
    boxes, obj, cls = decode(outputs, size)
    batch = obj.shape[0]
    img, pos = positives["image"], positives["position"]
    pred = boxes[img, pos]  # (P, 4)
    gt = positives["boxes"]
    scale = 2.0 - (gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1]) / float(size * size)
    box_loss = (scale * (1.0 - giou(pred, gt))).sum() / batch
    truth_boxes, valid = truth
    with torch.no_grad():  # YOLOv3's ignore rule: a negative that overlaps a ground truth enough is left out
        iou = torch.stack(
            [pairwise_iou(boxes[b].detach(), truth_boxes[b]) for b in range(batch)]
        )  # (B, N, M)
        best = torch.where(valid[:, None, :], iou, torch.zeros_like(iou)).amax(dim=2)
        target = torch.zeros_like(obj, dtype=torch.float32)
        target[img, pos] = 1.0
        weight = ((best < IGNORE_IOU) | (target > 0)).float()
    obj_loss = (
        F.binary_cross_entropy_with_logits(obj.float(), target, reduction="none") * weight
    ).sum() / batch
    cls_loss = class_loss(cls[img, pos], positives["labels"]) / batch
    return {
        "loss": box_loss + obj_loss + cls_loss,
        "box": box_loss.detach(),
        "obj": obj_loss.detach(),
        "cls": cls_loss.detach(),
    }


@torch.no_grad()
def detect(
    outputs: Sequence[Tensor],
    size: int,
    score_threshold: float = 0.01,
    iou_threshold: float = 0.45,
    max_detections: int = 100,
) -> List[Dict[str, Tensor]]:
    """Per image ``{"boxes" (D, 4), "scores" (D,), "labels" (D,)}``, the ``max_detections`` best.

    A detection's score is ``sigmoid(obj) * sigmoid(cls)``; those above ``score_threshold`` go
    through class-wise NMS.
    """
    boxes, obj, cls = decode(outputs, size)
    scores = torch.sigmoid(obj.float()).unsqueeze(-1) * torch.sigmoid(cls.float())  # (B, N, K)
    out = []
    for b in range(boxes.shape[0]):
        n, k = (scores[b] > score_threshold).nonzero(as_tuple=True)
        bx, sc = boxes[b][n].clamp(0, size), scores[b][n, k]
        keep = batched_nms(bx, sc, k, iou_threshold)[:max_detections]
        out.append({"boxes": bx[keep], "scores": sc[keep], "labels": k[keep]})
    return out
