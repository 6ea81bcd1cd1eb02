"""How sure a detector's class head is on the positives: what OLS's statistic is built from.

For each ground-truth object, the anchors that training assigns to it (the positives of
:func:`~ols.detection.yolo.assign`, at the first test size) give ``K`` class sigmoids. Reported:

* ``pos_true_sigmoid``: the mean sigmoid of the object's own class (1 for a head that fits its
  hard targets);
* ``pos_other_sigmoid``: the mean sigmoid of each other class;
* ``pos_correct``: the share of positives whose largest class logit is their class (the ones
  OLS counts, Eq. 5).

A head that is unsure of its positives gives OLS a flat ``S`` whichever statistic it uses.
"""

from __future__ import annotations

from typing import Dict, Sequence

import torch

from .yolo import assign, decode

#: each metric's direction (a larger value is better), for the sweep report
HIGHER_IS_BETTER = {"pos_true_sigmoid": True, "pos_other_sigmoid": False, "pos_correct": True}
HEADERS = {
    "pos_true_sigmoid": "class head: mean sigmoid of the true class on the positives (0-1)",
    "pos_other_sigmoid": "class head: mean sigmoid of another class on the positives (0-1)",
    "pos_correct": "class head: share of positives whose argmax is their class (0-1)",
}


@torch.no_grad()
def head_confidence(model: torch.nn.Module, images: Sequence[torch.Tensor], targets: Sequence[Dict],
                    size: int, device: torch.device) -> Dict[str, float]:
    """The three means over every positive of the batches ``images`` and their ``targets``.

    ``images``: ``[(B, C, size, size)]``; ``targets``: per batch, a list of ``{"boxes", "labels"}``
    in ``size`` pixels (:func:`~ols.detection.run.make_batch`).
    """
    model.eval()
    true = other = correct = count = 0.0
    for x, t in zip(images, targets):
        pos = assign(t, size)
        if not len(pos["labels"]):
            continue
        _, _, cls = decode(model(x.to(device)), size)
        z = cls[pos["image"].to(device), pos["position"].to(device)].float()  # (P, K)
        y = pos["labels"].to(device)
        p = torch.sigmoid(z)
        own = p.gather(1, y[:, None]).squeeze(1)
        true += float(own.sum())
        other += float(((p.sum(1) - own) / (p.shape[1] - 1)).sum())
        correct += float((z.argmax(1) == y).sum())
        count += len(y)
    if count == 0:
        return {name: float("nan") for name in HIGHER_IS_BETTER}
    return {"pos_true_sigmoid": true / count, "pos_other_sigmoid": other / count,
            "pos_correct": correct / count}
