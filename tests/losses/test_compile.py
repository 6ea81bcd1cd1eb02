"""OLS under torch.compile: no graph break in training mode, short last batches, same numbers as eager."""

import pytest
import torch

from ols import OnlineLabelSmoothing

pytestmark = pytest.mark.slow  # compiling takes a few seconds per graph


def _train_step(crit):
    def step(z, y):
        return crit(z, y)

    return step


def _batches(k, sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for b in sizes:
        z = torch.randn(b, k, generator=g) * 2
        y = torch.randint(0, k, (b,), generator=g)
        y[: b // 2] = z[: b // 2].argmax(1)  # half the rows correct, so the store accumulates
        out.append((z, y))
    return out


@pytest.mark.parametrize("ignore", [False, True])
def test_training_forward_has_no_graph_break(ignore):
    k = 10
    crit = OnlineLabelSmoothing(k).train()
    z, y = _batches(k, [16])[0]
    if ignore:
        y[3] = -100
    explained = torch._dynamo.explain(_train_step(crit))(z.requires_grad_(), y)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


@pytest.mark.parametrize("dynamic", [False, True])
def test_compiled_matches_eager_with_a_short_last_batch(dynamic):
    torch._dynamo.reset()
    k = 7
    eager, compiled = OnlineLabelSmoothing(k, alpha=0.4), OnlineLabelSmoothing(k, alpha=0.4)
    fn = torch.compile(_train_step(compiled), dynamic=dynamic, fullgraph=True)
    for epoch in range(2):
        for z, y in _batches(k, [32, 32, 32, 5], seed=epoch):  # the last batch is short
            za, zb = z.clone().requires_grad_(), z.clone().requires_grad_()
            la, lb = eager(za, y), fn(zb, y)
            la.backward()
            lb.backward()
            torch.testing.assert_close(lb, la, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(zb.grad, za.grad, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(compiled.store.sums, eager.store.sums, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(compiled.store.counts, eager.store.counts)
        eager.step()
        compiled.step()
        torch.testing.assert_close(compiled.soft_labels, eager.soft_labels, rtol=1e-5, atol=1e-6)
    assert int(compiled.num_iterations) == int(eager.num_iterations) == 8
