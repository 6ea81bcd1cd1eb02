"""DetectionOLS against the formulas written out here: BCE affine in its target, the statistic of
the correct positives only, background rows untouched, resume, and no host read."""

import pytest
import torch
import torch.nn.functional as F

from ols.detection import DetectionOLS

K = 4




def test_sigmoid_head_is_the_mixture_of_two_bce_terms_and_counts_the_correct_positives(tiny_batch):
    crit = DetectionOLS(K, alpha=0.3)
    z, y = tiny_batch(12, K, 0, requires_grad=True)
    S0 = torch.full((K, K), 1.0 / K)
    loss = crit(z, y)
    onehot = F.one_hot(y, K).float()
    bce = F.binary_cross_entropy_with_logits
    mix = 0.3 * bce(z, onehot) + 0.7 * bce(z, S0[y])
    torch.testing.assert_close(loss, mix)  # BCE is affine in its target: Eq. (4) exactly
    loss.backward()
    crit.step()
    # Eq. (5)-(6) by hand: the renormalised sigmoids of the positives whose argmax is their label
    s = torch.sigmoid(z.detach())
    p = s / s.sum(1, keepdim=True)
    ok = z.detach().argmax(1) == y
    want = S0.clone()
    for c in range(K):
        rows = p[ok & (y == c)]
        if len(rows):
            want[c] = rows.sum(0) / rows.sum()
    assert (ok.sum() > 0) and (~ok).sum() > 0  # the batch has both kinds
    torch.testing.assert_close(crit.soft_labels, want)
    z2, y2 = tiny_batch(12, K, 1, requires_grad=True)
    torch.testing.assert_close(crit.soft_targets(y2), 0.3 * F.one_hot(y2, K).float() + 0.7 * want[y2])


def test_softmax_statistic_and_weights(tiny_batch):
    crit = DetectionOLS(K, alpha=0.5, statistic="softmax")
    z, y = tiny_batch(12, K, 2, requires_grad=True)
    w = torch.linspace(0.0, 1.0, len(y))
    loss = crit(z, y, weight=w)
    per = F.binary_cross_entropy_with_logits(z, crit.soft_targets(y), reduction="none") * w[:, None]
    torch.testing.assert_close(loss, per.mean())
    crit.step()
    p = torch.softmax(z.detach(), 1) * w[:, None]
    ok = (z.detach().argmax(1) == y) & (w > 0)
    for c in range(K):
        rows = p[ok & (y == c)]
        if len(rows):
            torch.testing.assert_close(crit.soft_labels[c], rows.sum(0) / rows.sum())


def test_raw_sigmoid_statistic_is_the_plain_mean_of_the_sigmoids_over_two_periods(tiny_batch):
    """Option (iii): per-class means of the raw sigmoids, weighted by the sample weights, and
    not renormalised; a class with no counted positive in a period goes back to uniform."""
    crit = DetectionOLS(K, alpha=0.5, statistic="raw_sigmoid")
    for seed in (3, 4):
        z, y = tiny_batch(12, K, seed, requires_grad=True)
        w = torch.linspace(0.0, 2.0, len(y))
        crit(z, y, weight=w).backward()
        crit.step()
        s = torch.sigmoid(z.detach())
        ok = (z.detach().argmax(1) == y) & (w > 0)
        want = torch.full((K, K), 1.0 / K)
        for c in range(K):
            rows = ok & (y == c)
            if rows.any():
                want[c] = (s[rows] * w[rows, None]).sum(0) / w[rows].sum()
        assert (ok.sum() > 0) and (~ok).sum() > 0
        torch.testing.assert_close(crit.soft_labels, want)
    assert not torch.allclose(crit.soft_labels.sum(1), torch.ones(K))  # Bernoulli targets, not a distribution
    targets = crit.soft_targets(y)
    torch.testing.assert_close(targets, 0.5 * F.one_hot(y, K).float() + 0.5 * want[y])
    b = DetectionOLS(K, statistic="raw_sigmoid")  # resume: the counts are saved with the sums
    crit(*tiny_batch(12, K, 5, requires_grad=True))
    b.load_state_dict(crit.state_dict())
    torch.testing.assert_close(b.store.seen, crit.store.seen)
    assert float(b.store.seen.sum()) == 12.0  # every row of the batch: counted or in the discard bin


def test_renormalised_and_raw_statistics_differ_by_each_row_sum(tiny_batch):
    """Raw: the mean of a class's sigmoid rows; the default: the mean of those rows each
    divided by its own sum (a distribution over the K classes)."""
    z, y = tiny_batch(12, K, 7, requires_grad=True)
    y = z.detach().argmax(1)  # every positive counts
    raw, ren = DetectionOLS(K, statistic="raw_sigmoid"), DetectionOLS(K)
    raw(z, y), ren(z, y)
    raw.step(), ren.step()
    s = torch.sigmoid(z.detach())
    for c in y.unique():
        torch.testing.assert_close(raw.soft_labels[c], s[y == c].mean(0))
        torch.testing.assert_close(ren.soft_labels[c], (s / s.sum(1, keepdim=True))[y == c].mean(0))
    assert not torch.allclose(raw.soft_labels, ren.soft_labels, atol=1e-2)


