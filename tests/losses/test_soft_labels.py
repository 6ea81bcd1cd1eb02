"""The store interface (targets, observe, step), for the dense and the top-k store alike."""

import pytest
import torch
import torch.nn.functional as F

from ols.losses import SoftLabels, TopKSoftLabels
from ols.losses.functional import soft_target_nll

K = 6


def stores():
    # topk = slots = feed = K: the top-k store is exact, so both must give the same numbers
    return [SoftLabels(K), TopKSoftLabels(K, K, slots=K, feed=K)]


def trained(store, generator):
    """A store after one period of observed batches, so its rows are not uniform."""
    for _ in range(3):
        z = torch.randn(32, K, generator=generator) * 3
        store.observe(z.log_softmax(1), z.argmax(1))  # every row correct
    store.step()
    return store


@pytest.mark.parametrize("which", [0, 1])
def test_targets_give_eq4_as_the_soft_target_cross_entropy(which):
    g = torch.Generator().manual_seed(which)
    store = trained(stores()[which], g)
    z = torch.randn(10, K, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, K, (10,), generator=g)
    alpha = 0.3
    q = alpha * F.one_hot(y, K).double() + (1 - alpha) * store.soft_labels.double()[y]
    want = F.cross_entropy(z, q, reduction="none")
    got = soft_target_nll(F.log_softmax(z, 1), y, store.targets(y), alpha)
    torch.testing.assert_close(got, want)
    (g_want,) = torch.autograd.grad(want.sum(), z)
    (g_got,) = torch.autograd.grad(got.sum(), z)
    torch.testing.assert_close(g_got, g_want)


def test_both_stores_agree_on_the_same_stream_and_count_the_same_rows():
    g = torch.Generator().manual_seed(3)
    dense, sparse = stores()
    for _ in range(2):
        z = torch.randn(64, K, generator=g) * 2
        y = torch.randint(0, K, (64,), generator=g)
        weight = torch.rand(64, generator=g)
        weight[:8] = 0.0  # a zero weight: not counted
        for store in (dense, sparse):
            store.observe(z.log_softmax(1), y, weight)
        torch.testing.assert_close(sparse.counts[:K], dense.counts[:K])
        dense.step()
        sparse.step()
    torch.testing.assert_close(sparse.soft_labels, dense.soft_labels)
    assert not torch.allclose(dense.soft_labels, torch.full((K, K), 1.0 / K))  # the stream moved them


@pytest.mark.parametrize("which", [0, 1])
def test_one_correctness_rule_ties_count_nan_and_inf_never(which):
    store = stores()[which]
    z = torch.tensor([[2.0, 2.0, 0, 0, 0, 0],  # a tie at the maximum: counts for class 1 too
                      [1.0, 3.0, 0, 0, 0, 0],  # wrong for class 0
                      [float("nan"), 1.0, 0, 0, 0, 0],  # NaN: never
                      [float("inf"), 1.0, 0, 0, 0, 0],  # +inf: never
                      [5.0, float("-inf"), 0, 0, 0, 0]])  # -inf: a masked class, counts
    store.observe(z.log_softmax(1), torch.tensor([1, 0, 0, 0, 0]))
    torch.testing.assert_close(store.counts[:2], torch.tensor([1.0, 1.0]))


@pytest.mark.parametrize("which", [0, 1])
def test_step_writes_the_same_tensors_in_place(which):
    """One tensor for the store's lifetime: a compiled or captured step reads the current soft labels."""
    store = stores()[which]
    names = ["soft_labels", "sums"] if which == 0 else ["index", "value", "rest", "cand_index", "cand_value"]
    before = {name: getattr(store, name) for name in names}
    trained(store, torch.Generator().manual_seed(4))
    for name in names:
        assert getattr(store, name) is before[name], name
    assert not torch.allclose(store.soft_labels, torch.full((K, K), 1.0 / K))
