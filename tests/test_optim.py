import math

import pytest
import torch

from ols.config import TrainConfig
from ols.optim import build_optimizer, build_scheduler, lr_factor


def test_multistep_by_hand():
    # 10 steps per epoch, x0.1 at epochs 150 and 225 (the paper's CIFAR schedule)
    f = [lr_factor(s, 10, 300, "multistep", (150, 225)) for s in (0, 1499, 1500, 2249, 2250, 2999)]
    assert f == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_cosine_and_warmup_by_hand():
    assert lr_factor(0, 10, 4, "cosine") == 1.0
    assert lr_factor(20, 10, 4, "cosine") == pytest.approx(0.5)
    assert lr_factor(30, 10, 4, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.75)))
    # two warm-up epochs: 1/20, 2/20, ..., then cosine over the remaining 20 steps
    warm = [lr_factor(s, 10, 4, "cosine", warmup_epochs=2) for s in (0, 9, 19)]
    assert warm == pytest.approx([0.05, 0.5, 1])
    assert lr_factor(30, 10, 4, "cosine", warmup_epochs=2) == pytest.approx(0.5)
    assert lr_factor(7, 10, 4, "constant") == 1.0


def test_scheduler_follows_the_function_and_nesterov_is_set():
    cfg = TrainConfig(lr=0.1, epochs=3, schedule="multistep", milestones=[1, 2], gamma=0.5, nesterov=True)
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(model, cfg)
    assert opt.param_groups[0]["nesterov"] is True
    sched = build_scheduler(opt, cfg, steps_per_epoch=4)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.1] * 4 + [0.05] * 4 + [0.025] * 4)
