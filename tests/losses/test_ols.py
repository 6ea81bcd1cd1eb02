"""OnlineLabelSmoothing against a per-sample re-implementation of Algorithm 1."""

import math

import pytest
import torch
import torch.nn.functional as F

from ols import OnlineLabelSmoothing


class ReferenceOLS:
    """Algorithm 1 written the slow, obvious way: Python loops over samples and classes."""

    def __init__(self, k, alpha=0.5, init="uniform", zero_count="uniform", freeze_above=None,
                 frozen_empty="keep"):
        self.k, self.alpha, self.zero_count, self.freeze_above = k, alpha, zero_count, freeze_above
        self.frozen_empty = frozen_empty
        if init == "uniform":
            self.S = [[1.0 / k] * k for _ in range(k)]
        elif init == "zeros":
            self.S = [[0.0] * k for _ in range(k)]
        elif init == "onehot":
            self.S = [[1.0 if i == j else 0.0 for j in range(k)] for i in range(k)]
        else:
            eps = float(init.split(":")[1])
            self.S = [[(1 - eps) * (i == j) + eps / k for j in range(k)] for i in range(k)]
        self._reset()

    def _reset(self):
        self.acc = [[0.0] * self.k for _ in range(self.k)]
        self.cnt = [0] * self.k

    def loss(self, logits, target, training=True):
        total = 0.0
        for z, y in zip(logits.double().tolist(), target.tolist()):
            m = max(z)
            lse = m + math.log(sum(math.exp(v - m) for v in z))
            logp = [v - lse for v in z]
            hard = -logp[y]
            soft = -sum(s * lp for s, lp in zip(self.S[y], logp))
            total += self.alpha * hard + (1 - self.alpha) * soft
            if training and z[y] == max(z):  # the target attains the maximum
                for j in range(self.k):
                    self.acc[y][j] += math.exp(logp[j])
                self.cnt[y] += 1
        return total / len(target)

    def step(self):
        new = []
        for c in range(self.k):
            frozen = self.freeze_above is not None and max(self.S[c]) >= self.freeze_above
            if frozen and self.frozen_empty == "zero_count" and self.cnt[c] == 0:
                frozen = False  # the official fine-grained order: the zero-count rule first
            if frozen:
                new.append(list(self.S[c]))
            elif self.cnt[c] > 0:
                new.append([a / self.cnt[c] for a in self.acc[c]])
            elif self.zero_count == "uniform":
                new.append([1.0 / self.k] * self.k)
            elif self.zero_count == "zeros":
                new.append([0.0] * self.k)
            else:
                new.append(list(self.S[c]))
        self.S = new
        self._reset()


