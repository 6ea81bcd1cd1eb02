import numpy as np
import pytest

from ols.data import asymmetric_noise_cifar10, load_dataset, symmetric_noise
from ols.data.noise import CIFAR10_ASYMMETRIC_MAP


@pytest.mark.parametrize("rate", [0.0, 0.2, 0.4, 0.8])
def test_symmetric_noise_rate_and_targets(rate):
    labels = np.arange(1000) % 10
    noisy, flipped = symmetric_noise(labels, rate, 10, seed=3)
    assert flipped.sum() == round(rate * 1000)
    assert (noisy[flipped] != labels[flipped]).all()  # a flip always changes the class
    assert (noisy[~flipped] == labels[~flipped]).all()
    assert noisy.min() >= 0 and noisy.max() < 10


def test_symmetric_noise_is_uniform_over_other_classes_and_seeded():
    labels = np.zeros(20000, dtype=np.int64)
    noisy, flipped = symmetric_noise(labels, 1.0, 5, seed=0)
    counts = np.bincount(noisy[flipped], minlength=5)
    assert counts[0] == 0 and np.allclose(counts[1:] / counts.sum(), 0.25, atol=0.015)
    again, _ = symmetric_noise(labels, 1.0, 5, seed=0)
    other, _ = symmetric_noise(labels, 1.0, 5, seed=1)
    assert (noisy == again).all() and (noisy != other).any()


def test_asymmetric_noise_follows_the_cifar10_map():
    labels = np.repeat(np.arange(10), 100)
    noisy, flipped = asymmetric_noise_cifar10(labels, 0.4, seed=0)
    for src, dst in CIFAR10_ASYMMETRIC_MAP.items():
        assert flipped[labels == src].sum() == 40
        assert (noisy[(labels == src) & flipped] == dst).all()
    unmapped = ~np.isin(labels, list(CIFAR10_ASYMMETRIC_MAP))
    assert not flipped[unmapped].any()


def test_noise_bad_input():
    with pytest.raises(ValueError, match="noise rate must be in"):
        symmetric_noise(np.array([0, 1]), 1.5, 2, 0)
    with pytest.raises(ValueError, match="labels must lie in"):
        symmetric_noise(np.array([0, 5]), 0.1, 2, 0)


def test_digits_split_is_fixed_and_stratified():
    a, b = load_dataset("digits"), load_dataset("digits")
    assert a.train_x.shape[1:] == (1, 8, 8) and len(a.train_y) + len(a.test_y) == 1797
    assert len(a.test_y) == sum(round(0.2 * n) for n in np.bincount(np.r_[a.train_y, a.test_y]))
    assert (a.train_y == b.train_y).all() and (a.test_x == b.test_x).all()
    counts = np.bincount(a.test_y.numpy(), minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37
    # pixel units in [0, 1]; the normalisation statistics are the train split's
    assert float(a.train_x.min()) == 0.0 and float(a.train_x.max()) == 1.0
    assert a.mean[0] == pytest.approx(float(a.train_x.double().mean()), abs=1e-6)
    assert a.std[0] == pytest.approx(float(a.train_x.double().std(unbiased=False)), abs=1e-6)


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'svhn'; known datasets: cifar10, cifar100, cub"):
        load_dataset("svhn")
