"""The detector's parts against hand-worked values: box coding, anchor assignment, the ignore rule,
GIoU and NMS, the losses, and one training step."""

import math

import pytest
import torch

from ols.detection import DetectionOLS
from ols.detection.boxes import batched_nms, giou, nms, pairwise_iou
from ols.detection.yolo import (
    STRIDES,
    YOLOv3MobileNetV2,
    anchors_px,
    assign,
    decode,
    detect,
    padded_truth,
    yolo_loss,
)

K = 5


def zeros_outputs(size, batch=1):
    return [torch.zeros(batch, 3, size // s, size // s, 5 + K) for s in STRIDES]


def test_decode_places_each_anchor_at_its_cell_centre():
    size = 64
    boxes, obj, cls = decode(zeros_outputs(size), size)
    assert boxes.shape == (1, 3 * (64 + 16 + 4), 4) and cls.shape == (1, 84 * 3, K)
    # t = 0: centre (0.5 + cell) * stride, size = the anchor; scale 0 (stride 8), anchor 1, cell (x=2, y=1)
    a = anchors_px(size)[0, 1]
    position = (1 * 8 + 1) * 8 + 2
    cx, cy = 2.5 * 8, 1.5 * 8
    torch.testing.assert_close(boxes[0, position], torch.stack([cx - a[0] / 2, cy - a[1] / 2, cx + a[0] / 2,
                                                                cy + a[1] / 2]))
    assert float(anchors_px(416)[2, 2, 0]) == 373.0  # YOLOv3's anchors at 416


def test_assignment_by_shape_iou_and_cell():
    size = 416
    # a box the exact shape of scale 1's anchor 0 (30 x 61), centred in cell (3, 4) of the 26 x 26 grid
    cx, cy = 3.5 * 16, 4.5 * 16
    box = torch.tensor([[cx - 15, cy - 30.5, cx + 15, cy + 30.5]])
    pos = assign([{"boxes": box, "labels": torch.tensor([2])}], size)
    anchors = anchors_px(size)
    w, h = 30.0, 61.0
    inter = torch.minimum(anchors[..., 0], torch.tensor(w)) * torch.minimum(anchors[..., 1], torch.tensor(h))
    iou = inter / (w * h + anchors.prod(-1) - inter)
    want = sorted((s, a) for s, a in (iou > 0.3).nonzero().tolist())
    assert (1, 0) in want
    offsets = [0, 3 * 52 * 52, 3 * 52 * 52 + 3 * 26 * 26]
    expected = []
    for s, a in want:
        stride, grid = STRIDES[s], size // STRIDES[s]
        expected.append(offsets[s] + (a * grid + int(cy // stride)) * grid + int(cx // stride))
    assert sorted(pos["position"].tolist()) == sorted(expected) and pos["labels"].tolist() == [2] * len(want)
    # a box no anchor fits above 0.3 still gets its best one
    thin = torch.tensor([[100.0, 100.0, 400.0, 103.0]])
    pos = assign([{"boxes": thin, "labels": torch.tensor([1])}], size)
    assert len(pos["position"]) == 1


def test_giou_and_iou_by_hand():
    a = torch.tensor([[0.0, 0, 2, 2]])
    b = torch.tensor([[1.0, 1, 3, 3]])
    # IoU 1/7; hull 3 x 3 = 9, union 7: GIoU = 1/7 - 2/9
    torch.testing.assert_close(giou(a, b), torch.tensor([1 / 7 - 2 / 9]))
    torch.testing.assert_close(pairwise_iou(a, b), torch.tensor([[1 / 7]]))
    far = torch.tensor([[10.0, 10, 12, 12]])
    torch.testing.assert_close(giou(a, far), torch.tensor([0 - (144 - 8) / 144]))


def test_nms_by_hand_and_per_class():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 9]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    # box 3 (0.95) suppresses box 0 (IoU 0.9) and box 1 (IoU 81/119 = 0.68 > 0.5); box 2 is apart
    assert nms(boxes, scores, 0.5).tolist() == [3, 2]
    assert nms(boxes, scores, 0.7).tolist() == [3, 1, 2]
    labels = torch.tensor([0, 1, 0, 0])
    assert sorted(batched_nms(boxes, scores, labels, 0.5).tolist()) == [1, 2, 3]  # box 1 is another class


def test_losses_by_hand_on_zero_outputs():
    """All outputs 0: every decoded box is its anchor, objectness 1/2, class sigmoids 1/2."""
    size = 64
    outs = zeros_outputs(size)
    target = {"boxes": torch.tensor([[20.0, 10, 40, 34]]), "labels": torch.tensor([3])}
    pos = assign([target], size)
    losses = yolo_loss(outs, pos, padded_truth([target]), size, DetectionOLS(K, alpha=1.0, reduction="sum"))
    boxes, _, _ = decode(outs, size)
    pred = boxes[0, pos["position"]]
    gt = pos["boxes"]
    scale = 2 - 20 * 24 / 64**2
    torch.testing.assert_close(losses["box"], (scale * (1 - giou(pred, gt))).sum())
    # classes: BCE(0, onehot) = log 2 per entry, K entries per positive
    torch.testing.assert_close(losses["cls"], torch.tensor(len(pos["position"]) * K * math.log(2)))
    # objectness: log 2 for every position not ignored (positives + negatives under IoU 0.5)
    best = pairwise_iou(boxes[0], gt[:1]).squeeze(1)
    counted = int(((best < 0.5) | torch.isin(torch.arange(len(best)), pos["position"])).sum())
    torch.testing.assert_close(losses["obj"], torch.tensor(counted * math.log(2)))


def test_model_shapes_a_training_step_and_detections():
    torch.manual_seed(0)
    model = YOLOv3MobileNetV2(K, in_channels=1, width=0.25)
    x = torch.rand(2, 1, 64, 64)
    outs = model(x)
    assert [tuple(o.shape) for o in outs] == [(2, 3, 8, 8, 10), (2, 3, 4, 4, 10), (2, 3, 2, 2, 10)]
    _, obj, _ = decode(outs, 64)
    assert torch.allclose(torch.sigmoid(obj), torch.full_like(obj, 0.01), atol=0.02)  # the objectness prior
    targets = [{"boxes": torch.tensor([[4.0, 4, 30, 30]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[30.0, 20, 60, 50], [2, 2, 12, 12]]), "labels": torch.tensor([0, 4])}]
    crit = DetectionOLS(K, reduction="sum")
    loss = yolo_loss(outs, assign(targets, 64), padded_truth(targets), 64, crit)["loss"]
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    crit.step()
    assert crit.store.num_updates == 1
    found = detect([o.detach() for o in outs], 64, score_threshold=0.0)
    assert len(found) == 2 and found[0]["boxes"].shape[1] == 4 and len(found[0]["scores"]) <= 100
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.rand(1, 1, 50, 50))
