"""``ols sweep``: run a spec's grid, several processes at once, skipping what is finished.

Each run is an ``ols train`` subprocess (``-c`` with the run's JSON config; JSON is YAML)
writing its output to ``RUN_DIR/train.log``, then an ``ols eval`` with the spec's options.
A run whose ``summary.json`` (and ``eval.json``, if asked for) exists with the same
config is skipped; one with a checkpoint but no summary is resumed. So an interrupted
sweep continues where it stopped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..rundir import read_json, write_json
from .executors import ExecutorSpec, describe, run_remote
from .jobs import changed_settings, clear_changed, launcher_command, run_commands, run_status
from .spec import RunSpec, SweepSpec

SWEEP_FILE = "sweep.json"


class SweepFailed(Exception):
    """Some runs of a sweep failed; the message lists them with their logs."""


class SweepInterrupted(Exception):
    """Ctrl-C (or SIGTERM) stopped the sweep; the runs it cut short resume on the next ``ols sweep``."""


class _Children:
    """The sweep's live training/eval processes, and the signals that stop them.

    Each child runs in its own session, so a terminal's Ctrl-C reaches the sweep alone and
    the sweep passes one SIGTERM to every child: each saves at its next batch boundary and
    exits 130. A second signal is passed on too (the child then stops at once).
    """

    def __init__(self) -> None:
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._procs: set = set()
        self._previous: dict = {}

    def run(self, cmd: List[str], **kw: Any) -> int:
        """``subprocess.run(cmd).returncode``, stoppable (130: stopped before it started)."""
        with self._lock:
            if self.stop.is_set():
                return 130
            proc = subprocess.Popen(cmd, start_new_session=True, **kw)
            self._procs.add(proc)
        try:
            return proc.wait()
        finally:
            with self._lock:
                self._procs.discard(proc)

    def request_stop(self, force: bool = False) -> None:
        """Stop the sweep: no new run starts, and every running child is sent SIGTERM once.

        ``force`` sends it again (a second Ctrl-C: the children then stop at once).
        """
        first = not self.stop.is_set()
        self.stop.set()
        if not (first or force):
            return
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)

    def _handle(self, signum: int, frame: Any) -> None:
        self.request_stop(force=True)

    def __enter__(self) -> _Children:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def _execute(run: RunSpec, status: str, spec: SweepSpec, threads: int,
             children: _Children) -> Tuple[RunSpec, str, float]:
    start = time.monotonic()
    run, outcome = _execute_commands(run, status, spec, threads, children)
    return run, outcome, time.monotonic() - start


def child_environment(environ: Dict[str, str], threads: int) -> Dict[str, str]:
    """A run's environment: its share of the cores as ``OMP/MKL_NUM_THREADS``, unless the user set them."""
    share = {k: environ.get(k) or str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    return {**environ, **share}


def _execute_commands(run: RunSpec, status: str, spec: SweepSpec, threads: int,
                      children: _Children) -> Tuple[RunSpec, str]:
    if children.stop.is_set():  # a run not started leaves no trace in its folder
        return run, "not started (interrupted)"
    d = run.run_dir
    d.mkdir(parents=True, exist_ok=True)
    env = child_environment(os.environ, threads)
    train = [sys.executable, "-m", "ols"]
    if spec.launcher:
        train = launcher_command(spec.launcher) + ["-m", "ols"]
    commands = run_commands(run, status, spec, train)
    with open(d / "sweep.log", "a") as log:
        for cmd in commands:
            if children.stop.is_set():
                return run, "not started (interrupted)"
            log.write("$ " + " ".join(cmd[1:]) + "\n")
            log.flush()
            code = children.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            if code in (130, -signal.SIGINT, -signal.SIGTERM):  # the user stopped it: stop the sweep
                children.request_stop()
                return run, "interrupted"
            if code != 0:
                return run, f"exit {code} (see {d / 'sweep.log'})"
    return run, "ok"


def run_sweep(spec: SweepSpec, jobs: int = 1, dry_run: bool = False, verbose: bool = True,
              overwrite_changed: bool = False, executor: Optional[ExecutorSpec] = None) -> Dict[str, Any]:
    """Run every unfinished run of ``spec``; returns counts.

    Raises :class:`SweepFailed` when runs failed, and :class:`SweepInterrupted` when Ctrl-C
    stopped the sweep. A run made with other settings than the spec's now asks for
    ``overwrite_changed`` before anything starts. ``executor`` (:mod:`~ols.experiments.executors`):
    the runs go to submitit or Ray instead of this machine's processes (``jobs`` is then theirs).
    """
    executor = executor or ExecutorSpec()
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
        "baseline": spec.baseline, "overrides": spec.overrides,
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
        if executor.kind != "local":
            print(describe(spec, executor))
        return counts
    if executor.kind != "local":
        for r, s in todo:  # a changed run starts again from scratch: its old checkpoint goes now
            if s == "changed":
                clear_changed(r)
        try:
            failed = run_remote([r for r, _ in todo], spec, executor, verbose)
        except KeyboardInterrupt:
            raise SweepInterrupted(f"stopped; the runs it started were cancelled (each saved at its next "
                                   f"batch), and `ols sweep` with the same spec resumes them "
                                   f"({spec.out})") from None
        counts["failed"] = len(failed)
        if failed:
            raise SweepFailed(f"{len(failed)} of {len(todo)} runs failed:\n  " + "\n  ".join(failed))
        return counts
    threads = max(1, (os.cpu_count() or 1) // jobs)
    failed = []
    with _Children() as children, ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(_execute, r, s, spec, threads, children) for r, s in todo]
        try:
            start = time.monotonic()
            for i, fut in enumerate(futures, 1):
                run, outcome, seconds = fut.result()
                if verbose and not (children.stop.is_set() and outcome.startswith("not started")):
                    left = (time.monotonic() - start) / i * (len(todo) - i)
                    eta = f"; about {_duration(left)} left" if i < len(todo) else ""
                    print(f"  [{i}/{len(todo)}] {run.method} {run.settings}: {outcome} ({_duration(seconds)}"
                          f"{eta})", flush=True)
                if outcome != "ok" and not children.stop.is_set():
                    failed.append(f"{run.method} {run.settings}: {outcome}")
        except KeyboardInterrupt:  # outside the handler's reach (not the main thread)
            children.request_stop()
        if children.stop.is_set():
            for fut in futures:
                fut.cancel()
    if children.stop.is_set():
        raise SweepInterrupted(f"stopped; the runs cut short saved their checkpoints, and `ols sweep` with "
                               f"the same spec resumes where it stopped ({spec.out})")
    counts["failed"] = len(failed)
    if failed:
        raise SweepFailed(f"{len(failed)} of {len(todo)} runs failed:\n  " + "\n  ".join(failed))
    return counts


def _duration(seconds: float) -> str:
    """``42 s``, ``7 min``, ``2.5 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def read_sweep(sweep_dir: str) -> Dict[str, Any]:
    """The ``sweep.json`` of a sweep directory, with a clear error when it is not one."""
    path = Path(sweep_dir) / SWEEP_FILE
    if not path.is_file():
        raise ValueError(f"{sweep_dir} is not a sweep directory (no {SWEEP_FILE}); run `ols sweep SPEC.yaml`")
    return read_json(path)