@pytest.mark.parametrize("background", [0, K])
def test_softmax_head_smooths_the_foreground_only_and_counts_over_all_columns(background, tiny_batch):
    crit = DetectionOLS(K, alpha=0.5, head="softmax", background=background)
    z, y = tiny_batch(40, K + 1, 3, requires_grad=True)
    fg_cols = [c for c in range(K + 1) if c != background]
    # a hand-made S, so the targets are not uniform
    S = torch.softmax(torch.randn(K, K, generator=torch.Generator().manual_seed(9)), 1)
    crit.store.soft_labels.copy_(S)
    q = torch.zeros(len(y), K + 1)
    for i, label in enumerate(y.tolist()):
        if label == background:
            q[i, background] = 1.0
        else:
            c = fg_cols.index(label)
            q[i, fg_cols] = 0.5 * F.one_hot(torch.tensor(c), K).float() + 0.5 * S[c]
    torch.testing.assert_close(crit.soft_targets(y), q)
    loss = crit(z, y)
    torch.testing.assert_close(loss, F.cross_entropy(z, q))  # torch's CE with probability targets
    crit.store.soft_labels.copy_(torch.full((K, K), 1.0 / K))
    crit.store.sums.zero_()
    crit(z, y)
    crit.step()
    ok = (y != background) & (z.detach().argmax(1) == y)  # argmax over all K + 1 columns
    p = torch.softmax(z.detach()[:, fg_cols], 1)
    assert ok.sum() > 0 and ((y != background) & ~ok).sum() > 0
    for label in range(K + 1):
        if label == background:
            continue
        c = fg_cols.index(label)
        rows = p[ok & (y == label)]
        want = rows.sum(0) / rows.sum() if len(rows) else torch.full((K,), 1.0 / K)
        torch.testing.assert_close(crit.soft_labels[c], want)


def test_background_rows_never_touch_the_statistics():
    crit = DetectionOLS(K, head="softmax", background=0)
    z = torch.zeros(6, K + 1)
    z[:, 0] = 5.0  # every row predicts the background, and is labelled background
    crit(z.requires_grad_(), torch.zeros(6, dtype=torch.long))
    assert crit.store.sums[:K].sum() == 0  # row K is the store's discard bin
    import warnings

    with warnings.catch_warnings():  # no correct positive yet is normal early in detection: no warning
        warnings.simplefilter("error")
        crit.step()
    torch.testing.assert_close(crit.soft_labels, torch.full((K, K), 1.0 / K))


def test_alpha_one_is_the_hard_label_loss_and_eval_mode_does_not_count(tiny_batch):
    z, y = tiny_batch(12, K, 4, requires_grad=True)
    hard = DetectionOLS(K, alpha=1.0)
    torch.testing.assert_close(hard(z, y), F.binary_cross_entropy_with_logits(z, F.one_hot(y, K).float()))
    crit = DetectionOLS(K).eval()
    crit(z, y)
    with torch.no_grad():
        crit.train()(z, y)
    assert crit.store.sums.sum() == 0


def test_state_survives_a_checkpoint(tiny_batch):
    a = DetectionOLS(K)
    z, y = tiny_batch(12, K, 5, requires_grad=True)
    a(z, y)
    a.step()
    a(*tiny_batch(12, K, 6, requires_grad=True))  # a period in progress is saved too
    b = DetectionOLS(K)
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b.soft_labels, a.soft_labels)
    torch.testing.assert_close(b.store.sums, a.store.sums)


def test_bad_input_is_one_line():
    with pytest.raises(ValueError, match=r"takes \(P, K\) = \(\*, 4\) logits, got \(3, 5\)"):
        DetectionOLS(K)(torch.randn(3, 5), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"takes \(N, K \+ 1\) = \(\*, 5\) logits"):
        DetectionOLS(K, head="softmax")(torch.randn(3, 4), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels must be \(3,\)"):
        DetectionOLS(K)(torch.randn(3, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="head must be one of sigmoid, softmax"):
        DetectionOLS(K, head="focal")
    with pytest.raises(ValueError, match="background must be a column"):
        DetectionOLS(K, head="softmax", background=7)


def test_a_step_never_reads_the_device(device_path):
    with device_path() as device:
        for head, width, statistic in (("sigmoid", K, "sigmoid"), ("sigmoid", K, "raw_sigmoid"),
                                       ("softmax", K + 1, "sigmoid")):
            crit = DetectionOLS(K, head=head, statistic=statistic).to(device)
            z = torch.randn(8, width, device=device, requires_grad=True)
            crit(z, torch.randint(0, width, (8,), device=device)).backward()
