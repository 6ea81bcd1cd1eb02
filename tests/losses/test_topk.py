"""The top-k soft-label store: exact against dense OLS at topk = K, the sparse loss against its
formula and gradcheck, the Misra-Gries table against exact sums and its bound, leftover rules,
checkpoints mid-period, memory at K = 100,000, and the dense-size guard."""


import pytest
import torch
import torch.nn.functional as F
from test_ols import make_stream  # tests/losses is on sys.path (rootdir-relative imports)

from ols import OnlineLabelSmoothing
from ols.losses.topk import SparseRows, TopKSoftLabels
from ols.losses.topk.merge import merge_rows

SETTINGS = [("uniform", "uniform", None, "keep"), ("zeros", "keep", None, "keep"),
            ("onehot", "uniform", 0.9, "keep"), ("ls:0.2", "keep", 0.6, "keep"),
            ("uniform", "zeros", None, "keep"), ("ls:0.2", "zeros", 0.6, "zero_count")]


@pytest.mark.parametrize("init,zero_count,freeze,frozen_empty", SETTINGS)
def test_topk_equal_to_k_reproduces_dense_ols(init, zero_count, freeze, frozen_empty):
    k = 6
    kw = dict(init=init, zero_count=zero_count, freeze_above=freeze, frozen_empty=frozen_empty)
    dense = OnlineLabelSmoothing(k, alpha=0.4, **kw)
    sparse = OnlineLabelSmoothing(k, alpha=0.4, store=TopKSoftLabels(k, k, slots=k, feed=k, **kw))
    for period in make_stream(k, periods=4, batches=3, batch=24):
        for z, y in period:
            y = y.clone()
            y[-1] = -100  # an ignored row
            za, zb = z.clone().requires_grad_(), z.clone().requires_grad_()
            la, lb = dense(za, y), sparse(zb, y)
            torch.testing.assert_close(lb, la)
            la.backward()
            lb.backward()
            torch.testing.assert_close(zb.grad, za.grad)
        dense.step()
        sparse.step()
        torch.testing.assert_close(sparse.soft_labels, dense.soft_labels, rtol=1e-5, atol=1e-6)


