"""The newer competitors (maxsup, logit_penalty, focal, flsd, logitnorm, nls, label_relaxation):
each equals a plain re-implementation of its paper's or official code's formula on fixed logits,
has float64 gradients that pass gradcheck, and mixes (or refuses to) as its linearity says."""

import math

import pytest
import torch
import torch.nn.functional as F

from ols.losses import create_loss
from ols.losses.protocol import follows_progress, set_progress

K, B = 5, 8


def fixed():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(B, K, generator=g, dtype=torch.float64) * 3.0
    y = torch.randint(0, K, (B,), generator=g)
    z[0, y[0]] += 10.0  # a confident correct row (label relaxation's zero region, focal's flat end)
    return z, y


def logp_y(z, y):
    return torch.log_softmax(z, 1).gather(1, y[:, None]).squeeze(1)


# the formulas, written out from the papers / official code, per sample
def maxsup_ref(z, y, lam):  # Conv/ffcv/losses.py MaxSuppression: ce + lam * (z_max - z_mean)
    return F.cross_entropy(z, y, reduction="none") + lam * (z.max(1).values - z.mean(1))


def logit_penalty_ref(z, y, beta=2e-3):  # LogitPenalty: ce + beta * sum(z^2) / 2
    return F.cross_entropy(z, y, reduction="none") + beta * (z**2).sum(1) / 2


def focal_ref(z, y, gamma):
    p = logp_y(z, y).exp()
    return -((1 - p) ** gamma) * torch.log(p)


def flsd_ref(z, y):  # gamma_dic {0.2: 5, 0.5: 3}, gamma = 3 above 0.5
    p = logp_y(z, y).exp()
    gamma = torch.tensor([5.0 if v < 0.2 else 3.0 for v in p.tolist()], dtype=z.dtype)
    return -((1 - p) ** gamma) * torch.log(p)


def logitnorm_ref(z, y, t=0.04):  # common/loss_function.py: x / (norm + 1e-7) / t
    norms = torch.norm(z, p=2, dim=-1, keepdim=True) + 1e-7
    return F.cross_entropy(torch.div(z, norms) / t, y, reduction="none")


def nls_ref(z, y, r):  # the smoothed target (1 - r) onehot + r / K, negative r allowed
    target = (1 - r) * F.one_hot(y, K).to(z.dtype) + r / K
    return -(target * torch.log_softmax(z, 1)).sum(1)


def relaxation_ref(z, y, alpha=0.1):  # KL(r || p) to the projection r, r held constant
    p = torch.softmax(z, 1)
    py = p.gather(1, y[:, None])
    r = (alpha * p / (1 - py)).detach().scatter(1, y[:, None], 1 - alpha)
    kl = (r * (torch.log(r) - torch.log_softmax(z, 1))).sum(1)
    return torch.where(py.squeeze(1) >= 1 - alpha, torch.zeros_like(kl), kl)


def zipf_ref(z, y, lam=0.1, power=1.0):  # pytorch_zipfls/losses.py: rankdata(-z, "min"), kl over z_{-y}
    from scipy.stats import rankdata

    rank = torch.as_tensor(rankdata(-z.detach().numpy(), axis=1, method="min"), dtype=z.dtype)
    mask = torch.ones_like(z).scatter(1, y[:, None], 0.0).bool()
    q = (1 / rank) ** power
    q = q[mask].view(len(z), K - 1)
    q = q / q.sum(1, keepdim=True)
    log_p = torch.log_softmax(z[mask].view(len(z), K - 1), 1)
    kl = (q * (torch.log(q) - log_p)).sum(1)
    return F.cross_entropy(z, y, reduction="none") + lam * kl