def make_stream(k, periods, batches, batch, seed=0, missing=(0,)):
    """Batches of logits and labels with repeated labels and classes never predicted right."""
    g = torch.Generator().manual_seed(seed)
    stream = []
    for _ in range(periods):
        period = []
        for _ in range(batches):
            y = torch.randint(0, k, (batch,), generator=g)
            y[: batch // 3] = y[0]  # many repeats of one label inside the batch
            z = torch.randn(batch, k, generator=g) * 2
            # make about half the samples correct, but never for the `missing` classes
            boost = torch.rand(batch, generator=g) < 0.5
            z[boost, y[boost]] += 6.0
            for c in missing:
                z[y == c, c] -= 20.0
            period.append((z, y))
        stream.append(period)
    return stream


@pytest.mark.parametrize(
    "init,zero_count,freeze,frozen_empty",
    [("uniform", "uniform", None, "keep"), ("zeros", "keep", None, "keep"),
     ("onehot", "uniform", 0.9, "keep"),
     ("ls:0.2", "keep", 0.6, "keep"), ("uniform", "zeros", None, "keep"),
     ("onehot", "uniform", 0.9, "zero_count"), ("ls:0.2", "zeros", 0.6, "zero_count")],
)
def test_matches_reference_over_periods(init, zero_count, freeze, frozen_empty):
    k = 6
    crit = OnlineLabelSmoothing(k, alpha=0.4, init=init, zero_count=zero_count, freeze_above=freeze,
                                frozen_empty=frozen_empty)
    ref = ReferenceOLS(k, 0.4, init, zero_count, freeze, frozen_empty)
    for period in make_stream(k, periods=4, batches=3, batch=24):
        for z, y in period:
            got = crit(z, y)
            want = ref.loss(z, y)
            assert got.item() == pytest.approx(want, rel=1e-5, abs=1e-5)
        crit.step()
        ref.step()
        torch.testing.assert_close(crit.soft_labels, torch.tensor(ref.S, dtype=torch.float32),
                                   rtol=1e-5, atol=1e-6)
    # class 0 was never predicted correctly: it followed zero_count
    expected_row0 = torch.tensor(ref.S[0], dtype=torch.float32)
    torch.testing.assert_close(crit.soft_labels[0], expected_row0)


def test_alpha_one_is_cross_entropy():
    torch.manual_seed(0)
    z, y = torch.randn(32, 10), torch.randint(0, 10, (32,))
    crit = OnlineLabelSmoothing(10, alpha=1.0)
    for _ in range(2):
        torch.testing.assert_close(crit(z, y), F.cross_entropy(z, y))
        crit.step()


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 0.9])
def test_uniform_init_is_label_smoothing_before_first_step(alpha):
    torch.manual_seed(1)
    z, y = torch.randn(20, 7) * 3, torch.randint(0, 7, (20,))
    crit = OnlineLabelSmoothing(7, alpha=alpha)
    want = F.cross_entropy(z, y, label_smoothing=1 - alpha)
    torch.testing.assert_close(crit(z, y), want)


def test_other_inits_before_first_step():
    torch.manual_seed(2)
    z, y = torch.randn(16, 5), torch.randint(0, 5, (16,))
    ce = F.cross_entropy(z, y)
    torch.testing.assert_close(OnlineLabelSmoothing(5, alpha=0.3, init="zeros")(z, y), 0.3 * ce)
    torch.testing.assert_close(OnlineLabelSmoothing(5, alpha=0.3, init="onehot")(z, y), ce)
    ls = OnlineLabelSmoothing(5, alpha=0.3, init="ls:0.2")(z, y)
    torch.testing.assert_close(ls, F.cross_entropy(z, y, label_smoothing=0.7 * 0.2))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("init", ["uniform", "zeros"])
def test_gradcheck_float64(reduction, init):
    torch.manual_seed(3)
    crit = OnlineLabelSmoothing(5, alpha=0.3, init=init, reduction=reduction)
    y = torch.tensor([0, 1, 1, 4, -100, 2])
    z = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: crit(x, y), (z,))
    crit.step()  # now with learned, non-uniform soft labels
    crit.eval()
    assert torch.autograd.gradcheck(lambda x: crit(x, y), (z,))


def _with_one_period(k: int, alpha: float, seed: int) -> OnlineLabelSmoothing:
    """An OLS loss that has accumulated one period of a random stream (not yet stepped)."""
    torch.manual_seed(seed)
    crit = OnlineLabelSmoothing(k, alpha=alpha)
    for z, y in make_stream(k, 1, 2, 32)[0]:
        crit(z, y)
    return crit


def test_gradient_matches_autograd_of_explicit_formula():
    k = 8
    crit = _with_one_period(k, 0.5, seed=4)
    crit.step()
    z = torch.randn(32, k, requires_grad=True)
    y = torch.randint(0, k, (32,))
    crit(z, y).backward()
    z2 = z.detach().clone().requires_grad_()
    logp = torch.log_softmax(z2, 1)
    q = 0.5 * F.one_hot(y, k).float() + 0.5 * crit.soft_labels[y]
    (-(q * logp).sum(1).mean()).backward()
    torch.testing.assert_close(z.grad, z2.grad)


