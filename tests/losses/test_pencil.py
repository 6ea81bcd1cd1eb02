"""PENCIL's stages and its label update against ``yikun2019/PENCIL``'s ``PENCIL.py`` written out.

The official step: ``yy`` the batch's label logits as a leaf, ``last_y_var = softmax(yy)``,
``lc = mean(softmax(out) * (logsoftmax(out) - log(last_y_var)))``, ``lo = CrossEntropyLoss()(last_y_var,
target)``, ``le = -mean(softmax(out) * logsoftmax(out))``, ``loss = lc + alpha * lo + beta * le``,
``loss.backward()``, then ``yy -= lambda1 * yy.grad``. ``form="code"``, the default, must give exactly that;
``form="paper"`` the paper's sums (checked against the same written out with sums).
"""

import pytest
import torch
import torch.nn.functional as F

from ols import create_loss

K, B, N = 4, 6, 10


def _pencil(**kw):
    crit = create_loss("pencil", K, num_samples=N, epochs=10, backbone_epochs=2, joint_epochs=3, **kw)
    return crit.train()


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, K, generator=g) * 2
    return z, torch.randint(0, K, (B,), generator=g), torch.tensor([0, 3, 5, 6, 8, 9])


def _official(z, y, yy, alpha, beta, lam, form):
    out = z.clone().requires_grad_(True)
    yy = yy.clone().requires_grad_(True)
    last_y_var = F.softmax(yy, dim=1)
    f, logf = F.softmax(out, dim=1), F.log_softmax(out, dim=1)
    if form == "code":
        lc = torch.mean(f * (logf - torch.log(last_y_var)))
        lo = F.cross_entropy(last_y_var, y)
        le = -torch.mean(f * logf)
    else:
        lc = (f * (logf - torch.log(last_y_var))).sum(1).mean()
        lo = -torch.log(last_y_var.gather(1, y[:, None])).mean()
        le = -(f * logf).sum(1).mean()
    loss = lc + alpha * lo + beta * le
    loss.backward()
    return loss.detach(), out.grad, (yy - lam * yy.grad).detach()


@pytest.mark.parametrize("form", ["code", "paper"])
def test_the_joint_stage_equals_the_official_step(form):
    crit = _pencil(form=form, compatibility=0.4, entropy=0.1, label_lr=600.0)
    z, y, idx = _batch()
    start = torch.randn(N, K) * 3
    with torch.no_grad():
        crit.label_logits.copy_(start)
        crit.started.fill_(True)
    crit.set_progress(2 / 10)  # epoch 3 of 10: joint learning
    assert crit.stage == 2
    logits = z.clone().requires_grad_(True)
    loss = crit(logits, y, index=idx)
    loss.backward()
    ref_loss, ref_grad, ref_labels = _official(z, y, start[idx], 0.4, 0.1, 600.0, form)
    torch.testing.assert_close(loss.detach(), ref_loss)
    torch.testing.assert_close(logits.grad, ref_grad)
    torch.testing.assert_close(crit.label_logits[idx], ref_labels, rtol=1e-5, atol=1e-5)
    others = torch.tensor([i for i in range(N) if i not in idx.tolist()])
    assert torch.equal(crit.label_logits[others], start[others])  # the batch's rows only


def test_backbone_learning_sets_the_labels_and_fine_tuning_freezes_them():
    crit = _pencil(label_init=10.0, form="paper")
    z, y, idx = _batch(1)
    crit.set_progress(0.0)
    assert crit.stage == 1
    torch.testing.assert_close(crit(z, y, index=idx), F.cross_entropy(z, y))
    torch.testing.assert_close(crit.label_logits[idx], 10.0 * F.one_hot(y, K).float())
    assert crit.started[idx].all() and not crit.started[[1, 2]].any()
    crit.set_progress(5 / 10)  # epoch 6: fine-tuning, L = L_c with y^d frozen
    assert crit.stage == 3
    before = crit.label_logits.clone()
    target = F.softmax(before[idx], dim=1)
    f = F.softmax(z, dim=1)
    expected = (f * (F.log_softmax(z, dim=1) - torch.log(target))).sum(1).mean()
    torch.testing.assert_close(crit(z.requires_grad_(True), y, index=idx), expected)
    assert torch.equal(crit.label_logits, before)


def test_the_labels_learned_are_the_corrected_labels():
    crit = _pencil()
    with torch.no_grad():
        crit.label_logits[:4] = torch.eye(K) * 5
        crit.started[:4] = True
    assert crit.corrected_labels().tolist() == [0, 1, 2, 3] + [-1] * (N - 4)


def test_with_ols_the_classification_term_fits_q_and_ols_counts_the_learned_label():
    crit = _pencil(base="ols", alpha=0.3, form="paper")
    soft = torch.softmax(torch.randn(K, K) * 2, dim=1)
    with torch.no_grad():
        crit.base.store.soft_labels.copy_(soft)
        crit.label_logits.copy_(torch.randn(N, K) * 3)
        crit.started.fill_(True)
    z, y, idx = _batch(2)
    crit.set_progress(7 / 10)  # fine-tuning: L_c only
    dist = F.softmax(crit.label_logits[idx], dim=1)
    q = 0.3 * dist + 0.7 * dist @ soft
    f = F.softmax(z, dim=1)
    expected = (f * (F.log_softmax(z, dim=1) - torch.log(q))).sum(1).mean()
    torch.testing.assert_close(crit(z.requires_grad_(True), y, index=idx), expected)
    label = dist.argmax(1)
    correct = z.argmax(1) == label
    sums = torch.zeros(K + 1, K).index_add_(0, torch.where(correct, label, K), f.detach())
    torch.testing.assert_close(crit.base.store.sums[:K], sums[:K])


def test_stages_default_to_the_papers_shares_of_the_run():
    crit = create_loss("pencil", K, num_samples=N, epochs=320)
    assert (crit.backbone_epochs, crit.joint_epochs) == (70, 130)
    short = create_loss("pencil", K, num_samples=N, epochs=10)
    assert (short.backbone_epochs, short.joint_epochs) == (2, 4)  # round(10 * 70/320), round(10 * 130/320)
    with pytest.raises(ValueError, match="backbone_epochs=12 must be a whole number of epochs in"):
        create_loss("pencil", K, num_samples=N, epochs=10, backbone_epochs=12)
    with pytest.raises(ValueError, match="form='x': use paper or code"):
        create_loss("pencil", K, num_samples=N, form="x")
