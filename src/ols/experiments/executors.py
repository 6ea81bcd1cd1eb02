"""``ols sweep --executor submitit|ray``: the runs of a sweep as jobs of a cluster's own scheduler.

Each run becomes one job (:class:`RunJob`) that does what a local sweep does for it: it
looks at the run's folder when it starts (new, resume, evaluate: :func:`~ols.experiments.runner.run_status`),
then runs ``ols train`` (under ``torchrun`` when it has several GPUs) and ``ols eval`` as
subprocesses, logging to ``RUN_DIR/sweep.log``. A job that comes back (SLURM requeues it after
preemption or a time-out, Ray retries it after its worker died) therefore resumes its run
from the last checkpoint; ``--save-every-steps`` in the spec makes that a recent batch.

- **submitit** (``pip install 'ols[slurm]'``): one SLURM job per run, submitted as one array,
  with the spec's resources; on the signal SLURM sends before a time-out or preemption,
  submitit calls :meth:`RunJob.checkpoint`, which asks ``ols train`` to save (SIGTERM: it saves
  at the next batch) and requeues the job. Without SLURM, submitit's local executor runs the same
  job path on this machine.
- **ray** (``pip install 'ols[ray]'``): a Ray cluster by address, or a local one; each run a task
  with its GPUs and CPUs, retried when its worker dies; Ctrl-C cancels the tasks it started.

No scheduler of our own: submitit and Ray do the queueing, retries and placement.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

from .jobs import launcher_command, run_commands, run_status

EXECUTORS = ("local", "submitit", "ray")
#: ``executor:`` keys (spec) and ``--executor-arg KEY=VALUE`` (command line), with their meaning
EXECUTOR_KEYS = {
    "gpus": "GPUs per run (several: the run trains under torchrun --standalone, one process a GPU)",
    "cpus": "CPU cores per run",
    "partition": "submitit: the SLURM partition",
    "account": "submitit: the SLURM account",
    "time_min": "submitit: each job's time limit in minutes (a longer run is requeued and resumes)",
    "mem_gb": "submitit: memory per job in GB",
    "max_parallel": "submitit: runs of the array at once (SLURM's %N)",
    "requeues": "submitit: how often a run may be requeued after a time-out",
    "retries": "ray: how often a run is retried after its worker died",
    "address": "ray: the cluster's address (ray://host:10001, or auto); none: a local Ray",
    "cluster": "submitit: slurm, or local (this machine); none: SLURM where sbatch is found",
}
_INT_KEYS = ("gpus", "cpus", "time_min", "mem_gb", "max_parallel", "requeues", "retries")


@dataclass
class ExecutorSpec:
    """Where a sweep's runs execute: ``kind`` (local, submitit or ray) and its ``options``."""

    kind: str = "local"
    options: Dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)


def parse_executor(kind: Optional[str], spec_block: Optional[Mapping[str, Any]], given: List[str],
                   source: str = "spec") -> ExecutorSpec:
    """The executor from the spec's ``executor:`` block, then ``--executor`` and ``--executor-arg``."""
    block = dict(spec_block or {})
    chosen = kind or str(block.pop("kind", "local"))
    block.pop("kind", None)
    if chosen not in EXECUTORS:
        raise ValueError(f"--executor {chosen}: unknown; use one of {', '.join(EXECUTORS)}")
    options: Dict[str, Any] = {}
    items = [(k, v, f"{source}: executor.{k}") for k, v in block.items()]
    for text in given:
        key, sep, value = text.partition("=")
        if not sep:
            raise ValueError(f"--executor-arg {text!r}: give KEY=VALUE, e.g. --executor-arg gpus=1")
        items.append((key.strip(), value.strip(), f"--executor-arg {key.strip()}"))
    for key, value, where in items:
        if key not in EXECUTOR_KEYS:
            raise ValueError(f"{where}: unknown executor option; known: {', '.join(EXECUTOR_KEYS)}")
        if key in _INT_KEYS:
            try:
                value = int(value)
            except (TypeError, ValueError):
                raise ValueError(f"{where}={value!r}: must be a whole number") from None
            if value < 0 or (value == 0 and key not in ("gpus", "requeues", "retries")):
                raise ValueError(f"{where}={value}: must be positive")
        options[key] = value
    if chosen == "local" and options:
        raise ValueError(f"{next(iter(options))}: executor options need --executor submitit or ray")
    return ExecutorSpec(chosen, options)


