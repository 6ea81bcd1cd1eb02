"""``ols sweep --executor submitit|ray``: the options, the job a run becomes, submitit's real job
path on its local executor (pickled call, logs, exit codes, requeue after the pre-timeout signal),
and Ray on one local cluster shared by the tests (a sweep, and a run whose worker is killed)."""

import json
import os
import re
import signal
import sys
import threading
import time

import pytest

from ols.cli import main
from ols.experiments.executors import ExecutorSpec, parse_executor, submitit_parameters, train_prefix
from ols.experiments.runner import run_status, run_sweep
from ols.experiments.spec import parse_spec
from ols.rundir import read_jsonl

HANG_TIMEOUT = 3600  # a guard against a hung job, not a speed check
TINY = {"dataset": "digits", "model": "cnn", "epochs": 3, "batch_size": 64, "save_every_steps": 3,
        "progress": False}


def tiny_spec(tmp_path, methods=("ols",), **extra):
    return parse_spec({"name": "tiny", "out": str(tmp_path / "sweep"), "base": TINY,
                       "methods": {m: {"loss": m} for m in methods}, **extra}, "tiny.yaml")


def test_executor_options_are_checked_in_one_line():
    ex = parse_executor(None, {"kind": "submitit", "gpus": 2, "partition": "gpu"}, ["time_min=240",
                                                                                    "account=lab"])
    assert ex.kind == "submitit" and ex.options == {"gpus": 2, "partition": "gpu", "time_min": 240,
                                                    "account": "lab"}
    assert parse_executor("ray", {"kind": "submitit"}, []).kind == "ray"  # the flag wins over the spec
    for kind, block, given, words in [
        ("slurm", {}, [], "--executor slurm: unknown"),
        ("ray", {"gpu": 1}, [], "executor.gpu: unknown executor option"),
        ("ray", {}, ["gpus"], "give KEY=VALUE"),
        ("submitit", {}, ["time_min=two"], "--executor-arg time_min='two': must be a whole number"),
        ("submitit", {}, ["cpus=0"], "must be positive"),
        ("local", {}, ["gpus=1"], "need --executor submitit or ray"),
    ]:
        with pytest.raises(ValueError, match=re.escape(words)):
            parse_executor(kind, block, given)


