"""``ols sweep``: run a spec's grid, several processes at once, skipping what is finished.

Each run is an ``ols train`` subprocess (``-c`` with the run's JSON config; JSON is YAML)
writing its output to ``RUN_DIR/train.log``, then an ``ols eval`` with the spec's options.
A run whose ``summary.json`` (and ``eval.json``, if asked for) exists with the same
config is skipped; one with a checkpoint but no summary is resumed. So an interrupted
sweep continues where it stopped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Tuple

from ..checkpoint import CHECKPOINT
from ..rundir import read_json, write_json
from .spec import RunSpec, SweepSpec, launcher_command

SWEEP_FILE = "sweep.json"


class SweepFailed(Exception):
    """Some runs of a sweep failed; the message lists them with their logs."""


class SweepInterrupted(Exception):
    """Ctrl-C (or SIGTERM) stopped the sweep; the runs it cut short resume on the next ``ols sweep``."""


def changed_settings(run: RunSpec) -> Dict[str, Any]:
    """The settings in which the run directory's ``config.json`` differs from the spec's (empty: none)."""
    path = run.run_dir / "config.json"
    if not path.exists():
        return {}
    try:
        saved = read_json(path)
    except ValueError:
        return {"config.json": ("damaged", "rewritten")}
    return {k: (saved.get(k), v) for k, v in run.config.items() if k != "out" and saved.get(k) != v}


def run_status(run: RunSpec, wants_eval: bool) -> str:
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


def _execute(run: RunSpec, status: str, spec: SweepSpec, threads: int,
             stop: threading.Event) -> Tuple[RunSpec, str]:
    d = run.run_dir
    d.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    ols = [sys.executable, "-m", "ols"]
    train = launcher_command(spec.launcher) + ["-m", "ols"] if spec.launcher else ols
    commands = []
    if status in ("new", "changed"):
        write_json(d / "requested.json", run.config)
        commands.append(train + ["train", "-c", str(d / "requested.json"), "--no-progress"]
                        + (["--overwrite"] if status == "changed" else []))
    elif status == "resume":
        commands.append(train + ["train", "--resume", str(d), "--no-progress"])
    if spec.eval:
        device = run.config.get("device", "auto")
        commands.append(ols + ["eval", str(d), "--device", device] + eval_flags(spec.eval))
    with open(d / "sweep.log", "a") as log:
        for cmd in commands:
            if stop.is_set():
                return run, "not started (interrupted)"
            log.write("$ " + " ".join(cmd[1:]) + "\n")
            log.flush()
            code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
            if code in (130, -signal.SIGINT, -signal.SIGTERM):  # the user stopped it: stop the sweep
                stop.set()
                return run, "interrupted"
            if code != 0:
                return run, f"exit {code} (see {d / 'sweep.log'})"
    return run, "ok"


def run_sweep(spec: SweepSpec, jobs: int = 1, dry_run: bool = False, verbose: bool = True,
              overwrite_changed: bool = False) -> Dict[str, Any]:
    """Run every unfinished run of ``spec``; returns counts.

    Raises :class:`SweepFailed` when runs failed, and :class:`SweepInterrupted` when Ctrl-C
    stopped the sweep. A run made with other settings than the spec's now asks for
    ``overwrite_changed`` before anything starts.
    """
    if jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {jobs}")
    runs = spec.runs()
    statuses = [(r, run_status(r, bool(spec.eval))) for r in runs]
    changed = [r for r, s in statuses if s == "changed"]
    if changed and not overwrite_changed:
        lines = [f"{r.method} {r.settings}: " + ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new)
                                                          in changed_settings(r).items())
                 for r in changed[:10]]
        raise ValueError(f"{len(changed)} run(s) in {spec.out} were made with other settings than the spec "
                         f"now gives:\n  " + "\n  ".join(lines) + "\nrerun them from scratch with "
                         "--overwrite-changed, or restore the spec, or choose another --out")
    spec.out.mkdir(parents=True, exist_ok=True)
    write_json(spec.out / SWEEP_FILE, {
        "name": spec.name, "title": spec.title, "description": spec.description,
        "columns": spec.columns, "metrics": spec.metrics, "plots": spec.plots, "eval": spec.eval,
        "grid": spec.grid, "methods": list(spec.methods),
        "runs": [{"method": r.method, "settings": r.settings, "dir": str(r.run_dir.relative_to(spec.out))}
                 for r in runs],
    })
    todo = [(r, s) for r, s in statuses if s != "done"]
    counts = {"runs": len(runs), "done": len(runs) - len(todo), "todo": len(todo)}
    if verbose:
        print(f"sweep {spec.name}: {len(runs)} runs, {counts['done']} already finished, {len(todo)} to run"
              f"{' (dry run)' if dry_run else ''} -> {spec.out}", flush=True)
    if dry_run:
        for r, s in todo:
            print(f"  {s:6s} {r.method} {r.settings}")
        return counts
    threads = max(1, (os.cpu_count() or 1) // jobs)
    failed = []
    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(_execute, r, s, spec, threads, stop) for r, s in todo]
        try:
            for i, fut in enumerate(futures, 1):
                run, outcome = fut.result()
                if verbose:
                    print(f"  [{i}/{len(todo)}] {run.method} {run.settings}: {outcome}", flush=True)
                if stop.is_set():
                    break
                if outcome != "ok":
                    failed.append(f"{run.method} {run.settings}: {outcome}")
        except KeyboardInterrupt:
            stop.set()
        if stop.is_set():
            for fut in futures:
                fut.cancel()
    if stop.is_set():
        raise SweepInterrupted(f"stopped; `ols sweep` with the same spec resumes where it stopped "
                               f"({spec.out})")
    counts["failed"] = len(failed)
    if failed:
        raise SweepFailed(f"{len(failed)} of {len(todo)} runs failed:\n  " + "\n  ".join(failed))
    return counts


def read_sweep(sweep_dir: str) -> Dict[str, Any]:
    """The ``sweep.json`` of a sweep directory, with a clear error when it is not one."""
    path = Path(sweep_dir) / SWEEP_FILE
    if not path.is_file():
        raise ValueError(f"{sweep_dir} is not a sweep directory (no {SWEEP_FILE}); run `ols sweep SPEC.yaml`")
    return read_json(path)