def test_update_every_steps_automatically():
    k = 4
    stream = make_stream(k, 1, 6, 16, seed=5, missing=())[0]
    auto = OnlineLabelSmoothing(k, update_every=3)
    manual = OnlineLabelSmoothing(k)
    for i, (z, y) in enumerate(stream, start=1):
        torch.testing.assert_close(auto(z, y), manual(z, y))
        if i % 3 == 0:
            manual.step()
        torch.testing.assert_close(auto.soft_labels, manual.soft_labels)
    assert int(auto.store.num_updates) == 2 and int(auto.num_iterations) == 6


def test_update_every_backward_uses_pre_update_soft_labels():
    k = 4
    torch.manual_seed(6)
    crit = OnlineLabelSmoothing(k, update_every=1)
    z = torch.randn(8, k, requires_grad=True)
    y = torch.randint(0, k, (8,))
    before = crit.soft_labels.clone()
    crit(z, y).backward()  # this forward also steps
    logp = torch.log_softmax(z.detach(), 1)
    p = logp.exp()
    q = 0.5 * F.one_hot(y, k).float() + 0.5 * before[y]
    torch.testing.assert_close(z.grad, (p - q) / 8)


def test_step_between_forward_and_backward_keeps_the_forwards_gradient():
    # The backward reads the soft labels the forward gathered, so a step() in between
    # does not change the gradient of the loss that was computed.
    k = 5
    crit = _with_one_period(k, 0.4, seed=13)
    z = torch.randn(8, k, requires_grad=True)
    y = torch.randint(0, k, (8,))
    before = crit.soft_labels.clone()
    loss = crit(z, y)
    crit.step()
    assert not torch.equal(crit.soft_labels, before)
    loss.backward()
    q = 0.4 * F.one_hot(y, k).float() + 0.6 * before[y]
    expected = (torch.softmax(z.detach(), 1) - q) / 8
    torch.testing.assert_close(z.grad, expected)


def test_eval_mode_does_not_accumulate():
    crit = OnlineLabelSmoothing(3).eval()
    z = torch.tensor([[5.0, 0.0, 0.0]])
    crit(z, torch.tensor([0]))
    assert crit.store.counts.sum() == 0 and crit.store.sums.abs().sum() == 0
    crit.train()
    crit(z, torch.tensor([0]))
    assert int(crit.store.counts[0]) == 1


def test_repeated_labels_all_count():
    crit = OnlineLabelSmoothing(3)
    z = torch.tensor([[3.0, 0.0, 0.0], [2.0, 1.0, 0.0], [4.0, 0.0, 1.0], [0.0, 5.0, 0.0]])
    y = torch.tensor([0, 0, 0, 1])
    crit(z, y)
    assert crit.store.counts[:3].tolist() == [3, 1, 0]
    torch.testing.assert_close(crit.store.sums[0], torch.softmax(z[:3], 1).sum(0))


@pytest.mark.parametrize("k", [3, 200])
@pytest.mark.parametrize("ignored", [True, False])
def test_non_finite_and_ignored_rows_are_never_accumulated(k, ignored):
    crit = OnlineLabelSmoothing(k)
    z = torch.zeros(6, k)
    z[:, :2] = torch.tensor([[float("nan"), 0.0], [float("inf"), 0.0], [5.0, float("-inf")],
                             [4.0, 0.0], [6.0, 0.0], [0.0, 3.0]])
    # rows 0 and 1 (NaN, +inf) never count; row 2's -inf is a masked class, probability 0, and
    # counts; row 4 is correct but ignored, or not ignored and wrong
    crit(z, torch.tensor([0, 0, 0, 0, -100 if ignored else 1, 1]))
    torch.testing.assert_close(crit.store.counts[:k], torch.tensor([2.0, 1.0] + [0.0] * (k - 2)))
    torch.testing.assert_close(crit.store.sums[0], torch.softmax(z[2], 0) + torch.softmax(z[3], 0))
    torch.testing.assert_close(crit.store.sums[1], torch.softmax(z[5], 0))
    resumed = OnlineLabelSmoothing(k)  # mid-period: the discard bin's NaN rows do not block a resume
    resumed.load_state_dict(crit.state_dict())
    crit.step()
    resumed.step()
    assert torch.isfinite(crit.soft_labels).all()
    torch.testing.assert_close(resumed.soft_labels, crit.soft_labels, rtol=0, atol=0)


