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