CASES = {
    "maxsup": ({}, lambda z, y: maxsup_ref(z, y, 0.1)),
    "logit_penalty": ({}, logit_penalty_ref),
    "focal": ({}, lambda z, y: focal_ref(z, y, 3.0)),
    "flsd": ({}, flsd_ref),
    "logitnorm": ({}, logitnorm_ref),
    "nls": ({}, lambda z, y: nls_ref(z, y, -0.2)),
    "label_relaxation": ({}, relaxation_ref),
    "focal-gamma1": ({"gamma": 1.0}, lambda z, y: focal_ref(z, y, 1.0)),
    "nls-positive": ({"r": 0.3}, lambda z, y: nls_ref(z, y, 0.3)),
    "nls-very-negative": ({"r": -2.0}, lambda z, y: nls_ref(z, y, -2.0)),
    "logitnorm-tau1": ({"tau": 1.0}, lambda z, y: logitnorm_ref(z, y, 1.0)),
    "label_relaxation-0.3": ({"alpha": 0.3}, lambda z, y: relaxation_ref(z, y, 0.3)),
    "zipf": ({}, zipf_ref),
    "zipf-power2": ({"power": 2.0, "lam": 1.0}, lambda z, y: zipf_ref(z, y, 1.0, 2.0)),
}


def build(case, **kw):
    name = case.split("-")[0]
    args, ref = CASES[case]
    return create_loss(name, K, **args, **kw), ref