def train_prefix(spec: Any, gpus: int) -> List[str]:
    """How a job starts ``ols train``: the spec's launcher, torchrun for several GPUs, or this Python."""
    if spec.launcher:
        return launcher_command(spec.launcher) + ["-m", "ols"]
    if gpus > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}",
                "-m", "ols"]
    return [sys.executable, "-m", "ols"]


def _child_setup() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Set up the run's process: deaf to SLURM's early USR2, and sent SIGTERM if the job dies first.

    The job asks the run to save on SLURM's warning itself (:meth:`RunJob.checkpoint`); a job
    process that dies (a killed Ray worker) leaves the run SIGTERM: save and stop.
    """
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class RunJob:
    """One run of a sweep as a picklable job: ``job()`` brings the run to done and returns ``"ok"``.

    Looks at the run's folder each time it starts, so a requeued or retried job resumes.
    ``checkpoint()`` is submitit's protocol: save the run, then requeue this job.
    """

    def __init__(self, run: Any, spec: Any, gpus: int = 0):
        self.run, self.spec, self.gpus = run, spec, gpus
        self._proc: Optional[subprocess.Popen] = None

    def __getstate__(self) -> Dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_proc"}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._proc = None

    def __call__(self) -> str:
        status = run_status(self.run, bool(self.spec.eval))
        if status == "done":
            return "ok"
        commands = run_commands(self.run, status, self.spec, train_prefix(self.spec, self.gpus))
        with open(self.run.run_dir / "sweep.log", "a") as log:
            log.write(f"# {status} on {socket.gethostname()} (job process {os.getpid()})\n")
            for cmd in commands:
                log.write("$ " + " ".join(shlex.quote(c) for c in cmd[1:]) + "\n")
                log.flush()
                self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                              preexec_fn=_child_setup, start_new_session=True)
                try:
                    code = self._proc.wait()
                finally:  # a requeue (submitit's SystemExit) lands here: let the run finish saving first
                    self._wait_for_run()
                    self._proc = None
                if code != 0:
                    raise RuntimeError(f"{self.run.method} {self.run.settings}: exit {code} "
                                       f"(see {self.run.run_dir / 'sweep.log'})")
        return "ok"

    def stop_run(self) -> None:
        """Ask the running ``ols`` to save and stop (SIGTERM: it saves at its next batch).

        Called inside a signal handler, while :meth:`__call__` waits on the process, so it does
        not wait itself: the requeue's ``SystemExit`` ends that wait and :meth:`_wait_for_run` follows.
        """
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)

    def _wait_for_run(self, grace: float = 600.0) -> None:
        """Wait for a run asked to stop to write its checkpoint; kill it after ``grace`` seconds."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Submitit's hook before a requeue: save the run, then come back as the same job."""
        from submitit.helpers import DelayedSubmission

        self.stop_run()
        return DelayedSubmission(RunJob(self.run, self.spec, self.gpus), *args, **kwargs)


