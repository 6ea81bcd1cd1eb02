"""Training tasks: what one training step computes from a batch, ``task(model, x, y, idx) -> dict``.

The engine knows only this call. A task returns at least ``{"loss": scalar, "logits":
(B, K)}``; ``logits`` are the predictions the engine tracks (train error, noisy-label
curves). Self-distillation (several exits, two views) and Mixup/CutMix plug in here as
new tasks, without the engine knowing about them.
"""

from .class_pairs import ClassPairTask, class_pair_order
from .classification import ClassificationTask
from .mixing import MixingTask
from .multi_exit import MultiExitTask
from .two_view import TwoViewTask

__all__ = ["ClassPairTask", "class_pair_order", "ClassificationTask", "MixingTask", "MultiExitTask",
           "TwoViewTask"]
