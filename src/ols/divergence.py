"""The divergence stop shared by ``ols train`` and ``ols detect train``.

A NaN or infinite epoch loss ends the run in one line, before anything of that epoch is written,
and the last good checkpoint stays.
"""

from __future__ import annotations

import math
from pathlib import Path


def stop_if_diverged(loss: float, epoch: int, checkpoint: Path, epochs_done: int, cause: str) -> None:
    """Raise ``ValueError`` if ``loss`` is not finite, naming the epoch, the checkpoint kept and ``cause``.

    ``epochs_done``: the epochs the checkpoint on disk holds.
    """
    if math.isfinite(loss):
        return
    kept = (f"{checkpoint} still holds epoch {epochs_done}" if epochs_done
            else "no epoch had finished, so nothing was saved")
    raise ValueError(f"epoch {epoch}: the training loss is {loss} (not finite), so the run stopped and wrote "
                     f"no result; {kept}. Likely cause: {cause}")
