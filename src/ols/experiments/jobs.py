"""What one run of a sweep runs: its status from its folder, and the commands that bring it to done.

Shared by the local sweep (:mod:`~ols.experiments.runner`) and the cluster executors
(:mod:`~ols.experiments.executors`): a run's ``run_dir`` and ``config`` (a
:class:`~ols.experiments.spec.RunSpec`) and the sweep's ``command``, ``eval`` and ``launcher`` are
all it reads.
"""

from __future__ import annotations

import contextlib
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, List

from ..checkpoint import CHECKPOINT
from ..rundir import read_json, write_json


def launcher_command(launcher: str, source: str = "spec") -> List[str]:
    """The spec's ``launcher`` as an argument list, its program found on ``PATH`` or beside this Python."""
    parts = shlex.split(launcher)
    found = shutil.which(parts[0]) if parts else None
    if parts and found is None and (Path(sys.executable).parent / parts[0]).is_file():
        found = str(Path(sys.executable).parent / parts[0])  # e.g. torchrun in the active venv
    if found is None:
        raise ValueError(f"{source}: launcher {launcher!r}: {parts[0] if parts else 'nothing'} is neither on "
                         "PATH nor beside this Python (e.g. launcher: torchrun --nproc_per_node=2)")
    return [found] + parts[1:]


def changed_settings(run: Any) -> Dict[str, Any]:
    """The settings in which the run directory's ``config.json`` differs from the spec's (empty: none)."""
    path = run.run_dir / "config.json"
    if not path.exists():
        return {}
    try:
        saved = read_json(path)
    except ValueError:
        return {"config.json": ("damaged", "rewritten")}
    return {k: (saved.get(k), v) for k, v in run.config.items() if k != "out" and saved.get(k) != v}


def clear_changed(run: Any) -> None:
    """A run made with other settings: remove its checkpoint and summary, so its job starts it anew."""
    for name in (CHECKPOINT, "summary.json", "eval.json", "config.json"):
        with contextlib.suppress(FileNotFoundError):
            (run.run_dir / name).unlink()


def run_status(run: Any, wants_eval: bool) -> str:
    """``done``, ``eval`` (not evaluated yet), ``resume``, ``changed`` (other settings) or ``new``."""
    d = run.run_dir
    started = (d / "summary.json").exists() or (d / CHECKPOINT).exists()
    if started and changed_settings(run):
        return "changed"
    if (d / "summary.json").exists():
        return "done" if (not wants_eval or (d / "eval.json").exists()) else "eval"
    if (d / CHECKPOINT).exists():
        return "resume"
    return "new"


def eval_flags(options: Dict[str, Any]) -> List[str]:
    """``ols eval`` flags for a spec's ``eval`` mapping."""
    flags: List[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags += [flag] if value else []
        elif isinstance(value, (list, tuple)):
            flags += [flag, *map(str, value)]
        else:
            flags += [flag, str(value)]
    return flags


def run_commands(run: Any, status: str, spec: Any, train: List[str]) -> List[List[str]]:
    """The commands that bring a run of status ``status`` to done; ``train`` starts ``ols`` for training.

    Writes the run's ``requested.json`` (its config) for a new run.
    """
    d, ols = run.run_dir, [sys.executable, "-m", "ols"]
    commands = []
    verb = ["detect", "train"] if spec.command == "detect" else ["train"]
    if status in ("new", "changed"):
        write_json(d / "requested.json", run.config)
        commands.append(train + verb + ["-c", str(d / "requested.json"), "--no-progress"]
                        + (["--overwrite"] if status == "changed" else []))
    elif status == "resume":
        commands.append(train + verb + ["--resume", str(d), "--no-progress"])
    if spec.eval:
        device = run.config.get("device", "auto")
        commands.append(ols + ["eval", str(d), "--device", device] + eval_flags(spec.eval))
    return commands
