"""Losses against Mixup/CutMix targets: the explicit mixed target, and which rows reach the soft labels."""

import pytest
import torch
import torch.nn.functional as F

from ols import OnlineLabelSmoothing, create_loss


def soft_ce(z, q):
    return -(q * torch.log_softmax(z, 1)).sum(1).mean()


def sample(k=5, b=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, k, generator=g) * 2
    y_a = torch.randint(0, k, (b,), generator=g)
    y_b = y_a.flip(0)
    lam = torch.rand(b, generator=g)
    lam[:3] = 1.0  # unmixed rows
    lam[3] = 0.0  # unmixed too: all of y_b
    return z, y_a, y_b, lam


def test_mixed_label_smoothing_is_timms_target():
    k, eps = 5, 0.1
    z, y_a, y_b, lam = sample(k)
    smooth = lambda y: (1 - eps) * F.one_hot(y, k).float() + eps / k  # noqa: E731
    target = lam[:, None] * smooth(y_a) + (1 - lam[:, None]) * smooth(y_b)
    got = create_loss("ls", k, eps=eps).forward_mixed(z, y_a, y_b, lam)
    torch.testing.assert_close(got, soft_ce(z, target))
    onehot = lam[:, None] * F.one_hot(y_a, k).float() + (1 - lam[:, None]) * F.one_hot(y_b, k).float()
    torch.testing.assert_close(create_loss("ce", k).forward_mixed(z, y_a, y_b, lam), soft_ce(z, onehot))


def test_mixed_ols_target_and_gradient():
    k, alpha = 5, 0.3
    crit = OnlineLabelSmoothing(k, alpha=alpha)
    crit.store.soft_labels = torch.softmax(torch.randn(k, k), 1)
    z, y_a, y_b, lam = sample(k)
    q = lambda y: alpha * F.one_hot(y, k).float() + (1 - alpha) * crit.soft_labels[y]  # noqa: E731
    target = lam[:, None] * q(y_a) + (1 - lam[:, None]) * q(y_b)
    za, zb = z.clone().requires_grad_(), z.clone().requires_grad_()
    got, want = crit.forward_mixed(za, y_a, y_b, lam), soft_ce(zb, target)
    torch.testing.assert_close(got, want)
    got.backward()
    want.backward()
    torch.testing.assert_close(za.grad, zb.grad)


def observed(policy, z, y_a, y_b, lam, **kw):
    crit = OnlineLabelSmoothing(z.shape[1], mixed_update=policy, **kw)
    crit.forward_mixed(z, y_a, y_b, lam)
    return crit.store.sums[: z.shape[1]]


def reference_sums(z, labels, weights):
    k = z.shape[1]
    sums = torch.zeros(k, k)
    p = torch.softmax(z, 1)
    for i, (c, w) in enumerate(zip(labels.tolist(), weights.tolist())):
        if w > 0 and p[i, c] == p[i].max():
            sums[c] += w * p[i]
    return sums


@pytest.mark.parametrize("policy", ["unmixed", "dominant", "all"])
def test_each_update_policy_receives_exactly_its_rows(policy):
    k = 4
    z, y_a, y_b, lam = sample(k, b=40, seed=2)
    z[torch.arange(40), y_a] += 3.0  # many rows correct for y_a
    assert bool((y_a == y_b).any()) and bool((y_a != y_b).any())
    dominant = torch.where(lam >= 0.5, y_a, y_b)
    # the target's largest share: 1 for lam 0 or 1 and for a same-class pair, max(lam, 1 - lam) otherwise
    share = torch.tensor([1.0 if a == b else max(m, 1 - m) for a, b, m in zip(y_a.tolist(), y_b.tolist(),
                                                                               lam.tolist())])
    weights = {"unmixed": (share == 1).float(), "dominant": torch.where(share >= 0.7, share, torch.zeros(40)),
               "all": torch.ones(40)}[policy]
    got = observed(policy, z, y_a, y_b, lam, mixed_threshold=0.7)
    torch.testing.assert_close(got, reference_sums(z, dominant, weights))
    assert float(got.sum()) > 0
    # the same rows reach the store when the mixed target comes as (B, K) probabilities (timm's Mixup)
    probs = lam[:, None] * F.one_hot(y_a, k).float() + (1 - lam[:, None]) * F.one_hot(y_b, k).float()
    crit = OnlineLabelSmoothing(k, mixed_update=policy, mixed_threshold=0.7)
    crit(z, probs)
    torch.testing.assert_close(crit.store.sums[:k], got)


