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
def test_a_cast_loss_is_refused_with_one_line(cast):
    crit = getattr(OnlineLabelSmoothing(3), cast)()
    z = torch.tensor([[4.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="statistics must stay float32.*cast the model only"):
        crit(z, torch.tensor([0]))
    crit.eval()(z, torch.tensor([0]))  # evaluation still works: nothing is observed


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
