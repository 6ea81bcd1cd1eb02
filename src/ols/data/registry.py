"""Dataset registry: ``load_dataset(name, data_dir=None, **kw)``."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Union

from ..utils.kwargs import typed_kwargs
from ..utils.names import unknown_name
from .splits import FileSplit, TensorSplit

Split = Union[TensorSplit, FileSplit]


def _typed(fn: Callable[..., Split], *args: Any, **kw: Any) -> Split:
    """``fn(*args, **kw)`` with each ``--data-arg`` value converted to the type ``fn`` declares."""
    return fn(*args, **typed_kwargs(fn, kw, "--data-arg", "this dataset"))


def _digits(data_dir: Optional[str] = None, **kw: Any) -> TensorSplit:
    from .digits import load_digits_split

    return _typed(load_digits_split, **kw)


def _synthetic(data_dir: Optional[str] = None, **kw: Any) -> TensorSplit:
    from .synthetic import hierarchical_synthetic

    return _typed(hierarchical_synthetic, **kw)


def _synthetic_cifar(data_dir: Optional[str] = None, **kw: Any) -> TensorSplit:
    from .synthetic import cifar_shaped_synthetic

    return _typed(cifar_shaped_synthetic, **kw)


def _manyclass(data_dir: Optional[str] = None, **kw: Any) -> TensorSplit:
    from .manyclass import class_centred_features

    return _typed(class_centred_features, **kw)


def _cifar(num_classes: int) -> Callable[..., TensorSplit]:
    def load(data_dir: Optional[str] = None, **kw: Any) -> TensorSplit:
        from .cifar import load_cifar

        return _typed(load_cifar, data_dir, num_classes, **kw)

    return load


def _fashion_mnist(data_dir: Optional[str] = None, **kw: Any) -> TensorSplit:
    from .idx import load_fashion_mnist

    return _typed(load_fashion_mnist, data_dir, **kw)


def _mnist(data_dir: Optional[str] = None, **kw: Any) -> TensorSplit:
    from .idx import load_mnist

    return _typed(load_mnist, data_dir, **kw)


def _folder(data_dir: Optional[str] = None, **kw: Any) -> FileSplit:
    from .folder import load_image_folder

    return _typed(load_image_folder, data_dir, **kw)


def _list_files(data_dir: Optional[str] = None, **kw: Any) -> FileSplit:
    from .finegrained import load_list_files

    return _typed(load_list_files, data_dir, **kw)


def _cub(data_dir: Optional[str] = None, **kw: Any) -> FileSplit:
    from .finegrained import load_cub

    return _typed(load_cub, data_dir, **kw)


#: name -> loader ``(data_dir=None, **kw) -> TensorSplit | FileSplit``
DATASETS: Dict[str, Callable[..., Split]] = {
    "digits": _digits,
    "synthetic": _synthetic,
    "synthetic-cifar": _synthetic_cifar,
    "manyclass": _manyclass,
    "cifar10": _cifar(10),
    "cifar100": _cifar(100),
    "fashion-mnist": _fashion_mnist,
    "mnist": _mnist,
    "folder": _folder,
    "finegrained": _list_files,
    "cub": _cub,
}


def load_dataset(name: str, data_dir: Optional[str] = None, **kw: Any) -> Split:
    """Load dataset ``name``; an unknown name or keyword gets an error naming it."""
    try:
        loader = DATASETS[name]
    except KeyError:
        raise unknown_name("dataset", name, DATASETS) from None
    try:
        return loader(data_dir=data_dir, **kw)
    except TypeError as err:
        if "unexpected keyword" in str(err):
            raise ValueError(f"dataset {name!r} does not take that option ({err}); see --data-arg") from None
        raise