def random_rows(b=5, k_all=9, k=4, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    index = torch.stack([torch.randperm(k_all, generator=g)[:k] for _ in range(b)])
    index[:, 2:][torch.rand(b, k - 2, generator=g) < 0.3] = -1  # some empty slots
    value = torch.rand(b, k, generator=g, dtype=dtype) / k
    value = torch.where(index >= 0, value, torch.zeros_like(value))
    rest = 1 - value.sum(1)
    return index, value, rest


def dense_rows(index, value, rest, k_all):
    """The explicit (B, K) soft labels: value at index, rest / (K - size) everywhere else."""
    out = []
    for idx, val, r in zip(index.tolist(), value.tolist(), rest.tolist()):
        support = {i: v for i, v in zip(idx, val) if i >= 0}
        spread = r / (k_all - len(support))
        out.append([support.get(j, spread) for j in range(k_all)])
    return torch.tensor(out, dtype=value.dtype)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_sparse_loss_is_the_soft_cross_entropy_and_passes_gradcheck(smoothing):
    k_all, alpha = 9, 0.3
    index, value, rest = random_rows(k_all=k_all)
    g = torch.Generator().manual_seed(1)
    z = torch.randn(5, k_all, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, k_all, (5,), generator=g)
    hard = (1 - smoothing) * F.one_hot(y, k_all).double() + smoothing / k_all
    q = alpha * hard + (1 - alpha) * dense_rows(index, value, rest, k_all)
    want = -(q * torch.log_softmax(z, 1)).sum(1)
    rows = SparseRows(index, value, rest)
    got = rows.nll(torch.log_softmax(z, 1), y, alpha, smoothing)
    torch.testing.assert_close(got, want)
    assert torch.autograd.gradcheck(lambda x: rows.nll(torch.log_softmax(x, 1), y, alpha, smoothing), (z,))


def test_the_table_matches_exact_sums_when_it_has_room_and_keeps_the_bound_when_not():
    g = torch.Generator().manual_seed(2)
    n, rows, cols = 400, 3, 30
    row = torch.randint(0, rows, (n,), generator=g)
    col = (torch.rand(n, generator=g) ** 3 * cols).long()  # heavy-tailed: a few classes dominate
    mass = torch.rand(n, generator=g, dtype=torch.float64)
    exact = torch.zeros(rows, cols, dtype=torch.float64).index_put_((row, col), mass, accumulate=True)
    index, value = merge_rows(row, col, mass, rows, cols, slots=cols)  # room for every class
    for r in range(rows):
        got = torch.zeros(cols, dtype=torch.float64)
        got[index[r][index[r] >= 0]] = value[r][index[r] >= 0]
        torch.testing.assert_close(got, exact[r])
    slots = 5  # now merged in chunks of 50, as batches are
    table_i = torch.full((rows, slots), -1, dtype=torch.long)
    table_v = torch.zeros(rows, slots, dtype=torch.float64)
    for start in range(0, n, 50):
        r_ = torch.cat([torch.arange(rows).repeat_interleave(slots), row[start:start + 50]])
        c_ = torch.cat([table_i.reshape(-1), col[start:start + 50]])
        m_ = torch.cat([table_v.reshape(-1), mass[start:start + 50]])
        table_i, table_v = merge_rows(r_, c_, m_, rows, cols, slots)
    for r in range(rows):
        bound = float(exact[r].sum()) / (slots + 1)
        est = torch.zeros(cols, dtype=torch.float64)
        est[table_i[r][table_i[r] >= 0]] = table_v[r][table_i[r] >= 0]
        assert bool((est <= exact[r] + 1e-12).all()) and bool((exact[r] - est <= bound + 1e-12).all())
        heavy = torch.nonzero(exact[r] > bound).flatten()
        assert set(heavy.tolist()) <= set(table_i[r].tolist())  # a class above the bound is never lost


def test_a_float32_table_merges_as_a_float64_one_when_the_sums_are_exact():
    g = torch.Generator().manual_seed(5)
    n, rows, cols, slots = 500, 4, 40, 6
    row = torch.randint(0, rows + 1, (n,), generator=g)  # row 4: ignored
    col = torch.randint(-1, cols, (n,), generator=g)  # -1: ignored
    mass = torch.randint(0, 16, (n,), generator=g).double() / 16  # sums exact in both dtypes
    i64, v64 = merge_rows(row, col, mass, rows, cols, slots)
    i32, v32 = merge_rows(row, col, mass.float(), rows, cols, slots)
    assert torch.equal(i32, i64) and torch.equal(v32.double(), v64)
    assert int((v64 > 0).sum()) > rows  # the tables are not empty


def learned(topk, leftover, k_all=12):
    store = TopKSoftLabels(k_all, topk, slots=k_all, feed=k_all, leftover=leftover)
    crit = OnlineLabelSmoothing(k_all, store=store)
    for period in make_stream(k_all, periods=1, batches=4, batch=32, missing=()):
        for z, y in period:
            crit(z, y)
    crit.step()
    return crit


def test_leftover_uniform_keeps_the_dense_top_k_and_renormalise_rescales_them():
    k_all, k = 12, 4
    dense = learned(k_all, "uniform").soft_labels  # topk = K: the dense rows
    uni, ren = learned(k, "uniform").store, learned(k, "renormalise").store
    seen = [c for c in range(k_all) if not torch.allclose(dense[c], torch.full((k_all,), 1 / k_all))]
    assert len(seen) >= k_all // 2
    for c in seen:  # (a class with no correct sample is uniform under either store)
        idx = uni.index[c][uni.index[c] >= 0].long()
        want = dense[c, idx]
        torch.testing.assert_close(uni.value[c][: len(idx)], want)  # the dense row's own values
        assert int(idx[0]) == c  # slot 0 is the class itself
        others = dense[c].clone()
        others[c] = -1
        assert set(idx[1:].tolist()) == set(others.topk(k - 1).indices.tolist())
    torch.testing.assert_close(uni.dense().sum(1), torch.ones(k_all))
    torch.testing.assert_close(ren.dense().sum(1), torch.ones(k_all))
    torch.testing.assert_close(ren.value[seen].sum(1), torch.ones(len(seen)))  # the k entries alone
    assert float(ren.rest[seen].abs().max()) == 0.0
    torch.testing.assert_close(ren.value[seen], uni.value[seen] / uni.value[seen].sum(1, keepdim=True))


def test_a_mid_period_checkpoint_resumes_exactly():
    k_all = 10
    stream = make_stream(k_all, periods=2, batches=4, batch=16)
    a = OnlineLabelSmoothing(k_all, topk=3)
    for z, y in stream[0]:
        a(z, y)
    a.step()
    a(*stream[1][0])
    b = OnlineLabelSmoothing(k_all, topk=3)
    b.load_state_dict({name: t.clone() for name, t in a.state_dict().items()})
    for z, y in stream[1][1:]:
        torch.testing.assert_close(a(z, y), b(z, y))
    a.step()
    b.step()
    for name, t in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[name], t, rtol=0, atol=0)


def test_state_at_100k_classes_fits_in_64_mb_and_dense_refuses_with_a_hint():
    crit = OnlineLabelSmoothing(100_000, topk=32)
    state = crit.state_dict()
    total = sum(t.numel() * t.element_size() for t in state.values())
    assert total < 64e6, total
    assert crit.soft_labels is None  # no 40 GB dense view
    index, value, rest = crit.store.targets(torch.tensor([5]))
    assert int(index[0, 0]) == 5 and float(value[0, 0] + rest[0]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="would hold 12.8 GB.*pass topk=32"):
        OnlineLabelSmoothing(40_000)


