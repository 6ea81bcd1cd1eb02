"""use_ols on torchvision's Faster R-CNN and RetinaNet (run in the vision environment): with alpha = 1
each loss equals torchvision's own; with alpha < 1 the soft labels are used, learned and saved."""

import copy

import pytest
import torch

from conftest import vision_or_skip

K = 3


def test_faster_rcnn_class_loss_is_ols_and_the_box_loss_is_unchanged():
    (tv,) = vision_or_skip("torchvision")
    from ols.detection.torchvision import use_ols

    torch.manual_seed(0)
    base = tv.models.detection.fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, weights_backbone=None, num_classes=K + 1, min_size=128, max_size=128
    )
    hard, soft = copy.deepcopy(base), copy.deepcopy(base)
    use_ols(hard, alpha=1.0)
    ols = use_ols(soft, alpha=0.5)
    images = [torch.rand(3, 128, 128) for _ in range(2)]
    targets = [
        {"boxes": torch.tensor([[10.0, 10, 60, 70], [70, 20, 120, 90]]), "labels": torch.tensor([1, 3])},
        {"boxes": torch.tensor([[5.0, 30, 100, 110]]), "labels": torch.tensor([2])},
    ]

    def losses(model):
        model.train()
        torch.manual_seed(1)  # the same RoI sampling
        return model(images, targets)

    want, got, smoothed = losses(base), losses(hard), losses(soft)
    torch.testing.assert_close(got["loss_classifier"], want["loss_classifier"])
    torch.testing.assert_close(got["loss_box_reg"], want["loss_box_reg"])
    torch.testing.assert_close(smoothed["loss_box_reg"], want["loss_box_reg"])
    assert not torch.allclose(smoothed["loss_classifier"], want["loss_classifier"])
    assert "roi_heads.ols.store.soft_labels" in soft.state_dict() and ols.soft_labels.shape == (K, K)
    smoothed["loss_classifier"].backward()
    ols.step()
    assert int(ols.store.num_updates) == 1


def test_retinanet_focal_loss_with_soft_targets():
    vision_or_skip("torchvision")
    from torchvision.models.detection.retinanet import RetinaNetClassificationHead
    from torchvision.ops import sigmoid_focal_loss

    from ols.detection.soft_labels import DetectionOLS
    from ols.detection.torchvision import _retinanet_head

    torch.manual_seed(0)
    head = RetinaNetClassificationHead(in_channels=8, num_anchors=2, num_classes=K)
    logits = torch.randn(2, 12, K) * 3
    matched = [torch.tensor([-1, 0, 1, -2, 0, -1, -1, 1, -2, -1, 0, -1]), torch.full((12,), -1)]
    targets = [{"labels": torch.tensor([2, 0])}, {"labels": torch.zeros(0, dtype=torch.long)}]
    want = head.compute_loss(targets, {"cls_logits": logits}, matched)
    ours = copy.deepcopy(head)
    ours.__class__ = _retinanet_head(RetinaNetClassificationHead)
    ours.add_module("ols", DetectionOLS(K, alpha=1.0))
    torch.testing.assert_close(ours.compute_loss(targets, {"cls_logits": logits}, matched), want)
    # alpha 0.5 with a hand-set S: the focal loss of alpha * onehot + (1 - alpha) * S[c] on the valid anchors
    ours.ols = DetectionOLS(K, alpha=0.5)
    S = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8]])
    ours.ols.store.soft_labels.copy_(S)
    got = ours.compute_loss(targets, {"cls_logits": logits}, matched)
    fg = matched[0] >= 0
    labels = targets[0]["labels"][matched[0][fg]]
    q = torch.zeros(12, K)
    q[fg] = 0.5 * torch.nn.functional.one_hot(labels, K).float() + 0.5 * S[labels]
    valid = matched[0] != -2
    first = sigmoid_focal_loss(logits[0][valid], q[valid], reduction="sum") / fg.sum()
    second = sigmoid_focal_loss(logits[1], torch.zeros(12, K), reduction="sum") / 1
    torch.testing.assert_close(got, (first + second) / 2)


