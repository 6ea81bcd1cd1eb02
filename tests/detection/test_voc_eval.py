"""The VOC mAP on hand-checked cases (area and 11-point AP, difficult objects, duplicates), and a
cross-check against pycocotools' AP at IoU 0.5 where the two protocols agree."""

import numpy as np
import pytest
import torch

from ols.detection import average_precision, box_iou, evaluate_voc


def det(boxes, scores, labels):
    return {
        "boxes": np.asarray(boxes, float).reshape(-1, 4),
        "scores": np.asarray(scores, float),
        "labels": np.asarray(labels, int),
    }


def gt(boxes, labels, difficult=None):
    out = {"boxes": np.asarray(boxes, float).reshape(-1, 4), "labels": np.asarray(labels, int)}
    if difficult is not None:
        out["difficult"] = np.asarray(difficult, bool)
    return out


A, B, C = [0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]


def test_box_iou_by_hand():
    others = np.array([[5, 0, 15, 10.0], [0, 0, 10, 10], [20, 20, 21, 21]])
    iou = box_iou(np.array([[0, 0, 10, 10.0]]), others)
    np.testing.assert_allclose(iou, [[50 / 150, 1.0, 0.0]])


def test_one_hit_then_one_miss_over_two_objects():
    """2 objects, a true positive then a false positive: area AP 1/2, VOC07 AP 6/11 (t = 0 ... 0.5)."""
    dets = [det([A, C], [0.9, 0.8], [0, 0])]
    gts = [gt([A, B], [0, 0])]
    assert evaluate_voc(dets, gts)["map"] == pytest.approx(0.5)
    assert evaluate_voc(dets, gts, use_07_metric=True)["map"] == pytest.approx(6 / 11)


def test_precision_envelope_by_hand():
    """Ranked TP, FP, TP over 2 objects: recall 1/2, 1/2, 1; precision 1, 1/2, 2/3.
    Area: 1/2 * 1 + 1/2 * 2/3 = 5/6. 11-point: t <= 0.5 -> 1 (6 points), t > 0.5 -> 2/3 (5 points)."""
    dets = [det([A, C, B], [0.9, 0.8, 0.7], [0, 0, 0])]
    gts = [gt([A, B], [0, 0])]
    assert evaluate_voc(dets, gts)["ap"][0] == pytest.approx(5 / 6)
    assert evaluate_voc(dets, gts, use_07_metric=True)["ap"][0] == pytest.approx((6 + 5 * 2 / 3) / 11)
    np.testing.assert_allclose(average_precision(np.array([0.5, 0.5, 1.0]), np.array([1, 0.5, 2 / 3])), 5 / 6)


def test_duplicates_are_false_positives_and_difficult_objects_count_for_nothing():
    # a duplicate on A is a false positive: ranked TP, FP over 1 object -> AP 1 (recall 1 at precision 1)
    assert evaluate_voc([det([A, A], [0.9, 0.8], [0, 0])], [gt([A], [0])])["map"] == pytest.approx(1.0)
    # ... but ranked first it costs: FP can't come before its TP, so rank a miss, then the duplicate pair
    dets = [det([C, A, A], [0.95, 0.9, 0.8], [0, 0, 0])]
    assert evaluate_voc(dets, [gt([A], [0])])["map"] == pytest.approx(0.5)  # precision 1/2 at recall 1
    # a detection on a difficult object is neither: the same AP as without it; the object is not in npos
    gts = [gt([A, B], [0, 0], difficult=[False, True])]
    with_hit = evaluate_voc([det([B, A], [0.95, 0.9], [0, 0])], gts)
    without = evaluate_voc([det([A], [0.9], [0])], gts)
    assert with_hit["map"] == without["map"] == pytest.approx(1.0)
    # a class whose only object is difficult has no AP and stays out of the mean
    res = evaluate_voc([det([A, C], [0.9, 0.9], [0, 1])], [gt([A, C], [0, 1], difficult=[False, True])])
    assert res["ap"] == {0: pytest.approx(1.0)} and res["map"] == pytest.approx(1.0)


def test_iou_threshold_is_strict_and_classes_do_not_mix():
    half = [0, 0, 10, 5]  # IoU with A: 50 / 100 = 0.5 exactly
    assert evaluate_voc([det([half], [1.0], [0])], [gt([A], [0])])["map"] == 0.0  # devkit: ovmax > 0.5
    assert evaluate_voc([det([half], [1.0], [0])], [gt([A], [0])], iou_threshold=0.49)["map"] == 1.0
    res = evaluate_voc([det([A, B], [0.9, 0.9], [1, 0])], [gt([A, B], [0, 1])], class_names=["cat", "dog"])
    assert res == {"map": 0.0, "ap": {"cat": 0.0, "dog": 0.0}}


