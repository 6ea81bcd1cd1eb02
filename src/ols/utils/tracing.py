"""Tracing and capture: ``torch.compile``, free reads, and host bookkeeping kept for CUDA graph replays.

:func:`compiling` and :func:`reads_are_free` say what the caller runs under; :func:`count_on_host`
and :func:`kept_counts` let a CUDA graph step redo a forward's host bookkeeping after each replay.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator, List, Optional

import torch
from torch import Tensor

Count = Callable[[], None]
_KEPT: ContextVar[Optional[List[Count]]] = ContextVar("ols_kept_counts", default=None)


def compiling() -> bool:
    """True while ``torch.compile`` traces the caller (``torch.compiler.is_compiling``)."""
    return bool(torch.compiler.is_compiling())


def reads_are_free(t: Tensor) -> bool:
    """True when reading ``t``'s values back costs no device sync: a CPU tensor, outside ``torch.compile``.

    The one place where the losses tell devices apart, and only to say *when* a bad input is
    reported: at once where the values are already on the host, at the end of the period elsewhere.
    """
    return t.device.type == "cpu" and not compiling()


def count_on_host(count: Count) -> None:
    """Run ``count``, a loss's host-side bookkeeping of one forward (OLS's ``update_every`` counter).

    Under :func:`kept_counts` it is kept instead of run: a CUDA graph runs the forward's kernels
    at every replay but its Python only once, at capture, so the graph step runs what was
    kept after each replay.
    """
    kept = _KEPT.get()
    if kept is None:
        count()
    else:
        kept.append(count)


@contextmanager
def kept_counts() -> Iterator[List[Count]]:
    """Collect, in order and without running them, the :func:`count_on_host` calls made inside."""
    kept: List[Count] = []
    token = _KEPT.set(kept)
    try:
        yield kept
    finally:
        _KEPT.reset(token)
