"""How a loss keeps its state: rank-local statistics, float32 through casts, and a checkpoint format.

``DistributedDataParallel`` (``broadcast_buffers=True``, its default, and Lightning's)
copies rank 0's *buffers* over every other rank's before each forward. A loss that sits
inside the wrapped module (the natural place in a LightningModule) would then accumulate
rank 0's statistics only, and every rank would still agree, so nothing looks wrong.

:class:`RankLocalState` keeps such tensors out of the buffers: they are plain attributes
that ``state_dict()`` still saves under their own names (checkpoints and resume see no
difference), that ``.to(device)`` still moves, and that DDP never sees. It also keeps the
float32 tensors float32 through ``.half()``, ``.double()``, ``.to(torch.bfloat16)`` or
Lightning's ``*-true`` precisions: soft labels and their sums are probabilities added up
over an epoch, which bfloat16 cannot hold.

A third trap: ``torch.multiprocessing`` (``mp.spawn``, Lightning's ``ddp_spawn``) pickles a
module built in the parent into every child with its tensors in *shared memory*, so all
ranks would add into, all-reduce and count in one storage. An unpickled
:class:`RankLocalState` gives itself private copies of every shared buffer and rank-local
tensor.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Tuple

import torch
from torch import Tensor, nn


class RankLocalState(nn.Module):
    """Mixin: ``register_rank_local(name, t)`` for rank-local state; float32 buffers stay float32.

    List float32 buffers that must survive a module cast in ``keep_float32`` (a class
    attribute). Rank-local tensors keep their dtype too.
    """

    keep_float32: Tuple[str, ...] = ()

    def register_rank_local(self, name: str, tensor: Tensor, persistent: bool = True) -> None:
        """Hold ``tensor`` as ``self.<name>``: moved like a buffer, invisible to DDP, saved if ``persistent``.

        A transient tensor (``persistent=False``) is never saved: what a loss saw since it was last read.
        """
        names = self.__dict__.setdefault("_rank_local_names", [])
        if name not in names:
            names.append(name)
        if not persistent:
            self.__dict__.setdefault("_transient_names", set()).add(name)
        object.__setattr__(self, name, tensor)

    def clear_rank_local(self) -> None:
        """Empty the saved rank-local tensors (a rank that resumes without its own part): zeros."""
        with torch.no_grad():
            for name in self._saved_rank_local():
                getattr(self, name).zero_()

    def merge_rank_local(self, parts: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """One process's tensors from every rank's ``(W, ...)`` parts (:mod:`ols.rank_layout`): their sum.

        A loss whose rank-local state does not add up (tables, labels) overrides this and
        :meth:`clear_rank_local`.
        """
        return {name: part.sum(0) for name, part in parts.items()}

    def _rank_local(self) -> List[str]:
        return self.__dict__.get("_rank_local_names", [])

    def _saved_rank_local(self) -> List[str]:
        transient = self.__dict__.get("_transient_names", set())
        return [name for name in self._rank_local() if name not in transient]

    def __setstate__(self, state: Dict[str, Any]) -> None:
        super().__setstate__(state)
        for name, buffer in self._buffers.items():  # unpickled in a spawned process: make it our own
            if buffer is not None and buffer.is_shared():
                self._buffers[name] = buffer.clone()
        for name in self._rank_local():
            value = getattr(self, name)
            if value.is_shared():
                object.__setattr__(self, name, value.clone())

    def _save_to_state_dict(self, destination: Dict[str, Any], prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for name in self._saved_rank_local():
            value = getattr(self, name)
            destination[prefix + name] = value if keep_vars else value.detach()

    def _load_from_state_dict(self, state_dict: Dict[str, Any], prefix: str, local_metadata: Any,
                              strict: bool, missing_keys: List[str], unexpected_keys: List[str],
                              error_msgs: List[str]) -> None:
        # the parent runs the load pre-hooks (which may check or rename these keys) first
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        for name in self._saved_rank_local():
            key = prefix + name
            if key in unexpected_keys:
                unexpected_keys.remove(key)
            if key not in state_dict:
                if strict:
                    missing_keys.append(key)
                continue
            value, current = state_dict[key], getattr(self, name)
            if not isinstance(value, Tensor) or value.shape != current.shape:
                shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                error_msgs.append(f"size mismatch for {key}: the checkpoint holds {shape}, this module "
                                  f"{tuple(current.shape)}")
                continue
            with torch.no_grad():
                current.copy_(value)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> nn.Module:
        kept = {name: self._buffers[name] for name in self.keep_float32
                if self._buffers.get(name) is not None}
        super()._apply(fn, recurse)
        for name, old in kept.items():
            new = self._buffers[name]
            if new.dtype != old.dtype:  # a cast: move the float32 original instead (lossless)
                self._buffers[name] = old.to(device=new.device)
        for name in self._rank_local():
            old = getattr(self, name)
            new = fn(old)
            object.__setattr__(self, name, new if new.dtype == old.dtype else old.to(device=new.device))
        return self


#: the layout of the state that :class:`VersionedState` modules save; raise it when the layout changes
STATE_FORMAT = 2


class VersionedState(RankLocalState):
    """Rank-local state whose ``state_dict()`` records :data:`STATE_FORMAT` (the ``state_format`` buffer).

    Loading a state of another format, or one written before formats were recorded (ols
    before 2026-12-04), is refused with one line, before anything is copied; so is NaN or
    infinite state in the tensors ``finite_state`` names (it would poison every later target).
    Rows from ``num_classes`` on (a store's discard bin, never read) are not checked.
    """

    state_format: Tensor
    finite_state: Tuple[str, ...] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # cooperative: OLS is also a ClassificationLoss
        self.register_buffer("state_format", torch.tensor(STATE_FORMAT))

    def _load_from_state_dict(self, state_dict: Dict[str, Any], prefix: str, *args: Any) -> None:
        found = state_dict.get(prefix + "state_format")
        found = int(found) if isinstance(found, Tensor) and found.numel() == 1 else found
        if found != STATE_FORMAT:
            what = "no format record (written by ols before 2026-12-04)"
            if found is not None:
                what = f"format {found!r}"
            where = prefix.rstrip(".") or "top level"
            raise ValueError(f"the {type(self).__name__} state to load ({where}) has {what}, and this ols "
                             f"reads format {STATE_FORMAT} only; retrain, or load it with the ols that wrote "
                             "it")
        for name in self.finite_state:
            value = state_dict.get(prefix + name)
            if isinstance(value, Tensor) and not bool(torch.isfinite(value[:self.num_classes]).all()):
                raise ValueError(f"the soft-label state to load ({prefix}{name}) holds NaN or infinite "
                                 "values; it comes from a diverged run: load an earlier checkpoint")
        super()._load_from_state_dict(state_dict, prefix, *args)