def test_anything_else_is_refused_with_one_line():
    vision_or_skip("torchvision")
    from ols.detection.torchvision import use_ols

    with pytest.raises(ValueError, match="use_ols takes a torchvision Faster R-CNN"):
        use_ols(torch.nn.Linear(2, 2))


def test_fcos_focal_loss_with_soft_targets_and_its_own_box_losses():
    vision_or_skip("torchvision")
    from torchvision.models.detection.fcos import FCOSHead
    from torchvision.ops import sigmoid_focal_loss

    from ols.detection.soft_labels import DetectionOLS
    from ols.detection.torchvision import _fcos_head

    torch.manual_seed(0)
    head = FCOSHead(in_channels=32, num_anchors=1, num_classes=K)
    n = 10
    outputs = {
        "cls_logits": torch.randn(2, n, K) * 2,
        "bbox_regression": torch.rand(2, n, 4),
        "bbox_ctrness": torch.randn(2, n, 1),
    }
    anchors = [torch.tensor([[i * 8.0, 0, i * 8.0 + 8, 8] for i in range(n)])] * 2
    targets = [
        {"boxes": torch.tensor([[0.0, 0, 20, 10], [30, 0, 60, 10]]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.tensor([[10.0, 0, 40, 10]]), "labels": torch.tensor([0])},
    ]
    matched = [
        torch.tensor([0, 0, -1, -1, 1, 1, 1, -1, -1, -1]),
        torch.tensor([-1, 0, 0, 0, -1, -1, -1, -1, -1, -1]),
    ]
    want = head.compute_loss(targets, outputs, anchors, matched)
    ours = copy.deepcopy(head)
    ours.__class__ = _fcos_head(FCOSHead)
    ours.add_module("ols", DetectionOLS(K, alpha=1.0))
    got = ours.compute_loss(targets, outputs, anchors, matched)
    for key in want:
        torch.testing.assert_close(got[key], want[key])
    ours.ols = DetectionOLS(K, alpha=0.5)  # S uniform: targets 0.5 * onehot + 1/6 on the foreground
    got = ours.compute_loss(targets, outputs, anchors, matched)
    q = torch.zeros(2, n, K)
    for b, (t, m) in enumerate(zip(targets, matched)):
        for i in range(n):
            if m[i] >= 0:
                q[b, i] = 0.5 * torch.nn.functional.one_hot(t["labels"][m[i]], K).float() + 0.5 / K
    torch.testing.assert_close(
        got["classification"], sigmoid_focal_loss(outputs["cls_logits"], q, reduction="sum") / 8
    )
    torch.testing.assert_close(got["bbox_regression"], want["bbox_regression"])


def test_the_plain_torch_nms_equals_torchvision_s(monkeypatch):
    vision_or_skip("torchvision")
    import sys

    from torchvision.ops import batched_nms as tv_batched_nms
    from torchvision.ops import nms as tv_nms

    from ols.detection.boxes import batched_nms, nms

    monkeypatch.setitem(sys.modules, "torchvision.ops", None)  # batched_nms takes its plain-torch path

    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        xy = torch.rand(60, 2, generator=g) * 100
        boxes = torch.cat([xy, xy + 5 + torch.rand(60, 2, generator=g) * 40], dim=1)
        scores = torch.rand(60, generator=g)
        labels = torch.randint(0, 3, (60,), generator=g)
        for threshold in (0.3, 0.5, 0.7):
            assert nms(boxes, scores, threshold).tolist() == tv_nms(boxes, scores, threshold).tolist()
            assert sorted(batched_nms(boxes, scores, labels, threshold).tolist()) == sorted(
                tv_batched_nms(boxes, scores, labels, threshold).tolist()
            )
