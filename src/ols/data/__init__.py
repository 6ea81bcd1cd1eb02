"""Datasets as whole tensors, label noise, and splits."""

from .digits import load_digits_split
from .noise import asymmetric_noise_cifar10, symmetric_noise
from .registry import DATASETS, TensorSplit, load_dataset

__all__ = [
    "DATASETS",
    "TensorSplit",
    "asymmetric_noise_cifar10",
    "load_dataset",
    "load_digits_split",
    "symmetric_noise",
]
