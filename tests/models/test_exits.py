"""Multi-exit models (BYOT): where the exits sit, their sizes, what each mode returns."""

import pytest
import torch

from ols.models import Classifier, create_model, load_pretrained


def exit_params(c_in, width, kernel, num_classes):
    """Parameters of one exit, counted by hand: three conv+BN (no conv bias), then the linear layer."""
    mid = width // 4
    return (c_in * mid + 2 * mid            # 1x1 to C/4, BN
            + mid * mid * kernel * kernel + 2 * mid  # k x k stride k, BN
            + mid * width + 2 * width       # 1x1 to C, BN
            + width * num_classes + num_classes)


def count(module):
    return sum(p.numel() for p in module.parameters())


# (model, [(stage channels, kernel) of each exit, shallowest first], last width, input side)
LAYOUTS = [
    ("resnet20", [(16, 4), (32, 2)], 64, 32),
    ("resnet29", [(64, 4), (128, 2)], 256, 32),  # 9n+2: bottleneck blocks, expansion 4
    ("resnet34", [(64, 8), (128, 4), (256, 2)], 512, 32),
    ("resnet50", [(256, 8), (512, 4), (1024, 2)], 2048, 32),
    ("resnet18_imagenet", [(64, 8), (128, 4), (256, 2)], 512, 64),
    ("resnext29_2x64d", [(256, 4), (512, 2)], 1024, 32),
]


@pytest.mark.parametrize("name,exits,width,side", LAYOUTS)
def test_each_exit_has_the_hand_counted_size_and_reaches_every_output(name, exits, width, side):
    torch.manual_seed(0)
    net = create_model(name, 10, exits="byot")
    assert net.num_exits == len(exits) + 1
    assert [count(e) for e in net.exits] == [exit_params(c, width, k, 10) for c, k in exits]
    assert count(net) == count(net.backbone) + sum(exit_params(c, width, k, 10) for c, k in exits)
    net.train()
    outs = net(torch.randn(2, 3, side, side))
    assert isinstance(outs, list) and [o.shape for o in outs] == [torch.Size([2, 10])] * net.num_exits
    sum(o.square().sum() for o in outs).backward()
    unused = [n for n, p in net.named_parameters() if p.grad is None]
    assert unused == []  # DDP's find_unused_parameters=False needs every module used


def test_exit_maps_match_the_last_stage_and_the_order_is_deepest_first():
    torch.manual_seed(0)
    net = create_model("resnet34", 5, exits="byot").eval()
    x = torch.randn(3, 3, 32, 32)
    sizes = {}
    for i, e in enumerate(net.exits):
        e[6].register_forward_hook(lambda m, inp, out, i=i: sizes.__setitem__(i, tuple(out.shape[-2:])))
    outs = net.forward_exits(x)
    assert sizes == {0: (4, 4), 1: (4, 4), 2: (4, 4)}  # layer4's 4x4 on CIFAR input
    with torch.no_grad():
        h = net.backbone.stem(x)
        stage_out = []
        for stage in net.backbone.stages:
            h = stage(h)
            stage_out.append(h)
        assert torch.allclose(outs[0], net.backbone(x))  # exit 0 is the backbone's own head
        for j, stage in enumerate((2, 1, 0), start=1):  # then from the deepest exit to the shallowest
            assert torch.allclose(outs[j], net.exits[stage](stage_out[stage]))


def test_eval_mode_gives_the_deepest_logits_only():
    torch.manual_seed(0)
    model = Classifier(create_model("resnet20", 4, exits="byot"), (0.5,) * 3, (0.25,) * 3).eval()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        out = model(x)
        assert isinstance(out, torch.Tensor) and out.shape == (2, 4)
        assert torch.equal(out, model.forward_exits(x)[0])
    assert model.num_exits == 3
    assert Classifier(create_model("cnn", 4), (0.5,), (0.25,)).num_exits == 1


def test_a_plain_file_loads_into_the_backbone_of_a_multi_exit_model(tmp_path):
    plain = create_model("resnet20", 4)
    torch.save(plain.state_dict(), tmp_path / "w.pt")
    net = create_model("resnet20", 4, exits="byot")
    loaded, _ = load_pretrained(net.backbone, str(tmp_path / "w.pt"))
    assert len(loaded) == len(plain.state_dict())
    assert all(torch.equal(v, net.backbone.state_dict()[k]) for k, v in plain.state_dict().items())


@pytest.mark.parametrize("name", ["cnn", "mobilenetv2", "mlp"])
def test_a_model_without_stages_refuses_exits(name):
    with pytest.raises(ValueError, match=rf"--exits byot: the model {name} has no stages.*drop --exits"):
        create_model(name, 10, exits="byot")
    with pytest.raises(ValueError, match="--exits must be one of none, byot"):
        create_model("resnet20", 10, exits="all")
