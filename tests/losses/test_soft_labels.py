"""The store interface a loss uses (prepare, cross_entropy, observe), for the dense and the top-k store."""

import pytest
import torch
import torch.nn.functional as F

from ols.losses import SoftLabels, TopKSoftLabels

K = 6


def stores():
    # topk = slots = feed = K: the top-k store is exact, so both must give the same numbers
    return [SoftLabels(K), TopKSoftLabels(K, K, slots=K, feed=K)]


def trained(store, generator):
    """A store after one period of observed batches, so its rows are not uniform."""
    for _ in range(3):
        z = torch.randn(32, K, generator=generator) * 3
        store.observe(z, z.argmax(1))  # every row correct
    store.step()
    return store


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("which", [0, 1])
def test_cross_entropy_is_the_soft_target_cross_entropy_of_eq4(which, reduction):
    g = torch.Generator().manual_seed(which)
    store = trained(stores()[which], g)
    z = torch.randn(10, K, generator=g, dtype=torch.float64)
    y = torch.randint(0, K, (10,), generator=g)
    alpha = 0.3
    q = alpha * F.one_hot(y, K).double() + (1 - alpha) * store.soft_labels.double()[y]
    want = F.cross_entropy(z, q, reduction=reduction)
    got = store.cross_entropy(z, y, store.prepare(z), alpha, reduction=reduction)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("which", [0, 1])
def test_observe_with_the_shared_preparation_equals_observe_without(which):
    g = torch.Generator().manual_seed(10 + which)
    z = torch.randn(40, K, generator=g)
    y = torch.where(torch.rand(40, generator=g) < 0.6, z.argmax(1), torch.randint(0, K, (40,), generator=g))
    weight = torch.rand(40, generator=g)
    plain, shared = stores()[which], stores()[which]
    plain.observe(z, y, weight)
    shared.observe(z, y, weight, shared=shared.prepare(z, None, True))
    plain.step()
    shared.step()
    torch.testing.assert_close(shared.soft_labels, plain.soft_labels)  # top-k: its (K, K) view


def test_both_stores_agree_on_the_same_stream():
    g = torch.Generator().manual_seed(3)
    dense, sparse = stores()
    for _ in range(2):
        z = torch.randn(64, K, generator=g) * 2
        y = torch.randint(0, K, (64,), generator=g)
        for store in (dense, sparse):
            store.observe(z, y, shared=store.prepare(z, None, True))
        dense.step()
        sparse.step()
        z = torch.randn(8, K, generator=g)
        y = torch.randint(0, K, (8,), generator=g)
        torch.testing.assert_close(sparse.cross_entropy(z, y, sparse.prepare(z, None, False), 0.5),
                                   dense.cross_entropy(z, y, dense.prepare(z), 0.5))
    torch.testing.assert_close(sparse.soft_labels, dense.soft_labels)
    assert not torch.allclose(dense.soft_labels, torch.full((K, K), 1.0 / K))  # the stream moved them
