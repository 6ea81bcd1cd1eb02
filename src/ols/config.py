"""The typed training configuration: one dataclass, the single source of every default.

The command line is generated from these fields, so a flag, its type, its default and
its help text are written once, here. A YAML file (``ols train -c run.yaml``) gives the
same keys; unknown keys and values of the wrong type are errors that name the key.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from .presets import resolve
from .utils.dataclass_cli import add_dataclass_arguments, check_field_value, checked_fields, given_arguments
from .utils.dataclass_cli import option as _opt
from .utils.dataclass_cli import parse_value as parse_value

SCHEDULES = ("cosine", "multistep", "constant")
OPTIMIZERS = ("sgd", "adamw")




def expand_out(out: str, cfg: Any) -> str:
    """``out`` with each ``{setting}`` replaced by that setting's value (``runs/{model}-{loss}``)."""
    if "{" not in out:
        return out
    names = [f.name for f in dataclasses.fields(cfg)]
    try:
        return out.format_map({n: getattr(cfg, n) for n in names if n != "out"})
    except KeyError as err:
        raise ValueError(f"out: {{{err.args[0]}}} is not a setting; use a setting's name in braces, e.g. "
                         "runs/{model}-{loss}-seed{seed}") from None
    except (ValueError, IndexError) as err:
        raise ValueError(f"out: {out!r} has a brace that is not a {{setting}} ({err}); "
                         "write e.g. runs/{model}-{loss}-seed{seed}") from None

