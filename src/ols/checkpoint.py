"""Checkpoints: written atomically (temporary file, then rename), read with a clear error.

A checkpoint is a dict of tensors and plain Python values, loaded with
``weights_only=True``, so opening one never runs code.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Dict

import torch

from .rundir import PathLike, atomic_write_bytes

CHECKPOINT = "checkpoint.pt"
SNAPSHOTS = "snapshots"


def save_checkpoint(path: PathLike, state: Dict[str, Any]) -> None:
    """``torch.save`` to memory, then an atomic write: a crash never leaves half a file."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: PathLike) -> Dict[str, Any]:
    """The dict :func:`save_checkpoint` wrote, on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}") from None


def non_finite_tensors(state: Dict[str, Any]) -> list:
    """Names of the floating-point tensors of ``state`` that hold a NaN or an infinity."""
    return [name for name, t in state.items()
            if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())]


def load_part(part: Any, state: Any, what: str, source: PathLike) -> None:
    """``part.load_state_dict(state)``, or one line saying that the state of ``source`` does not fit."""
    try:
        part.load_state_dict(state)
    except ValueError as err:  # the losses' own refusals (format, NaN state) already say why, in one line
        raise ValueError(f"{source}: its {what}: {err}") from None
    except (RuntimeError, KeyError) as err:
        first = next((line.strip() for line in str(err).splitlines()[1:] if line.strip()), str(err))
        raise ValueError(f"{source}: its {what} does not fit this run's ({first[:200]}); it was written by "
                         "another architecture, number of classes or loss") from None


def snapshot_path(run_dir: PathLike, epoch: int) -> Path:
    """``RUN_DIR/snapshots/epoch_0007.pt``."""
    return Path(run_dir) / SNAPSHOTS / f"epoch_{epoch:04d}.pt"


def rng_state() -> Dict[str, Any]:
    """Torch's global CPU (and CUDA) generator states."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
