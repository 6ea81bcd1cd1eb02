"""An exponential moving average of a model's weights, evaluated beside the weights themselves.

After optimiser step ``t`` (1, 2, ...), each floating-point parameter and buffer of the
average moves toward the model's: ``ema <- d_t * ema + (1 - d_t) * w`` (integer buffers,
such as BatchNorm's batch count, are copied), with a warm-up so that the random
initialisation does not linger in a short run:

    d_t = min(decay, 1 - (1 + t)^(-2/3))      (d_1 = 0.37, d_10 = 0.80, d_100 = 0.95, ...)

the form and the exponent of timm's ``ModelEmaV3`` warm-up (timm/utils/model_ema.py). The
step count is kept on the host and the update is one ``torch._foreach_lerp_`` on the
device: nothing is read back.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List

import torch
from torch import Tensor, nn


class WeightEMA:
    """The running average of ``model``'s weights; ``average`` is a model to evaluate.

    Args:
        model: the model trained (not a DDP or compiled wrapper: their parameters are its own).
        decay: in (0, 1); each step keeps ``decay`` of the average. 0.999 averages over
            about the last 1,000 steps.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.steps = 0
        self.average = copy.deepcopy(model).eval().requires_grad_(False)
        # the tensors pair once: load_state_dict and the updates write into them in place
        self._floats, self._others = self._pairs(model)

    def _pairs(self, model: nn.Module):
        ours = list(self.average.state_dict(keep_vars=True).values())
        theirs = list(model.state_dict(keep_vars=True).values())
        if len(ours) != len(theirs):
            raise ValueError("the weight average and the model differ in structure")
        floats: List[List[Tensor]] = [[], []]
        others: List[List[Tensor]] = [[], []]
        for a, w in zip(ours, theirs):
            group = floats if a.is_floating_point() else others
            group[0].append(a.detach())
            group[1].append(w.detach())
        return floats, others

    def current_decay(self) -> float:
        """``d_t`` of the next update."""
        return min(self.decay, 1.0 - (1.0 + self.steps + 1) ** (-2.0 / 3.0))

    @torch.no_grad()
    def update(self) -> None:
        """Move the average one step toward the model (call after ``optimizer.step()``)."""
        (avg, cur), (avg_int, cur_int) = self._floats, self._others
        weight = 1.0 - self.current_decay()
        self.steps += 1
        if avg:
            torch._foreach_lerp_(avg, cur, weight)
        for a, w in zip(avg_int, cur_int):
            a.copy_(w)

    def state_dict(self) -> Dict[str, Any]:
        return {"average": self.average.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: Dict[str, Any]) -> Any:
        self.steps = int(state["steps"])
        return self.average.load_state_dict(state["average"])
