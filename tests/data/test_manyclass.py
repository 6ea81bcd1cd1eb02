"""The many-class feature set and the flat-feature models."""

import pytest
import torch

from ols.data import load_dataset
from ols.models import create_model


def test_manyclass_is_seeded_class_centred_and_shaped_for_the_engine():
    a = load_dataset("manyclass", classes=50, dim=6, train_per_class=3, test_per_class=2, noise=0.1, seed=4)
    b = load_dataset("manyclass", classes=50, dim=6, train_per_class=3, test_per_class=2, noise=0.1, seed=4)
    assert a.train_x.shape == (150, 6, 1, 1) and a.test_x.shape == (100, 6, 1, 1) and a.num_classes == 50
    torch.testing.assert_close(a.train_x, b.train_x)
    assert torch.equal(a.train_y, torch.arange(50).repeat_interleave(3))
    # with little noise every sample is nearest to its own class's mean
    means = torch.stack([a.train_x[a.train_y == c].flatten(1).mean(0) for c in range(50)])
    nearest = torch.cdist(a.test_x.flatten(1), means).argmin(1)
    assert bool((nearest == a.test_y).all())
    with pytest.raises(ValueError, match="manyclass needs classes >= 2"):
        load_dataset("manyclass", classes=1)


def test_linear_and_mlp_take_features_and_refuse_images():
    x = torch.randn(4, 6, 1, 1)
    assert create_model("linear", 10, in_channels=6)(x).shape == (4, 10)
    mlp = create_model("mlp", 10, in_channels=6)
    assert mlp(x).shape == (4, 10) and mlp.features(x).shape == (4, 256)
    with pytest.raises(ValueError, match="feature sets of shape \\(N, d, 1, 1\\).*--model cnn"):
        create_model("linear", 10, in_channels=1)(torch.randn(2, 1, 8, 8))


def test_ols_train_refuses_an_image_dataset_for_mlp_before_writing(tmp_path, capsys):
    from ols.cli import main

    code = main(["train", "--dataset", "digits", "--model", "mlp", "--epochs", "1",
                 "--out", str(tmp_path / "r")])
    assert code == 2 and "--model mlp takes feature sets" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
