"""The class head's confidence on the positives, against values worked out by hand."""

import torch

from ols.detection import head_confidence as hc
from ols.detection.yolo import assign


def test_means_over_the_positives_by_hand(monkeypatch):
    """Class logits chosen per positive: the means are those of the chosen sigmoids."""
    size, k = 64, 3
    targets = [
        [{"boxes": torch.tensor([[4.0, 4.0, 40.0, 44.0]]), "labels": torch.tensor([2])}],
        [
            {
                "boxes": torch.tensor([[10.0, 8.0, 30.0, 20.0], [30.0, 30.0, 60.0, 62.0]]),
                "labels": torch.tensor([0, 1]),
            }
        ],
    ]
    logits_of = {0: 2.0, 1: -4.0, 2: 0.0}  # a label's logit at its positives (label 1: below the rest)

    def fake_decode(_, s):  # cls (B, N, K): at a positive, logits_of[label] at the label, -3 elsewhere
        n = 3 * sum((s // st) ** 2 for st in (8, 16, 32))
        cls = torch.full((len(current["t"]), n, k), -3.0)
        pos = assign(current["t"], s)
        for i, p, y in zip(pos["image"], pos["position"], pos["labels"]):
            cls[i, p, y] = logits_of[int(y)]
        return None, None, cls

    current = {}

    class Model(torch.nn.Module):
        def forward(self, x):
            return x

    monkeypatch.setattr(hc, "decode", fake_decode)
    want_true, want_other, want_correct, n = 0.0, 0.0, 0.0, 0
    for t in targets:
        for y in assign(t, size)["labels"].tolist():
            want_true += torch.sigmoid(torch.tensor(logits_of[y])).item()
            want_other += torch.sigmoid(torch.tensor(-3.0)).item()
            want_correct += logits_of[y] > -3.0
            n += 1
    images = [torch.zeros(1, 3, size, size), torch.zeros(1, 3, size, size)]
    got = {}
    for x, t in zip(images, targets):  # one batch at a time, to feed the fake its targets
        current["t"] = t
        part = hc.head_confidence(Model(), [x], [t], size, torch.device("cpu"))
        m = len(assign(t, size)["labels"])
        for key, value in part.items():
            got[key] = got.get(key, 0.0) + value * m
    assert abs(got["pos_true_sigmoid"] / n - want_true / n) < 1e-6
    assert abs(got["pos_other_sigmoid"] / n - want_other / n) < 1e-6
    assert abs(got["pos_correct"] / n - want_correct / n) < 1e-9 and 0 < want_correct < n


def test_no_positive_gives_nan():
    class Model(torch.nn.Module):
        def forward(self, x):
            raise AssertionError("no positive: the model is not run")

    out = hc.head_confidence(
        Model(),
        [torch.zeros(1, 3, 64, 64)],
        [[{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]],
        64,
        torch.device("cpu"),
    )
    assert all(v != v for v in out.values())
