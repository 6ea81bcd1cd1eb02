"""PASCAL VOC mean average precision, in numpy: the protocol of the VOC devkit, written from its rules.

For each class, every detection of that class over all images, highest score first (ties in
input order), is matched to the unmatched ground-truth box of its image with the largest IoU:

* IoU above ``iou_threshold`` (strictly, as the devkit's ``ovmax > ovthresh``) with a box not
  matched yet: a true positive; with a box already matched: a false positive (a duplicate);
* the best box is *difficult*: neither (difficult objects are not counted in the recall either);
* no box above the threshold: a false positive.

AP is the area under the precision envelope (VOC 2010 onwards; what the likely source code
of the paper's Table X uses), or with ``use_07_metric`` the VOC 2007 11-point AP: the mean over
``t`` in ``{0, 0.1, ..., 1}`` of the best precision at recall ``>= t``. The mAP is the mean over
the classes that have at least one non-difficult object; a class without any is left out of
both (its AP is undefined).

Boxes are ``(x1, y1, x2, y2)`` in continuous pixel coordinates (torchvision's convention), so
IoU has no ``+1``; :mod:`ols.detection.voc` reads the devkit's 1-based inclusive pixel boxes
into this form, which gives the devkit's areas.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

#: the report's reading of the detection metrics (``summary.json``'s ``test_map``, ``test_map_07``)
HIGHER_IS_BETTER = {"map": True, "map_07": True}
HEADERS = {"map": "mAP@0.5 (VOC area AP, 0-1)", "map_07": "mAP@0.5 (VOC07 11-point, 0-1)"}


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(N, M)`` IoU of ``a`` ``(N, 4)`` and ``b`` ``(M, 4)`` xyxy boxes (0 where both are empty)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area = lambda x: np.clip(x[:, 2] - x[:, 0], 0, None) * np.clip(x[:, 3] - x[:, 1], 0, None)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def average_precision(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool = False) -> float:
    """AP from the cumulative ``recall`` and ``precision`` ``(D,)`` of a ranked list."""
    if use_07_metric:
        points = [precision[recall >= t].max() if (recall >= t).any() else 0.0 for t in np.linspace(0, 1, 11)]
        return float(np.mean(points))
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]  # the envelope: the best precision at any higher recall
    steps = np.nonzero(r[1:] != r[:-1])[0]
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


def _array(x: Any, shape_end: Sequence[int], name: str, dtype=np.float64) -> np.ndarray:
    a = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    a = a.astype(dtype, copy=False)
    if a.size == 0:
        a = a.reshape((0, *shape_end))
    if a.shape[1:] != tuple(shape_end) or a.ndim != 1 + len(shape_end):
        want = "(N, 4)" if shape_end else "(N,)"
        raise ValueError(f"{name} must be {want}, got shape {a.shape}")
    return a


def _image(entry: Mapping[str, Any], keys: Sequence[str], where: str) -> Dict[str, np.ndarray]:
    missing = [k for k in keys if k not in entry]
    if missing:
        raise ValueError(f"{where} has no {', '.join(missing)}; it needs {', '.join(keys)}")
    out = {
        "boxes": _array(entry["boxes"], (4,), f"{where}['boxes']"),
        "labels": _array(entry["labels"], (), f"{where}['labels']", np.int64),
    }
    for k in keys[2:]:
        out[k] = _array(entry[k], (), f"{where}[{k!r}]", bool if k == "difficult" else np.float64)
    n = len(out["boxes"])
    bad = [k for k, v in out.items() if len(v) != n]
    if bad:
        raise ValueError(
            f"{where}: {', '.join(bad)} must have one entry per box ({n}), got "
            f"{', '.join(str(len(out[k])) for k in bad)}"
        )
    return out


def evaluate_voc(
    detections: Sequence[Mapping[str, Any]],
    annotations: Sequence[Mapping[str, Any]],
    iou_threshold: float = 0.5,
    use_07_metric: bool = False,
    class_names: Optional[Sequence[str]] = None,
) -> Dict[str, Any]:
    """``{"map": float in [0, 1], "ap": {class: float}}`` of ``detections`` against ``annotations``.

    ``detections[i]``: ``{"boxes": (N, 4) xyxy, "scores": (N,), "labels": (N,)}`` for image ``i``;
    ``annotations[i]``: ``{"boxes": (M, 4), "labels": (M,), "difficult": (M,) bool}`` (``difficult``
    may be left out: none). Tensors or arrays. ``ap`` is keyed by class index, or by
    ``class_names[index]`` when given.
    """
    if len(detections) != len(annotations):
        raise ValueError(
            f"detections and annotations must list the same images, got {len(detections)} "
            f"and {len(annotations)}"
        )
    if not 0.0 < iou_threshold < 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1), got {iou_threshold}")
    dets = [_image(d, ("boxes", "labels", "scores"), f"detections[{i}]") for i, d in enumerate(detections)]
    gts = []
    for i, a in enumerate(annotations):
        entry = dict(a)
        if "difficult" not in entry:
            entry["difficult"] = np.zeros(len(np.asarray(entry.get("boxes", []))), dtype=bool)
        gts.append(_image(entry, ("boxes", "labels", "difficult"), f"annotations[{i}]"))
    classes = sorted({int(c) for g in gts for c, d in zip(g["labels"], g["difficult"]) if not d})
    ap: Dict[Any, float] = {}
    for c in classes:
        ap[class_names[c] if class_names else c] = _class_ap(dets, gts, c, iou_threshold, use_07_metric)
    return {"map": float(np.mean(list(ap.values()))) if ap else 0.0, "ap": ap}


def _class_ap(
    dets: List[Dict[str, np.ndarray]],
    gts: List[Dict[str, np.ndarray]],
    c: int,
    thr: float,
    use_07_metric: bool,
) -> float:
    truth = [(g["boxes"][g["labels"] == c], g["difficult"][g["labels"] == c]) for g in gts]
    npos = sum(int((~d).sum()) for _, d in truth)
    image = np.concatenate([np.full(int((d["labels"] == c).sum()), i) for i, d in enumerate(dets)] or [[]])
    scores = np.concatenate([d["scores"][d["labels"] == c] for d in dets] or [[]])
    boxes = np.concatenate([d["boxes"][d["labels"] == c] for d in dets] or [np.zeros((0, 4))])
    order = np.argsort(-scores, kind="stable")
    matched = [np.zeros(len(b), dtype=bool) for b, _ in truth]
    tp, fp = np.zeros(len(order)), np.zeros(len(order))
    for rank, k in enumerate(order):
        gt_boxes, difficult = truth[int(image[k])]
        if len(gt_boxes) == 0:
            fp[rank] = 1
            continue
        iou = box_iou(boxes[k : k + 1], gt_boxes)[0]
        j = int(iou.argmax())
        if iou[j] <= thr:
            fp[rank] = 1
        elif difficult[j]:
            continue  # neither a true nor a false positive
        elif not matched[int(image[k])][j]:
            tp[rank], matched[int(image[k])][j] = 1, True
        else:
            fp[rank] = 1  # a duplicate
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    recall = tp / npos
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return average_precision(recall, precision, use_07_metric)