def test_topk_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="weight= is not supported by TopKSoftLabels"):
        OnlineLabelSmoothing(5, topk=2, weight=torch.ones(5))
    with pytest.raises(ValueError, match="probability target needs the dense soft labels"):
        OnlineLabelSmoothing(5, topk=2)(torch.randn(2, 5), torch.full((2, 5), 0.2))
    with pytest.raises(ValueError, match="topk must be a positive integer"):
        OnlineLabelSmoothing(5, topk=0)
    with pytest.raises(ValueError, match="slots \\(2\\) must be at least topk \\(3\\)"):
        TopKSoftLabels(5, 3, slots=2)
    with pytest.raises(ValueError, match="unknown leftover 'spread'"):
        TopKSoftLabels(5, 3, leftover="spread")


def test_mixed_targets_with_topk_match_dense_at_topk_k():
    k_all = 6
    (z, y), = make_stream(k_all, periods=1, batches=1, batch=20)[0][:1]
    lam = torch.rand(20)
    dense = OnlineLabelSmoothing(k_all)
    sparse = OnlineLabelSmoothing(k_all, store=TopKSoftLabels(k_all, k_all, slots=k_all, feed=k_all))
    want = dense.forward_mixed(z, y, y.flip(0), lam)
    torch.testing.assert_close(sparse.forward_mixed(z, y, y.flip(0), lam), want)
    torch.testing.assert_close(sparse.store.count[:k_all], dense.store.counts[:k_all])


def test_nan_and_inf_rows_never_reach_the_table():
    crit = OnlineLabelSmoothing(4, topk=2)
    z = torch.tensor([[5.0, 0.0, 0.0, 0.0], [float("nan"), 0.0, 0.0, 0.0], [float("inf"), 0.0, 0.0, 0.0],
                      [0.0, 3.0, float("-inf"), 0.0]])
    crit.eval()(z[:1], torch.tensor([0]))
    crit.train()
    crit.store.observe(z.log_softmax(1), torch.tensor([0, 0, 0, 1]))
    assert torch.isfinite(crit.store.cand_value).all()
    torch.testing.assert_close(crit.store.count[:4], torch.tensor([1.0, 1.0, 0.0, 0.0]))
    p = torch.softmax(z[0], 0)
    assert float(crit.store.own[0]) == pytest.approx(float(p[0]))  # the own class: its exact sum
    assert float(crit.store.cand_value[0].max()) == pytest.approx(float(p[1]))  # then the others


def sparse_eq4_reference(logp, y, index, value, rest, alpha, smoothing=0.0):
    """Eq. (4) on sparse rows, written plainly over log p for autograd: the reference of the backward."""
    k_all = logp.shape[1]
    present = index >= 0
    u = rest / (k_all - present.sum(1)).clamp(min=1)  # (B,)
    soft = (torch.where(present, value - u.unsqueeze(1), 0.0) * logp.gather(1, index.clamp(min=0))).sum(1) \
        + u * logp.sum(1)
    hard = (1 - smoothing) * logp.gather(1, y.unsqueeze(1)).squeeze(1) + smoothing * logp.mean(1)
    return -(alpha * hard + (1 - alpha) * soft)


@pytest.mark.parametrize("smoothing", [0.0, 0.15])
def test_the_written_out_backward_equals_autograd_on_the_plain_formula(smoothing):
    k_all, alpha = 9, 0.35
    index, value, rest = random_rows(b=6, k_all=k_all, seed=4, dtype=torch.float32)
    g = torch.Generator().manual_seed(5)
    z = torch.randn(6, k_all, generator=g) * 3
    y = torch.randint(0, k_all, (6,), generator=g)
    za, zb = z.clone().requires_grad_(), z.clone().requires_grad_()
    w = torch.rand(6, generator=g)  # an arbitrary upstream gradient per row
    got = SparseRows(index, value, rest).nll(torch.log_softmax(za, 1), y, alpha, smoothing)
    want = sparse_eq4_reference(torch.log_softmax(zb, 1), y, index, value, rest, alpha, smoothing)
    torch.testing.assert_close(got, want)
    (got * w).sum().backward()
    (want * w).sum().backward()
    torch.testing.assert_close(za.grad, zb.grad)


def test_an_ignored_row_with_nan_logits_adds_nothing_to_the_loss():
    crit = OnlineLabelSmoothing(5, topk=2)
    z = torch.randn(3, 5)
    z[1] = float("nan")
    y = torch.tensor([0, -100, 3])
    loss = crit(z, y)
    assert torch.isfinite(loss)  # its gradient is NaN, as F.cross_entropy's is
    torch.testing.assert_close(loss, OnlineLabelSmoothing(5, topk=2).eval()(z[[0, 2]], y[[0, 2]]))
