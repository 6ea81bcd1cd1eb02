"""Per-sample state kept by sample index, replicated on every rank or sharded by sample under DDP.

PS-KD's previous predictions and PENCIL's label distributions are one row per training sample.
Replicated (the default), every rank holds all ``N`` rows. Sharded (``sharded=True``; ``ols
train`` under ``torchrun`` chooses it), rank ``r`` holds the rows of the samples with
``index % W == r`` only, row ``index // W``, and must be fed exactly those samples (the engine's
:func:`~ols.run_setup.sharded_epoch_order`). A checkpoint always holds the replicated layout
(:meth:`PerSampleShards.gathered_state`, a collective), and a replicated-layout state loads into a
sharded loss as the rank's own rows, so a run resumes on any number of ranks.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
from torch import Tensor

from ..distributed import gather_strided_rows, rank_and_world
from .base import BAD_SHARD, ClassificationLoss, Rows


class PerSampleShards(ClassificationLoss):
    """Mixin for a loss with per-sample tensors: the names in ``per_sample_state``, ``(rows, ...)`` each.

    Call :meth:`init_shards` in ``__init__`` before registering them with :meth:`rows_needed` rows.
    """

    #: the per-sample tensors, row ``i`` of sample ``i`` (replicated) or of ``rank + i * W`` (sharded)
    per_sample_state: Tuple[str, ...] = ()

    def init_shards(self, num_samples: int, sharded: bool) -> int:
        """Set up the layout for ``num_samples`` samples; returns the rows this rank keeps."""
        if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
        self.num_samples = num_samples
        self.rank, self.shards = rank_and_world() if sharded else (0, 1)
        self._register_load_state_dict_pre_hook(self._keep_own_rows)
        return -(-num_samples // self.shards)  # ceil(N / W)

    @property
    def sharded(self) -> bool:
        """Whether this rank holds its shard of the samples only (``sharded=True`` under several ranks)."""
        return self.shards > 1

    def own_rows(self, rows: Rows, index: Tensor) -> Tuple[Rows, Tensor]:
        """``(rows, row index)``: the global ``index`` ``(B,)`` as this rank's rows; no host read.

        A sample of another rank's shard is refused (a NaN loss, raised at the next check).
        """
        if not self.sharded:
            return rows, index
        if self.validate:
            rows = self.refuse(rows, index % self.shards == self.rank, BAD_SHARD)
        return rows, index // self.shards

    def gathered_state(self, prefix: str = "") -> Optional[Dict[str, Tensor]]:
        """The per-sample state in the replicated layout ``(N, ...)``, on the CPU, for a checkpoint.

        Sharded: a collective that every rank calls; rank 0 gets the dict, the others ``None``.
        Replicated: this rank's own tensors.
        """
        if not self.sharded:
            return {prefix + name: getattr(self, name).detach().cpu() for name in self.per_sample_state}
        out = {prefix + name: gather_strided_rows(getattr(self, name), self.num_samples)
               for name in self.per_sample_state}
        return out if self.rank == 0 else None

    def _keep_own_rows(self, state_dict: Dict[str, Any], prefix: str, *args: Any) -> None:
        """Load-state pre-hook: a replicated-layout ``(N, ...)`` tensor loads as this rank's shard."""
        if not self.sharded:
            return
        for name in self.per_sample_state:
            value = state_dict.get(prefix + name)
            if isinstance(value, Tensor) and value.shape[:1] == (self.num_samples,):
                own = value[self.rank::self.shards]
                pad = getattr(self, name).shape[0] - own.shape[0]  # the last row of a shorter shard
                state_dict[prefix + name] = torch.cat([own, own.new_zeros((pad, *own.shape[1:]))])
