"""The pure maths of functional.py: Eq. (4)'s row form against a written-out reference, and its precision."""

import pytest
import torch
import torch.nn.functional as F

from ols.losses.functional import reduce_rows, soft_target_nll


def _reference(z, y, soft, alpha, valid, reduction, weight, smoothing):
    """-sum_c w_c q_c log p_c per row, q = alpha * smooth(onehot(y)) + (1 - alpha) * soft, reduced as F.ce."""
    k = z.shape[1]
    w = torch.ones(k, dtype=z.dtype) if weight is None else weight.to(z.dtype)
    q = alpha * ((1 - smoothing) * F.one_hot(y, k).to(z.dtype) + smoothing / k) + (1 - alpha) * soft
    per = -(w * q * F.log_softmax(z, dim=1)).sum(1)
    per = torch.where(valid, per, torch.zeros_like(per))
    if reduction == "none":
        return per
    if reduction == "sum":
        return per.sum()
    return per.sum() / (w[y] * valid.to(z.dtype)).sum()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("ignore", [False, True])
def test_row_form_equals_the_reference(reduction, weighted, smoothing, ignore):
    g = torch.Generator().manual_seed(3)
    b, k, alpha = 9, 6, 0.35
    z = torch.randn(b, k, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, k, (b,), generator=g)
    soft = torch.rand(b, k, generator=g, dtype=torch.float64)
    soft[2] = 0.0  # an all-zero soft row (zero_count="zeros") leaves alpha * CE
    weight = torch.rand(k, generator=g, dtype=torch.float64) + 0.1 if weighted else None
    valid = torch.ones(b, dtype=torch.bool)
    if ignore:
        valid[[1, 5]] = False
        z[1, 0] = float("nan")  # an ignored row adds nothing to the loss, even with a NaN logit
    za, zb = z.clone().requires_grad_(), z.clone().requires_grad_()
    want = _reference(za, y, soft, alpha, valid, reduction, weight, smoothing)
    per = soft_target_nll(F.log_softmax(zb, dim=1), y, soft, alpha, smoothing, weight)
    got = reduce_rows(per, valid, 0.0, reduction, None if weight is None else weight[y])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    (want.sum() if reduction == "none" else want).backward()
    (got.sum() if reduction == "none" else got).backward()
    torch.testing.assert_close(torch.nan_to_num(zb.grad), torch.nan_to_num(za.grad), rtol=1e-12, atol=1e-12)


def test_an_empty_mean_is_nan_as_f_cross_entropy():
    z, y = torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)
    per = soft_target_nll(F.log_softmax(z, 1), y, torch.zeros(0, 4), 0.5)
    assert torch.isnan(reduce_rows(per, torch.ones(0, dtype=torch.bool), 0.0, "mean"))
    assert torch.isnan(F.cross_entropy(z, y))


@pytest.mark.parametrize("shape", [(256, 10_000), (512, 10_000)])
def test_float32_loss_is_as_accurate_as_f_cross_entropy(shape):
    """Each row is summed on its own, then the rows: no single B*K-term float32 sum (it lost 2.7e-4)."""
    b, k = shape
    g = torch.Generator().manual_seed(5)
    z = torch.randn(b, k, generator=g) * 3
    y = torch.randint(0, k, (b,), generator=g)
    soft = torch.softmax(torch.randn(b, k, generator=g) * 4, 1)  # learned-looking, peaked soft labels
    got = soft_target_nll(F.log_softmax(z, 1), y, soft, 0.5).mean()
    exact = soft_target_nll(F.log_softmax(z.double(), 1), y, soft.double(), 0.5).mean()
    ce_error = (F.cross_entropy(z, y).double() - F.cross_entropy(z.double(), y)).abs() / F.cross_entropy(
        z.double(), y)
    error = float((got.double() - exact).abs() / exact)
    assert error < 1e-6, error
    assert error < 20 * float(ce_error) + 1e-7  # the same order as F.cross_entropy's own rounding