@dataclass
class TrainConfig:
    """Everything a training run depends on; saved resolved as ``config.json``."""

    # data
    dataset: str = _opt("digits", "dataset name")
    data_dir: Optional[str] = _opt(None, "folder holding the dataset's files (not for digits/synthetic)")
    download: bool = _opt(False, "fetch cifar10/cifar100 into --data-dir first if missing (md5-checked, "
                                 "resumes an interrupted download)", resume=True)
    data_args: Dict[str, Any] = _opt({}, "extra dataset keyword KEY=VALUE (repeatable), e.g. image_size=448",
                                     flag="--data-arg")
    augment: str = _opt("auto", "none, auto (digits, manyclass: none; else crop,flip), or crop,flip,cutout")
    crop_padding: int = _opt(4, "padding of the random crop, pixels (tensor datasets)")
    cutout_size: int = _opt(8, "side of the CutOut square, pixels")
    num_workers: int = _opt(4, "DataLoader workers decoding image files (folder/finegrained/cub)",
                            resume=True)
    decode: str = _opt("pillow", "image files: pillow (decoded and cropped in the workers) or gpu (JPEGs "
                                 "decoded by nvJPEG on the device, the same crops; needs torchvision)",
                       resume=True)
    val_fraction: float = _opt(0.0, "fraction of the training set held out (stratified, seeded) to fit "
                                    "temperature scaling's T; never trained on. 0: none")
    meta_size: Optional[float] = _opt(
        None, "clean held-out set: a number of training images (>= 1) or a fraction (< 1), taken out of "
        "training with their clean labels before the noise is drawn (stratified, seeded; meta_index.npy). "
        "l2rw and mwnet learn from it, and temperature scaling is fitted on it. Unset: 1,000 for CIFAR "
        "with l2rw or mwnet, none otherwise; 0: none")
    noise_rate: float = _opt(0.0, "fraction of training labels to corrupt, in [0, 1]")
    noise_type: str = _opt("symmetric", "label noise: symmetric or asymmetric (CIFAR-10 map)")
    mixup_alpha: float = _opt(0.0, "Mixup: alpha of Beta(alpha, alpha) for lambda (0: off)")
    cutmix_alpha: float = _opt(0.0, "CutMix: alpha of Beta(alpha, alpha) for lambda (0: off)")
    mix_prob: float = _opt(1.0, "chance that mixing applies to a batch, pair or sample (--mix-mode)")
    switch_prob: float = _opt(0.5, "chance of CutMix rather than Mixup when both alphas are set")
    mix_mode: str = _opt("batch", "batch (one draw a batch), pair or elem (one draw a sample)")
    mix_off_epoch: int = _opt(0, "train unmixed from this epoch on (0: mix to the end)")
    # model and loss
    model: str = _opt("cnn", "model name, or timm:<name> when timm is installed")
    exits: str = _opt("none", "self-distillation exits: none, or byot (a classifier after every non-final "
                      "stage of a ResNet/ResNeXt; train with --loss byot, byot+ols or ds+ols)")
    pretrained: Optional[str] = _opt(None, "file of weights to start from (matching names and shapes)")
    peer_model: Optional[str] = _opt(None, "the second network of a two-network method (coteaching, "
                                     "coteaching_plus, dividemix); unset: another --model, initialised apart")
    loss: str = _opt("ols", "loss name from the registry")
    alpha: Optional[float] = _opt(
        None, "the loss's `alpha` (OLS: weight of the hard-label term, Eq. 4); "
        "unset keeps each loss's own default"
    )
    loss_args: Dict[str, Any] = _opt({}, "extra loss keyword KEY=VALUE (repeatable), e.g. eps=0.2",
                                     flag="--loss-arg")
    # optimisation
    seed: int = _opt(0, "seed for initialisation, shuffling, augmentation and label noise")
    epochs: int = _opt(40, "number of training epochs", resume=True)
    batch_size: int = _opt(64, "training batch size (per process under torchrun)")
    eval_batch_size: int = _opt(512, "test batch size", resume=True)
    optimizer: str = _opt("sgd", "sgd (with momentum, the paper's) or adamw (betas 0.9, 0.999)")
    lr: float = _opt(0.01, "initial learning rate")
    momentum: float = _opt(0.9, "SGD momentum")
    nesterov: bool = _opt(False, "Nesterov momentum")
    weight_decay: float = _opt(5e-4, "weight decay (AdamW: decoupled)")
    decay_norm_bias: bool = _opt(True, "weight decay on normalisation weights and biases too (the paper's "
                                       "recipe); --no-decay-norm-bias exempts every parameter with one "
                                       "dimension or named .bias, as timm does")
    clip_grad_norm: float = _opt(0.0, "clip the gradients' global L2 norm to this before each step (0: off)")
    ema_decay: float = _opt(0.0, "keep an exponential moving average of the weights with this decay (e.g. "
                                 "0.999) and evaluate it beside them every epoch (0: off)")
    schedule: str = _opt("cosine", "learning-rate schedule: cosine, multistep or constant")
    milestones: List[int] = _opt([], "multistep: epochs at which the rate is multiplied by gamma")
    gamma: float = _opt(0.1, "multistep: factor at each milestone")
    warmup_epochs: float = _opt(0.0, "linear warm-up from 0 over this many epochs (per iteration)")
    amp: bool = _opt(True, "bf16 autocast on CUDA (ignored on CPU)")
    channels_last: bool = _opt(True, "channels_last memory format on CUDA (ignored on CPU)")
    compile: bool = _opt(False, "torch.compile the model")
    cuda_graph: bool = _opt(False, "capture the whole training step (forward, loss, backward, SGD) as one "
                                   "CUDA graph and replay it (CUDA, datasets held on the device)")
    # run directory
    out: str = _opt("runs/latest", "run directory to write; {model}, {loss}, {seed} or any other setting in "
                                   "braces is replaced by its value (runs/{model}-{loss}-seed{seed})")
    device: str = _opt("auto", "auto (CUDA when present, else the CPU), cpu, cuda or cuda:N", resume=True)
    save_every: int = _opt(0, "keep a snapshot every N epochs in snapshots/ (0: none)", resume=True)
    save_every_steps: int = _opt(0, "also write checkpoint.pt every N training steps inside an epoch, so "
                                    "that a killed or preempted run resumes at that batch (0: at epoch ends "
                                    "only)", resume=True)
    tensorboard: bool = _opt(False, "also log to TensorBoard in RUN_DIR/tensorboard (= --log tensorboard)",
                             resume=True)
    log: List[str] = _opt([], "also log to any of: csv (RUN_DIR/metrics.csv), tensorboard, mlflow (a local "
                              "store in RUN_DIR/mlruns), wandb (offline, RUN_DIR/wandb)", resume=True)
    progress: bool = _opt(True, "show a progress bar when writing to a terminal", resume=True)

    def __post_init__(self) -> None:
        self.validate()
        self.out = expand_out(self.out, self)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field with a bad value.

        A setting that only matters with another one (``--gamma`` with multistep, the mixing
        options with an alpha) is an error when it differs from its default without it.
        """
        for name in ("lr", "momentum", "weight_decay", "clip_grad_norm", "ema_decay", "gamma",
                     "warmup_epochs", "noise_rate", "val_fraction", "meta_size", "alpha", "mixup_alpha",
                     "cutmix_alpha", "mix_prob", "switch_prob"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value}")
        if self.download:
            from .data.download import check_download

            check_download(self.dataset, self.data_dir)
        if not 0.0 <= self.val_fraction <= 0.5:
            raise ValueError(f"val_fraction must be in [0, 0.5], got {self.val_fraction}")
        if self.meta_size is not None and self.meta_size < 0:
            raise ValueError(f"meta_size must be a count (>= 1) or a fraction in (0, 1), got "
                             f"{self.meta_size}")
        if self.meta_size and self.val_fraction:
            raise ValueError("--meta-size and --val-fraction both hold images out to fit temperature "
                             "scaling; with a clean held-out set (--meta-size) T is fitted on it, so drop "
                             "--val-fraction")
        if not 0.0 <= self.noise_rate <= 1.0:
            raise ValueError(f"noise_rate must be in [0, 1], got {self.noise_rate}")
        if self.noise_type not in ("symmetric", "asymmetric"):
            raise ValueError(f"noise_type must be 'symmetric' or 'asymmetric', got {self.noise_type!r}")
        mixer = self.mixer()  # checks the alphas, the probabilities and the mode
        if not mixer.active:
            for name in ("mix_prob", "switch_prob", "mix_mode", "mix_off_epoch"):
                if getattr(self, name) != FIELDS[name].default:
                    raise ValueError(f"--{name.replace('_', '-')} has no effect without --mixup-alpha or "
                                     "--cutmix-alpha")
        if self.mix_off_epoch < 0:
            raise ValueError(f"mix_off_epoch must not be negative, got {self.mix_off_epoch}")
        if mixer.active and self.mix_off_epoch == 1:
            raise ValueError("--mix-off-epoch 1 turns mixing off from the first epoch, so no batch would be "
                             "mixed; drop --mixup-alpha/--cutmix-alpha, or turn mixing off later")
        mixed_only = [k for k in ("mixed_update", "mixed_threshold") if k in self.loss_args]
        if mixed_only and not mixer.active:
            raise ValueError(f"--loss-arg {mixed_only[0]}=... has no effect without --mixup-alpha or "
                             "--cutmix-alpha (it picks the mixed samples that update OLS); drop it, or turn "
                             "mixing on")
        if self.noise_type == "asymmetric" and self.noise_rate == 0:
            raise ValueError("--noise-type asymmetric has no effect without --noise-rate; give a rate, "
                             "e.g. --noise-rate 0.4")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"--seed must be in [0, 2**32), got {self.seed}")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("crop_padding", "cutout_size", "num_workers", "save_every", "save_every_steps",
                     "warmup_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        for name in ("momentum", "weight_decay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        from .loggers import LOGGERS

        unknown = [name for name in self.log if name not in LOGGERS]
        if unknown:
            raise ValueError(f"--log {unknown[0]}: unknown logger; known: {', '.join(LOGGERS)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.optimizer == "adamw" and (self.nesterov or self.momentum != FIELDS["momentum"].default):
            flag = "--nesterov" if self.nesterov else "--momentum"
            raise ValueError(f"{flag} is SGD's; AdamW has its own moments (betas 0.9, 0.999): drop {flag}, "
                             "or use --optimizer sgd")
        if self.clip_grad_norm < 0:
            raise ValueError(f"clip_grad_norm must not be negative (0: off), got {self.clip_grad_norm}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) (0: off), got {self.ema_decay}")
        if not self.decay_norm_bias and self.weight_decay == 0:
            raise ValueError("--no-decay-norm-bias has no effect with --weight-decay 0; drop it, or set a "
                             "decay")
        uncaptured = [flag for flag, on in (("--optimizer adamw", self.optimizer != "sgd"),
                                            ("--clip-grad-norm", self.clip_grad_norm > 0),
                                            ("--ema-decay", self.ema_decay > 0)) if on]
        if self.cuda_graph and uncaptured:
            raise ValueError(f"--cuda-graph captures the fused SGD step only; {uncaptured[0]} is not "
                             f"captured yet: drop {uncaptured[0]} or --cuda-graph")
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov needs a momentum above 0 (--momentum 0.9), or drop --nesterov")
        if self.gamma <= 0:
            raise ValueError(f"gamma must be positive (the multistep factor), got {self.gamma}")
        if self.schedule != "multistep" and (self.milestones or self.gamma != FIELDS["gamma"].default):
            flag = "--milestones" if self.milestones else "--gamma"
            raise ValueError(f"{flag} has no effect with --schedule {self.schedule}; use "
                             f"--schedule multistep or drop {flag}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.schedule == "multistep" and not self.milestones:
            raise ValueError("schedule 'multistep' needs milestones, e.g. --milestones 150 225")
        if list(self.milestones) != sorted(self.milestones) or any(m < 1 for m in self.milestones):
            raise ValueError(f"milestones must be increasing positive epochs, got {self.milestones}")

    def loggers(self) -> List[str]:
        """The loggers asked for: ``--log`` and ``--tensorboard``."""
        return list(dict.fromkeys(list(self.log) + (["tensorboard"] if self.tensorboard else [])))

    def mixer(self):
        """The :class:`~ols.data.mixing.Mixer` these settings describe."""
        from .data.mixing import Mixer

        return Mixer(self.mixup_alpha, self.cutmix_alpha, self.mix_prob, self.switch_prob, self.mix_mode)

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-ready dict of every field."""
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}

