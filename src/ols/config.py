"""The typed training configuration: one dataclass, the single source of every default.

The command line is generated from these fields, so a flag, its type, its default and
its help text are written once, here.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Optional


def _opt(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved resolved as ``config.json``."""

    dataset: str = _opt("digits", "dataset name (see `ols train --help` for the list)")
    model: str = _opt("cnn", "model name")
    loss: str = _opt("ols", "loss name from the registry")
    alpha: Optional[float] = _opt(
        None, "the loss's `alpha` (OLS: weight of the hard-label term, Eq. 4); "
        "unset keeps each loss's own default"
    )
    loss_args: Dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "extra loss keyword KEY=VALUE (repeatable), e.g. eps=0.2",
                  "flag": "--loss-arg"},
    )
    noise_rate: float = _opt(0.0, "fraction of training labels to corrupt, in [0, 1]")
    noise_type: str = _opt("symmetric", "label noise: symmetric or asymmetric (CIFAR-10 map)")
    seed: int = _opt(0, "seed for initialisation, shuffling and label noise")
    epochs: int = _opt(40, "number of training epochs")
    batch_size: int = _opt(64, "training batch size")
    lr: float = _opt(0.01, "initial learning rate")
    momentum: float = _opt(0.9, "SGD momentum")
    weight_decay: float = _opt(5e-4, "SGD weight decay")
    schedule: str = _opt("cosine", "learning-rate schedule: cosine or constant")
    out: str = _opt("runs/latest", "run directory to write")
    device: str = _opt("cpu", "cpu, cuda, cuda:N or auto (CUDA when present)")
    progress: bool = _opt(True, "show a progress bar when writing to a terminal")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field with a bad value."""
        if not 0.0 <= self.noise_rate <= 1.0:
            raise ValueError(f"noise_rate must be in [0, 1], got {self.noise_rate}")
        if self.noise_type not in ("symmetric", "asymmetric"):
            raise ValueError(f"noise_type must be 'symmetric' or 'asymmetric', got {self.noise_type!r}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-ready dict of every field."""
        return dataclasses.asdict(self)


def parse_value(text: str) -> Any:
    """``"0.2"`` -> 0.2, ``"3"`` -> 3, ``"true"`` -> True, ``"none"`` -> None, else the text."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _key_value(text: str) -> tuple:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip().replace("-", "_"), parse_value(value.strip())


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per :class:`TrainConfig` field; defaults stay ``None`` (= not given)."""
    for f in dataclasses.fields(TrainConfig):
        flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
        default = f.default if f.default is not dataclasses.MISSING else "{}"
        helptext = f"{f.metadata['help']} (default: {default})"
        if f.name == "loss_args":
            parser.add_argument(flag, dest=f.name, action="append", type=_key_value,
                                metavar="KEY=VALUE", help=helptext)
        elif f.type in ("bool", bool):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=None, help=helptext)
        else:
            kind = {"int": int, "float": float, "str": str, "Optional[float]": float}[str(f.type)]
            parser.add_argument(flag, dest=f.name, type=kind, default=None, help=helptext)


def config_from_args(args: argparse.Namespace, base: Optional[Dict[str, Any]] = None) -> TrainConfig:
    """A :class:`TrainConfig` from ``base`` overridden by every flag that was given."""
    values: Dict[str, Any] = dict(base or {})
    for f in dataclasses.fields(TrainConfig):
        given = getattr(args, f.name, None)
        if given is None:
            continue
        values[f.name] = dict(given) if f.name == "loss_args" else given
    return TrainConfig(**values)
