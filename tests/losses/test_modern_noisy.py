"""Co-teaching(+), ELR and DivideMix against plain re-implementations that follow their authors' public code
(facts in ../shared/research/noisy-labels-2026-12-07.md), on identical inputs."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ols import create_loss
from ols.losses.noisy.coteaching import disagreement_selection, forget_rate, small_loss_mask
from ols.losses.noisy.dividemix import (
    clean_probability,
    co_guess,
    co_refine,
    lambda_u_ramp,
    mixmatch_terms,
    sharpen,
)
from ols.losses.noisy.elr import elr_regulariser, elr_target
from ols.models.pair import NetworkPair, ensemble_log_probs
from ols.tasks.coteaching import CoTeachingTask

K = 5


# -- Co-teaching ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tau,tk,epochs", [(0.4, 10, 30), (0.8, 3, 6), (0.2, 1, 4), (0.5, 0, 3)])
def test_the_forget_rate_follows_the_authors_linspace_then_stays(tau, tk, epochs):
    ramp = np.ones(epochs) * tau  # bhanML/Co-teaching main.py: rate_schedule
    ramp[:tk] = np.linspace(0, tau, tk)
    got = [forget_rate(e, tau, tk) for e in range(1, epochs + 1)]
    np.testing.assert_allclose(got, ramp, rtol=0, atol=1e-12)


def _authors_coteaching(logits1, logits2, labels, forget):
    """Their loss_coteaching as a plain program: each net's CE mean over its peer's small-loss samples."""
    l1 = F.cross_entropy(logits1, labels, reduction="none").detach().numpy()
    l2 = F.cross_entropy(logits2, labels, reduction="none").detach().numpy()
    keep = int((1 - forget) * len(labels))
    ind1, ind2 = np.argsort(l1, kind="stable")[:keep], np.argsort(l2, kind="stable")[:keep]
    up1 = F.cross_entropy(logits1[torch.as_tensor(ind2)], labels[torch.as_tensor(ind2)])
    up2 = F.cross_entropy(logits2[torch.as_tensor(ind1)], labels[torch.as_tensor(ind1)])
    return up1 + up2, set(ind1.tolist()), set(ind2.tolist())


class _Fixed(nn.Module):
    """A 'network' whose output is a learnable table of logits (so the step's gradient is the loss's)."""

    def __init__(self, logits):
        super().__init__()
        self.z = nn.Parameter(logits.clone())

    def forward(self, x):
        return self.z[x.long().flatten()]


@pytest.mark.parametrize("epoch", [1, 2, 4])
def test_coteaching_trains_each_network_on_its_peers_small_loss_samples(epoch):
    torch.manual_seed(0)
    b = 16
    z1, z2 = torch.randn(b, K) * 2, torch.randn(b, K) * 2
    y = torch.randint(0, K, (b,))
    crit = create_loss("coteaching", K, epochs=8, noise_rate=0.5, gradual_epochs=3)
    task = CoTeachingTask(crit)
    task.set_epoch(epoch)
    pair = NetworkPair(_Fixed(z1), _Fixed(z2))
    out = task(pair, torch.arange(b).float(), y, torch.arange(b))
    want, ind1, ind2 = _authors_coteaching(z1, z2, y, forget_rate(epoch, 0.5, 3))
    torch.testing.assert_close(out["loss"], want)
    out["loss"].backward()
    # network 1 moves only on network 2's pick, and the reverse (the exchange)
    assert {i for i in range(b) if pair.members[0].z.grad[i].abs().sum() > 0} == ind2
    assert {i for i in range(b) if pair.members[1].z.grad[i].abs().sum() > 0} == ind1
    torch.testing.assert_close(out["logits"], ensemble_log_probs(torch.stack([z1, z2])))


def test_small_loss_mask_keeps_the_smallest_and_breaks_ties_by_position():
    losses = torch.tensor([0.5, 0.1, 0.5, 0.2, 0.5])
    assert small_loss_mask(losses, 3).tolist() == [True, True, False, True, False]


def _authors_plus(logits1, logits2, labels, forget):
    """Co-teaching+ on the disagreement set (ranked by CE of the logits), or the whole batch without one."""
    d = np.flatnonzero(logits1.argmax(1).numpy() != logits2.argmax(1).numpy())
    if len(d) == 0:
        return F.cross_entropy(logits1, labels) + F.cross_entropy(logits2, labels)
    loss, _, _ = _authors_coteaching(logits1[torch.as_tensor(d)], logits2[torch.as_tensor(d)],
                                     labels[torch.as_tensor(d)], forget)
    return loss if int((1 - forget) * len(d)) else torch.zeros(())


@pytest.mark.parametrize("seed", range(4))
def test_coteaching_plus_selects_inside_the_disagreement_set(seed):
    torch.manual_seed(seed)
    b = 12
    z1 = torch.randn(b, K)
    z2 = z1.clone()
    flip = torch.rand(b) < [0.0, 0.3, 0.6, 0.08][seed]  # seed 0: the networks agree everywhere
    z2[flip] = torch.randn(int(flip.sum()), K) * 3
    y = torch.randint(0, K, (b,))
    crit = create_loss("coteaching_plus", K, epochs=10, noise_rate=0.4, gradual_epochs=2, init_epochs=1)
    task = CoTeachingTask(crit)
    task.set_epoch(3)
    out = task(NetworkPair(_Fixed(z1), _Fixed(z2)), torch.arange(b).float(), y, torch.arange(b))
    torch.testing.assert_close(out["loss"], _authors_plus(z1, z2, y, 0.4))


def test_disagreement_selection_ranks_outside_rows_last():
    losses = torch.tensor([0.1, 0.9, 0.3, 0.2, 0.8])
    disagree = torch.tensor([False, True, True, False, True])
    kept, n = disagreement_selection(losses, disagree, 0.7)  # int(0.7 * 3) = 2 of rows 1, 2, 4
    assert int(n) == 3 and kept.tolist() == [False, False, True, False, True]


def test_coteaching_with_ols_feeds_each_networks_store_with_what_it_trains_on():
    torch.manual_seed(1)
    b = 20
    z1, z2 = torch.randn(b, K) * 3, torch.randn(b, K) * 3
    y = torch.randint(0, K, (b,))
    crit = create_loss("coteaching", K, epochs=4, base="ols", noise_rate=0.3, gradual_epochs=0)
    task = CoTeachingTask(crit)
    task.set_epoch(2)
    pair = NetworkPair(_Fixed(z1), _Fixed(z2))
    task(pair, torch.arange(b).float(), y, torch.arange(b))
    crit.step()
    # each network's losses ranked: OLS's Eq. (4) of that network before any statistics (uniform S)
    ols = create_loss("ols", K, alpha=0.5, reduction="none")
    l2 = ols(z2, y, observe=False).detach()
    keep = int(0.7 * b)
    pick2 = torch.argsort(l2, stable=True)[:keep]  # what network 1 trains on
    ref = create_loss("ols", K, alpha=0.5)
    correct = pick2[z1[pick2].argmax(1) == y[pick2]]
    ref.observe(z1[correct], y[correct])
    ref.step()
    torch.testing.assert_close(crit.soft_labels, ref.soft_labels)
    assert not torch.equal(crit.soft_labels, crit.peer_soft_labels)


# -- ELR --------------------------------------------------------------------------------------------------
def test_elr_target_and_regulariser_gradient_equal_the_authors_update_over_two_visits():
    torch.manual_seed(2)
    n, b, beta, lam = 10, 4, 0.7, 3.0
    crit = create_loss("elr", K, num_samples=n, beta=beta, lam=lam)
    target = torch.zeros(n, K)  # theirs: self.target
    for visit in range(2):
        idx = torch.tensor([3, 7, 0, 9]) if visit == 0 else torch.tensor([7, 1, 3, 5])
        z = torch.randn(b, K, requires_grad=True)
        y = torch.randint(0, K, (b,))
        mine = crit(z, y, index=idx)
        (g_mine,) = torch.autograd.grad(mine, z)
        z2 = z.detach().clone().requires_grad_(True)
        p = F.softmax(z2, 1).clamp(1e-4, 1 - 1e-4)
        pd = p.detach()
        target[idx] = beta * target[idx] + (1 - beta) * pd / pd.sum(1, keepdim=True)
        theirs = F.cross_entropy(z2, y) + lam * torch.log(1 - (target[idx] * p).sum(1)).mean()
        (g_theirs,) = torch.autograd.grad(theirs, z2)
        torch.testing.assert_close(mine, theirs)
        torch.testing.assert_close(g_mine, g_theirs)
    torch.testing.assert_close(crit.target, target)


def test_elr_regulariser_pulls_the_prediction_toward_its_target():
    p = torch.tensor([[0.6, 0.2, 0.2]], requires_grad=True)
    t = elr_target(torch.tensor([[0.0, 0.0, 0.0]]), torch.tensor([[0.9, 0.05, 0.05]]), 0.0)
    elr_regulariser(t, p).sum().backward()
    assert p.grad[0, 0] < p.grad[0, 1]  # descending raises p_0, the target's class


def test_elr_in_eval_mode_leaves_the_targets_alone():
    crit = create_loss("elr", K, num_samples=6).eval()
    crit(torch.randn(3, K), torch.tensor([0, 1, 2]), index=torch.tensor([0, 1, 2]))
    assert not crit.target.any()


# -- DivideMix --------------------------------------------------------------------------------------------
def test_clean_probability_equals_a_plain_mixture_fit_and_splits_two_clusters():
    from sklearn.mixture import GaussianMixture

    rng = np.random.default_rng(0)
    losses = np.concatenate([rng.normal(0.3, 0.05, 80), rng.normal(2.5, 0.3, 20)])
    x = ((losses - losses.min()) / (losses.max() - losses.min())).reshape(-1, 1)
    gmm = GaussianMixture(n_components=2, max_iter=10, tol=1e-2, reg_covar=5e-4, random_state=0).fit(x)
    want = gmm.predict_proba(x)[:, gmm.means_.argmin()]
    got = clean_probability(losses, seed=0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert (got[:80] > 0.99).all() and (got[80:] < 0.01).all()
    assert (clean_probability(np.full(5, 0.7)) == 1).all()  # no spread: nothing to split


def test_co_refinement_co_guessing_and_sharpening_by_hand():
    p = torch.tensor([[0.5, 0.3, 0.2]])
    s = sharpen(p, 0.5)
    torch.testing.assert_close(s, torch.tensor([[0.25, 0.09, 0.04]]) / 0.38)
    y = torch.tensor([[0.0, 1.0, 0.0]])
    refined = co_refine(y, torch.tensor([0.6]), p, 0.5)  # 0.6 * y + 0.4 * p = (0.2, 0.72, 0.08)
    torch.testing.assert_close(refined, torch.tensor([[0.04, 0.5184, 0.0064]]) / 0.5648)
    guesses = torch.stack([p, torch.tensor([[0.1, 0.7, 0.2]]), p, p])
    torch.testing.assert_close(co_guess(guesses, 1.0), torch.tensor([[0.4, 0.4, 0.2]]))


def test_mixmatch_terms_equal_the_authors_semiloss_and_penalty():
    torch.manual_seed(3)
    r = 8
    z = torch.randn(r, K)
    t = F.softmax(torch.randn(r, K), 1)
    lab = torch.tensor([True] * 3 + [False] * 5)
    l_x, l_u, pen = mixmatch_terms(z, t, lab)
    lx_ref = -torch.mean(torch.sum(F.log_softmax(z[:3], 1) * t[:3], 1))  # their SemiLoss
    lu_ref = torch.mean((torch.softmax(z[3:], 1) - t[3:]) ** 2)
    prior = torch.ones(K) / K
    pen_ref = torch.sum(prior * torch.log(prior / torch.softmax(z, 1).mean(0)))
    torch.testing.assert_close((l_x, l_u, pen), (lx_ref, lu_ref, pen_ref))


@pytest.mark.parametrize("progress", [0.0, 9.5, 10.0, 14.25, 26.0, 40.0])
def test_lambda_u_ramp_equals_their_linear_rampup(progress):
    want = 25 * float(np.clip((progress - 10) / 16, 0.0, 1.0))  # linear_rampup(current, warm_up=10)
    assert lambda_u_ramp(progress, 10, 16, 25.0) == pytest.approx(want)


def test_the_dividemix_step_trains_each_network_on_its_peers_split(tmp_path):
    """Network 0's labelled rows follow network 1's clean probabilities, and the reverse: with one network's
    division all clean and the other's all noisy, one network gets L_x only and the other L_u only."""
    from ols.tasks.dividemix import DivideMixTask

    torch.manual_seed(4)
    b = 6
    crit = create_loss("dividemix", K, num_samples=b, epochs=4, warmup_epochs=1, lambda_u=1.0, ramp_epochs=0)
    crit.clean[0].fill_(0.0)  # network 0 calls every sample noisy: network 1 trains on guesses only
    crit.clean[1].fill_(1.0)  # network 1 calls every sample clean: network 0 trains on labels only
    task = DivideMixTask(crit, seed=0)
    task.set_epoch(2)
    pair = NetworkPair(nn.Linear(4, K), nn.Linear(4, K))
    x, y, idx = torch.randn(2 * b, 4), torch.randint(0, K, (b,)), torch.arange(b)
    inputs = task.prepare(x, y, idx)
    out = task.compute(pair, *inputs)
    _, _, _, perms, lams, lam_u = inputs
    with torch.no_grad():
        own = pair(x, members=True)
        guess = pair.eval()(x, members=True)
    pair.train()
    p_own, p_guess = own.softmax(2), guess.softmax(2)
    total = 0.0
    for m in range(2):
        lam, perm = lams[m], perms[m]
        if m == 0:  # labelled everywhere: co-refined with w = 1, the label itself sharpened
            t = sharpen(F.one_hot(y, K).float(), crit.temperature)
        else:
            t = sharpen((p_own[1, :b] + p_own[1, b:] + p_guess[0, :b] + p_guess[0, b:]) / 4, crit.temperature)
        t2 = torch.cat([t, t])
        mixed = lam * x + (1 - lam) * x[perm]
        tm = lam * t2 + (1 - lam) * t2[perm]
        z = pair.members[m](mixed)
        prior = torch.ones(K) / K
        pen = torch.sum(prior * torch.log(prior / z.softmax(1).mean(0)))
        if m == 0:
            total = total - torch.mean(torch.sum(F.log_softmax(z, 1) * tm, 1)) + pen
        else:
            total = total + lam_u * torch.mean((z.softmax(1) - tm) ** 2) + pen
    torch.testing.assert_close(out["loss"], total)