def test_tensors_and_empty_images_are_accepted():
    dets = [
        {
            "boxes": torch.tensor([A], dtype=torch.float32),
            "scores": torch.tensor([0.5]),
            "labels": torch.tensor([2]),
        },
        {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    gts = [
        {"boxes": torch.tensor([A]), "labels": torch.tensor([2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)},
    ]
    assert evaluate_voc(dets, gts) == {"map": 1.0, "ap": {2: 1.0}}


def test_bad_input_is_one_line():
    with pytest.raises(ValueError, match="detections and annotations must list the same images, got 1 and 2"):
        evaluate_voc([det([A], [1], [0])], [gt([A], [0])] * 2)
    with pytest.raises(ValueError, match=r"detections\[0\] has no scores"):
        evaluate_voc([{"boxes": [A], "labels": [0]}], [gt([A], [0])])
    with pytest.raises(ValueError, match=r"annotations\[0\]\['boxes'\] must be \(N, 4\), got shape \(1, 3\)"):
        evaluate_voc([det([A], [1], [0])], [gt([A], [0]) | {"boxes": np.zeros((1, 3))}])
    with pytest.raises(ValueError, match=r"detections\[0\]: scores must have one entry per box \(1\), got 2"):
        evaluate_voc([det([A], [1, 2], [0])], [gt([A], [0])])


def _scene(rng, n_images=30, n_classes=3):
    """Well-separated objects on a grid, so each detection overlaps at most one object: there the VOC
    and COCO matching rules take the same decisions and only the AP's interpolation differs."""
    dets, gts = [], []
    for _ in range(n_images):
        cells = rng.choice(16, size=rng.integers(1, 6), replace=False)
        boxes = np.array(
            [[c % 4 * 100 + 10, c // 4 * 100 + 10, c % 4 * 100 + 60, c // 4 * 100 + 70] for c in cells], float
        )
        labels = rng.integers(0, n_classes, len(boxes))
        d_boxes, d_scores, d_labels = [], [], []
        for b, label in zip(boxes, labels):
            for _ in range(rng.integers(0, 3)):  # misses, hits, duplicates, wrong classes, loose boxes
                d_boxes.append(b + rng.normal(0, 8, 4))
                d_scores.append(rng.random())
                d_labels.append(label if rng.random() < 0.8 else rng.integers(0, n_classes))
        for _ in range(rng.integers(0, 3)):  # background false positives in the empty cells' gaps
            x, y = rng.integers(0, 4, 2) * 100 + 75
            d_boxes.append([x, y, x + 20, y + 20])
            d_scores.append(rng.random())
            d_labels.append(rng.integers(0, n_classes))
        dets.append(det(np.array(d_boxes).reshape(-1, 4), d_scores, d_labels))
        gts.append(gt(boxes, labels))
    return dets, gts


def _coco_ap50(dets, gts, n_classes):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, anns, results = [], [], []
    for i, (d, g) in enumerate(zip(dets, gts)):
        images.append({"id": i, "width": 500, "height": 500})
        for b, label in zip(g["boxes"], g["labels"]):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": int(label),
                    "bbox": [*b[:2], w, h],
                    "area": float(w * h),
                    "iscrowd": 0,
                }
            )
        for b, s, label in zip(d["boxes"], d["scores"], d["labels"]):
            results.append(
                {
                    "image_id": i,
                    "category_id": int(label),
                    "score": float(s),
                    "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
                }
            )
    coco = COCO()
    coco.dataset = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": c} for c in range(n_classes)],
    }
    coco.createIndex()
    ev = COCOeval(coco, coco.loadRes(results), "bbox")
    ev.params.iouThrs = np.array([0.5])
    ev.params.maxDets = [100]
    ev.params.areaRng, ev.params.areaRngLbl = [[0, 1e10]], ["all"]
    ev.evaluate()
    ev.accumulate()
    precision = ev.eval["precision"][0, :, :, 0, 0]  # (101 recall points, classes)
    return {c: float(precision[:, c].mean()) for c in range(n_classes)}


def test_agrees_with_pycocotools_ap50_where_the_protocols_agree(capsys):
    pytest.importorskip("pycocotools")
    rng = np.random.default_rng(0)
    dets, gts = _scene(rng)
    ours = evaluate_voc(dets, gts)["ap"]
    coco = _coco_ap50(dets, gts, 3)
    capsys.readouterr()  # pycocotools prints its progress
    assert 0.2 < min(ours.values()) and max(ours.values()) < 0.95  # a case with misses, FPs and duplicates
    for c in range(3):  # 101-point sampling of the same precision envelope: within 1 point of AP
        assert ours[c] == pytest.approx(coco[c], abs=0.01), (c, ours[c], coco[c])
