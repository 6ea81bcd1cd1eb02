"""A pass over training images once an epoch, outside the step: every sample's loss, or its features.

The noisy-label methods that fit something to the whole training set after an epoch (Arazo et
al.'s beta mixture, Han et al.'s prototypes) go through :func:`over_samples`: the model in eval
mode, the images without augmentation (the source's ``held_out`` batches), each rank a strided
share, the rows summed over the ranks so every rank ends with all of them.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor, nn

from ..distributed import all_reduce_sum, rank_and_world


@torch.no_grad()
def over_samples(model: nn.Module, source, index: np.ndarray, batch_size: int,
                 fn: Callable[[Tensor, Tensor], Tensor], width: int, device: torch.device) -> Tensor:
    """``(len(index), width)`` float32: row ``j`` is ``fn(x, idx)``'s row for training image ``index[j]``.

    ``fn(x (b, C, H, W), idx (b,))`` gets un-augmented images and their dataset indices and returns
    ``(b, width)`` (or ``(b,)`` when ``width`` is 1); it runs ``model`` itself (so it may read a
    hook). ``model`` is in eval mode during the pass and back in its mode after. Under ``torchrun``
    rank ``r`` computes rows ``r, r + W, ...`` and the rows are all-reduced (a collective).
    """
    rank, world = rank_and_world()
    index = np.asarray(index, dtype=np.int64)
    mine = np.arange(rank, len(index), world)
    out = torch.zeros(len(index), width, device=device)
    was_training = model.training
    model.eval()
    try:
        done = 0
        for x, _ in source.held_out(index[mine], batch_size):
            rows = mine[done:done + x.shape[0]]
            done += x.shape[0]
            got = fn(x, torch.as_tensor(index[rows], device=device))
            out.index_copy_(0, torch.as_tensor(rows, device=device), got.float().reshape(len(rows), width))
    finally:
        model.train(was_training)
    all_reduce_sum(out)
    return out


class InputOf:
    """Keeps the input of ``module`` at its last forward (the penultimate features before a linear head)."""

    def __init__(self, module: nn.Module):
        self.value: Optional[Tensor] = None
        self.handle = module.register_forward_pre_hook(self._keep)

    def _keep(self, module: nn.Module, inputs) -> None:
        self.value = inputs[0]

    def take(self) -> Tensor:
        """The kept input, flattened to ``(B, D)``, and forget it."""
        if self.value is None:
            raise RuntimeError("the hooked layer has not run")
        value, self.value = self.value, None
        return value.flatten(1)
