"""Choosing a run's task: a lookup, the first of :data:`TASKS` that wants the run.

Adding a task is one new file (a :class:`~ols.tasks.base.Task` with its ``wanted`` and
``from_settings``) and one line here; the run set-up, the config and the data sources do
not change.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .base import Task
from .bootstrapping import BootstrappingTask
from .class_pairs import ClassPairTask
from .classification import ClassificationTask
from .coteaching import CoTeachingTask
from .dense_votes import DenseVoteTask
from .dividemix import DivideMixTask
from .meta_reweight import MetaWeightNetTask, ReweightTask
from .mixing import MixingTask
from .multi_exit import MultiExitTask
from .self_learning import SelfLearningTask
from .two_view import TwoViewTask

#: tried in this order; plain classification, last, takes every run the others leave
TASKS = (CoTeachingTask, DivideMixTask, MultiExitTask, TwoViewTask, ClassPairTask, DenseVoteTask,
         ReweightTask, MetaWeightNetTask, BootstrappingTask, SelfLearningTask, MixingTask, ClassificationTask)


def build_task(cfg: Any, criterion: nn.Module, model: nn.Module, rank: int = 0) -> Task:
    """The task the settings (``cfg``), the loss and the model ask for, with its own refusals."""
    task = next(t for t in TASKS if t.wanted(cfg, criterion, model))
    return task.from_settings(cfg, criterion, model, rank)
