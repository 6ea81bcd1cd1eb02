"""Whether a larger value of a reported metric is better, as declared where each metric is computed."""

from __future__ import annotations

from typing import Optional, Union

from .. import engine
from ..eval import attacks, human, relations
from ..eval import metrics as eval_metrics

Direction = Optional[Union[bool, str]]

#: each metric's direction, as declared beside the code that computes it
DIRECTIONS = {**eval_metrics.HIGHER_IS_BETTER, **relations.HIGHER_IS_BETTER, **human.HIGHER_IS_BETTER,
              **attacks.HIGHER_IS_BETTER, **engine.HIGHER_IS_BETTER}


def higher_is_better(metric: str) -> Direction:
    """The direction of the results key ``metric``: True (higher is better), False (lower is).

    Also ``"zero"`` when the value nearest 0 is best (a signed error), and ``None`` when no
    value is better than another (a fitted temperature).

    Keys look like ``test_ece``, ``ensemble.6.test_top1_err`` or ``soft_label_group_share.share``;
    a key whose direction nobody declared is an error, not a guess.
    """
    name = metric.rsplit(".", 1)[-1]
    for prefix in ("", "best_test_", "test_"):
        if name.startswith(prefix) and name[len(prefix):] in DIRECTIONS:
            return DIRECTIONS[name[len(prefix):]]
    raise ValueError(f"report: metric {metric!r} has no declared direction (lower or higher is better); "
                     f"known metrics: {', '.join(sorted(DIRECTIONS))}")


def best_of(direction: Direction):
    """The function choosing the best of some means under ``direction`` (``None``: no best)."""
    if direction is None:
        return None
    if direction == "zero":
        return lambda values: min(values, key=abs)
    return max if direction else min


def direction_words(direction: Direction) -> str:
    """How a report heading reads ``direction``."""
    return {True: "higher is better", False: "lower is better", None: "no value is better",
            "zero": "nearer 0 is better; + over-confident, − under-confident"}[direction]
