"""Every registry loss refuses a NaN or infinite option in one line naming it; Mixup's ``lam`` of
the wrong shape, a state of the other store kind and a tensor on another device are each named."""

import inspect
import math
import re

import pytest
import torch

from ols import OnlineLabelSmoothing
from ols.losses import LOSSES, create_loss, loss_parameters
from ols.losses.logit_penalty import LogitPenalty
from ols.losses.logitnorm import LogitNorm
from ols.losses.maxsup import MaxSup


def numeric_options(name):
    """``name``'s options whose default is a real number (not a flag): each must be finite."""
    return [key for key, p in loss_parameters(name).items()
            if isinstance(p.default, (int, float)) and not isinstance(p.default, bool)
            and p.default is not inspect.Parameter.empty]


def required(name):
    params = loss_parameters(name)
    engine_set = (("num_samples", 4), ("epochs", 2), ("num_exits", 3))
    return {key: value for key, value in engine_set if key in params}


CASES = [(name, key) for name in sorted(LOSSES) for key in numeric_options(name)]


def test_the_registry_has_numeric_options_to_check():
    assert len(CASES) > 40 and ("logitnorm", "tau") in CASES and ("maxsup", "begin_lambda") in CASES


@pytest.mark.parametrize("name, key", CASES)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_option_is_refused_naming_it(name, key, bad):
    kw = {**required(name), key: bad}
    with pytest.raises(ValueError, match=rf"{key}"):
        create_loss(name, 5, **kw)


@pytest.mark.parametrize("build, key", [(lambda v: LogitNorm(5, tau=v), "tau"),
                                        (lambda v: MaxSup(5, begin_lambda=v), "begin_lambda"),
                                        (lambda v: MaxSup(5, end_lambda=v), "end_lambda"),
                                        (lambda v: LogitPenalty(5, beta=v), "beta")])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_losses_built_directly_check_too(build, key, bad):
    with pytest.raises(ValueError, match=key):
        build(bad)


@pytest.mark.parametrize("lam", [torch.full((7,), 0.3), torch.full((6, 4), 0.3)])
def test_lam_of_the_wrong_shape_names_lam(lam):
    crit = OnlineLabelSmoothing(4)
    z, ya, yb = torch.randn(6, 4), torch.zeros(6, dtype=torch.long), torch.ones(6, dtype=torch.long)
    shape = re.escape(str(tuple(lam.shape)))
    with pytest.raises(ValueError, match=r"lam must be a float, a scalar tensor or a \(B,\) = \(6,\) "
                                         rf"tensor.*got shape {shape}"):
        crit.forward_mixed(z, ya, yb, lam)
    crit.forward_mixed(z, ya, yb, torch.full((6,), 0.3))  # the right shape goes through


def test_a_state_of_the_other_store_kind_says_so():
    with pytest.raises(ValueError, match="is a top-k store's, and this loss has a dense store; build the "
                                         "loss with topk=N"):
        OnlineLabelSmoothing(4).load_state_dict(OnlineLabelSmoothing(4, topk=2).state_dict())
    with pytest.raises(ValueError, match="is a dense store's, and this loss has a top-k store; build the "
                                         "loss without topk="):
        OnlineLabelSmoothing(4, topk=2).load_state_dict(OnlineLabelSmoothing(4).state_dict())


def test_a_tensor_on_another_device_is_named():
    crit = OnlineLabelSmoothing(4)
    z, y = torch.randn(3, 4), torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match=r"logits are on cpu but target is on meta; move it with target.to"):
        crit(z, y.to("meta"))
    with pytest.raises(ValueError, match=r"the loss's state is on cpu but the logits are on meta; move"):
        crit(z.to("meta"), y.to("meta"))
