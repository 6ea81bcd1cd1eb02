"""OLS where ``F.cross_entropy`` goes: class weights, label smoothing, extra dimensions, empty
batches, probability targets; and the warning for a loss that is never stepped."""

import warnings

import pytest
import torch
import torch.nn.functional as F

from ols import OnlineLabelSmoothing, create_loss

K = 5


def data(b=16, seed=0, extra=()):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, K, *extra, generator=g) * 2
    y = torch.randint(0, K, (b, *extra), generator=g)
    return z, y


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_weight_and_label_smoothing_match_torch_with_uniform_soft_labels(reduction):
    """S uniform: q = alpha((1 - eps) e_y + eps/K) + (1 - alpha)/K, torch's smoothing 1 - alpha(1 - eps)."""
    alpha, eps = 0.6, 0.2
    w = torch.tensor([1.0, 2.0, 0.5, 3.0, 0.0])
    z, y = data()
    y[2] = -100  # ignored
    crit = OnlineLabelSmoothing(K, alpha=alpha, weight=w, label_smoothing=eps, reduction=reduction).eval()
    want = F.cross_entropy(z, y, weight=w, label_smoothing=1 - alpha * (1 - eps), reduction=reduction)
    torch.testing.assert_close(crit(z, y), want)


def test_weighted_loss_with_learned_soft_labels_by_formula():
    alpha = 0.3
    w = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.5])
    crit = OnlineLabelSmoothing(K, alpha=alpha, weight=w).eval()
    crit.store.soft_labels = torch.softmax(torch.randn(K, K), 1)
    z, y = data(seed=1)
    q = alpha * F.one_hot(y, K).float() + (1 - alpha) * crit.soft_labels[y]
    per = -(w * q * torch.log_softmax(z, 1)).sum(1)
    torch.testing.assert_close(crit(z, y), per.sum() / w[y].sum())
    lam = torch.ones(16)  # forward_mixed with lam = 1 is the plain weighted loss
    torch.testing.assert_close(crit.forward_mixed(z, y, y.roll(1), lam), crit(z, y))


def test_extra_dimensions_count_each_position_as_a_sample():
    z, y = data(b=3, extra=(4, 2))  # (B, K, H, W) logits, (B, H, W) targets
    crit = OnlineLabelSmoothing(K, reduction="none")
    flat = OnlineLabelSmoothing(K, reduction="none")
    per = crit(z, y)
    assert per.shape == (3, 4, 2)
    torch.testing.assert_close(per.reshape(-1), flat(z.movedim(1, -1).reshape(-1, K), y.reshape(-1)))
    torch.testing.assert_close(crit.store.sums, flat.store.sums)
    uniform = OnlineLabelSmoothing(K, alpha=0.5).eval()
    torch.testing.assert_close(uniform(z, y), F.cross_entropy(z, y, label_smoothing=0.5))
    with pytest.raises(ValueError, match="need a target of shape \\(3, 4, 2\\)"):
        crit(z, y[:, :2])


def test_an_empty_batch_is_nan_under_mean_as_torch():
    z, y = torch.zeros(0, K), torch.zeros(0, dtype=torch.long)
    assert torch.isnan(F.cross_entropy(z, y))
    assert torch.isnan(OnlineLabelSmoothing(K)(z, y))
    assert float(OnlineLabelSmoothing(K, reduction="sum")(z, y)) == 0.0
    assert torch.isnan(OnlineLabelSmoothing(K, weight=torch.ones(K))(z, y))


@pytest.mark.parametrize("name", ["ce", "ls", "bootsoft", "sce", "gce", "pairwise_confusion", "tfkd_reg",
                                  "ols_single", "ols_topk"])
