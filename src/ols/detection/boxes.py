"""Box arithmetic in plain torch: IoU, GIoU and non-maximum suppression (``(N, 4)`` xyxy boxes)."""

from __future__ import annotations

import torch
from torch import Tensor


def area(boxes: Tensor) -> Tensor:
    """``(N,)`` areas of ``(N, 4)`` xyxy boxes (0 for an empty one)."""
    return (boxes[:, 2] - boxes[:, 0]).clamp_min(0) * (boxes[:, 3] - boxes[:, 1]).clamp_min(0)


def pairwise_iou(a: Tensor, b: Tensor) -> Tensor:
    """``(N, M)`` IoU of ``a`` ``(N, 4)`` and ``b`` ``(M, 4)``."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp_min(0).prod(dim=2)
    union = area(a)[:, None] + area(b)[None, :] - inter
    return inter / union.clamp_min(1e-9)


def giou(a: Tensor, b: Tensor) -> Tensor:
    r"""``(N,)`` generalised IoU of matching rows (Rezatofighi et al., CVPR 2019).

    :math:`\mathrm{IoU} - |C \setminus (A \cup B)| / |C|`, ``C`` the smallest box around both.
    """
    lt = torch.maximum(a[:, :2], b[:, :2])
    rb = torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp_min(0).prod(dim=1)
    union = area(a) + area(b) - inter
    iou = inter / union.clamp_min(1e-9)
    hull = (torch.maximum(a[:, 2:], b[:, 2:]) - torch.minimum(a[:, :2], b[:, :2])).clamp_min(0).prod(dim=1)
    return iou - (hull - union) / hull.clamp_min(1e-9)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Indices of the boxes greedy NMS keeps, highest score first (``torchvision.ops.nms``'s contract).

    A box is dropped when its IoU with a kept, higher-scoring box is above ``iou_threshold``.
    Plain torch: one ``(N, N)`` IoU matrix, then a loop over the ranked boxes on the host (this is
    evaluation code, after the model).
    """
    order = torch.argsort(scores, descending=True, stable=True)
    iou = pairwise_iou(boxes[order], boxes[order]).cpu()
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long, device=order.device)]


def batched_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float) -> Tensor:
    """NMS within each label: boxes of different labels never suppress each other.

    torchvision's ``batched_nms`` when torchvision imports (faster, the same result), else
    :func:`nms` on boxes shifted apart by label.
    """
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    try:
        from torchvision.ops import batched_nms as tv_batched_nms
    except Exception:  # not installed, or built for another torch
        tv_batched_nms = None
    if tv_batched_nms is not None:
        return tv_batched_nms(boxes.float(), scores.float(), labels, iou_threshold)
    shift = labels.to(boxes.dtype)[:, None] * (boxes.max() - boxes.min() + 1)
    return nms(boxes + shift, scores, iou_threshold)
