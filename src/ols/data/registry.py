"""Dataset registry: ``load_dataset(name, ...) -> TensorSplit``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Tuple

from torch import Tensor


@dataclass
class TensorSplit:
    """A whole small dataset held as tensors (the airbench way: no per-sample loader).

    ``train_x``/``test_x`` are ``(N, C, H, W)`` float32, already normalised;
    ``train_y``/``test_y`` are ``(N,)`` int64.
    """

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    class_names: Tuple[str, ...]

    @property
    def input_shape(self) -> Tuple[int, ...]:
        """``(C, H, W)`` of one image."""
        return tuple(self.train_x.shape[1:])


def _digits(**kw) -> TensorSplit:
    from .digits import load_digits_split

    return load_digits_split(**kw)


#: name -> loader returning a :class:`TensorSplit`
DATASETS: Dict[str, Callable[..., TensorSplit]] = {"digits": _digits}


def load_dataset(name: str, **kw) -> TensorSplit:
    """Load dataset ``name``; an unknown name gets an error listing the known ones."""
    try:
        loader = DATASETS[name]
    except KeyError:
        raise ValueError(
            f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}"
        ) from None
    return loader(**kw)
