"""Datasets (whole tensors or image files), label noise, and batched augmentation."""

from .digits import load_digits_split
from .noise import asymmetric_noise_cifar10, symmetric_noise
from .registry import DATASETS, load_dataset
from .splits import FileSplit, TensorSplit

__all__ = [
    "DATASETS",
    "FileSplit",
    "TensorSplit",
    "asymmetric_noise_cifar10",
    "load_dataset",
    "load_digits_split",
    "symmetric_noise",
]
