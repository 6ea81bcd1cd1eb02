"""Whether the caller runs under ``torch.compile``, and whether reading a tensor back is free."""

from __future__ import annotations

import torch
from torch import Tensor


def compiling() -> bool:
    """True while ``torch.compile`` traces the caller (``torch.compiler.is_compiling``, torch >= 2.3)."""
    is_compiling = getattr(torch.compiler, "is_compiling", None)
    return bool(is_compiling()) if is_compiling is not None else False


def reads_are_free(t: Tensor) -> bool:
    """True when reading ``t``'s values back costs no device sync: a CPU tensor, outside ``torch.compile``.

    The one place where the losses tell devices apart, and only to say *when* a bad input is
    reported: at once where the values are already on the host, at the end of the period elsewhere.
    """
    return t.device.type == "cpu" and not compiling()
