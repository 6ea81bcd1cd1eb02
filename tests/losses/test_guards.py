"""The losses' own guards: meaningless settings and damaged state are refused with one clear line."""

import pytest
import torch

from ols import OnlineLabelSmoothing, OnlineLabelSmoothingSingle


@pytest.mark.parametrize("make", [lambda: OnlineLabelSmoothing(1),
                                  lambda: OnlineLabelSmoothingSingle(1, num_samples=5)])
def test_one_class_is_refused(make):
    with pytest.raises(ValueError, match="needs at least 2 classes"):
        make()


@pytest.mark.parametrize("init", [0.1, None, ["uniform"]])
def test_init_of_the_wrong_type_is_a_value_error(init):
    with pytest.raises(ValueError, match="init must be a string such as 'uniform'"):
        OnlineLabelSmoothing(3, init=init)


@pytest.mark.parametrize("key", ["store.soft_labels", "store.sums"])
def test_loading_non_finite_state_is_refused(key):
    good = OnlineLabelSmoothing(3)
    state = {k: v.clone() for k, v in good.state_dict().items()}
    state[key][0, 1] = float("nan")
    crit = OnlineLabelSmoothing(3)
    with pytest.raises(ValueError, match=f"\\({key}\\) holds NaN or infinite values"):
        crit.load_state_dict(state)
    torch.testing.assert_close(crit.soft_labels, torch.full((3, 3), 1 / 3))  # left as it was


def test_a_training_forward_under_no_grad_is_not_observed_and_warns_once():
    crit = OnlineLabelSmoothing(3)
    z, y = torch.tensor([[4.0, 0.0, 0.0]]), torch.tensor([0])
    with torch.no_grad():
        with pytest.warns(UserWarning, match="under torch.no_grad\\(\\) is not added.*crit.eval\\(\\)"):
            loss = crit(z, y)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("error")  # once only
            crit(z, y)
    torch.testing.assert_close(loss, OnlineLabelSmoothing(3).eval()(z, y))
    assert float(crit.store.sums.sum()) == 0.0 and int(crit.num_iterations) == 0
    crit(z, y)  # with gradients on, it counts
    assert float(crit.store.sums.sum()) == pytest.approx(1.0)


@pytest.mark.parametrize("cast", ["half", "double", "bfloat16"])
def test_a_cast_module_keeps_float32_statistics_and_trains(cast):
    """``.half()``/``.double()``/``.to(bf16)`` (Lightning's *-true precisions) cast the model; the
    soft labels and sums stay float32, losslessly, and training forwards observe as before."""
    prior = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [1 / 3, 1 / 3, 1 / 3]])
    crit = OnlineLabelSmoothing(3, init=prior)
    cast_crit = getattr(torch.nn.Sequential(OnlineLabelSmoothing(3, init=prior)), cast)()[0]
    assert cast_crit.soft_labels.dtype == torch.float32 and cast_crit.store.sums.dtype == torch.float32
    torch.testing.assert_close(cast_crit.soft_labels, prior, rtol=0, atol=0)  # not rounded through 16 bits
    z, y = torch.tensor([[4.0, 0.0, 0.0], [0.0, 1.0, 3.0]]), torch.tensor([0, 2])
    dtype = {"half": torch.float16, "double": torch.float64, "bfloat16": torch.bfloat16}[cast]
    cast_crit(z.to(dtype), y)
    crit(z.to(dtype).float(), y)
    torch.testing.assert_close(cast_crit.store.sums, crit.store.sums)
    cast_crit.step()
    crit.step()
    torch.testing.assert_close(cast_crit.soft_labels, crit.soft_labels)


def test_sums_are_state_but_not_buffers_so_ddp_cannot_broadcast_them():
    crit = OnlineLabelSmoothing(3)
    names = {name for name, _ in crit.named_buffers()}
    assert "store.sums" not in names and "store.soft_labels" in names
    crit(torch.tensor([[4.0, 0.0, 0.0]]), torch.tensor([0]))
    state = crit.state_dict()
    assert "store.sums" in state
    other = OnlineLabelSmoothing(3)
    other.load_state_dict(state)  # strict: no missing or unexpected key
    torch.testing.assert_close(other.store.sums, crit.store.sums)
    other.store.sums.zero_()
    torch.testing.assert_close(crit.store.sums[0], torch.softmax(torch.tensor([4.0, 0.0, 0.0]), 0))
    with pytest.raises(RuntimeError, match="Missing key.*store.sums"):
        OnlineLabelSmoothing(3).load_state_dict({k: v for k, v in state.items() if k != "store.sums"})
    with pytest.raises(RuntimeError, match="size mismatch for store.sums"):
        OnlineLabelSmoothing(3).load_state_dict({**state, "store.sums": torch.zeros(2, 2)})
    meta = torch.nn.Sequential(OnlineLabelSmoothing(3)).to("meta")
    assert meta[0].store.sums.device.type == "meta"  # .to() moves them like buffers


