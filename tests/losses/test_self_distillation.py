"""Deep supervision with distillation (BYOT, BYOT + OLS, ds+ols) and Xu et al.'s two-view loss,
each term against an explicit formula written out here."""


import pytest
import torch
import torch.nn.functional as F

from ols.losses import create_loss
from ols.losses.protocol import end_of_epoch, is_periodic, soft_labels_of

K = 5


def exits(batch=6, n=3, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    zs = [(torch.randn(batch, K, generator=g) * scale).requires_grad_() for _ in range(n)]
    y = torch.randint(0, K, (batch,), generator=g)
    return zs, y


def ce(z, y):
    """-log p_y, batch mean, by hand."""
    p = torch.exp(z) / torch.exp(z).sum(1, keepdim=True)
    return -torch.log(p[torch.arange(len(y)), y]).mean()


def kl(teacher, student, T):
    """KL(softmax(teacher / T) || softmax(student / T)), batch mean, by hand."""
    p = torch.softmax(teacher / T, 1)
    q = torch.softmax(student / T, 1)
    return (p * (p.log() - q.log())).sum(1).mean()


def observed(z, y):
    """What a store's sums hold after seeing logits z: the softmax of the correct rows, per class."""
    z = z.detach()
    ok = z.argmax(1) == y
    return torch.zeros(K, K).index_add_(0, y[ok], torch.softmax(z[ok], 1))


def soft_ce(z, q):
    return -(q * torch.log_softmax(z, 1)).sum(1).mean()


def test_byot_is_luanyunteng_loss_and_the_journal_variant_is_reachable():
    zs, y = exits()
    loss = create_loss("byot", K)(zs, y)  # kd 0.1, T 3, T^2, every exit (1 - kd)
    want = 0.9 * sum(ce(z, y) for z in zs) + 0.1 * sum(9.0 * kl(zs[0].detach(), z, 3.0) for z in zs[1:])
    assert torch.allclose(loss, want, atol=1e-5)
    journal = create_loss("byot", K, kd=0.3, t_squared=False, deepest_weight=1.0, shallow_weight=0.7)
    want = ce(zs[0], y) + sum(0.7 * ce(z, y) + 0.3 * kl(zs[0].detach(), z, 3.0) for z in zs[1:])
    assert torch.allclose(journal(zs, y), want, atol=1e-5)


def test_the_teacher_is_detached_in_the_kd_term():
    zs, y = exits()
    create_loss("deep_supervision", K, deepest_weight=0.0, kd=1.0, T=2.0)(zs, y).backward()
    assert zs[0].grad is None or torch.count_nonzero(zs[0].grad) == 0
    assert torch.count_nonzero(zs[1].grad) > 0


def test_byot_ols_uses_one_store_observed_from_the_deepest_exit_only():
    zs, y = exits(batch=40, scale=3.0)
    y[:5] = zs[0].argmax(1)[:5]  # some correct rows for the deepest exit
    y[5:10] = zs[1].argmax(1)[5:10]  # rows correct at a shallow exit only (mostly)
    loss_fn = create_loss("byot+ols", K, num_exits=3)
    S = loss_fn.soft_labels.clone()  # uniform before the first step
    loss = loss_fn(zs, y)
    hard_soft = lambda z: 0.5 * ce(z, y) + 0.5 * soft_ce(z, S[y])  # noqa: E731  Eq. (4), alpha 0.5
    want = 0.9 * sum(hard_soft(z) for z in zs) + 0.1 * sum(9.0 * kl(zs[0].detach(), z, 3.0) for z in zs[1:])
    assert torch.allclose(loss, want, atol=1e-5)
    # the store's sums: the deepest exit's correctly classified rows, nothing else
    sums = observed(zs[0], y)
    assert torch.allclose(loss_fn.base.store.sums[:K], sums, atol=1e-6)
    loss_fn.step()
    counts = sums.sum(1, keepdim=True)
    want_s = torch.where(counts > 0, sums / counts.clamp_min(1e-12), torch.full_like(sums, 1.0 / K))
    assert torch.allclose(soft_labels_of(loss_fn), want_s, atol=1e-6)
    assert is_periodic(loss_fn)
    with pytest.warns(UserWarning, match="no training sample was observed"):
        assert end_of_epoch(loss_fn)  # the trainer's epoch-end step reaches the store


def test_per_exit_stores_observe_their_own_exit():
    zs, y = exits(batch=30, scale=3.0)
    loss_fn = create_loss("byot+ols", K, num_exits=3, stores="per_exit")
    loss_fn(zs, y)
    for z, base in zip(zs, loss_fn.bases):
        assert torch.allclose(base.store.sums[:K], observed(z, y))
    assert len(loss_fn.state_dict()) == 3 * len(loss_fn.bases[0].state_dict())
    with pytest.raises(ValueError, match="stores='per_exit' needs num_exits"):
        create_loss("byot+ols", K, stores="per_exit")


def test_ds_ols_is_the_official_script_formula_after_a_ce_only_first_period():
    zs, y = exits(batch=20, scale=3.0)
    loss_fn = create_loss("ds+ols", K, num_exits=3)
    first = loss_fn(zs, y)
    assert torch.allclose(first, ce(zs[0], y), atol=1e-6)  # epoch 0: CE on the deepest exit alone
    first.backward()
    for z in zs[1:]:  # no gradient, but a zero one: DDP's reducer sees every parameter
        assert z.grad is not None and torch.count_nonzero(z.grad) == 0
    assert torch.allclose(loss_fn.base.store.sums[:K], observed(zs[0], y))
    loss_fn.step()
    S = loss_fn.soft_labels.clone()
    zs2, _ = exits(batch=20, seed=1)
    second = loss_fn(zs2, y)
    sce = lambda z: soft_ce(z, S[y])  # noqa: E731
    # train_cifar_all_methods_deepsupervision.py:430-435
    official = (0.5 * (1.5 * ce(zs2[0], y) + 0.5 * ce(zs2[1], y) + 0.5 * ce(zs2[2], y))
                + 0.5 * (1.5 * sce(zs2[0]) + 0.25 * sce(zs2[1]) + 0.25 * sce(zs2[2])))
    assert torch.allclose(second, official, atol=1e-5)


def test_bad_arguments_name_the_fix():
    with pytest.raises(ValueError, match=r"T \(the distillation temperature\) must be > 0"):
        create_loss("byot", K, T=0.0)
    with pytest.raises(ValueError, match="shallow_weight must be a finite weight >= 0"):
        create_loss("byot", K, shallow_weight=-0.1)
    with pytest.raises(ValueError, match="kd must be a finite weight >= 0"):
        create_loss("byot+ols", K, kd=-1.0)
    with pytest.raises(ValueError, match="deepest_soft must be a finite weight >= 0"):
        create_loss("ds+ols", K, deepest_soft=-1.0)
    with pytest.raises(ValueError, match="needs each sample's dataset index"):
        create_loss("deep_supervision", K, base="ols_single", base_args={"num_samples": 10})
    with pytest.raises(ValueError, match="first_period_deepest_only needs a base with update periods"):
        create_loss("deep_supervision", K, first_period_deepest_only=True)
    with pytest.raises(ValueError, match="unknown loss 'nope'"):
        create_loss("deep_supervision", K, base="nope")
    zs, y = exits()
    with pytest.raises(ValueError, match=r"takes every exit's logits.*--exits byot"):
        create_loss("byot", K)(zs[0], y)
    with pytest.raises(ValueError, match="built for 4 exits, got 3"):
        create_loss("byot", K, num_exits=4)(zs, y)
    with pytest.raises(ValueError, match=r"T \(the temperature\) must be > 0"):
        create_loss("ddgsd", K, T=-1.0)
    with pytest.raises(ValueError, match="lam must be a finite weight >= 0"):
        create_loss("ddgsd", K, lam=-1.0)


@pytest.mark.parametrize("detach", [False, True])
@pytest.mark.parametrize("T", [1.0, 4.0])
def test_ddgsd_is_ce_on_both_views_plus_the_symmetric_kl(detach, T):
    (za, zb), y = exits(n=2)
    loss = create_loss("ddgsd", K, lam=0.7, T=T, detach=detach)(za, zb, y)
    ka = kl(za.detach() if detach else za, zb, T)  # KL(p_a || p_b)
    kb = kl(zb.detach() if detach else zb, za, T)
    want = ce(za, y) + ce(zb, y) + 0.7 * T * T * (ka + kb)
    assert torch.allclose(loss, want, atol=1e-5)
    ga = torch.autograd.grad(loss, za, retain_graph=True)[0]
    assert torch.allclose(ga, torch.autograd.grad(want, za)[0], atol=1e-5)


def test_ddgsd_feature_term_is_the_linear_mmd():
    (za, zb), y = exits(n=2)
    ha, hb = torch.randn(6, 8), torch.randn(6, 8)
    loss_fn = create_loss("ddgsd", K, mu=0.5)
    plain = create_loss("ddgsd", K)(za, zb, y)
    mmd = sum((ha[:, d].mean() - hb[:, d].mean()) ** 2 for d in range(8))
    assert torch.allclose(loss_fn(za, zb, y, ha, hb), plain + 0.5 * mmd, atol=1e-5)
    with pytest.raises(ValueError, match="mu > 0 needs both views' penultimate features"):
        loss_fn(za, zb, y)


def test_a_shallow_exit_reads_the_soft_labels_without_adding_to_them():
    crit = create_loss("ols", K)
    z, y = torch.randn(8, K) * 4, torch.randint(0, K, (8,))
    a = crit(z, y, observe=False, alpha=0.25)
    assert torch.count_nonzero(crit.store.sums) == 0 and int(crit.num_iterations) == 0
    want = 0.25 * F.cross_entropy(z, y) + 0.75 * soft_ce(z, crit.soft_labels[y])
    assert torch.allclose(a, want, atol=1e-6)
    with pytest.raises(ValueError, match="alpha must be in"):
        crit(z, y, alpha=1.5)


def test_deep_supervision_takes_a_loss_instance_and_equals_the_named_form():
    """The class takes the per-exit loss itself (no registry name inside, so no import cycle);
    the registry's ``base=NAME`` form builds the same loss."""
    from ols.losses.self_distillation import DeepSupervision
    from ols.losses.standard import LabelSmoothing

    zs, y = exits()
    direct = DeepSupervision(K, LabelSmoothing(K, eps=0.2), kd=0.5, T=2.0)
    named = create_loss("deep_supervision", K, base="ls", base_args={"eps": 0.2}, kd=0.5, T=2.0)
    ls = lambda z: 0.8 * ce(z, y) - 0.2 * torch.log_softmax(z, 1).mean(1).mean()  # noqa: E731
    by_hand = sum(ls(z) for z in zs) + 0.5 * 4.0 * (kl(zs[0], zs[1], 2.0) + kl(zs[0], zs[2], 2.0))
    assert torch.allclose(direct(zs, y), by_hand, atol=1e-5)
    assert torch.allclose(named(zs, y), by_hand, atol=1e-5)
    with pytest.raises(TypeError, match="base must be a loss instance"):
        DeepSupervision(K, "ls")
    with pytest.raises(ValueError, match="is itself a deep-supervision loss"):
        create_loss("deep_supervision", K, base="byot")