def test_ignore_index_and_reductions_match_cross_entropy():
    torch.manual_seed(7)
    z, y = torch.randn(10, 4), torch.randint(0, 4, (10,))
    y[[1, 5]] = -1
    for reduction in ("mean", "sum", "none"):
        crit = OnlineLabelSmoothing(4, alpha=0.6, ignore_index=-1, reduction=reduction)
        want = F.cross_entropy(z, y, ignore_index=-1, reduction=reduction, label_smoothing=0.4)
        torch.testing.assert_close(crit(z, y), want)
    crit = OnlineLabelSmoothing(4, ignore_index=-1)
    z[1] = float("nan")  # an ignored NaN row does not poison the mean
    assert torch.isfinite(crit(z, y))
    assert int(crit.store.counts[:4].sum()) == int(((z.argmax(1) == y) & (y >= 0)).sum())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_logits(dtype):
    torch.manual_seed(8)
    z32 = torch.randn(16, 6) * 3
    y = torch.randint(0, 6, (16,))
    z = z32.to(dtype).requires_grad_()
    crit = OnlineLabelSmoothing(6)
    loss = crit(z, y)
    assert loss.dtype == torch.float32
    want = F.cross_entropy(z.detach().float(), y, label_smoothing=0.5)
    torch.testing.assert_close(loss, want)
    loss.backward()
    assert z.grad.dtype == dtype and torch.isfinite(z.grad.float()).all()
    assert crit.store.sums.dtype == torch.float32
    correct = z.detach().float().argmax(1) == y
    torch.testing.assert_close(crit.store.sums[:6].sum(), torch.softmax(z.detach().float(), 1)[correct].sum())


def test_state_dict_round_trip_mid_period():
    k = 5
    stream = make_stream(k, 2, 4, 16, seed=9)
    a = OnlineLabelSmoothing(k, update_every=None)
    for z, y in stream[0]:
        a(z, y)
    a.step()
    z, y = stream[1][0]
    a(z, y)  # mid-period
    state = {name: t.clone() for name, t in a.state_dict().items()}
    assert set(state) == {"store.soft_labels", "store.sums", "store.num_updates", "num_iterations",
                          "state_format", "store.state_format"}
    b = OnlineLabelSmoothing(k)
    b.load_state_dict(state)
    for z, y in stream[1][1:]:
        torch.testing.assert_close(a(z, y), b(z, y))
    a.step()
    b.step()
    torch.testing.assert_close(a.soft_labels, b.soft_labels, rtol=0, atol=0)
    assert int(a.num_iterations) == int(b.num_iterations) == 8


def test_to_moves_all_state():
    crit = OnlineLabelSmoothing(4)
    names = {n for n, _ in crit.named_buffers()}  # the sums are rank-local state, not a buffer
    assert names == {"store.soft_labels", "store.num_updates", "num_iterations", "state_format",
                     "store.state_format"}
    crit.to("meta")
    assert all(b.device.type == "meta" for b in crit.buffers()) and crit.store.sums.device.type == "meta"


def test_docstring_example_values():
    crit = OnlineLabelSmoothing(num_classes=3, alpha=0.5)
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    crit(logits, torch.tensor([0, 1]))
    crit.step()
    e2 = math.exp(2.0)
    torch.testing.assert_close(crit.soft_labels[0], torch.tensor([e2, 1, 1]) / (e2 + 2))
    torch.testing.assert_close(crit.soft_labels[2], torch.full((3,), 1 / 3))


