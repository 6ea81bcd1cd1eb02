"""Arazo et al.'s dynamic bootstrapping step against the official training functions written out.

``train_mixUp_HardBootBeta`` and ``train_mixUp_SoftBootBeta`` (``PaulAlbert31/LabelNoiseCorrection``,
``utils.py``): the un-mixed forward for ``z`` (or ``p``), the mixed forward, ``B`` from an eval-mode loss
looked up in the mixture, ``lam * ((1 - B) CE(y) + B CE(z)) + (1 - lam) * (...)[index]`` plus the
class-balance penalty; the warm-up is ``train_mixUp``'s ``lam * CE(y) + (1 - lam) * CE(y[index])``.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ols import create_loss
from ols.losses.noisy.beta_mixture import BetaMixture
from ols.tasks.base import TaskData
from ols.tasks.bootstrapping import BootstrappingTask

K, B, D, N = 5, 12, 6, 40


def _setup(variant="hard", base="ce", mixup=True, fitted=True):
    torch.manual_seed(0)
    model = nn.Linear(D, K)  # no batch norm, no dropout: its train and eval forwards agree
    crit = create_loss("bmm", K, num_samples=N, epochs=4, warmup_epochs=1, variant=variant, mixup=mixup,
                       base=base)
    task = BootstrappingTask(crit, seed=0)
    labels = torch.randint(0, K, (N,))
    task.attach(TaskData(source=None, labels=labels, true_labels=labels, flipped=labels.bool(),
                         train_index=np.arange(N), meta_index=np.arange(0), batch_size=B, eval_batch_size=B,
                         seed=0, epochs=4))
    mixture = BetaMixture((1.2, 3.0), (4.0, 1.5), (0.6, 0.4))
    if fitted:
        index = torch.arange(N)
        crit.set_fit(mixture, 0.2, 2.5, index, torch.rand(N) * 3, torch.randint(0, K, (N,)), labels)
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(B, D, generator=g), torch.randint(0, K, (B,), generator=g)
    perm, lam = torch.randperm(B, generator=g), torch.tensor(0.37)
    return model, crit, task, mixture, x, y, perm, lam


def _official_b(model, x, y, mixture):
    losses = F.nll_loss(F.log_softmax(model(x), dim=1), y, reduction="none").detach()
    low, high = torch.tensor(0.2, dtype=torch.float32), torch.tensor(2.5, dtype=torch.float32)
    losses = (losses - low) / (high - low + 1e-6)
    losses[losses >= 1] = 1 - 10e-4
    losses[losses <= 0] = 10e-4
    table = mixture.lookup(1)
    at = (100 * losses.numpy()).astype(int)
    at[at < 0], at[at == 100] = 0, 99
    b = torch.as_tensor(table[at], dtype=torch.float32)
    return b.clamp(1e-4, 1 - 1e-4)


def _penalty(output):
    mean = F.softmax(output, dim=1).mean(0)
    prior = torch.ones(K) / K
    return torch.sum(prior * torch.log(prior / mean))


@pytest.mark.parametrize("variant", ["hard", "soft"])
def test_a_bootstrapping_step_equals_the_official_function(variant):
    model, crit, task, mixture, x, y, perm, lam = _setup(variant)
    task.set_epoch(2)  # after the warm-up
    out = task.compute(model, x, y, torch.arange(B), perm, lam)

    output_x1 = model(x).detach()
    output = F.log_softmax(model(lam * x + (1 - lam) * x[perm]), dim=1)
    b = _official_b(model, x, y, mixture)
    b2 = b[perm]
    if variant == "hard":
        z1 = output_x1.argmax(1)
        pred1 = F.nll_loss(output, z1, reduction="none")
        pred2 = F.nll_loss(output, z1[perm], reduction="none")
    else:
        p1 = F.softmax(output_x1, dim=1)
        pred1, pred2 = -(p1 * output).sum(1), -(p1[perm] * output).sum(1)
    first = ((1 - b) * F.nll_loss(output, y, reduction="none") + b * pred1).sum() / B
    second = ((1 - b2) * F.nll_loss(output, y[perm], reduction="none") + b2 * pred2).sum() / B
    expected = lam * first + (1 - lam) * second + _penalty(model(lam * x + (1 - lam) * x[perm]))
    torch.testing.assert_close(out["loss"], expected, rtol=1e-5, atol=1e-6)


def test_the_warm_up_is_plain_mixup_without_the_penalty():
    model, crit, task, _, x, y, perm, lam = _setup(fitted=False)
    task.set_epoch(1)
    out = task.compute(model, x, y, torch.arange(B), perm, lam)
    output = model(lam * x + (1 - lam) * x[perm])
    expected = lam * F.cross_entropy(output, y) + (1 - lam) * F.cross_entropy(output, y[perm])
    torch.testing.assert_close(out["loss"], expected, rtol=1e-5, atol=1e-6)


def test_without_mixup_one_forward_gives_z():
    model, crit, task, mixture, x, y, perm, lam = _setup(mixup=False)
    task.set_epoch(2)
    out = task.compute(model, x, y, torch.arange(B), perm, torch.tensor(1.0))
    logits = model(x)
    b = _official_b(model, x, y, mixture)
    z = logits.detach().argmax(1)
    per = (1 - b) * F.cross_entropy(logits, y, reduction="none")
    per = per + b * F.cross_entropy(logits, z, reduction="none")
    torch.testing.assert_close(out["loss"], per.mean() + _penalty(logits), rtol=1e-5, atol=1e-6)


def test_with_ols_the_corrected_target_goes_through_q_and_the_statistics_follow_the_corrected_label():
    model, crit, task, mixture, x, y, perm, lam = _setup(base="ols")
    with torch.no_grad():
        crit.base.store.soft_labels.copy_(torch.softmax(torch.randn(K, K) * 2, dim=1))
    task.set_epoch(2)
    out = task.compute(model, x, y, torch.arange(B), perm, lam)
    output = model(lam * x + (1 - lam) * x[perm])
    b = _official_b(model, x, y, mixture)
    z = model(x).detach().argmax(1)
    t = (1 - b[:, None]) * F.one_hot(y, K) + b[:, None] * F.one_hot(z, K)
    t = lam * t + (1 - lam) * t[perm]
    q = 0.5 * t + 0.5 * t @ crit.base.store.soft_labels
    expected = -(q * F.log_softmax(output, dim=1)).sum(1).mean() + _penalty(output)
    torch.testing.assert_close(out["loss"], expected, rtol=1e-5, atol=1e-6)
    label = torch.where(b > 0.5, z, y)
    probs = model(x).detach().softmax(1)
    correct = probs.argmax(1) == label
    sums = torch.zeros(K + 1, K).index_add_(0, torch.where(correct, label, K), probs)
    torch.testing.assert_close(crit.base.store.sums[:K], sums[:K])


def test_a_batch_draws_the_same_mixing_when_its_epoch_is_resumed():
    _, _, task, _, x, y, _, _ = _setup()
    task.set_epoch(3, start_batch=0)
    first = [task.prepare(x, y, torch.arange(B)) for _ in range(3)]
    task.set_epoch(3, start_batch=2)
    again = task.prepare(x, y, torch.arange(B))
    assert torch.equal(first[2][3], again[3]) and torch.equal(first[2][4], again[4])
    assert not torch.equal(first[0][3], first[1][3])
