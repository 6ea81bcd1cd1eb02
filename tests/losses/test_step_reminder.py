"""A periodic loss never stepped warns once, at the end of its first training period: the first
switch to eval mode or the first state_dict() after training forwards (ols.losses.step_reminder)."""

import warnings

import pytest
import torch
from torch import nn

from ols import OnlineLabelSmoothing
from ols.losses import create_loss
from ols.losses.ols_single import OnlineLabelSmoothingSingle
from ols.losses.step_reminder import mark_stepped_by

K, B = 4, 6


def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(B, K, generator=g), torch.arange(B) % K


def reminders(action, crit, forwards=3, step=False):
    logits, y = batch()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(forwards):
            if isinstance(crit, OnlineLabelSmoothingSingle):
                crit(logits, y, index=torch.arange(B))
            else:
                crit(logits, y)
        if step:
            crit.step()
        action(crit)
        action(crit)  # once only
    return [str(w.message) for w in caught if "no step()" in str(w.message)]


@pytest.mark.parametrize("action, moment", [(lambda c: c.eval(), "switched to eval mode"),
                                            (lambda c: c.state_dict(), "state_dict() taken")])
def test_forwards_without_a_step_warn_once_at_the_period_end(action, moment):
    msgs = reminders(action, OnlineLabelSmoothing(K))
    assert len(msgs) == 1 and f"{moment} after 3 training forward(s)" in msgs[0] and "crit.step()" in msgs[0]


def test_the_submodule_of_a_model_warns_through_its_parent():
    parent = nn.Module()
    parent.crit = OnlineLabelSmoothing(K)
    logits, y = batch()
    parent.crit(logits, y)
    with pytest.warns(UserWarning, match="switched to eval mode after 1 training forward"):
        parent.eval()
    other = nn.Module()
    other.crit = OnlineLabelSmoothing(K)
    other.crit(logits, y)
    with pytest.warns(UserWarning, match="state_dict\\(\\) taken"):
        other.state_dict()


@pytest.mark.parametrize("case", ["stepped", "no forward", "update_every", "adapter", "eval forwards"])
def test_no_false_alarm(case):
    crit = OnlineLabelSmoothing(K, update_every=2) if case == "update_every" else OnlineLabelSmoothing(K)
    if case == "adapter":
        mark_stepped_by(crit, "OLSCallback")  # a mid-epoch evaluation before the adapter's step
    if case == "eval forwards":
        crit.eval()
    forwards = 0 if case == "no forward" else 3
    assert reminders(lambda c: c.eval(), crit, forwards, step=case == "stepped") == []


def test_ols_single_and_a_self_distilled_ols_warn_too():
    assert len(reminders(lambda c: c.eval(), OnlineLabelSmoothingSingle(K, num_samples=B))) == 1
    outer = create_loss("byot+ols", K)
    inner = [m for m in outer.modules() if isinstance(m, OnlineLabelSmoothing)]
    assert inner, "byot+ols holds an OLS"
    mark_stepped_by(outer, "ols train")
    assert all(m.stepped_by == "ols train" for m in inner)


def cifar_epochs(crit, epochs=3, step=False, drop_last=False, n=50_000, batch_size=128):
    """The README's own loop at CIFAR's size (391 batches an epoch, the last of 80), the loss outside
    the model and only ``model.eval()`` called: returns the forward each reminder came at."""
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(batch_size, 10, generator=g), torch.randint(0, 10, (batch_size,), generator=g)
    sizes = [batch_size] * (n // batch_size) + ([] if drop_last or n % batch_size == 0 else [n % batch_size])
    at, forwards = [], 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(epochs):
            for size in sizes:
                crit(logits[:size], y[:size])
                forwards += 1
                if any("no step()" in str(w.message) for w in caught[len(at):]):
                    at.append(forwards)
            if step:
                crit.step()
    return at, [str(w.message) for w in caught if "no step()" in str(w.message)]


@pytest.mark.slow
def test_a_forgotten_step_at_cifar_size_is_flagged_in_the_third_epoch():
    at, msgs = cifar_epochs(OnlineLabelSmoothing(10))
    assert at == [2 * 391 + 1] and len(msgs) == 1  # the first batch of epoch 3
    assert "two epochs seem to have ended" in msgs[0] and "crit.step()" in msgs[0]


@pytest.mark.parametrize("case", ["stepped", "update_every", "adapter", "drop_last"])
def test_no_false_alarm_at_cifar_size(case):
    crit = OnlineLabelSmoothing(10, update_every=391) if case == "update_every" else OnlineLabelSmoothing(10)
    if case == "adapter":
        mark_stepped_by(crit, "OLSCallback")
    # a tenth of CIFAR (39 batches and one of 8): the same pattern of sizes, a tenth of the forwards
    at, _ = cifar_epochs(crit, step=case in ("stepped", "adapter"), drop_last=case == "drop_last", n=5_000)
    assert at == []
