"""AdamW and SGD with or without weight decay on norms and biases, gradient clipping, and the
weight average: each against a plain re-implementation, and as flags of ``ols train``."""

import copy
import json

import pytest
import torch
from torch import nn

from ols.config import TrainConfig
from ols.ema import WeightEMA
from ols.engine import train_step
from ols.optim import build_optimizer, parameter_groups


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 5))


def test_norm_and_bias_parameters_go_without_decay_when_asked():
    net = small_net()
    groups = parameter_groups(net, 0.05, decay_norm_bias=False)
    names = {id(p): n for n, p in net.named_parameters()}
    decayed = sorted(names[id(p)] for p in groups[0]["params"])
    exempt = sorted(names[id(p)] for p in groups[1]["params"])
    assert decayed == ["0.weight", "4.weight"] and groups[0]["weight_decay"] == 0.05
    assert exempt == ["0.bias", "1.bias", "1.weight", "4.bias"] and groups[1]["weight_decay"] == 0.0
    everything = parameter_groups(net, 0.05)
    assert len(everything) == 1 and len(everything[0]["params"]) == 6


def test_adamw_with_exempt_groups_equals_two_hand_built_optimisers():
    """AdamW over our groups moves every parameter as torch's AdamW with that parameter's decay."""
    net = small_net()
    twin = copy.deepcopy(net)
    cfg = TrainConfig(optimizer="adamw", lr=0.01, weight_decay=0.1, decay_norm_bias=False)
    opt = build_optimizer(net, cfg)
    assert isinstance(opt, torch.optim.AdamW)
    tw = dict(twin.named_parameters())
    ref = [torch.optim.AdamW([p], lr=0.01, weight_decay=0.0 if n.endswith("bias") or p.ndim == 1 else 0.1)
           for n, p in tw.items()]
    x = torch.randn(6, 3, 6, 6)
    for _ in range(3):
        for model, opts in ((net, [opt]), (twin, ref)):
            for o in opts:
                o.zero_grad()
            model(x).square().mean().backward()
            for o in opts:
                o.step()
    for (n, a), b in zip(net.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7, msg=n)


def test_clipping_scales_the_gradient_to_the_norm_before_the_step():
    net = small_net()
    twin = copy.deepcopy(net)
    task = lambda model, x, y, idx: {"loss": 100 * nn.functional.cross_entropy(model(x), y),  # noqa: E731
                                     "logits": model(x)}
    x, y = torch.randn(6, 3, 6, 6), torch.randint(0, 5, (6,))
    train_step(net, task, torch.optim.SGD(net.parameters(), lr=0.1), x, y, None, clip_grad_norm=0.5)
    # by hand: the global norm of all gradients, scaled to 0.5 when larger, then plain SGD
    twin.zero_grad()
    (100 * nn.functional.cross_entropy(twin(x), y)).backward()
    norm = torch.sqrt(sum(p.grad.square().sum() for p in twin.parameters()))
    assert norm > 0.5  # the test clips for real
    with torch.no_grad():
        for p in twin.parameters():
            p -= 0.1 * p.grad * (0.5 / (norm + 1e-6))
    for a, b in zip(net.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_the_weight_average_follows_its_formula_and_resumes():
    net = small_net()
    ema = WeightEMA(net, 0.9)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    expected = {k: v.clone().double() for k, v in start.items() if v.is_floating_point()}
    for t in range(1, 4):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        net(torch.randn(4, 3, 6, 6))  # BatchNorm's running stats and its integer count move too
        ema.update()
        d = min(0.9, 1 - (1 + t) ** (-2 / 3))
        for k, v in net.state_dict().items():
            if k in expected:
                expected[k] = d * expected[k] + (1 - d) * v.double()
    for k, v in ema.average.state_dict().items():
        if k in expected:
            torch.testing.assert_close(v.double(), expected[k], rtol=1e-5, atol=1e-6, msg=k)
        else:  # num_batches_tracked: copied
            assert torch.equal(v, net.state_dict()[k]) and int(v) == 3
    again = WeightEMA(small_net(), 0.9)
    again.load_state_dict(ema.state_dict())
    assert again.steps == 3 and all(torch.equal(a, b) for a, b in zip(again.average.state_dict().values(),
                                                                        ema.average.state_dict().values()))


@pytest.mark.parametrize("kw,msg", [
    ({"optimizer": "adam"}, "optimizer must be one of sgd, adamw"),
    ({"optimizer": "adamw", "nesterov": True}, "--nesterov is SGD's"),
    ({"optimizer": "adamw", "momentum": 0.8}, "--momentum is SGD's"),
    ({"clip_grad_norm": -1.0}, "clip_grad_norm must not be negative"),
    ({"ema_decay": 1.0}, "ema_decay must be in \\[0, 1\\)"),
    ({"decay_norm_bias": False, "weight_decay": 0.0}, "--no-decay-norm-bias has no effect with --weight-d"),
    ({"cuda_graph": True, "ema_decay": 0.99}, "--ema-decay is not captured yet"),
])
def test_settings_that_cannot_work_are_refused(kw, msg):
    with pytest.raises(ValueError, match=msg):
        TrainConfig(**kw)


@pytest.mark.slow
def test_ols_train_with_adamw_clipping_and_the_average_resumes_exactly(tmp_path):
    from ols.cli import main

    flags = ["--optimizer", "adamw", "--lr", "0.002", "--weight-decay", "0.05", "--no-decay-norm-bias",
             "--clip-grad-norm", "1", "--ema-decay", "0.99", "--batch-size", "128", "--no-progress",
             "--schedule", "constant"]  # the same rates whether the run is planned for 2 epochs or 3
    assert main(["train", *flags, "--epochs", "3", "--out", str(tmp_path / "straight")]) == 0
    assert main(["train", *flags, "--epochs", "2", "--out", str(tmp_path / "split")]) == 0
    assert main(["train", "--resume", str(tmp_path / "split"), "--epochs", "3"]) == 0
    a, b = (json.loads((tmp_path / r / "summary.json").read_text()) for r in ("straight", "split"))
    assert a["ema"] == b["ema"] and a["test_top1_err"] == b["test_top1_err"]
    assert set(a["ema"]) == {"test_top1_err", "test_nll", "test_ece"}
    ca, cb = (torch.load(tmp_path / r / "checkpoint.pt", weights_only=True) for r in ("straight", "split"))
    assert ca["ema"]["steps"] == 3 * 12  # 1,438 training digits in batches of 128
    for k, v in ca["ema"]["average"].items():
        assert torch.equal(v, cb["ema"]["average"][k]), k
