"""CS-KD: the loss against the official formula (CE + T^2 KLDivLoss(sum) / B), float64 gradients, and
the class pairs the task trains on."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ols.losses import create_loss
from ols.tasks import class_pair_order

K, B = 6, 8


def official(z, z_partner, y, t=4.0, lam=1.0):
    """alinlab/cs-kd train.py: CE on the first half, KDLoss(T) on the partner's detached logits."""
    log_p = torch.log_softmax(z / t, dim=1)
    q = torch.softmax(z_partner.detach() / t, dim=1)
    kd = torch.nn.KLDivLoss(reduction="sum")(log_p, q) * t**2 / z.shape[0]
    return F.cross_entropy(z, y) + lam * kd


def test_equals_the_official_loss_and_its_gradient():
    g = torch.Generator().manual_seed(0)
    z, zp = (torch.randn(B, K, generator=g, dtype=torch.float64) * 3 for _ in range(2))
    y = torch.randint(0, K, (B,), generator=g)
    fine_grained = ({"lam": 3.0, "temperature": 2.0}, lambda a, b, c: official(a, b, c, 2.0, 3.0))
    for kw, ref in (({}, official), fine_grained):
        crit = create_loss("cskd", K, **kw)
        za, zb = z.clone().requires_grad_(), z.clone().requires_grad_()
        got, want = crit(za, zp, y), ref(zb, zp, y)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)
        got.backward()
        want.backward()
        torch.testing.assert_close(za.grad, zb.grad, rtol=1e-6, atol=1e-9)
    crit = create_loss("cskd", K)
    assert torch.autograd.gradcheck(lambda a: crit(a, zp, y), (z.clone().requires_grad_(),))
    with pytest.raises(ValueError, match="partner_logits must have the logits' shape"):
        crit(z, zp[:4], y)
    assert not crit.linear_in_target


def test_every_batch_is_followed_by_same_class_partners_drawn_from_the_order():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 50)
    labels[7] = 9  # a class with one sample: its own partner
    order = rng.permutation(np.arange(50)[np.arange(50) != 3]).tolist()  # sample 3 is not trained on
    paired = class_pair_order(order, labels, 8, seed=1, epoch=2)
    assert len(paired) == 2 * len(order)
    chunks = [paired[i:i + 16] for i in range(0, 2 * 48, 16)] + [paired[96:]]
    assert [len(c) for c in chunks] == [16] * 6 + [2]
    originals = []
    for c in chunks:
        first, partners = c[:len(c) // 2], c[len(c) // 2:]
        originals += first
        assert (labels[first] == labels[partners]).all()
        for i, j in zip(first, partners):
            assert j != i or i == 7
            assert j != 3  # only samples of the order are partners
    assert originals == order
    assert class_pair_order(order, labels, 8, seed=1, epoch=2) == paired  # a resumed epoch: the same pairs
    assert class_pair_order(order, labels, 8, seed=1, epoch=3) != paired


def test_cskd_refuses_mixing(tmp_path, capsys):
    from ols.cli import main

    assert main(["train", "--loss", "cskd", "--mixup-alpha", "0.2", "--out", str(tmp_path / "r")]) == 2
    assert "do not combine with the class-pair loss 'cskd'" in capsys.readouterr().err