def _need(module: str, extra: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise ValueError(f"--executor {module} needs the {module} package: "
                         f"pip install 'ols[{extra}]'") from None


def submitit_parameters(spec: Any, ex: ExecutorSpec) -> Dict[str, Any]:
    """The parameters given to submitit's ``AutoExecutor.update_parameters`` (``--dry-run`` prints them)."""
    params: Dict[str, Any] = {"name": f"ols-{spec.name}", "nodes": 1, "tasks_per_node": 1,
                              "gpus_per_node": ex.get("gpus", 0), "cpus_per_task": ex.get("cpus", 1),
                              "timeout_min": ex.get("time_min", 60), "slurm_signal_delay_s": 120}
    for key, name in (("partition", "slurm_partition"), ("account", "slurm_account"), ("mem_gb", "mem_gb"),
                      ("max_parallel", "slurm_array_parallelism")):
        if key in ex.options:
            params[name] = ex.options[key]
    return params


def describe(spec: Any, ex: ExecutorSpec) -> str:
    """One line: where the runs go and with what (printed before they start, and by ``--dry-run``)."""
    if ex.kind == "submitit":
        params = submitit_parameters(spec, ex)
        return "submitit parameters: " + ", ".join(f"{k}={v}" for k, v in params.items())
    where = ex.get("address") or "a local Ray on this machine"
    return f"ray: {where}; each run num_gpus={ex.get('gpus', 0)}, num_cpus={ex.get('cpus', 1)}, " \
           f"retried {ex.get('retries', 3)} times after its worker died"


def run_remote(todo: List[Any], spec: Any, ex: ExecutorSpec, verbose: bool = True) -> List[str]:
    """Run ``todo`` through ``ex``; returns the failed runs' lines. Ctrl-C cancels what it started."""
    if not todo:
        return []
    if verbose:
        print(describe(spec, ex), flush=True)
    jobs = [RunJob(run, spec, ex.get("gpus", 0)) for run in todo]
    for run in todo:
        run.run_dir.mkdir(parents=True, exist_ok=True)
    runner = _run_submitit if ex.kind == "submitit" else _run_ray
    return runner(jobs, spec, ex, verbose)


def _report(verbose: bool, i: int, total: int, job: RunJob, outcome: str, start: float) -> None:
    if verbose:
        print(f"  [{i}/{total}] {job.run.method} {job.run.settings}: {outcome} "
              f"({time.monotonic() - start:.0f} s since the sweep started)", flush=True)


def _run_submitit(jobs: List[RunJob], spec: Any, ex: ExecutorSpec, verbose: bool) -> List[str]:
    submitit = _need("submitit", "slurm")
    cluster = ex.get("cluster")
    executor = submitit.AutoExecutor(folder=str(spec.out / "submitit" / "%j"), cluster=cluster)
    params = submitit_parameters(spec, ex)
    if executor.cluster != "slurm":  # SLURM's own keys mean nothing to the local executor
        params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
    params["timeout_min"] = params.get("timeout_min", 60)
    executor.update_parameters(**params)
    if hasattr(executor, "_executor") and "requeues" in ex.options:
        executor._executor.max_num_timeout = ex.options["requeues"]
    if verbose:
        print(f"submitit: {executor.cluster} executor; logs in {spec.out / 'submitit'}", flush=True)
    with executor.batch():
        handles = [executor.submit(job) for job in jobs]
    failed, start = [], time.monotonic()
    try:
        for i, (job, handle) in enumerate(zip(jobs, handles), 1):
            try:
                outcome = handle.result()
            except Exception as err:  # submitit re-raises the job's error with its traceback
                outcome = str(err).strip().splitlines()[-1][:300] if str(err).strip() else type(err).__name__
                failed.append(f"{job.run.method} {job.run.settings}: {outcome} (job {handle.job_id}, logs in "
                              f"{spec.out / 'submitit'})")
            _report(verbose, i, len(jobs), job, outcome, start)
    except KeyboardInterrupt:
        for handle in handles:
            with contextlib.suppress(Exception):
                handle.cancel(check=False)
        raise
    return failed


def _ray_task(job: RunJob) -> str:
    return job()


def _run_ray(jobs: List[RunJob], spec: Any, ex: ExecutorSpec, verbose: bool) -> List[str]:
    ray = _need("ray", "ray")
    started_here = not ray.is_initialized()
    if started_here:
        address = ex.get("address")
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 **({} if address else {"num_cpus": os.cpu_count() or 1}))
    remote = ray.remote(_ray_task).options(num_cpus=ex.get("cpus", 1), num_gpus=ex.get("gpus", 0),
                                           max_retries=ex.get("retries", 3), retry_exceptions=False)
    refs = {remote.remote(job): job for job in jobs}
    failed, start, done = [], time.monotonic(), 0
    try:
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                job, done = refs[ref], done + 1
                try:
                    outcome = ray.get(ref)
                except Exception as err:
                    cause = getattr(err, "cause", None) or err
                    outcome = str(cause).strip().splitlines()[-1][:300] if str(cause).strip() else \
                        type(cause).__name__
                    failed.append(f"{job.run.method} {job.run.settings}: {outcome}")
                _report(verbose, done, len(jobs), job, outcome, start)
    except KeyboardInterrupt:
        for ref in refs:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)  # the worker dies; its ols run saves and stops (SIGTERM)
        raise
    finally:
        if started_here:  # a Ray the caller started stays up
            ray.shutdown()
    return failed
