"""OLS's update period: when a forward observes, when the loss steps itself, and when it warns."""

import warnings

import pytest
import torch

from ols import OnlineLabelSmoothing
from ols.losses.protocol import end_of_epoch, is_periodic

Z, Y = torch.tensor([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0]]), torch.tensor([0, 1])


def test_update_every_closes_after_every_n_observed_forwards_and_resumes_in_place():
    loss = OnlineLabelSmoothing(3, update_every=3)
    for _ in range(7):
        loss(Z, Y)
    assert int(loss.store.num_updates) == 2 and int(loss.num_iterations) == 7
    assert not end_of_epoch(loss)  # the loss steps itself: the loop must not add a step
    resumed = OnlineLabelSmoothing(3, update_every=3)
    resumed.load_state_dict(loss.state_dict())  # one forward into its period: two more close it
    for crit in (loss, resumed):
        crit(Z, Y)
        assert int(crit.store.num_updates) == 2
        crit(Z, Y)
        assert int(crit.store.num_updates) == 3


def test_epoch_periods_close_only_when_stepped():
    loss = OnlineLabelSmoothing(3)
    assert is_periodic(loss)
    for _ in range(5):
        loss(Z, Y)
    assert int(loss.store.num_updates) == 0
    assert end_of_epoch(loss) and int(loss.store.num_updates) == 1


def test_eval_and_no_grad_forwards_are_not_observed_and_no_grad_warns_once():
    loss = OnlineLabelSmoothing(3).eval()
    loss(Z, Y)
    assert int(loss.num_iterations) == 0
    loss.train()
    with pytest.warns(UserWarning, match=r"OnlineLabelSmoothing: a training-mode forward under "
                                          r"torch.no_grad\(\)"):
        with torch.no_grad():
            loss(Z, Y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once only
        with torch.no_grad():
            loss(Z, Y)
    assert int(loss.num_iterations) == 0 and float(loss.store.sums.sum()) == 0.0


def test_unstepped_warning_fires_once_per_unstepped_run_and_resets_on_step():
    loss = OnlineLabelSmoothing(3, warn_unstepped_after=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(6):
            loss(Z, Y)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and messages[0].startswith("OnlineLabelSmoothing: 3 training forwards without "
                                                         "a step()")
    loss.step()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            loss(Z, Y)
    assert len(caught) == 1  # counted again from the step


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "3"])
def test_update_every_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match="update_every must be a positive integer or None"):
        OnlineLabelSmoothing(3, update_every=bad)
