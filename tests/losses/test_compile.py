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


def _same_loss_and_gradient(eager, compiled_fn, z, y):
    """One training forward + backward each way on the same logits: equal losses and gradients."""
    za, zb = z.clone().requires_grad_(), z.clone().requires_grad_()
    la, lb = eager(za, y), compiled_fn(zb, y)
    la.backward()
    lb.backward()
    torch.testing.assert_close(lb, la, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(zb.grad, za.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("k", [10, 200])
@pytest.mark.parametrize("ignore", [False, True])
def test_training_forward_has_no_graph_break(ignore, k):
    crit = OnlineLabelSmoothing(k).train()
    z, y = _batches(k, [16])[0]
    if ignore:
        y[3] = -100
    explained = torch._dynamo.explain(_train_step(crit))(z.requires_grad_(), y)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


@pytest.mark.parametrize("k", [7, 150])
@pytest.mark.parametrize("dynamic", [False, True])
def test_compiled_matches_eager_with_a_short_last_batch(dynamic, k):
    torch._dynamo.reset()
    eager, compiled = OnlineLabelSmoothing(k, alpha=0.4), OnlineLabelSmoothing(k, alpha=0.4)
    fn = torch.compile(_train_step(compiled), dynamic=dynamic, fullgraph=True)
    for epoch in range(2):
        for z, y in _batches(k, [32, 32, 32, 5], seed=epoch):  # the last batch is short
            _same_loss_and_gradient(eager, fn, z, y)
        torch.testing.assert_close(compiled.store.sums, eager.store.sums, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(compiled.store.counts, eager.store.counts)
        eager.step()
        compiled.step()
        torch.testing.assert_close(compiled.soft_labels, eager.soft_labels, rtol=1e-5, atol=1e-6)
    assert int(compiled.num_iterations) == int(eager.num_iterations) == 8


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_compiled_matches_eager_with_weights_smoothing_and_ignored_rows(reduction):
    """Under compile Eq. (4) takes its row form (functional.mixed_target_rows): the same numbers."""
    torch._dynamo.reset()
    k = 9
    w = torch.linspace(0.5, 2.0, k)
    eager, compiled = (OnlineLabelSmoothing(k, alpha=0.3, weight=w, label_smoothing=0.1, reduction=reduction)
                       for _ in range(2))
    fn = torch.compile(_train_step(compiled), fullgraph=True)
    for epoch in range(2):
        for z, y in _batches(k, [16, 16, 6], seed=10 + epoch):
            y[1] = -100
            za, zb = z.clone().requires_grad_(), z.clone().requires_grad_()
            la, lb = eager(za, y), fn(zb, y)
            la.sum().backward()
            lb.sum().backward()
            torch.testing.assert_close(lb, la, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(zb.grad, za.grad, rtol=1e-5, atol=1e-7)
        eager.step()
        compiled.step()
        torch.testing.assert_close(compiled.soft_labels, eager.soft_labels, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,kw", [("byot", {}), ("byot+ols", {}), ("ds+ols", {}),
                                     ("byot+ols", {"stores": "per_exit"}), ("ddgsd", {})])
def test_self_distillation_losses_have_no_graph_break(name, kw):
    from ols import create_loss

    crit = create_loss(name, 10, **({} if name == "ddgsd" else {"num_exits": 3}), **kw).train()
    (z, y), = _batches(10, [16])
    zs = [z.clone().requires_grad_() for _ in range(2 if name == "ddgsd" else 3)]
    fn = (lambda a, b, t: crit(a, b, t)) if name == "ddgsd" else (lambda a, b, c, t: crit([a, b, c], t))
    explained = torch._dynamo.explain(fn)(*zs, y)
    assert explained.graph_break_count == 0, explained.break_reasons


def test_compiled_ds_ols_matches_eager_across_its_ce_only_first_period():
    from ols import create_loss

    torch._dynamo.reset()
    eager, compiled = (create_loss("ds+ols", 7, num_exits=3) for _ in range(2))
    fn = torch.compile(lambda zs, y: compiled(zs, y), fullgraph=True)
    for epoch in range(2):  # epoch 0: CE on the deepest exit only; epoch 1: the full recipe
        for z, y in _batches(7, [32, 32], seed=epoch):
            za = [(z * s).clone().requires_grad_() for s in (1.0, 0.5, 2.0)]
            zb = [t.detach().clone().requires_grad_() for t in za]
            la, lb = eager(za, y), fn(zb, y)
            la.backward()
            lb.backward()
            torch.testing.assert_close(lb, la, rtol=1e-5, atol=1e-6)
            for a, b in zip(za, zb):
                torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-7)
        eager.step()
        compiled.step()
        torch.testing.assert_close(compiled.soft_labels, eager.soft_labels, rtol=1e-5, atol=1e-6)


def test_compiled_topk_ols_matches_eager_with_no_graph_break():
    torch._dynamo.reset()
    k, topk = 300, 4
    eager, compiled = OnlineLabelSmoothing(k, topk=topk), OnlineLabelSmoothing(k, topk=topk)
    fn = torch.compile(_train_step(compiled), fullgraph=True)  # fullgraph: a graph break raises
    for z, y in _batches(k, [16, 16, 5], seed=1):  # the last batch is short
        _same_loss_and_gradient(eager, fn, z, y)
    for name, value in eager.state_dict().items():
        torch.testing.assert_close(compiled.state_dict()[name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert int((compiled.store.cand_index >= 0).sum()) > 0  # the tables did fill
    eager.step()
    compiled.step()
    torch.testing.assert_close(compiled.store.value, eager.store.value, rtol=1e-5, atol=1e-6)
    assert torch.equal(compiled.store.index, eager.store.index)


def test_a_compiled_step_reads_the_soft_labels_step_wrote_in_place():
    """step() writes the same tensor, so a compiled (or captured) forward sees every period's soft labels."""
    torch._dynamo.reset()
    k = 8
    eager, compiled = OnlineLabelSmoothing(k, alpha=0.3), OnlineLabelSmoothing(k, alpha=0.3)
    fn = torch.compile(_train_step(compiled), fullgraph=True)
    for epoch in range(3):
        for z, y in _batches(k, [16, 16], seed=20 + epoch):
            _same_loss_and_gradient(eager, fn, z, y)
        eager.step()
        compiled.step()
    assert not torch.allclose(compiled.soft_labels, torch.full((k, k), 1.0 / k))


@pytest.mark.parametrize("form", ["mixed", "probabilities"])
def test_mixed_and_probability_targets_have_no_graph_break(form):
    crit = OnlineLabelSmoothing(10).train()
    (z, y), = _batches(10, [16])
    lam = torch.rand(16)
    if form == "mixed":
        fn = lambda a, b, c, d: crit.forward_mixed(a, b, c, d)  # noqa: E731
        args = (z.requires_grad_(), y, y.flip(0), lam)
    else:
        fn = lambda a, t: crit(a, t)  # noqa: E731
        args = (z.requires_grad_(), torch.softmax(torch.randn(16, 10), 1))
    explained = torch._dynamo.explain(fn)(*args)
    assert explained.graph_break_count == 0, explained.break_reasons
