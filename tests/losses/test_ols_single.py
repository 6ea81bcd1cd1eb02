import pytest
import torch
import torch.nn.functional as F

from ols import OnlineLabelSmoothingSingle
from ols.losses import SoftLabels
from ols.losses.ols_single import draw_partners


def test_partners_are_other_samples_of_the_same_class():
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, -1, 3, 3])
    available = torch.tensor([True, True, False, True, True, True, False, True, False])
    for _ in range(50):
        p = draw_partners(labels, available, 4, g)
        for i, j in enumerate(p.tolist()):
            if j >= 0:
                assert j != i and labels[j] == labels[i] and available[j]
        assert p[5] == -1 and p[6] == -1  # class 2 has nobody else; 6 never seen
        assert p[3] == 4 and p[4] == 3 and p[8] == 7
        assert p[2] in (0, 1)
    counts = torch.zeros(3)
    for _ in range(600):
        counts[draw_partners(labels, available, 4, g)[2]] += 1
    assert counts[0] > 200 and counts[1] > 200  # both candidates drawn


def test_loss_uses_partner_prediction_from_previous_epoch():
    torch.manual_seed(1)
    n, k = 12, 4
    y = torch.arange(n) % k
    crit = OnlineLabelSmoothingSingle(k, num_samples=n, alpha=0.3, seed=5)
    z0 = torch.randn(n, k)
    idx = torch.arange(n)
    torch.testing.assert_close(crit(z0, y, index=idx), F.cross_entropy(z0, y, label_smoothing=0.7))
    crit.step()
    p_prev = torch.softmax(z0, 1)
    z1 = torch.randn(n, k)
    partner = crit.partner
    assert (partner >= 0).all() and (y[partner] == y).all() and (partner != idx).all()
    q = 0.3 * F.one_hot(y, k) + 0.7 * p_prev[partner]
    want = -(q * torch.log_softmax(z1, 1)).sum(1).mean()
    torch.testing.assert_close(crit(z1, y, index=idx), want)


def test_partners_are_reproducible_and_state_round_trips():
    n, k = 10, 3
    y = torch.arange(n) % k
    a = OnlineLabelSmoothingSingle(k, num_samples=n, seed=2)
    b = OnlineLabelSmoothingSingle(k, num_samples=n, seed=2)
    z = torch.randn(n, k)
    for crit in (a, b):
        crit(z, y, index=torch.arange(n))
        crit.step()
    torch.testing.assert_close(a.partner, b.partner)
    c = OnlineLabelSmoothingSingle(k, num_samples=n, seed=2)
    c.load_state_dict(a.state_dict())
    z2 = torch.randn(n, k)
    torch.testing.assert_close(a(z2, y, index=torch.arange(n)), c(z2, y, index=torch.arange(n)))


def test_index_errors():
    crit = OnlineLabelSmoothingSingle(3, num_samples=4)
    z, y = torch.randn(2, 3), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="needs each sample's dataset index"):
        crit(z, y)
    with pytest.raises(ValueError, match=r"index \(each sample's position in the training set\) must lie "
                                          r"in \[0, num_samples\)"):
        crit(z, y, index=torch.tensor([0, 4]))


@pytest.mark.parametrize("k", [4, 200])  # few classes and many
def test_correct_only_keeps_only_correctly_classified_predictions(k):
    torch.manual_seed(6)
    n = 40
    y = torch.arange(n) % k
    z = torch.randn(n, k)
    z[::2] = z[::2] + 8.0 * F.one_hot(y[::2], k)  # every even sample is classified correctly
    crit = OnlineLabelSmoothingSingle(k, num_samples=n, correct_only=True)
    crit(z, y, index=torch.arange(n))
    right = z.argmax(1) == y
    assert right.any() and (~right).any()
    torch.testing.assert_close(crit.epoch_counts, right.long())
    want = torch.where(right.unsqueeze(1), torch.softmax(z, 1), 0.0)
    torch.testing.assert_close(crit.epoch_sums, want)


def test_correct_only_counts_a_tie_at_the_maximum_for_either_class_as_the_stores_do():
    # rows 0 and 1 tie classes 0 and 2 exactly; argmax would call row 1 (label 2) wrong
    z = torch.tensor([[2.0, 0.0, 2.0], [2.0, 0.0, 2.0], [0.0, 3.0, 0.0], [1.0, 0.0, 0.0]])
    y = torch.tensor([0, 2, 0, 1])
    crit = OnlineLabelSmoothingSingle(3, num_samples=4, correct_only=True)
    crit(z, y, index=torch.arange(4))
    torch.testing.assert_close(crit.epoch_counts, torch.tensor([1, 1, 0, 0]))
    store = SoftLabels(3)
    store.observe(z.log_softmax(1), y)
    torch.testing.assert_close(store.counts[:3], torch.tensor([1.0, 0.0, 1.0]))  # the same two rows


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_ignored_and_non_finite_rows(reduction):
    # Ignored rows add neither loss nor predictions; a NaN row adds no prediction.
    torch.manual_seed(7)
    n, k = 8, 5
    y = torch.tensor([0, 1, -100, 3, 4, 0, -100, 2])
    z = torch.randn(n, k)
    z[5, 2] = float("nan")
    crit = OnlineLabelSmoothingSingle(k, num_samples=n, alpha=0.4, reduction=reduction)
    loss = crit(z, y, index=torch.arange(n))
    keep = torch.tensor([True, True, False, True, True, False, False, True])
    ref = F.cross_entropy(z, y, label_smoothing=0.6, reduction="none")  # uniform init
    if reduction == "none":
        torch.testing.assert_close(loss[keep], ref[keep])
        assert (loss[[2, 6]] == 0).all() and loss[5].isnan()
    else:
        rows = [0, 1, 3, 4, 7]
        valid_loss = F.cross_entropy(z[rows], y[rows], label_smoothing=0.6, reduction=reduction)
        assert loss.isnan()  # the NaN row is a valid row: its loss propagates, as in CE
        torch.testing.assert_close(crit(z[rows], y[rows], index=torch.tensor(rows)), valid_loss)
    torch.testing.assert_close(crit.epoch_counts[:n] > 0, keep)
    want = torch.where(keep.unsqueeze(1), torch.softmax(z, 1), 0.0)
    mean = crit.epoch_sums / crit.epoch_counts.clamp(min=1)[:, None].float()
    torch.testing.assert_close(mean, want)
    assert crit.epoch_labels.tolist() == [0, 1, -1, 3, 4, 0, -1, 2]
