"""The pure maths of functional.py: Eq. (4)'s two forms against a written-out reference."""

import pytest
import torch
import torch.nn.functional as F

from ols.losses.functional import mixed_target_nll, mixed_target_rows


def _reference(z, y, soft, alpha, valid, reduction, weight, smoothing):
    """-sum_c w_c q_c log p_c per row, q = alpha * smooth(onehot(y)) + (1 - alpha) * soft, reduced as F.ce."""
    k = z.shape[1]
    w = torch.ones(k, dtype=z.dtype) if weight is None else weight.to(z.dtype)
    q = alpha * ((1 - smoothing) * F.one_hot(y, k).to(z.dtype) + smoothing / k) + (1 - alpha) * soft
    per = -(w * q * F.log_softmax(z, dim=1)).sum(1)
    keep = torch.ones_like(y, dtype=torch.bool) if valid is None else valid
    per = torch.where(keep, per, torch.zeros_like(per))
    if reduction == "none":
        return per
    if reduction == "sum":
        return per.sum()
    return per.sum() / (w[y] * keep.to(z.dtype)).sum()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("ignore", [False, True])
def test_row_form_and_in_place_form_equal_the_reference(reduction, weighted, smoothing, ignore):
    g = torch.Generator().manual_seed(3)
    b, k, alpha = 9, 6, 0.35
    z = torch.randn(b, k, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, k, (b,), generator=g)
    soft = torch.rand(b, k, generator=g, dtype=torch.float64)
    soft[2] = 0.0  # an all-zero soft row (zero_count="zeros") leaves alpha * CE
    weight = torch.rand(k, generator=g, dtype=torch.float64) + 0.1 if weighted else None
    valid = None
    if ignore:
        valid = torch.ones(b, dtype=torch.bool)
        valid[[1, 5]] = False
        z[1, 0] = float("nan")  # an ignored row adds nothing, even with a NaN logit
    grads = []
    for form in ("reference", "nll", "rows"):
        zz = z.clone().requires_grad_()
        if form == "reference":
            out = _reference(zz, y, soft, alpha, valid, reduction, weight, smoothing)
        else:
            logp = F.log_softmax(zz, dim=1)
            if form == "nll":
                out = mixed_target_nll(logp, y, soft.clone(), alpha, valid, reduction, weight, smoothing)
            else:  # mixed_target_rows takes log p already weighted and masked, as mixed_target_nll passes it
                lp = logp if weight is None else logp * weight
                lp = lp if valid is None else lp.masked_fill(~valid.unsqueeze(1), 0.0)
                out = mixed_target_rows(lp, y, soft, alpha, valid, reduction, weight, smoothing)
        if form == "reference":
            expected = out
        else:
            torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12,
                                       msg=lambda m, f=form: f"{f}: {m}")
        (out.sum() if reduction == "none" else out).backward()
        grads.append(torch.nan_to_num(zz.grad, nan=0.0))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads[2], grads[0], rtol=1e-12, atol=1e-12)


def test_row_form_gives_nan_for_an_empty_mean_as_f_cross_entropy():
    z, y = torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)
    out = mixed_target_rows(F.log_softmax(z, 1), y, torch.zeros(0, 4), 0.5)
    assert torch.isnan(out) and torch.isnan(F.cross_entropy(z, y))
