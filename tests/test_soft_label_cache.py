import pytest
import torch

from ols import OnlineLabelSmoothing
from ols.losses import soft_label_cache
from ols.losses.soft_label_cache import SoftLabelCache


def test_target_mass_follows_the_matrix_and_alpha():
    s = torch.rand(4, 4)
    cache = SoftLabelCache()
    torch.testing.assert_close(cache.target_mass(s, 0.3), 0.3 + 0.7 * s.sum(1, keepdim=True))
    s.copy_(torch.eye(4) * 2)  # an in-place write moves the version counter
    torch.testing.assert_close(cache.target_mass(s, 0.3), torch.full((4, 1), 0.3 + 0.7 * 2))
    torch.testing.assert_close(cache.target_mass(s, 0.5), torch.full((4, 1), 0.5 + 0.5 * 2))
    other = torch.zeros(4, 4)  # another tensor altogether
    torch.testing.assert_close(cache.target_mass(other, 0.5), torch.full((4, 1), 0.5))


def test_scaled_copy_and_when_it_is_rebuilt():
    s = torch.rand(3, 3)
    cache = SoftLabelCache()
    table, scale = cache.scaled(s, -0.25)
    assert scale == -0.25 and torch.equal(table, s * -0.25)
    # a new factor seen once (a short last batch) is served unscaled, not rebuilt
    table, scale = cache.scaled(s, -0.5)
    assert scale == 1.0 and table is s
    table, scale = cache.scaled(s, -0.25)
    assert scale == -0.25 and torch.equal(table, s * -0.25)
    # the same new factor twice in a row is rebuilt
    cache.scaled(s, -0.5)
    table, scale = cache.scaled(s, -0.5)
    assert scale == -0.5 and torch.equal(table, s * -0.5)
    # a changed matrix is rebuilt at once
    s.mul_(2)
    table, scale = cache.scaled(s, -0.5)
    assert scale == -0.5 and torch.equal(table, s * -0.5)
    # alpha = 1 gives a zero factor: nothing to scale
    assert cache.scaled(s, 0.0) == (s, 1.0)


def test_no_scaled_copy_for_large_matrices(monkeypatch):
    monkeypatch.setattr(soft_label_cache, "SCALED_COPY_MAX_ENTRIES", 8)
    s = torch.rand(3, 3)
    table, scale = SoftLabelCache().scaled(s, -0.5)
    assert table is s and scale == 1.0


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_ols_is_the_same_with_and_without_the_scaled_copy(reduction, monkeypatch):
    # Varying batch sizes switch between the scaled copy and the plain path; both must
    # give the same losses, gradients and soft labels as a crit that never keeps a copy.
    torch.manual_seed(15)
    k = 7
    batches = [(torch.randn(b, k), torch.randint(0, k, (b,))) for b in (8, 8, 5, 8, 5, 5, 8, 3)]
    results = []
    for max_entries in (1 << 24, 0):
        monkeypatch.setattr(soft_label_cache, "SCALED_COPY_MAX_ENTRIES", max_entries)
        crit = OnlineLabelSmoothing(k, alpha=0.3, reduction=reduction)
        out = []
        for i, (z, y) in enumerate(batches):
            z = z.clone().requires_grad_()
            loss = crit(z, y)
            loss.backward()
            out += [loss.detach(), z.grad]
            if i % 3 == 2:
                crit.step()
        results.append((out, crit.soft_labels))
    (with_copy, s_with), (without, s_without) = results
    for a, b in zip(with_copy, without):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(s_with, s_without)
