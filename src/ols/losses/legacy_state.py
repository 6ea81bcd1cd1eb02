"""Loading checkpoints of older ``ols`` versions into today's losses."""

from __future__ import annotations

from typing import Any, Dict

from torch import nn

#: buffers that sat on OLS itself before the soft-label store existed (checkpoints of ols <= 0.1 main)
OLD_STORE_KEYS = ("soft_labels", "sums", "num_updates")


def upgrade_ols_state(module: nn.Module, state: Dict[str, Any], prefix: str, *args: Any) -> None:
    """Load pre-hook of OLS: map ``soft_labels``/``sums``/``num_updates`` on the loss to ``store.*``.

    The old ``counts`` buffer is dropped: it is derived from the sums (each softmax row sums to one).
    """
    for name in OLD_STORE_KEYS:
        if prefix + name in state and prefix + "store." + name not in state:
            state[prefix + "store." + name] = state.pop(prefix + name)
    state.pop(prefix + "counts", None)
