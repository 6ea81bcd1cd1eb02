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