#: settings a resumed run may change (marked ``resume=True``); any other would make it another run
RESUME_OVERRIDES = tuple(name for name, f in FIELDS.items() if f.metadata.get("resume"))


def check_value(name: str, value: Any, where: str = "") -> Any:
    """``value`` converted to :class:`TrainConfig` field ``name``'s type, or an error naming the key."""
    return check_field_value(TrainConfig, name, value, where)


def config_from_dict(values: Mapping[str, Any], where: str = "") -> TrainConfig:
    """A :class:`TrainConfig` from a mapping; unknown keys and wrong types name the key."""
    return TrainConfig(**checked_fields(TrainConfig, values, where))


def saved_config(values: Mapping[str, Any], path: Any) -> TrainConfig:
    """A run's saved settings, ``values`` read from ``path`` (its ``config.json``), checked.

    An unknown key names the file and says it may come from a newer ``ols``.
    """
    try:
        return config_from_dict(values, where=f"{path}: ")
    except ValueError as err:
        if "unknown key" in str(err):
            raise ValueError(f"{err}. The run may have been written by a newer version of ols: update ols, "
                             "or delete that key from the file") from None
        raise


class DuplicateKey(ValueError):
    """A YAML mapping names a key twice (YAML keeps the last silently)."""


def _unique_keys_loader(yaml: Any) -> Any:
    """PyYAML's safe loader, refusing a mapping that names a key twice (line numbers 1-based)."""

    class UniqueKeys(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: Dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise DuplicateKey(f"line {line}: key {key!r} is given twice (also on line {seen[key]}); "
                                       "YAML would keep the last one silently, so give it once")
                seen[key] = line
            return super().construct_mapping(node, deep)

    return UniqueKeys


def read_yaml(path: str) -> Dict[str, Any]:
    """The mapping in a YAML config file (PyYAML is the optional ``config`` extra)."""
    try:
        import yaml
    except ImportError:
        raise ValueError("reading a YAML config needs PyYAML: pip install 'ols[config]'") from None
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"config file not found: {path}")
    try:
        data = yaml.load(p.read_text(encoding="utf-8"), Loader=_unique_keys_loader(yaml))  # noqa: S506
    except DuplicateKey as err:
        raise ValueError(f"{path}: {err}") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text (byte {err.object[err.start]:#04x} at offset "
                         f"{err.start}); save it as UTF-8 YAML") from None
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML: {' '.join(str(err).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of config keys, got {type(data).__name__}")
    return data


def load_config(path: str) -> TrainConfig:
    """A :class:`TrainConfig` from a YAML file, or a shipped config by name (``cifar100/paper``)."""
    path = resolve(path, "config")
    return config_from_dict(read_yaml(path), where=f"{path}: ")


#: the help sections of ``ols train``: the field that opens each, and its title
FLAG_GROUPS = {"dataset": "data", "mixup_alpha": "Mixup and CutMix", "model": "model and loss",
               "seed": "optimisation", "amp": "speed (CUDA)", "out": "run directory and logging"}


def add_config_arguments(parser: argparse.ArgumentParser,
                         names: Optional[Mapping[str, List[str]]] = None) -> None:
    """Add one flag per :class:`TrainConfig` field, in sections; defaults stay ``None`` (= not given).

    ``names`` lists the names a field accepts (datasets, models, losses) in its help.
    """
    add_dataclass_arguments(parser, TrainConfig, FLAG_GROUPS, names)


def given_flags(args: argparse.Namespace) -> Dict[str, Any]:
    """The config fields set on the command line (``None`` means not given)."""
    return given_arguments(args, TrainConfig)


def config_from_args(args: argparse.Namespace, base: Optional[Mapping[str, Any]] = None,
                     where: str = "") -> TrainConfig:
    """A :class:`TrainConfig` from ``base`` (e.g. a YAML file's keys) overridden by every flag given.

    ``where`` prefixes error messages (the YAML file's name).
    """
    config_from_dict(base or {}, where)  # the file's own keys and types, named as the file's
    values: Dict[str, Any] = dict(base or {})
    values.update(given_flags(args))
    return config_from_dict(values)