def test_a_prior_matrix_as_init_tensor_or_npy_and_frozen(tmp_path):
    import numpy as np

    prior = torch.tensor([[2.0, 1.0, 1.0], [0.0, 3.0, 1.0], [1.0, 1.0, 2.0]])
    np.save(tmp_path / "prior.npy", prior.numpy())
    want = prior / prior.sum(1, keepdim=True)  # rows normalised
    for init in (prior, prior.numpy(), str(tmp_path / "prior.npy")):
        torch.testing.assert_close(OnlineLabelSmoothing(3, init=init).soft_labels, want)
    frozen = OnlineLabelSmoothing(3, alpha=0.3, init=prior, freeze=True)
    z, y = torch.tensor([[4.0, 0.0, 0.0], [0.0, 5.0, 1.0]]), torch.tensor([0, 1])
    frozen(z, y)
    frozen.step()  # the period closes, the prior stays
    torch.testing.assert_close(frozen.soft_labels, want)
    assert int(frozen.store.num_updates) == 1 and float(frozen.store.sums.sum()) == 0.0
    q = 0.3 * torch.nn.functional.one_hot(y, 3).float() + 0.7 * want[y]
    torch.testing.assert_close(frozen(z, y), -(q * torch.log_softmax(z, 1)).sum(1).mean())


@pytest.mark.parametrize("prior,msg", [
    (torch.ones(2, 2), "a prior must be \\(3, 3\\) for num_classes=3, got \\(2, 2\\)"),
    (torch.tensor([[1.0, -1.0, 1.0]] * 3), "finite, non-negative entries"),
    (torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]), "row 1 of the prior is all zero"),
    ("missing.npy", "init='missing.npy': cannot read the .npy file"),
])
def test_a_bad_prior_is_refused_with_one_line(prior, msg):
    with pytest.raises(ValueError, match=msg):
        OnlineLabelSmoothing(3, init=prior)


def test_a_loss_unpickled_by_torch_multiprocessing_owns_its_state():
    """mp.spawn / ddp_spawn pickle the parent's loss into each child with shared-memory storage: every
    in-place counter and sum would then be one storage for all ranks. The child takes private copies."""
    import pickle
    from multiprocessing.reduction import ForkingPickler

    from ols import OnlineLabelSmoothingSingle

    for crit in (OnlineLabelSmoothing(3), OnlineLabelSmoothingSingle(3, num_samples=4)):
        child = pickle.loads(ForkingPickler.dumps(crit))  # what a spawned process receives
        tensors = dict(child.state_dict(keep_vars=True))
        assert tensors and not any(t.is_shared() for t in tensors.values())
        z, y = torch.tensor([[4.0, 0.0, 0.0]]), torch.tensor([0])
        if isinstance(crit, OnlineLabelSmoothing):
            child(z, y)
            child.step()
            assert float(crit.store.sums.sum()) == 0.0 and int(crit.store.num_updates) == 0
            assert int(crit.num_iterations) == 0 and int(child.num_iterations) == 1
        else:
            child(z, y, index=torch.tensor([0]))
            assert int(crit.epoch_counts.sum()) == 0 and int(child.epoch_counts.sum()) == 1


@pytest.mark.parametrize("key", ["store.value", "store.rest", "store.cand_value", "store.own"])
def test_loading_non_finite_top_k_state_is_refused(key):
    good = OnlineLabelSmoothing(6, topk=3)
    state = {k: v.clone() for k, v in good.state_dict().items()}
    state[key].view(-1)[0] = float("inf")
    crit = OnlineLabelSmoothing(6, topk=3)
    with pytest.raises(ValueError, match=f"\\({key}\\) holds NaN or infinite values"):
        crit.load_state_dict(state)
    torch.testing.assert_close(crit.store.value, good.store.value)  # left as it was


def test_bad_probability_rows_and_lam_off_the_cpu_give_nan_now_and_the_error_at_step(monkeypatch):
    """The device path of the value checks, run on the CPU: the bad rows' loss is NaN, the others train, and
    step() names what was wrong (probability rows first recorded, then lam)."""
    import ols.losses.base as base

    monkeypatch.setattr(base, "reads_are_free", lambda t: False)
    crit = OnlineLabelSmoothing(3, reduction="none")
    z = torch.randn(3, 3, requires_grad=True)
    t = torch.tensor([[1.0, 0.0, 0.0], [0.7, 0.7, 0.0], [0.0, 0.0, 1.0]])  # row 1 sums to 1.4
    per = crit(z, t)
    assert torch.isnan(per[1]) and torch.isfinite(per[[0, 2]]).all()
    per.nan_to_num().sum().backward()
    assert float(z.grad[1].abs().sum()) == 0.0
    with pytest.raises(ValueError, match="a probability target must hold finite, non-negative rows"):
        crit.step()
    y = torch.tensor([0, 1, 2])
    per = crit.forward_mixed(z, y, y.flip(0), torch.tensor([0.5, float("nan"), 1.5]))
    assert torch.isfinite(per[0]) and torch.isnan(per[1:]).all()
    with pytest.raises(ValueError, match=r"lam \(the share of y_a in each mixed sample\) must lie in"):
        crit.step()
    crit.step()  # the record was cleared