def test_losses_that_are_not_linear_refuse_mixed_targets():
    z, y_a, y_b, lam = sample()
    for name in ("gce", "sce", "bootsoft"):
        with pytest.raises(ValueError, match="cannot take Mixup/CutMix targets"):
            create_loss(name, 5).forward_mixed(z, y_a, y_b, lam)
    with pytest.raises(ValueError, match="unknown mixed_update 'some'"):
        OnlineLabelSmoothing(5, mixed_update="some")


@pytest.mark.parametrize("policy", ["unmixed", "dominant", "all"])
def test_pairs_and_probability_targets_agree_under_class_weights_and_at_lam_one_half(policy):
    """crit(z, t) and crit.forward_mixed(z, y_a, y_b, lam) are the same loss, divided by the same total
    (sum_i <t_i, w>), and they credit the same class at an exact tie (the lower index)."""
    k = 5
    z, y_a, y_b, lam = sample(k, b=16, seed=3)
    lam[4:8] = 0.5  # exact ties
    z[torch.arange(16), torch.minimum(y_a, y_b)] += 4.0  # the lower class of a tie is predicted
    weight = torch.tensor([0.2, 1.0, 3.0, 0.5, 2.0])
    probs = lam[:, None] * F.one_hot(y_a, k).float() + (1 - lam[:, None]) * F.one_hot(y_b, k).float()
    pair = OnlineLabelSmoothing(k, alpha=0.3, weight=weight, mixed_update=policy, mixed_threshold=0.5)
    dense = OnlineLabelSmoothing(k, alpha=0.3, weight=weight, mixed_update=policy, mixed_threshold=0.5)
    torch.testing.assert_close(pair.forward_mixed(z, y_a, y_b, lam), dense(z, probs))
    torch.testing.assert_close(pair.store.sums, dense.store.sums)
    assert float(pair.store.sums[:k].sum()) > 0
    q = 0.3 * probs + 0.7 * probs @ pair.soft_labels
    want = -(weight * q * torch.log_softmax(z, 1)).sum() / (probs @ weight).sum()
    torch.testing.assert_close(dense(z, probs), want)


def test_one_hot_probability_target_equals_its_class_index_under_weights():
    k = 4
    z, y = torch.randn(10, k), torch.randint(0, k, (10,))
    weight = torch.tensor([0.5, 1.0, 2.0, 4.0])
    crit = OnlineLabelSmoothing(k, weight=weight).eval()
    torch.testing.assert_close(crit(z, F.one_hot(y, k).float()), crit(z, y))
    torch.testing.assert_close(crit(z, y), F.cross_entropy(z, y, weight=weight, label_smoothing=0.5))


@pytest.mark.parametrize("lam_as", ["float", "scalar tensor", "row tensor"])
def test_lam_as_timm_gives_it_or_as_a_tensor(lam_as):
    k = 5
    z, y_a, y_b, _ = sample(k)
    lam = {"float": 0.3, "scalar tensor": torch.tensor(0.3), "row tensor": torch.full((12,), 0.3)}[lam_as]
    crit = create_loss("ls", k, eps=0.1)
    want = 0.3 * F.cross_entropy(z, y_a, label_smoothing=0.1) + 0.7 * F.cross_entropy(z, y_b,
                                                                                      label_smoothing=0.1)
    torch.testing.assert_close(crit.forward_mixed(z, y_a, y_b, lam), want)
    torch.testing.assert_close(OnlineLabelSmoothing(k, alpha=1.0).forward_mixed(z, y_a, y_b, lam),
                               0.3 * F.cross_entropy(z, y_a) + 0.7 * F.cross_entropy(z, y_b))


@pytest.mark.parametrize("bad", [1.5, -0.5, float("nan")])
@pytest.mark.parametrize("as_tensor", [False, True])
def test_lam_outside_zero_one_or_nan_is_refused(bad, as_tensor):
    k = 5
    z, y_a, y_b, lam = sample(k)
    lam = lam.clone()
    lam[2] = bad
    for crit in (OnlineLabelSmoothing(k), create_loss("ce", k)):
        with pytest.raises(ValueError, match=r"lam .*must (lie|be) in \[0, 1\]"):
            crit.forward_mixed(z, y_a, y_b, lam if as_tensor else bad)