def test_the_draws_are_a_function_of_seed_epoch_rank_and_batch():
    from ols.tasks.dividemix import DivideMixTask

    crit = create_loss("dividemix", K, num_samples=4, epochs=4, warmup_epochs=1)
    a, b = DivideMixTask(crit, seed=1), DivideMixTask(crit, seed=1)
    x = torch.randn(8, 4)
    a.set_epoch(3)
    b.set_epoch(3, start_batch=1)
    a.prepare(x, torch.zeros(4).long(), torch.arange(4))
    second = a.prepare(x, torch.zeros(4).long(), torch.arange(4))
    resumed = b.prepare(x, torch.zeros(4).long(), torch.arange(4))
    for u, v in zip(second[3:], resumed[3:]):
        assert torch.equal(u, v)


# -- the pair ---------------------------------------------------------------------------------------------
def test_the_pair_is_the_mean_of_the_softmaxes_and_its_members():
    torch.manual_seed(5)
    a, c = nn.Linear(3, K), nn.Linear(3, K)
    pair = NetworkPair(a, c)
    x = torch.randn(4, 3)
    want = torch.log((a(x).softmax(1) + c(x).softmax(1)) / 2)
    torch.testing.assert_close(pair(x), want)
    assert torch.equal(pair(x, members=True), torch.stack([a(x), c(x)]))
    xs = torch.randn(2, 4, 3)
    assert torch.equal(pair(xs, apart=True), torch.stack([a(xs[0]), c(xs[1])]))


def test_a_peer_that_does_not_fit_the_first_networks_output_is_refused_in_one_line():
    from ols.models.pair import check_peer

    with pytest.raises(ValueError, match=r"--peer-model wide gives outputs of shape \(6,\) where "
                                         r"--model narrow gives \(5,\)"):
        check_peer(nn.Linear(3, K), nn.Linear(3, K + 1), (3,), ("narrow", "wide"))
    with pytest.raises(ValueError, match="does not take this dataset's inputs"):
        check_peer(nn.Linear(3, K), nn.Linear(4, K), (3,), ("a", "b"))
    check_peer(nn.Linear(3, K), nn.Sequential(nn.Linear(3, 7), nn.Linear(7, K)), (3,), ("a", "b"))