def test_the_slurm_parameters_follow_the_spec_and_several_gpus_run_under_torchrun(tmp_path, capsys):
    spec = tiny_spec(tmp_path, executor={"kind": "submitit", "gpus": 4, "cpus": 16, "partition": "gpu",
                                         "account": "lab", "time_min": 240, "max_parallel": 8})
    ex = parse_executor(None, spec.executor, [])
    params = submitit_parameters(spec, ex)
    assert params["gpus_per_node"] == 4 and params["cpus_per_task"] == 16 and params["timeout_min"] == 240
    assert params["slurm_partition"] == "gpu" and params["slurm_account"] == "lab"
    assert params["slurm_array_parallelism"] == 8 and params["tasks_per_node"] == 1
    prefix = train_prefix(spec, 4)
    assert prefix[1:4] == ["-m", "torch.distributed.run", "--standalone"] and "--nproc-per-node=4" in prefix
    assert train_prefix(spec, 1) == [sys.executable, "-m", "ols"]
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(json.dumps({"name": "tiny", "base": TINY, "methods": {"ols": {"loss": "ols"}},
                                     "executor": spec.executor}))
    assert main(["sweep", str(spec_file), "--out", str(tmp_path / "dry"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "submitit parameters:" in out and "slurm_partition=gpu" in out and "gpus_per_node=4" in out
    assert main(["sweep", str(spec_file), "--out", str(tmp_path / "dry"), "--dry-run", "--jobs", "4"]) == 2
    assert "--jobs is for local runs; with --executor submitit" in capsys.readouterr().err
    spec_file.write_text(json.dumps({"name": "tiny", "base": TINY, "executor": {"kind": "pbs"}}))
    assert main(["sweep", str(spec_file), "--dry-run"]) == 2
    assert "unknown; use one of local, submitit, ray" in capsys.readouterr().err


def job_pids(run_dir):
    log = run_dir / "sweep.log"
    return [int(p) for p in re.findall(r"job process (\d+)", log.read_text())] if log.exists() else []


def in_thread(fn, *args, **kwargs):
    """Run ``fn`` in a thread; the returned ``join()`` gives its result (or raises its error)."""
    box = {}

    def target():
        try:
            box["result"] = fn(*args, **kwargs)
        except BaseException as err:  # handed to join()
            box["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()

    def join():
        thread.join(HANG_TIMEOUT)
        if "error" in box:
            raise box["error"]
        return box["result"]

    return join


def interrupt_when_saved(run_dir, sig):
    """Once the run has a checkpoint, send ``sig`` to its job's process (the sweep must still be on)."""
    deadline = time.time() + HANG_TIMEOUT
    while not ((run_dir / "checkpoint.pt").exists() and job_pids(run_dir)):
        assert time.time() < deadline
        time.sleep(0.05)
    os.kill(job_pids(run_dir)[0], sig)


def two_run_spec(tmp_path):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(json.dumps({"name": "tiny", "base": TINY,
                                     "methods": {"CE": {"loss": "ce"}, "OLS": {"loss": "ols"}}}))
    return spec_file


@pytest.mark.slow
def test_ols_sweep_on_submitit_requeues_a_run_after_the_pre_timeout_signal_and_it_resumes(tmp_path, capsys):
    pytest.importorskip("submitit")
    out = tmp_path / "sweep"
    args = ["sweep", str(two_run_spec(tmp_path)), "--out", str(out), "--executor", "submitit",
            "--executor-arg", "cluster=local"]
    join = in_thread(main, args)
    run = out / "OLS" / "run"
    # what SLURM does before a time-out or a preemption: USR2 to the job's process; submitit calls
    # RunJob.checkpoint (ols train saves at its next batch) and the job comes back requeued
    interrupt_when_saved(run, signal.SIGUSR2)
    assert join() == 0
    text = capsys.readouterr().out
    assert "submitit: local executor" in text and "[2/2]" in text and "report:" in text
    log = (run / "sweep.log").read_text()
    assert "# new on" in log and "# resume on" in log and "--resume" in log  # the second try resumed
    assert len(set(job_pids(run))) == 2
    assert [m["epoch"] for m in read_jsonl(run / "metrics.jsonl")] == [1, 2, 3]
    errs = "".join(p.read_text() for p in (out / "submitit").glob("*/*_log.err"))
    assert "this job is preempted" in errs  # submitit's own record of the signal
    assert main(args) == 0
    assert "2 already finished, 0 to run" in capsys.readouterr().out  # status as with local runs


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_runs_a_sweep_and_retries_a_run_whose_worker_died(tmp_path, local_ray):
    spec = tiny_spec(tmp_path, methods=("ce", "ols"))
    join = in_thread(run_sweep, spec, executor=ExecutorSpec("ray", {"cpus": 1}), verbose=False)
    run = next(r for r in spec.runs() if r.method == "ols")
    interrupt_when_saved(run.run_dir, signal.SIGKILL)  # the worker dies; its ols run saves and stops
    counts = join()
    assert counts["failed"] == 0 and all(run_status(r, False) == "done" for r in spec.runs())
    log = (run.run_dir / "sweep.log").read_text()
    assert "# new on" in log and "# resume on" in log  # Ray retried the task, which resumed the run
    assert [m["epoch"] for m in read_jsonl(run.run_dir / "metrics.jsonl")] == [1, 2, 3]


def test_a_missing_executor_package_names_its_extra(tmp_path, monkeypatch, capsys):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(json.dumps({"name": "tiny", "base": TINY}))
    for module, extra in (("submitit", "slurm"), ("ray", "ray")):
        monkeypatch.setitem(sys.modules, module, None)  # import fails as if it were not installed
        assert main(["sweep", str(spec_file), "--out", str(tmp_path / module), "--executor", module]) == 2
        err = capsys.readouterr().err
        assert f"--executor {module} needs the {module} package: pip install 'ols[{extra}]'" in err
        assert not list((tmp_path / module).glob("*/*/checkpoint.pt"))  # nothing trained
