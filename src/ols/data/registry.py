"""Dataset registry: ``load_dataset(name, data_dir=None, **kw)`` and each dataset's ``--data-arg`` options."""

from __future__ import annotations

import difflib
import importlib
import inspect
from typing import Any, Callable, Dict, Optional, Tuple, Union

from ..utils.kwargs import typed_kwargs
from ..utils.names import unknown_name
from .splits import FileSplit, TensorSplit

Split = Union[TensorSplit, FileSplit]

#: name -> (module of ols.data, reader, whether it reads --data-dir, arguments it gets from the name);
#: the reader's other keyword arguments are the dataset's --data-arg options
READERS: Dict[str, Tuple[str, str, bool, Dict[str, Any]]] = {
    "digits": ("digits", "load_digits_split", False, {}),
    "synthetic": ("synthetic", "hierarchical_synthetic", False, {}),
    "synthetic-cifar": ("synthetic", "cifar_shaped_synthetic", False, {}),
    "manyclass": ("manyclass", "class_centred_features", False, {}),
    "cifar10": ("cifar", "load_cifar", True, {"num_classes": 10}),
    "cifar100": ("cifar", "load_cifar", True, {"num_classes": 100}),
    "fashion-mnist": ("idx", "load_fashion_mnist", True, {}),
    "mnist": ("idx", "load_mnist", True, {}),
    "folder": ("folder", "load_image_folder", True, {}),
    "finegrained": ("finegrained", "load_list_files", True, {}),
    "cub": ("finegrained", "load_cub", True, {}),
}


def _reader(name: str) -> Callable[..., Split]:
    module, function, _, _ = READERS[name]
    return getattr(importlib.import_module(f"{__package__}.{module}"), function)


def dataset_options(name: str) -> Dict[str, Any]:
    """The ``--data-arg`` options of dataset ``name`` and their defaults (imports its reader)."""
    _, _, _, fixed = READERS[name]
    params = inspect.signature(_reader(name)).parameters
    return {k: p.default for k, p in params.items() if k != "data_dir" and k not in fixed}


def _load(name: str) -> Callable[..., Split]:
    def load(data_dir: Optional[str] = None, **kw: Any) -> Split:
        return load_dataset(name, data_dir, **kw)

    return load


#: name -> loader ``(data_dir=None, **kw) -> TensorSplit | FileSplit``
DATASETS: Dict[str, Callable[..., Split]] = {name: _load(name) for name in READERS}


def load_dataset(name: str, data_dir: Optional[str] = None, **kw: Any) -> Split:
    """Load dataset ``name``; an unknown name or option gets one line with the nearest known one.

    A dataset whose test split holds no image is refused (its metrics would be empty).
    """
    if name not in READERS:
        raise unknown_name("dataset", name, READERS)
    options = dataset_options(name)
    for key in kw:
        if key not in options:
            close = difflib.get_close_matches(key, list(options), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            known = ", ".join(f"{k}={v}" for k, v in options.items()) or "none"
            raise ValueError(f"--data-arg {key}: dataset {name!r} has no such option{hint}; its options: "
                             f"{known}")
    _, _, takes_dir, fixed = READERS[name]
    reader = _reader(name)
    args = (data_dir,) if takes_dir else ()
    split = reader(*args, **fixed, **typed_kwargs(reader, kw, "--data-arg", f"dataset {name!r}"))
    if not len(split.test_y):
        where = f" in {data_dir}" if data_dir else ""
        raise ValueError(f"dataset {name!r}{where}: its test split holds no images; evaluation needs at "
                         "least one (check --data-arg test_per_class and the files)")
    return split
