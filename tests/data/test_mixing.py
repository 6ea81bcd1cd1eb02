"""Mixup and CutMix: timm's semantics, checked from the outputs, and draws that replay."""

import numpy as np
import pytest
import torch

from ols.data.mixing import Mixer


def batch(b=6, h=8, w=8):
    g = torch.Generator().manual_seed(0)
    return torch.rand(b, 3, h, w, generator=g) + torch.arange(b).view(-1, 1, 1, 1) * 10, torch.arange(b)


def test_mixup_blends_each_sample_with_the_flipped_batch():
    x, y = batch()
    out = Mixer(mixup_alpha=0.4)(x, y, np.random.default_rng(1))
    lam = out.lam
    assert torch.all(lam == lam[0]) and 0 < float(lam[0]) < 1  # batch mode: one draw
    torch.testing.assert_close(out.x, lam.view(-1, 1, 1, 1) * x + (1 - lam.view(-1, 1, 1, 1)) * x.flip(0))
    assert out.y_a.tolist() == y.tolist() and out.y_b.tolist() == y.flip(0).tolist()


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
def test_cutmix_lambda_is_the_share_of_the_samples_own_pixels(mode):
    x, y = batch(b=8, h=16, w=16)
    out = Mixer(cutmix_alpha=1.0, mode=mode)(x, y, np.random.default_rng(3))
    own = (out.x == x).all(1).float().mean((1, 2))  # each sample's pixels it kept (partner values differ)
    torch.testing.assert_close(out.lam, own)
    pasted = ~(out.x == x).all(1)
    assert torch.equal(out.x.permute(0, 2, 3, 1)[pasted], x.flip(0).permute(0, 2, 3, 1)[pasted])
    if mode == "pair":
        assert torch.equal(out.lam, out.lam.flip(0))
    if mode == "elem":
        assert len(set(out.lam.tolist())) > 2


def test_probabilities_switch_and_determinism():
    x, y = batch(b=200, h=8, w=8)
    off = Mixer(mixup_alpha=1.0, prob=0.0)(x, y, np.random.default_rng(0))
    assert torch.equal(off.x, x) and torch.all(off.lam == 1)
    both = Mixer(mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=0.5, mode="elem", prob=0.5)
    lam, cut, _ = both.draw(200, 8, 8, np.random.default_rng(5))
    assert 0.35 < (lam < 1).mean() < 0.65 and 0.15 < cut.mean() < 0.35  # half mixed, half of those cut
    a = both(x, y, np.random.default_rng((0, 2, 0, 7)))
    b = both(x, y, np.random.default_rng((0, 2, 0, 7)))
    assert torch.equal(a.x, b.x) and torch.equal(a.lam, b.lam)  # the same batch position, the same draw


def test_lambda_follows_beta():
    lam, _, _ = Mixer(mixup_alpha=0.2, mode="elem").draw(20000, 4, 4, np.random.default_rng(0))
    assert abs(lam.mean() - 0.5) < 0.02 and ((lam < 0.1) | (lam > 0.9)).mean() > 0.6  # Beta(0.2, 0.2)


@pytest.mark.parametrize("kw,msg", [({"mixup_alpha": -1.0}, "mixup_alpha must be a finite"),
                                    ({"cutmix_alpha": float("nan")}, "cutmix_alpha must be a finite"),
                                    ({"prob": 1.5}, "mix prob must be in"), ({"mode": "row"}, "mix mode")])
def test_bad_settings(kw, msg):
    with pytest.raises(ValueError, match=msg):
        Mixer(**kw)
