"""Every baseline against its formula, written out independently in the test."""

import math

import pytest
import torch
import torch.nn.functional as F

from ols import LOSSES, create_loss
from ols.losses import loss_parameters

torch.manual_seed(0)
Z = torch.randn(12, 5, dtype=torch.float64) * 2
Y = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 2, 2, 4, 1])


def rows():
    for z, y in zip(Z.tolist(), Y.tolist()):
        m = max(z)
        lse = m + math.log(sum(math.exp(v - m) for v in z))
        logp = [v - lse for v in z]
        yield logp, [math.exp(v) for v in logp], y


def mean(values):
    values = list(values)
    return sum(values) / len(values)


def check(name, want, rel=1e-5, **kw):
    got = create_loss(name, 5, **kw)(Z.float(), Y)
    assert got.item() == pytest.approx(want, rel=rel)


def test_ce():
    check("ce", mean(-lp[y] for lp, _, y in rows()))


def test_ls_both_conventions():
    eps = 0.2
    want = mean(-sum(((1 - eps) * (k == y) + eps / 5) * lp[k] for k in range(5)) for lp, _, y in rows())
    check("ls", want, eps=eps)
    want = mean(-sum(((1 - eps) if k == y else eps / 4) * lp[k] for k in range(5)) for lp, _, y in rows())
    check("ls", want, eps=eps, non_target_only=True)


def test_bootstrap_soft_and_hard():
    b = 0.95
    want = mean(-sum((b * (k == y) + (1 - b) * p[k]) * lp[k] for k in range(5)) for lp, p, y in rows())
    check("bootsoft", want)
    b = 0.8
    want = mean(-(b * lp[y] + (1 - b) * max(lp)) for lp, _, y in rows())
    check("boothard", want)


def test_bootsoft_gradient_flows_through_prediction():
    z = Z.clone().requires_grad_()
    create_loss("bootsoft", 5)(z, Y).backward()
    z2 = Z.clone().requires_grad_()
    logp = torch.log_softmax(z2, 1)
    q = 0.95 * F.one_hot(Y, 5) + 0.05 * logp.exp()  # prediction not detached
    (-(q * logp).sum(1).mean()).backward()
    torch.testing.assert_close(z.grad, z2.grad)


def test_sce():
    a, b, A = 6.0, 0.1, -4.0
    check("sce", mean(a * -lp[y] + b * -A * (1 - p[y]) for lp, p, y in rows()))
    check("sce", mean(0.1 * -lp[y] + 1.0 * -A * (1 - p[y]) for lp, p, y in rows()), alpha=0.1, beta=1.0)


def test_gce():
    q = 0.7
    check("gce", mean((1 - p[y] ** q) / q for _, p, y in rows()))


def test_pairwise_confusion():
    data = list(rows())
    half = len(data) // 2
    ce = [-lp[y] for lp, _, y in data]
    extra = [0.0] * len(data)
    for i in range(half):
        (_, p, y), (_, p2, y2) = data[i], data[i + half]
        if y != y2:
            d = sum((u - v) ** 2 for u, v in zip(p, p2))
            extra[i] += d
            extra[i + half] += d
    check("pairwise_confusion", mean(c + 10.0 * e for c, e in zip(ce, extra)))


def test_tfkd_reg():
    a, t, alpha = 0.99, 40.0, 0.95
    total = []
    for lp, _, y in rows():
        u = [a if k == y else (1 - a) / 4 for k in range(5)]
        m = sum(math.exp(v / t) for v in u)
        teach = [math.exp(v / t) / m for v in u]
        z = Z[len(total)].tolist()
        zs = [v / t for v in z]
        mz = max(zs)
        lse = mz + math.log(sum(math.exp(v - mz) for v in zs))
        kl = sum(q * (math.log(q) - (v - lse)) for q, v in zip(teach, zs))
        total.append((1 - alpha) * -lp[y] + alpha * t * t * kl)
    # T^2 = 1600 times a KL of ~1e-3 computed in float32: allow float32-level error on it
    check("tfkd_reg", mean(total), rel=2e-4)


def test_disturblabel_rate_and_eval_mode():
    crit = create_loss("disturblabel", 10, alpha=0.5)
    torch.manual_seed(1)
    y = torch.randint(0, 10, (20000,))
    changed = (crit.disturb(y) != y).float().mean().item()
    assert changed == pytest.approx(0.5 * 9 / 10, abs=0.015)  # a uniform draw can hit y
    crit = create_loss("disturblabel", 5, alpha=0.5).eval()
    torch.testing.assert_close(crit(Z.float(), Y), F.cross_entropy(Z.float(), Y))
    crit.train()
    torch.manual_seed(2)
    got = crit(Z.float(), Y)
    torch.manual_seed(2)
    flip = torch.rand(Y.shape) < 0.5
    rand = torch.randint(0, 5, Y.shape)
    want = F.cross_entropy(Z.float(), torch.where(flip, rand, Y))
    torch.testing.assert_close(got, want)


#: one (B, K) output each; the self-distillation losses take several (their tests: test_self_distillation.py)
SINGLE_OUTPUT = sorted(n for n, cls in LOSSES.items()
                       if not getattr(cls, "takes_exits", False) and getattr(cls, "views", 1) == 1)


def _contract_case(name, **kw):
    """The loss and how a batch reaches it: with the samples' indices (pskd, pencil, self_learning), or
    with a same-class partner's logits (cskd; here the batch reversed), or as (logits, target)."""
    if "num_samples" in loss_parameters(name):
        crit = create_loss(name, 5, num_samples=8, **({"epochs": 2} if name == "pskd" else {}), **kw)
        if getattr(crit, "needs_index", False):
            return crit, lambda z, y: crit(z, y, index=torch.arange(len(y)))
        return crit, crit
    crit = create_loss(name, 5, **kw)
    if name == "cskd":
        return crit, lambda z, y: crit(z, z.detach().flip(0), y)
    return crit, crit


@pytest.mark.parametrize("name", sorted(set(SINGLE_OUTPUT) - {"ols_single"}))
def test_common_contract(name):
    _, crit = _contract_case(name)
    z = torch.randn(8, 5, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 4, -100, 1, 2])
    loss = crit(z, y)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(z.grad).all()
    per = _contract_case(name, reduction="none")[1](z.detach(), y)
    assert per.shape == (8,) and per[5] == 0
    with pytest.raises(ValueError, match="target contains 7"):
        crit(z, torch.tensor([0, 1, 2, 3, 4, 7, 1, 2]))
    with pytest.raises(ValueError, match="columns but num_classes is 5"):
        crit(torch.randn(8, 4), y)


def test_registry_errors():
    with pytest.raises(ValueError, match="unknown loss 'no_such'; known losses: bmm, boothard"):
        create_loss("no_such", 5)
    with pytest.raises(ValueError, match="loss 'ls' does not take beta; it takes: eps"):
        create_loss("ls", 5, beta=0.1)
    assert "num_samples" in loss_parameters("ols_single")


def test_stateful_baselines_keep_state_in_buffers():
    for name in LOSSES:
        kw = {"num_samples": 4} if "num_samples" in loss_parameters(name) else {}
        kw = {"num_samples": 4, "epochs": 2} if name == "pskd" else kw
        crit = create_loss(name, 3, **kw)
        if hasattr(crit, "step") and getattr(crit, "periodic", True):  # byot's CE base has nothing to step
            assert len(list(crit.buffers())) > 0 and crit.state_dict()
