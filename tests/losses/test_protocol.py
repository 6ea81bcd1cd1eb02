"""The periodic-loss protocol: who is periodic, who steps at an epoch end, who needs the index."""

import pytest
import torch

from ols import OnlineLabelSmoothing, OnlineLabelSmoothingSingle, create_loss
from ols.losses.protocol import end_of_epoch, is_periodic, needs_index, periodic_losses, soft_labels_of


def test_which_losses_are_periodic():
    assert is_periodic(OnlineLabelSmoothing(3))
    assert is_periodic(OnlineLabelSmoothingSingle(3, num_samples=4))
    for name in ("ce", "ls", "bootsoft", "sce", "tfkd_reg"):
        assert not is_periodic(create_loss(name, 3)), name
    assert not is_periodic(torch.nn.CrossEntropyLoss())


def test_needs_index_and_soft_labels():
    assert needs_index(OnlineLabelSmoothingSingle(3, num_samples=4))
    assert not needs_index(OnlineLabelSmoothing(3)) and not needs_index(torch.nn.CrossEntropyLoss())
    ols = OnlineLabelSmoothing(3)
    assert soft_labels_of(ols) is ols.store.soft_labels
    assert soft_labels_of(create_loss("ls", 3)) is None
    assert soft_labels_of(OnlineLabelSmoothingSingle(3, num_samples=4)) is None


@pytest.mark.parametrize("update_every,epoch_steps", [(None, True), (2, False)])
def test_end_of_epoch_steps_only_losses_whose_period_is_the_epoch(update_every, epoch_steps):
    crit = OnlineLabelSmoothing(3, update_every=update_every)
    z, y = torch.tensor([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0]]), torch.tensor([0, 1])
    crit(z, y)
    crit(z, y)  # with update_every=2 the loss has stepped itself here
    assert end_of_epoch(crit) is epoch_steps
    assert int(crit.store.num_updates) == 1  # one period closed either way, never an empty one
    assert crit.soft_labels[0, 0] > 0.9  # learned, not reset to uniform by an empty period
    assert end_of_epoch(create_loss("ce", 3)) is False


def test_periodic_losses_lists_the_outermost_so_a_nested_store_steps_once():
    outer = create_loss("byot+ols", 4)
    plain = create_loss("ols", 4)
    holder = torch.nn.ModuleDict({"a": outer, "b": plain, "c": create_loss("ce", 4)})
    found = periodic_losses(holder)
    assert [id(m) for m in found] == [id(outer), id(plain)]  # not outer.base, which outer steps
    for loss in found:
        with pytest.warns(UserWarning, match="no training sample was observed"):
            loss.step()
    assert int(outer.base.store.num_updates) == 1 and int(plain.store.num_updates) == 1
    assert periodic_losses(create_loss("ce", 4)) == []
