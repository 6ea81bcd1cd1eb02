import pytest
import torch

from ols.eval import expected_calibration_error, topk_error


def ece_loop(probs, target, n_bins=15):
    """Guo et al.'s definition with (lo, hi] bins, one sample at a time."""
    n = len(target)
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        members = []
        for p, t in zip(probs.tolist(), target.tolist()):
            conf = max(p)
            if (lo < conf <= hi) or (b == 0 and conf == 0.0):
                members.append((conf, float(p.index(conf) == t)))
        if members:
            acc = sum(m[1] for m in members) / len(members)
            conf = sum(m[0] for m in members) / len(members)
            total += len(members) / n * abs(acc - conf)
    return 100 * total


def test_ece_matches_loop():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(400, 7, generator=g) * 2, 1)
    target = torch.randint(0, 7, (400,), generator=g)
    assert expected_calibration_error(probs, target) == pytest.approx(ece_loop(probs, target))


def test_ece_bin_edges_are_left_open():
    # confidence exactly 2/3 belongs to the bin (1/3, 2/3] with 3 bins
    probs = torch.tensor([[2 / 3, 1 / 3], [2 / 3, 1 / 3]], dtype=torch.float64)
    target = torch.tensor([0, 1])
    got = expected_calibration_error(probs, target, n_bins=3)
    assert got == pytest.approx(ece_loop(probs, target, 3))
    assert got == pytest.approx(100 * abs(0.5 - 2 / 3))


def test_ece_hand_computed():
    probs = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.6, 0.4], [0.55, 0.45]])
    target = torch.tensor([0, 1, 0, 0])
    # bins of width 0.1: 1.0 -> (0.9,1.0] acc 1 conf 1; 0.9 -> (0.8,0.9] acc 0 conf .9;
    # 0.6 -> (0.5,0.6] and 0.55 -> (0.5,0.6]: acc 1, conf .575
    want = 100 * (0 + 0.25 * 0.9 + 0.5 * (1 - 0.575))
    assert expected_calibration_error(probs, target, n_bins=10) == pytest.approx(want)


def test_topk_error():
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]])
    assert topk_error(logits, torch.tensor([0, 1]), 1) == pytest.approx(50.0)
    assert topk_error(logits, torch.tensor([0, 1]), 2) == pytest.approx(0.0)


def test_ece_agrees_with_torchmetrics_except_on_bin_edges():
    """torchmetrics bins confidences as [lo, hi); ours are (lo, hi] as in Guo et al.'s code.

    Away from the edges the two are the same number; a confidence exactly on an edge lands
    one bin lower here than in torchmetrics.
    """
    tm = pytest.importorskip("torchmetrics.functional.classification")
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(2 * torch.randn(500, 5, generator=g), 1)
    target = torch.randint(0, 5, (500,), generator=g)
    ref = 100 * float(tm.multiclass_calibration_error(probs, target, num_classes=5, n_bins=15))
    assert expected_calibration_error(probs, target, 15) == pytest.approx(ref, abs=1e-4)
    # confidence 0.5 (correct) sits on the 4-bin edge; 0.6 (wrong) is inside (0.5, 0.75]
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.6, 0.2, 0.2]])
    target = torch.tensor([0, 1])
    ours = 100 * (abs(1 - 0.5) + abs(0 - 0.6)) / 2  # two bins of one sample each
    theirs = 100 * abs(0.5 - 0.55)  # one bin [0.5, 0.75) holding both
    assert expected_calibration_error(probs, target, 4) == pytest.approx(ours)
    ref = 100 * float(tm.multiclass_calibration_error(probs, target, num_classes=3, n_bins=4))
    assert ref == pytest.approx(theirs, abs=1e-5)
