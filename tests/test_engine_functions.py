import pytest
import torch

from ols.engine import EpochState, epoch_training_metrics


def test_epoch_training_metrics_by_hand():
    noisy = torch.tensor([0, 1, 2, 0, 1, 2])
    true = torch.tensor([0, 1, 2, 1, 1, 0])
    flipped = noisy != true  # samples 3 and 5
    state = EpochState.new(6, torch.device("cpu"))
    state.preds = torch.tensor([0, 2, 2, 1, 1, 2])  # sample 3 predicted as its true class
    state.loss_sum = torch.tensor(3.0, dtype=torch.float64)
    state.seen = torch.tensor(6.0, dtype=torch.float64)
    m = epoch_training_metrics(state, noisy, true, flipped)
    assert m["train_loss"] == 0.5
    assert m["train_err"] == pytest.approx(100 * 2 / 6)  # samples 1 and 3 disagree with the noisy label
    assert m["train_err_noisy_vs_noisy"] == pytest.approx(50.0)  # 3 wrong, 5 memorised
    assert m["train_err_noisy_vs_true"] == pytest.approx(50.0)  # 3 right, 5 wrong
    assert m["train_err_clean"] == pytest.approx(25.0)  # sample 1
    clean = epoch_training_metrics(state, noisy, noisy, torch.zeros(6, dtype=torch.bool))
    assert "train_err_clean" not in clean