def test_every_class_index_loss_is_nan_on_an_empty_or_all_ignored_batch_under_mean(name):
    from ols import create_loss

    def make(reduction):
        if name == "ols_topk":
            return OnlineLabelSmoothing(K, topk=3, reduction=reduction)
        extra = {"num_samples": 4} if name == "ols_single" else {}
        return create_loss(name, K, reduction=reduction, **extra)

    def call(crit, z, y):
        return crit(z, y, index=torch.zeros(len(y), dtype=torch.long)) if name == "ols_single" else crit(z, y)

    empty = (torch.zeros(0, K), torch.zeros(0, dtype=torch.long))
    ignored = (torch.randn(3, K), torch.full((3,), -100))
    for z, y in (empty, ignored):
        assert torch.isnan(F.cross_entropy(z, y))  # the behaviour to match
        assert torch.isnan(call(make("mean"), z, y)), (name, len(y))
        assert float(call(make("sum"), z, y)) == 0.0


def probability_target(b=16, seed=3):
    g = torch.Generator().manual_seed(seed)
    t = torch.softmax(torch.randn(b, K, generator=g) * 3, 1)
    t[:4] = F.one_hot(torch.arange(4), K).float()  # some rows one-hot
    return t


def test_probability_targets_ce_and_ls_match_torch_and_smooth_once():
    z, _ = data()
    t = probability_target()
    torch.testing.assert_close(create_loss("ce", K)(z, t), F.cross_entropy(z, t))
    eps = 0.1
    smoothed = (1 - eps) * t + eps / K
    want = -(smoothed * torch.log_softmax(z, 1)).sum(1).mean()
    torch.testing.assert_close(create_loss("ls", K, eps=eps)(z, t), want)
    for name in ("gce", "sce", "bootsoft"):
        with pytest.raises(ValueError, match="cannot take probability targets"):
            create_loss(name, K)(z, t)


def test_ols_probability_target_by_formula_gradient_and_weight():
    alpha = 0.4
    crit = OnlineLabelSmoothing(K, alpha=alpha)
    crit.store.soft_labels = torch.softmax(torch.randn(K, K), 1)
    z, _ = data(seed=5)
    t = probability_target()
    target = alpha * t + (1 - alpha) * t @ crit.soft_labels  # sum_c t_c q(c)
    za, zb = z.clone().requires_grad_(), z.clone().requires_grad_()
    got, want = crit(za, t), -(target * torch.log_softmax(zb, 1)).sum(1).mean()
    torch.testing.assert_close(got, want)
    got.backward()
    want.backward()
    torch.testing.assert_close(za.grad, zb.grad)
    # unmixed (the default): only the one-hot rows reach the statistics
    p = torch.softmax(z, 1)
    ref = torch.zeros(K, K)
    for i in range(4):
        if p[i, i] == p[i].max():
            ref[i] += p[i]
    torch.testing.assert_close(crit.store.sums[:K], ref)
    w = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.5])
    weighted = OnlineLabelSmoothing(K, alpha=alpha, weight=w).eval()
    weighted.store.soft_labels = crit.soft_labels
    # class weights: the weighted soft cross-entropy over the targets' total weight, sum_i <t_i, w> (as a
    # class index divides by sum_i w[y_i]; F.cross_entropy divides a probability target by B instead)
    per = -(w * target * torch.log_softmax(z, 1)).sum(1)
    torch.testing.assert_close(weighted(z, t), per.sum() / (t @ w).sum())


def test_a_loss_never_stepped_warns_once_and_a_step_resets_the_count():
    z, y = data()
    crit = OnlineLabelSmoothing(K, warn_unstepped_after=3)
    crit(z, y)
    crit(z, y)
    with pytest.warns(UserWarning, match="3 training forwards without a step\\(\\).*update_every"):
        crit(z, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        crit(z, y)  # once only
        crit.step()
        crit(z, y)
        crit(z, y)  # two since the step: under the limit
        OnlineLabelSmoothing(K, warn_unstepped_after=None)(z, y)
        every = OnlineLabelSmoothing(K, update_every=2, warn_unstepped_after=1)
        for _ in range(4):
            every(z, y)  # steps itself: nothing to warn about
        crit.eval()
        for _ in range(5):
            crit(z, y)  # evaluation forwards do not count