@pytest.mark.parametrize("case", sorted(CASES))
def test_equals_the_formula_and_its_gradient(case):
    z, y = fixed()
    crit, ref = build(case, reduction="none")
    za, zb = z.clone().requires_grad_(), z.clone().requires_grad_()
    got, want = crit(za, y), ref(zb, y)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)
    got.sum().backward()
    want.sum().backward()
    torch.testing.assert_close(za.grad, zb.grad, rtol=1e-6, atol=1e-9)
    mean, _ = build(case)
    torch.testing.assert_close(mean(z, y), want.mean(), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradcheck_float64(case):
    z, y = fixed()
    z = (z / 3).requires_grad_()  # away from FLSD's and relaxation's switching points
    crit, _ = build(case)
    assert torch.autograd.gradcheck(lambda t: crit(t, y), (z,), eps=1e-6, atol=1e-6)


def test_float32_logits_and_ignored_rows():
    z, y = fixed()
    y = y.clone()
    y[3] = -100
    for name in ("maxsup", "focal", "label_relaxation"):
        crit = create_loss(name, K)
        keep = y != -100
        want = create_loss(name, K, reduction="none")(z[keep].float(), y[keep]).mean()
        torch.testing.assert_close(crit(z.float(), y), want)


def test_maxsup_lambda_follows_the_official_schedule():
    z, y = fixed()
    crit = create_loss("maxsup", K, reduction="none")
    assert follows_progress(crit) and not follows_progress(create_loss("focal", K))
    for epoch, epochs in ((0, 10), (5, 10), (9, 10)):
        assert set_progress(crit, epoch / epochs) == 1
        lam = 0.1 + (0.2 - 0.1) * epoch / epochs  # begin + (end - begin) * current_epoch / epochs
        torch.testing.assert_close(crit(z, y), maxsup_ref(z, y, lam))
    with pytest.raises(ValueError, match="fraction must be in \\[0, 1\\]"):
        crit.set_progress(1.5)
    assert "lam" not in crit.state_dict()  # set again at every epoch start, resumed runs included


LINEAR = ["maxsup", "logit_penalty", "logitnorm", "nls"]


@pytest.mark.parametrize("name", LINEAR)
def test_linear_losses_mix_as_a_probability_target(name):
    z, y = fixed()
    y_b = y.roll(1)
    lam = torch.linspace(0.1, 0.9, B, dtype=torch.float64)
    crit = create_loss(name, K, reduction="none")
    assert crit.linear_in_target
    mixed = crit.forward_mixed(z, y, y_b, lam)
    torch.testing.assert_close(mixed, lam * crit(z, y) + (1 - lam) * crit(z, y_b))
    t = lam[:, None] * F.one_hot(y, K) + (1 - lam[:, None]) * F.one_hot(y_b, K)
    torch.testing.assert_close(crit(z, t.double()), mixed, rtol=1e-6, atol=1e-6)  # t is checked as float32


@pytest.mark.parametrize("name", ["focal", "flsd", "label_relaxation", "zipf"])
def test_nonlinear_losses_refuse_mixed_targets(name):
    z, y = fixed()
    crit = create_loss(name, K)
    with pytest.raises(ValueError, match="not linear in its target"):
        crit.forward_mixed(z, y, y.roll(1), 0.5)


@pytest.mark.parametrize("name, bad, msg", [
    ("maxsup", {"begin_lambda": -0.1}, "non-negative"), ("logit_penalty", {"beta": -1}, "non-negative"),
    ("focal", {"gamma": -1}, "non-negative"), ("flsd", {"threshold": 1.5}, "threshold"),
    ("logitnorm", {"tau": 0}, "tau must be positive"), ("nls", {"r": 1.5}, "at most 1"),
    ("label_relaxation", {"alpha": 1.0}, "alpha must be in \\(0, 1\\)"),
    ("zipf", {"lam": -1.0}, "non-negative"),
])
def test_bad_arguments_are_one_line(name, bad, msg):
    with pytest.raises(ValueError, match=msg):
        create_loss(name, K, **bad)


def test_label_relaxation_equals_the_pypi_package():
    oracle = pytest.importorskip("label_relaxation")
    z, y = fixed()
    for alpha in (0.05, 0.1, 0.4):
        za, zb = z.clone().requires_grad_(), z.clone().requires_grad_()
        got = create_loss("label_relaxation", K, alpha=alpha, reduction="none")(za, y)
        want = oracle.label_relaxation_loss(zb, y, alpha=alpha, reduction="none")
        torch.testing.assert_close(got, want.to(got.dtype), rtol=1e-6, atol=1e-9)
        got.sum().backward()
        want.sum().backward()
        torch.testing.assert_close(za.grad, zb.grad.to(za.grad.dtype), rtol=1e-6, atol=1e-9)


def test_label_relaxation_is_finite_where_p_y_is_one():
    z = torch.tensor([[200.0, 0.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    loss = create_loss("label_relaxation", 3, reduction="none")(z, torch.tensor([0, 0]))
    uniform = 0.9 * math.log(0.9 * 3) + 0.1 * math.log(0.1 * 3 / 2)  # p = 1/3 each: the closed form
    assert loss[0] == 0 and math.isclose(float(loss[1].detach()), uniform, rel_tol=1e-6)
    loss.sum().backward()
    assert torch.isfinite(z.grad).all()


@pytest.mark.slow  # a subprocess, or every shipped spec parsed: several seconds
def test_list_presets_shows_every_loss_with_its_defaults(capsys):
    from ols.cli import main
    from ols.losses import LOSSES

    assert main(["list-presets"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.split("losses (", 1)[1].splitlines()[1:] if line.strip()}
    assert set(lines) == set(LOSSES)
    assert "begin_lambda=0.1, end_lambda=0.2" in lines["maxsup"] and "gamma_low=5.0" in lines["flsd"]
    assert "r=-0.2" in lines["nls"] and "ignore_index" not in out


def test_zipf_ties_share_the_smallest_rank_and_correct_only_averages_the_correct_rows():
    from ols.losses.zipf import zipf_ranks

    z = torch.tensor([[4.0, 3.0, 3.0, 2.0, 1.0]])  # the official file's own example
    assert zipf_ranks(z).tolist() == [[1.0, 2.0, 2.0, 4.0, 5.0]]
    zz, y = fixed()
    right = zz.argmax(1) == y
    assert 0 < int(right.sum()) < B  # some rows right, some wrong
    kl = (zipf_ref(zz, y, lam=1.0) - F.cross_entropy(zz, y, reduction="none"))
    want = F.cross_entropy(zz, y) + 0.1 * kl[right].mean()  # the official --mask: mean over correct rows
    torch.testing.assert_close(create_loss("zipf", K, correct_only=True)(zz, y), want)