def test_two_forwards_before_either_backward():
    # A second forward (and its backward) in between must not change the first loss's gradient.
    torch.manual_seed(12)
    k = 300
    crit = OnlineLabelSmoothing(k, alpha=0.4, init="ls:0.2")
    za = torch.randn(16, k, requires_grad=True)
    zb = torch.randn(16, k, requires_grad=True)
    y = torch.randint(0, k, (16,))
    loss_a = crit(za, y)
    crit(zb, y).backward()
    loss_a.backward()
    z_ref = za.detach().clone().requires_grad_()
    q = 0.4 * F.one_hot(y, k).float() + 0.6 * crit.soft_labels[y]
    (-(q * torch.log_softmax(z_ref, 1)).sum(1).mean()).backward()
    torch.testing.assert_close(za.grad, z_ref.grad)


@pytest.mark.parametrize("k", [6, 300])
def test_correct_rows_are_those_whose_target_attains_the_maximum(k):
    # exact ties, an all-zero head, confident and unconfident rows: a row counts exactly
    # when its target's logit equals the row maximum (ties with other classes included)
    g = torch.Generator().manual_seed(11)
    z = torch.randint(0, 4, (400, k), generator=g).float()  # ties everywhere
    z[:100] = torch.randn(100, k, generator=g)
    z[100:200, 3] = 30.0
    z[200:210] = 0.0  # an all-zero head: class 0 is the argmax
    y = torch.randint(0, k, (400,), generator=g)
    y[100:150] = 3
    y[200:205] = 0
    y[:50] = z[:50].argmax(1)
    expected = torch.tensor([row[t] == max(row) for row, t in zip(z.tolist(), y.tolist())])
    assert expected.sum() > 100 and (~expected).sum() > 100
    assert (expected & (z.argmax(1) != y)).sum() > 10  # ties that argmax gives to a lower class
    crit = OnlineLabelSmoothing(k)
    crit(z, y)
    want_counts = torch.bincount(y[expected], minlength=k).float()
    torch.testing.assert_close(crit.store.counts[:k], want_counts)
    want_sums = torch.zeros(k, k).index_add_(0, y[expected], torch.softmax(z[expected], 1))
    torch.testing.assert_close(crit.store.sums[:k], want_sums)


def test_soft_labels_replaced_twice_between_forwards():
    # Two replacements with no forward in between: the next forward must use the newest
    # table (a cache keyed on id/address/version could serve the first one's copy).
    torch.manual_seed(15)
    k = 50
    crit = OnlineLabelSmoothing(k, alpha=0.3)
    z, y = torch.randn(16, k), torch.randint(0, k, (16,))
    crit(z, y)
    for seed in (1, 2):
        table = torch.softmax(torch.randn(k, k, generator=torch.Generator().manual_seed(seed)), 1)
        crit.store.soft_labels = table
    got = crit(z, y)
    q = 0.3 * F.one_hot(y, k).float() + 0.7 * table[y]
    torch.testing.assert_close(got, -(q * torch.log_softmax(z, 1)).sum(1).mean())


def test_a_state_without_its_format_or_of_another_format_is_refused_with_one_line():
    # before formats were recorded, the buffers sat on the loss itself, then in the store without a format
    k = 4
    crit = _with_one_period(k, 0.5, seed=16)
    state = crit.state_dict()
    unversioned = {key: t for key, t in state.items() if not key.endswith("state_format")}
    fresh = OnlineLabelSmoothing(k)
    with pytest.raises(ValueError, match="has no format record \\(written by ols before 2026-12-04\\)"):
        fresh.load_state_dict(unversioned)
    future = {**state, "store.state_format": torch.tensor(99)}
    with pytest.raises(ValueError, match="SoftLabels state to load \\(store\\) has format 99"):
        fresh.load_state_dict(future)
    holder = torch.nn.Sequential(OnlineLabelSmoothing(k))  # nested, with a prefix: the current format loads
    holder.load_state_dict({f"0.{key}": t for key, t in state.items()})
    torch.testing.assert_close(holder[0].store.sums, crit.store.sums)


