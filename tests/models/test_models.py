import pytest
import torch
from torch import nn

from ols.models import MODELS, Classifier, create_model, load_pretrained


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conv_bn(c_in, c_out, k, groups=1):  # weights + BN scale/shift
    return c_in // groups * c_out * k * k + 2 * c_out


def basic(c_in, c_out):
    projection = conv_bn(c_in, c_out, 1) if c_in != c_out else 0
    return conv_bn(c_in, c_out, 3) + conv_bn(c_out, c_out, 3) + projection


def bottleneck(c_in, width, expansion=4, groups=1, inner=None):
    inner = inner or width
    out = width * expansion
    return (conv_bn(c_in, inner, 1) + conv_bn(inner, inner, 3, groups) + conv_bn(inner, out, 1)
            + (conv_bn(c_in, out, 1) if c_in != out else 0))


def cifar_resnet_params(depth, k):
    """He et al.'s CIFAR ResNet, counted by hand: stem 16, stages 16/32/64 (x4 for bottleneck)."""
    total, c = conv_bn(3, 16, 3), 16
    if (depth - 2) % 6 == 0:
        n = (depth - 2) // 6
        for w in (16, 32, 64):
            for _ in range(n):
                total += basic(c, w)
                c = w
    else:
        n = (depth - 2) // 9
        for w in (16, 32, 64):
            for _ in range(n):
                total += bottleneck(c, w)
                c = 4 * w
    return total + c * k + k


def resnext29_params(card, width, k):
    total, c, inner = conv_bn(3, 64, 3), 64, card * width
    for _ in range(3):
        for _ in range(3):
            total += bottleneck(c, inner, expansion=2, groups=card)
            c = 2 * inner
        inner *= 2
    return total + c * k + k


@pytest.mark.parametrize("depth", [20, 29, 32, 44, 56, 74, 110])
def test_cifar_resnet_parameter_count(depth):
    assert n_params(create_model(f"resnet{depth}", 100)) == cifar_resnet_params(depth, 100)


@pytest.mark.parametrize("depth,millions", [(20, 0.27), (32, 0.46), (44, 0.66), (56, 0.85), (110, 1.7)])
def test_cifar_resnet_matches_he_et_al_table6(depth, millions):
    # He et al. (2016) Table 6 uses parameter-free shortcuts; our 1x1 projections add < 3%
    assert n_params(create_model(f"resnet{depth}", 10)) == pytest.approx(millions * 1e6, rel=0.03)


@pytest.mark.parametrize("name,torchvision_count", [
    ("resnet34", 21_797_672), ("resnet50", 25_557_032), ("resnet101", 44_549_160)])
def test_imagenet_resnets_are_torchvision_but_for_the_stem(name, torchvision_count):
    # torchvision's published counts (1000 classes) with a 7x7 stem; ours is 3x3: 64 * 3 * (49 - 9) fewer
    assert n_params(create_model(name, 1000)) == torchvision_count - 64 * 3 * 40


def test_mobilenetv2_parameter_count_is_torchvision_s():
    assert n_params(create_model("mobilenetv2", 1000)) == 3_504_872


@pytest.mark.parametrize("name,card,width", [("resnext29_2x64d", 2, 64), ("resnext29_32x4d", 32, 4)])
def test_resnext_parameter_count(name, card, width):
    assert n_params(create_model(name, 100)) == resnext29_params(card, width, 100)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_forward_and_features(name):
    torch.manual_seed(0)
    in_ch = 1 if name == "cnn" else 3
    size = 1 if name in ("linear", "mlp") else 32  # the flat-feature models take (N, d, 1, 1)
    model = create_model(name, 7, in_channels=in_ch).eval()
    x = torch.randn(2, in_ch, size, size)
    logits = model(x)
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    feats = model.features(x)
    assert feats.shape[0] == 2 and feats.dim() == 2
    assert torch.allclose(model.head(feats), logits, atol=1e-5)


def test_unknown_model_and_bad_depth():
    with pytest.raises(ValueError, match=r"unknown model 'resnet21' \(did you mean 'resnet\d+'\?\); "
                                         "known models: .*timm:<name>"):
        create_model("resnet21", 10)
    from ols.models.resnet_cifar import CifarResNet

    with pytest.raises(ValueError, match="6n\\+2"):
        CifarResNet(21, 10)


def test_timm_models_need_timm():
    try:
        import timm  # noqa: F401
    except Exception:
        with pytest.raises(ValueError, match="pip install 'ols\\[timm\\]'"):
            create_model("timm:resnet18", 10)
    else:
        assert create_model("timm:resnet18", 10)(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_classifier_normalises_in_pixel_space():
    net = create_model("cnn", 3, in_channels=3).eval()
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    model = Classifier(net, mean, std).eval()
    x = torch.rand(4, 3, 8, 8)
    ref = net((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
    assert torch.allclose(model(x), ref, atol=1e-6)
    assert torch.allclose(model.features(x), net.features((x - torch.tensor(mean).view(1, 3, 1, 1))
                                                          / torch.tensor(std).view(1, 3, 1, 1)), atol=1e-6)


def test_pretrained_loads_matching_tensors_and_skips_a_new_head(tmp_path):
    torch.manual_seed(0)
    source = create_model("resnet20", 100)
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    target = create_model("resnet20", 10)
    loaded, skipped = load_pretrained(target, str(path))
    assert sorted(skipped) == ["head.bias", "head.weight"]
    assert torch.equal(target.stem[0][0].weight, source.stem[0][0].weight)
    assert len(loaded) == len(source.state_dict()) - 2
    with pytest.raises(ValueError, match="no tensor matches"):
        load_pretrained(create_model("cnn", 10), str(path))
    with pytest.raises(ValueError, match="no such file"):
        load_pretrained(target, str(tmp_path / "missing.pt"))


def torchvision_resnet_keys(blocks, convs):
    """The state_dict names of torchvision's ResNet, written out from its layout."""
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    keys = ["conv1.weight"] + [f"bn1.{b}" for b in bn]
    for i, n in enumerate(blocks, 1):
        for j in range(n):
            for k in range(1, convs + 1):
                keys += [f"layer{i}.{j}.conv{k}.weight"] + [f"layer{i}.{j}.bn{k}.{b}" for b in bn]
            if j == 0 and (i > 1 or convs == 3):
                keys += [f"layer{i}.{j}.downsample.0.weight"] + [f"layer{i}.{j}.downsample.1.{b}" for b in bn]
    return keys + ["fc.weight", "fc.bias"]


@pytest.mark.parametrize("name,blocks,convs", [("resnet18_imagenet", (2, 2, 2, 2), 2),
                                               ("resnet50_imagenet", (3, 4, 6, 3), 3)])
def test_torchvision_names_map_one_to_one(name, blocks, convs):
    from ols.models.wrapper import torchvision_resnet_name

    ours = set(create_model(name, 1000).state_dict())
    mapped = [torchvision_resnet_name(k) for k in torchvision_resnet_keys(blocks, convs)]
    assert len(set(mapped)) == len(mapped) and set(mapped) == ours


def test_imagenet_stem_counts_are_torchvision_s():
    assert n_params(create_model("resnet50_imagenet", 1000)) == 25_557_032
    assert n_params(create_model("resnet18_imagenet", 1000)) == 11_689_512
