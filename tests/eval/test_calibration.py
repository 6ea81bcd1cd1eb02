"""Signed ECE, AURC and temperature scaling against hand computations and plain re-implementations."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ols.eval.calibration import aurc, calibration_bins, fit_temperature, signed_calibration_error
from ols.eval.metrics import classification_metrics, temperature_scaled

PROBS = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
TARGET = torch.tensor([0, 1, 1])  # right (0.9), wrong (0.6), right (0.7)


def test_signed_calibration_error_by_hand_and_from_the_bins():
    assert signed_calibration_error(PROBS, TARGET) == pytest.approx(100 * ((0.9 + 0.6 + 0.7) / 3 - 2 / 3))
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(500, 7, generator=gen), 1)
    target = torch.randint(0, 7, (500,), generator=gen)
    count, conf, hit = calibration_bins(probs, target, 15)
    binned = float(100 * (conf - hit).sum() / count.sum())  # ECE's sum without the absolute value
    assert signed_calibration_error(probs, target) == pytest.approx(binned, abs=1e-9)
    assert signed_calibration_error(probs, target) > 0  # random labels, confident model: over-confident


def test_aurc_by_hand_and_against_a_loop():
    # most confident first: 0.9 right, 0.7 right, 0.6 wrong -> risks 0, 0, 1/3
    assert aurc(PROBS, TARGET) == pytest.approx(100 * (0 + 0 + 1 / 3) / 3)
    gen = torch.Generator().manual_seed(1)
    probs = torch.softmax(2 * torch.randn(300, 5, generator=gen), 1)
    target = torch.randint(0, 5, (300,), generator=gen)
    conf, pred = probs.max(1)
    ranked = sorted(range(300), key=lambda i: -float(conf[i]))
    errors, total = 0, 0.0
    for k, i in enumerate(ranked, start=1):
        errors += int(pred[i] != target[i])
        total += errors / k
    assert aurc(probs, target) == pytest.approx(100 * total / 300, rel=1e-9)
    perfect = torch.eye(5)[target] * 0.9 + 0.02  # every prediction right
    assert aurc(perfect, target) == 0.0


def test_fit_temperature_finds_the_nll_minimum_of_a_grid():
    gen = torch.Generator().manual_seed(2)
    logits = 4 * torch.randn(400, 10, generator=gen)
    target = torch.randint(0, 10, (400,), generator=gen)
    t = fit_temperature(logits, target)
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 4001))
    nll = [float(F.cross_entropy(logits.double() / g, target)) for g in grid]
    assert t == pytest.approx(grid[int(np.argmin(nll))], rel=2e-3)


def test_fit_temperature_recovers_the_temperature_that_made_the_labels():
    gen = torch.Generator().manual_seed(3)
    true = 3 * torch.randn(20000, 10, generator=gen)
    target = torch.multinomial(torch.softmax(true / 2.5, 1), 1, generator=gen).squeeze(1)  # T0 = 2.5
    assert fit_temperature(true, target) == pytest.approx(2.5, rel=0.05)


def test_temperature_scaling_keeps_the_ranking_and_reports_its_metrics():
    gen = torch.Generator().manual_seed(4)
    held, test = 5 * torch.randn(300, 6, generator=gen), 5 * torch.randn(200, 6, generator=gen)
    held_y, test_y = held.argmax(1), test.argmax(1)
    flip = torch.rand(200, generator=gen) < 0.3
    test_y = torch.where(flip, (test_y + 1) % 6, test_y)
    out = temperature_scaled(test, test_y, held, held_y)
    t = out["temperature"]
    assert t == pytest.approx(fit_temperature(held, held_y))
    plain = classification_metrics(test / t, test_y)
    assert out["nll_ts"] == pytest.approx(plain["nll"], rel=1e-5)
    assert out["ece_ts"] == pytest.approx(plain["ece"], rel=1e-4)
    assert out["ece_signed_ts"] == pytest.approx(plain["ece_signed"], rel=1e-4, abs=1e-4)
    assert classification_metrics(test, test_y)["top1_err"] == plain["top1_err"]
    with pytest.raises(ValueError, match="needs held-out samples"):
        fit_temperature(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
