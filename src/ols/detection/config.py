"""``ols detect train``'s settings: one dataclass, one flag per field, checked as ``ols train``'s."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

from ..config import expand_out
from ..utils.dataclass_cli import checked_fields
from ..utils.dataclass_cli import option as _opt

DATASETS = ("canvas", "voc")
LOSSES = ("ce", "ls", "ols")
STATISTICS = ("sigmoid", "raw_sigmoid", "softmax")


@dataclass
class DetectConfig:
    """A detection run (the paper's Table X recipe where it is stated; the laptop defaults otherwise)."""

    dataset: str = _opt(
        "canvas", "canvas (synthetic, Fashion-MNIST items) or voc (--data-dir: VOCdevkit)", choices=DATASETS
    )
    data_dir: Optional[str] = _opt(
        None,
        "voc: the folder holding VOCdevkit; canvas: Fashion-MNIST's idx files "
        "(default: Debian's folder, else digits)",
    )
    num_train: int = _opt(4000, "canvas: training images")
    num_test: int = _opt(500, "canvas: test images")
    canvas_size: int = _opt(64, "canvas: image side in pixels")
    max_objects: int = _opt(3, "canvas: most objects per image")
    loss: str = _opt(
        "ols", "class loss on the positives: ce (hard labels), ls (label smoothing) or ols", choices=LOSSES
    )
    alpha: float = _opt(0.5, "ols: the hard label's weight (Eq. 4)")
    statistic: str = _opt(
        "sigmoid",
        "ols: what a correct positive adds to its class's soft label: sigmoid (its sigmoids "
        "renormalised to sum to 1), raw_sigmoid (their per-class means, not renormalised) or softmax",
        choices=STATISTICS,
    )
    ls_delta: float = _opt(0.01, "ls: onehot * (1 - delta) + delta / K (argusswift's 0.01)")
    width: float = _opt(0.5, "channel multiplier of MobileNetV2 and the neck (1.0: as published)")
    epochs: int = _opt(15, "training epochs (the paper: 120 on VOC)")
    batch_size: int = _opt(32, "images per step")
    lr: float = _opt(0.02, "peak learning rate of SGD (the paper: 1e-4 on VOC, from ImageNet weights)")
    lr_end: float = _opt(1e-6, "the cosine schedule's final learning rate")
    warmup_epochs: int = _opt(2, "linear warm-up epochs before the cosine decay")
    momentum: float = _opt(0.9, "SGD momentum")
    weight_decay: float = _opt(5e-4, "weight decay")
    train_sizes: List[int] = _opt(
        [64],
        "input sides to train at, multiples of 32; several: one drawn every 10 steps (multi-scale training)",
    )
    test_sizes: List[int] = _opt(
        [64], "input sides to detect at; several: their detections merged by NMS (multi-scale inference)"
    )
    flip: bool = _opt(True, "random horizontal flips in training")
    score_threshold: float = _opt(0.01, "evaluation: the lowest score a detection keeps")
    nms_iou: float = _opt(0.45, "evaluation: class-wise NMS IoU")
    seed: int = _opt(0, "seed of the weights, the canvases and the batch order")
    device: str = _opt("auto", "auto (CUDA when present), cpu, cuda or cuda:N")
    num_workers: int = _opt(0, "DataLoader processes reading (VOC: decoding) the training images")
    amp: str = _opt("off", "mixed precision on CUDA: bf16 (autocast), fp16 (autocast and a gradient "
                           "scaler) or off; ignored on the CPU")
    save_every_steps: int = _opt(0, "also write checkpoint.pt every N steps inside an epoch, so that a "
                                    "killed or preempted run resumes at that batch (0: at epoch ends only)")
    progress: bool = _opt(True, "show a progress bar when writing to a terminal")
    out: str = _opt(
        "runs/detect/{dataset}-{loss}-seed{seed}", "run directory; {setting} in braces is replaced"
    )

    def __post_init__(self) -> None:
        for name in ("alpha", "ls_delta", "width", "lr", "lr_end", "momentum", "weight_decay",
                     "score_threshold", "nms_iou"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number, got "
                                 f"{getattr(self, name)}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"--seed must be in [0, 2**32), got {self.seed}")
        for name in ("num_train", "num_test", "epochs", "batch_size", "max_objects"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"--alpha must be in [0, 1], got {self.alpha}")
        if self.statistic != "sigmoid" and self.loss != "ols":
            raise ValueError(
                f"--statistic {self.statistic} applies to --loss ols only (got --loss {self.loss})"
            )
        if not 0.0 <= self.ls_delta < 1.0:
            raise ValueError(f"--ls-delta must be in [0, 1), got {self.ls_delta}")
        if self.lr <= 0 or self.width <= 0:
            raise ValueError("--lr and --width must be positive")
        if self.amp not in ("off", "bf16", "fp16"):
            raise ValueError(f"--amp must be off, bf16 or fp16, got {self.amp!r}")
        for name in ("lr_end", "momentum", "weight_decay", "warmup_epochs", "num_workers",
                     "save_every_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must not be negative, got "
                                 f"{getattr(self, name)}")
        if not 0.0 < self.nms_iou <= 1.0:
            raise ValueError(f"--nms-iou must be in (0, 1] (the IoU above which NMS drops a box), got "
                             f"{self.nms_iou}")
        if not 0.0 <= self.score_threshold < 1.0:
            raise ValueError(f"--score-threshold must be in [0, 1) (a detection's score), got "
                             f"{self.score_threshold}")
        for name in ("train_sizes", "test_sizes"):
            sizes = getattr(self, name)
            if not sizes or any(s < 32 or s % 32 for s in sizes):
                raise ValueError(
                    f"--{name.replace('_', '-')} must be multiples of 32 (at least 32), got {sizes}"
                )
        if self.dataset == "voc" and not self.data_dir:
            raise ValueError(
                "--dataset voc needs --data-dir: the folder holding VOCdevkit/VOC2007 (and VOC2012)"
            )
        self.out = expand_out(self.out, self)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(DetectConfig)}


def detect_config_from_dict(values: Mapping[str, Any], where: str = "") -> DetectConfig:
    """A :class:`DetectConfig` from a mapping; an unknown key or a wrong type names the key."""
    checked = checked_fields(DetectConfig, values, where)
    return DetectConfig(**checked)
