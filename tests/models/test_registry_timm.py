"""``--model timm:<name>``: a missing timm and a timm that cannot import each get one clear line;
with a working timm, OLS trains on its models and takes ``timm.data.Mixup``'s targets."""

import sys

import pytest
import torch
import torch.nn.functional as F

from ols import OnlineLabelSmoothing
from ols.models import create_model


def test_a_timm_that_fails_to_import_names_the_torch_mismatch(tmp_path, monkeypatch):
    fake = tmp_path / "timm"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise RuntimeError('operator torchvision::nms does not exist')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "timm", raising=False)
    with pytest.raises(ValueError, match="timm is installed but does not import beside torch .*"
                                         "torchvision::nms does not exist.*built for this exact torch"):
        create_model("timm:resnet18", 10)


def test_a_missing_timm_gives_the_install_hint(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "timm" else object())
    with pytest.raises(ValueError, match="needs timm .*: pip install 'ols\\[timm\\]' torch==[0-9.]+ "):
        create_model("timm:resnet18", 10)


def test_ols_with_a_timm_model_and_timms_mixup_targets():
    from conftest import vision_or_skip

    (timm,) = vision_or_skip("timm")
    from timm.data import Mixup
    k = 10
    model = timm.create_model("resnet18", pretrained=False, num_classes=k)
    mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.0, num_classes=k)  # OLS smooths itself
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    x, target = mixup(x, y)
    crit = OnlineLabelSmoothing(k)
    logits = model(x)
    loss = crit(logits, target)
    q = 0.5 * target + 0.5 * target @ crit.soft_labels
    want = -(q * F.log_softmax(logits.float(), 1)).sum(1).mean()
    torch.testing.assert_close(loss, want)
    loss.backward()
