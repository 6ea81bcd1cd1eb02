"""How a report reads each metric: its direction and its heading, declared where it is computed.

The direction says whether a larger value is better; the heading names it with its unit.
"""

from __future__ import annotations

from typing import Optional, Union

from .. import engine
from ..detection import head_confidence, voc_eval
from ..eval import attacks, human, relations
from ..eval import metrics as eval_metrics
from ..tasks import base as tasks

Direction = Optional[Union[bool, str]]

#: each metric's direction, as declared beside the code that computes it
DIRECTIONS = {**eval_metrics.HIGHER_IS_BETTER, **relations.HIGHER_IS_BETTER, **human.HIGHER_IS_BETTER,
              **attacks.HIGHER_IS_BETTER, **engine.HIGHER_IS_BETTER, **voc_eval.HIGHER_IS_BETTER,
              **head_confidence.HIGHER_IS_BETTER, **tasks.HIGHER_IS_BETTER}
#: each metric's heading, unit included, declared beside its direction
HEADERS = {**eval_metrics.HEADERS, **relations.HEADERS, **human.HEADERS, **attacks.HEADERS, **engine.HEADERS,
           **voc_eval.HEADERS, **head_confidence.HEADERS, **tasks.HEADERS}
#: what a key's leading words say (longest first), and its parent keys
_PREFIXES = (("best_test_", "best test "), ("test_", "test "), ("", ""))
_PARENTS = {"ensemble": "ensemble of {}", "soft_label_group_share": "soft labels"}


def _split(metric: str):
    """``(parents, prefix words, base name)`` of a results key, or ``None`` for an unknown one."""
    *parents, name = metric.split(".")
    for prefix, words in _PREFIXES:
        if name.startswith(prefix) and name[len(prefix):] in DIRECTIONS:
            return parents, words, name[len(prefix):]
    return None


def higher_is_better(metric: str) -> Direction:
    """The direction of the results key ``metric``: True (higher is better), False (lower is).

    Also ``"zero"`` when the value nearest 0 is best (a signed error), and ``None`` when no
    value is better than another (a fitted temperature).

    Keys look like ``test_ece``, ``ensemble.6.test_top1_err`` or ``soft_label_group_share.share``;
    a key whose direction nobody declared is an error, not a guess.
    """
    split = _split(metric)
    if split is not None:
        return DIRECTIONS[split[2]]
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


def metric_header(metric: str) -> str:
    """The readable heading of a results key; an unknown key as it is.

    ``test_top1_err`` -> ``test top-1 error (%)``, ``ensemble.6.test_top1_err`` ->
    ``ensemble of 6: test top-1 error (%)``.
    """
    split = _split(metric)
    if split is None:
        return metric
    parents, words, name = split
    head = f"{words}{HEADERS.get(name, name)}"
    context = []
    i = 0
    while i < len(parents):
        form = _PARENTS.get(parents[i], parents[i])
        if "{}" in form and i + 1 < len(parents):
            context.append(form.format(parents[i + 1]))
            i += 2
        else:
            context.append(form.replace(" {}", ""))
            i += 1
    return f"{', '.join(context)}: {head}" if context else head
