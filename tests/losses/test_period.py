"""The schedule mixin on its own: when a periodic loss observes, steps and warns."""

import warnings

import pytest
import torch

from ols.losses.period import PeriodSchedule, check_update_every
from ols.losses.protocol import end_of_epoch, is_periodic


class Counter(PeriodSchedule):
    """A toy periodic loss: counts the forwards it observes and the periods it closes."""

    needs_index = False

    def __init__(self, update_every=None, warn_unstepped_after=None):
        super().__init__()
        self._init_schedule(update_every, warn_unstepped_after)
        self.observed = 0
        self.closed = []  # the observed count at each close

    def forward(self, x):
        if self._observing():
            self.observed += 1
            self._count_forward()
        return x.sum()

    def _close(self):
        self.closed.append(self.observed)


def test_update_every_closes_after_every_n_observed_forwards():
    loss = Counter(update_every=3)
    x = torch.ones(2, requires_grad=True)
    for _ in range(7):
        loss(x)
    assert loss.closed == [3, 6]
    assert int(loss.num_iterations) == 7
    assert not end_of_epoch(loss)  # the loss steps itself: the loop must not add a step
    assert loss.closed == [3, 6]


def test_epoch_periods_close_only_when_stepped():
    loss = Counter()
    assert is_periodic(loss)
    for _ in range(5):
        loss(torch.ones(2, requires_grad=True))
    assert loss.closed == []
    assert end_of_epoch(loss) and loss.closed == [5]


def test_eval_and_no_grad_forwards_are_not_observed_and_no_grad_warns_once():
    loss = Counter()
    loss.eval()
    loss(torch.ones(2))
    assert loss.observed == 0
    loss.train()
    with pytest.warns(UserWarning, match=r"Counter: a training-mode forward under torch.no_grad\(\)"):
        with torch.no_grad():
            loss(torch.ones(2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once only
        with torch.no_grad():
            loss(torch.ones(2))
    assert loss.observed == 0 and int(loss.num_iterations) == 0


def test_unstepped_warning_fires_once_per_unstepped_run_and_resets_on_step():
    loss = Counter(warn_unstepped_after=3)
    x = torch.ones(2, requires_grad=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(6):
            loss(x)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and messages[0].startswith("Counter: 3 training forwards without a step()")
    loss.step()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            loss(x)
    assert len(caught) == 1  # counted again from the step


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "3"])
def test_update_every_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match="update_every must be a positive integer or None"):
        check_update_every(bad)
    assert check_update_every(None) is None and check_update_every(4) == 4
