"""Reading and writing a run directory: JSON files written atomically, a JSONL log."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

PathLike = Union[str, Path]


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; give it what any new file gets
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError) and not err.filename:  # a full disk: say which file could not be written
            raise OSError(err.errno, err.strerror, str(path)) from None
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_json(path: PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: PathLike) -> Any:
    """Parse one JSON file."""
    with open(path) as f:
        return json.load(f)


def append_jsonl(path: PathLike, record: Dict[str, Any]) -> None:
    """Append one JSON line and flush it to disk."""
    try:
        with open(path, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        if err.filename:
            raise
        raise OSError(err.errno, err.strerror, str(path)) from None


def read_jsonl(path: PathLike) -> List[Dict[str, Any]]:
    """Every record of a JSONL file.

    A last line cut short (a crash in the middle of a write) is dropped with a warning; a
    damaged line anywhere else is an error naming the file and the line.
    """
    with open(path) as f:
        lines = [(number, line) for number, line in enumerate(f, 1) if line.strip()]
    records = []
    for i, (number, line) in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                warnings.warn(f"{path}: line {number} is cut short (a crash while writing it?); dropped it",
                              stacklevel=2)
                break
            raise ValueError(f"{path}: line {number} is not valid JSON; the file is damaged") from None
    return records


def write_jsonl(path: PathLike, records: List[Dict[str, Any]]) -> None:
    """Atomically replace a JSONL file with ``records``."""
    atomic_write_bytes(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode())


#: what ``ols train`` and ``ols eval`` write into a run directory: ``--overwrite`` removes exactly these
RUN_FILES = ("checkpoint.pt", "config.json", "metrics.jsonl", "summary.json", "eval.json", "soft_labels.npy",
             "train_labels_noisy.npy", "train_flipped.npy", "reliability.png", "soft_labels.png", "tsne.png",
             "predictions.npz", "metrics.csv", "mlflow_run_id", "wandb_run_id")
RUN_FOLDERS = ("snapshots", "tensorboard", "mlruns", "wandb")
LOCK = ".lock"


#: keys that only each kind of run's ``config.json`` holds
_KIND_KEYS = {"train": ("loss_args", "model"), "detect": ("canvas_size", "statistic")}
_COMMANDS = {"train": ("ols train", "ols eval", "a classification run"),
             "detect": ("ols detect train", "ols detect eval", "a detection run")}


def run_kind(run_dir: PathLike) -> Optional[str]:
    """``"train"`` or ``"detect"``: the command that made the run in ``run_dir`` (``None``: no config)."""
    try:
        config = read_json(Path(run_dir) / "config.json")
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    return next((kind for kind, keys in _KIND_KEYS.items() if any(k in config for k in keys)), None)


def refuse_other_kind(run_dir: PathLike, kind: str, resuming: bool = False,
                      evaluating: bool = False) -> None:
    """One line if ``run_dir`` holds a run of the other kind (``ols train``, ``ols detect``): its command."""
    other = run_kind(run_dir)
    if other is None or other == kind:
        return
    train, evaluate, what = _COMMANDS[other]
    if evaluating:
        fix = f"evaluate it with `{evaluate} {run_dir}`"
    elif resuming:
        fix = f"continue it with `{train} --resume {run_dir}`"
    else:
        fix = (f"choose another --out, or pass --overwrite to replace it (`{train} --resume {run_dir}` "
               "continues it)")
    raise ValueError(f"{run_dir} holds {what} (`{train}`), not one this command reads; {fix}")


def clear_run(run_dir: PathLike) -> None:
    """Remove an earlier run's files (only those ``ols`` writes) so nothing of it mixes with a new one."""
    import shutil

    root = Path(run_dir)
    for name in RUN_FILES:
        (root / name).unlink(missing_ok=True)
    for name in RUN_FOLDERS:
        if (root / name).is_dir():
            shutil.rmtree(root / name)
    remove_orphans(root)


def remove_orphans(run_dir: PathLike) -> List[Path]:
    """Delete temporary files a killed atomic write left behind (``.NAME.XXXX.tmp``); returns them."""
    root = Path(run_dir)
    found = [p for p in root.glob(".*.tmp") if p.is_file()] if root.is_dir() else []
    for p in found:
        p.unlink(missing_ok=True)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _started(pid: int) -> str:
    """When process ``pid`` started (clock ticks since boot, Linux ``/proc``); ``""`` where unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return ""


class RunLock:
    """``with RunLock(run_dir):`` this process owns the run directory; a second run on it fails at once.

    The lock is ``RUN_DIR/.lock`` holding ``host pid start``, ``start`` being when the process
    started (Linux). It appears whole: it is written to a temporary file first and linked into
    place, which fails if a lock is there. So an empty lock was left by a crash of an older
    ``ols`` (which created the file first and wrote it after), and is stale. A lock is also stale
    when, on this host, its process no longer runs, or its PID now belongs to a process started at
    another time. A stale lock is taken over with one line on stderr.
    """

    def __init__(self, run_dir: PathLike):
        self.path = Path(run_dir) / LOCK
        self.owned = self.created = False

    def _stale(self) -> Optional[str]:
        """Why the existing lock is stale (``None``: it is live, or cannot be told)."""
        try:
            text = self.path.read_text().strip()
        except FileNotFoundError:
            return "gone"
        if not text:
            return "an empty lock left by a crash"
        host, pid, *rest = text.split() + [""]
        if host != socket.gethostname() or not pid.isdigit():
            return None
        if not _alive(int(pid)):
            return f"a lock of process {pid}, which no longer runs"
        if rest[0] and _started(int(pid)) not in ("", rest[0]):
            return f"a lock of process {pid}, a number now taken by another process"
        return None

    def __enter__(self) -> RunLock:
        self.created = not self.path.parent.exists()  # removed again if the run refused to start
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = f"{socket.gethostname()} {os.getpid()} {_started(os.getpid())}".strip()
        for _ in range(2):
            if self._publish(me + "\n"):
                self.owned = True
                return self
            why = self._stale()
            if why is not None:
                if why != "gone":
                    print(f"ols: {self.path}: took over a stale lock ({why})", file=sys.stderr, flush=True)
                self.path.unlink(missing_ok=True)
                continue
            host, _, pid = self.path.read_text().strip().partition(" ")
            pid = pid.split(" ")[0]
            raise ValueError(f"{self.path.parent} is in use by another run (process {pid or '?'} on "
                             f"{host or '?'}, see {self.path}); wait for it to finish, stop it, or "
                             "choose another --out")
        raise ValueError(f"{self.path}: could not take the run directory's lock")

    def _publish(self, text: str) -> bool:
        """Put a lock holding ``text`` in place, whole, unless one is there; True if this one is."""
        fd, tmp = tempfile.mkstemp(prefix=".lock.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.chmod(tmp, 0o644)
            os.link(tmp, self.path)  # atomic, and fails if the lock exists
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    @staticmethod
    def holder(run_dir: PathLike) -> Optional[str]:
        """``"process N on HOST"`` of a live lock on ``run_dir`` (``None``: none, or a stale one)."""
        lock = RunLock(run_dir)
        if not lock.path.is_file() or lock._stale() is not None:
            return None
        host, _, pid = lock.path.read_text().strip().partition(" ")
        return f"process {pid.split(' ')[0] or '?'} on {host or '?'}"

    def __exit__(self, *exc: Any) -> None:
        if self.owned:
            self.path.unlink(missing_ok=True)
            self.owned = False
            if self.created:
                with contextlib.suppress(OSError):  # not empty: the run wrote something, keep it
                    self.path.parent.rmdir()


def flatten(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: Dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