def test_observe_weights_make_a_weighted_mean():
    k = 3
    crit = OnlineLabelSmoothing(k)
    z = torch.tensor([[3.0, 0.0, 0.0], [1.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    y = torch.tensor([0, 0, 0, 1])
    w = torch.tensor([0.25, 0.75, 0.0, 1.0])  # row 2 has weight 0: not counted
    crit.store.observe(z.log_softmax(1), y, w)
    crit.step()
    p = torch.softmax(z, 1)
    torch.testing.assert_close(crit.soft_labels[0], (0.25 * p[0] + 0.75 * p[1]) / 1.0)
    torch.testing.assert_close(crit.soft_labels[1], p[3])


def test_empty_period_warns_once_and_names_the_causes():
    crit = OnlineLabelSmoothing(3, update_every=2)
    z, y = torch.tensor([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0]]), torch.tensor([0, 1])
    crit(z, y)
    crit(z, y)  # the loss steps itself here
    learned = crit.soft_labels.clone()
    assert learned[0, 0] > 0.9
    with pytest.warns(UserWarning, match="no training sample was observed.*update_every.*zero_count='keep'"):
        crit.step()  # an extra epoch-end step closes an empty period
    torch.testing.assert_close(crit.soft_labels, torch.full((3, 3), 1 / 3))
    keep = OnlineLabelSmoothing(3, zero_count="keep")
    keep(z, y)
    keep.step()
    with pytest.warns(UserWarning):
        keep.step()
    assert keep.soft_labels[0, 0] > 0.9


@pytest.mark.parametrize(
    "kwargs,logits,target,message",
    [
        ({}, torch.randn(4, 3), torch.tensor([0, 1, 3, 0]), "target contains 3 but num_classes is 3"),
        ({}, torch.randn(4, 3), torch.tensor([0, -2, 1, 0]), "target contains -2"),
        ({}, torch.randn(4, 5), torch.tensor([0, 1, 2, 0]), "logits have 5 columns but num_classes is 3"),
        ({}, torch.randn(4, 3, 2), torch.tensor([0, 1, 2, 0]), "need a target of shape \\(4, 2\\)"),
        ({}, torch.randn(4, 3), torch.full((4, 3), 0.5), "rows that each sum to 1"),
        ({}, torch.randn(4, 3), torch.tensor([[1.5, -0.5, 0.0]] * 4), "finite, non-negative rows"),
        ({}, torch.randn(4, 3), torch.full((4, 2), 0.5), "must have the logits' shape \\(4, 3\\)"),
        ({"weight": torch.ones(2)}, torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), "weight must hold 3"),
        ({"weight": torch.tensor([1.0, -1.0, 1.0])}, torch.randn(4, 3), torch.tensor([0, 1, 2, 0]),
         "non-negative class weights"),
        ({}, torch.randn(4, 3), torch.tensor([[0], [1], [2], [0]]), "target must have shape"),
        ({}, torch.randn(4, 3), torch.tensor([0.0, 1.0, 2.0, 0.0]), "integer class indices"),
        ({}, torch.randint(0, 3, (4, 3)), torch.tensor([0, 1, 2, 0]), "floating-point"),
        ({}, torch.randn(4, 3), torch.tensor([0, 1, 2]), "batch size 4 but target has 3"),
    ],
)
def test_bad_inputs(kwargs, logits, target, message):
    with pytest.raises(ValueError, match=message):
        OnlineLabelSmoothing(3, **kwargs)(logits, target)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"alpha": 1.5}, "alpha must be in"),
        ({"alpha": -0.1}, "alpha must be in"),
        ({"init": "gaussian"}, "unknown init 'gaussian'"),
        ({"init": "ls:abc"}, "must be a number"),
        ({"init": "ls:1.5"}, "eps must be in"),
        ({"zero_count": "zero"}, "unknown zero_count 'zero'"),
        ({"frozen_empty": "reset"}, "unknown frozen_empty 'reset'"),
        ({"freeze_above": 1.5}, "freeze_above must be in"),
        ({"update_every": 0}, "update_every must be a positive integer"),
        ({"reduction": "avg"}, "unknown reduction 'avg'"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        OnlineLabelSmoothing(3, **kwargs)


def test_a_store_passed_in_is_the_store_used():
    from ols.losses import SoftLabels, TopKSoftLabels

    torch.manual_seed(17)
    z, y = torch.randn(32, 6) * 3, torch.randint(0, 6, (32,))
    passed = OnlineLabelSmoothing(6, alpha=0.3, store=SoftLabels(6, init="zeros", zero_count="keep"))
    built = OnlineLabelSmoothing(6, alpha=0.3, init="zeros", zero_count="keep")
    for _ in range(2):
        torch.testing.assert_close(passed(z, y), built(z, y))
        passed.step()
        built.step()
    torch.testing.assert_close(passed.soft_labels, built.soft_labels)
    assert isinstance(OnlineLabelSmoothing(6, topk=3).store, TopKSoftLabels)
    assert OnlineLabelSmoothing(6, topk=3).store.topk == 3


@pytest.mark.parametrize("kwargs,message", [
    ({"store": "uniform"}, "store must be a soft-label store for 3 classes"),
    ({"store": "SOFT4"}, "store must be a soft-label store for 3 classes"),
    ({"store": "SOFT3", "init": "zeros"}, "pass them to the store instead"),
    ({"store": "SOFT3", "topk": 2}, "pass them to the store instead"),
    ({"topk": 2, "weight": torch.ones(3)}, "weight= is not supported by TopKSoftLabels"),
])
def test_bad_store_arguments(kwargs, message):
    from ols.losses import SoftLabels

    kwargs = {key: SoftLabels(int(v[4:])) if isinstance(v, str) and v.startswith("SOFT") else v
              for key, v in kwargs.items()}
    with pytest.raises(ValueError, match=message):
        OnlineLabelSmoothing(3, **kwargs)


def test_a_bad_label_where_reads_are_not_free_gives_nan_now_and_the_error_at_step(monkeypatch):
    """The device path, run on the CPU: no read in the forward; the bad row's loss is NaN, its gradient 0,
    it adds nothing to the statistics, and step() names the label (then the record is clear)."""
    import ols.losses.base as base

    monkeypatch.setattr(base, "reads_are_free", lambda t: False)
    k = 4
    crit = OnlineLabelSmoothing(k, alpha=0.5)
    z = torch.tensor([[4.0, 0, 0, 0], [0, 4.0, 0, 0], [0, 0, 4.0, 0]], requires_grad=True)
    y = torch.tensor([0, 7, 2])
    loss = crit(z, y)
    assert torch.isnan(loss)
    loss.backward()
    assert torch.isfinite(z.grad).all() and float(z.grad[1].abs().sum()) == 0.0
    torch.testing.assert_close(crit.store.counts[:k], torch.tensor([1.0, 0.0, 1.0, 0.0]))
    none = OnlineLabelSmoothing(k, reduction="none")(z, torch.tensor([0, -3, -100]))
    none = none.detach()
    assert torch.isnan(none[1]) and float(none[2]) == 0.0 and torch.isfinite(none[0])
    with pytest.raises(ValueError, match=r"target contains 7 but num_classes is 4 \(ignore_index is -100\)"):
        crit.step()
    assert int(crit.store.num_updates) == 0  # the period was not closed
    crit.step()  # the record was read and cleared: the period closes now
    assert int(crit.store.num_updates) == 1


def test_a_bad_label_on_the_cpu_is_refused_at_once_and_the_next_good_batch_trains():
    crit = OnlineLabelSmoothing(4)
    z = torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"target contains -2 but num_classes is 4"):
        crit(z, torch.tensor([0, -2, 1]))
    assert torch.isfinite(crit(z, torch.tensor([0, 3, 1])))
