"""ClassificationTask: one forward, the criterion on the batch, the index where it is asked for."""

import torch
import torch.nn.functional as F

from ols import OnlineLabelSmoothing, OnlineLabelSmoothingSingle
from ols.tasks import ClassificationTask


def test_loss_and_logits_are_the_criterions():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    out = ClassificationTask(torch.nn.CrossEntropyLoss())(model, x, y, torch.arange(8))
    torch.testing.assert_close(out["logits"], model(x))
    torch.testing.assert_close(out["loss"], F.cross_entropy(model(x), y))


def test_index_reaches_a_loss_that_needs_it_and_modes_propagate():
    torch.manual_seed(1)
    model = torch.nn.Linear(4, 3)
    x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
    single = OnlineLabelSmoothingSingle(3, num_samples=10)
    task = ClassificationTask(single)
    idx = torch.tensor([9, 0, 3, 4, 5, 7])
    task(model, x, y, idx)
    assert single.epoch_counts[idx].sum() == 6 and single.epoch_counts.sum() == 6
    ols = OnlineLabelSmoothing(3)
    task = ClassificationTask(ols).eval()
    assert not ols.training
    task(model, x, y, idx)
    assert float(ols.store.sums.sum()) == 0.0  # eval mode: nothing observed
    task.train()
    task(model, x, y, idx)
    assert float(ols.store.sums.sum()) == 6.0  # every row observed once (the wrong ones discarded)
