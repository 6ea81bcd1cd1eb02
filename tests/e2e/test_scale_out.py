"""Runs past one process: checkpoints inside an epoch (--save-every-steps) after kill -9, on one
process and under torchrun; a resume on another number of ranks (2 -> 1, 1 -> 2); two torchrun
agents joined by c10d rendezvous (two "nodes" on this machine); and an elastic restart after a
worker is killed."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from ols.rundir import read_jsonl

pytestmark = pytest.mark.slow
HANG_TIMEOUT = 3600  # a guard against a hung process, not a speed check
BASE = ["--dataset", "digits", "--model", "cnn", "--loss", "ols", "--noise-rate", "0.3", "--seed", "1",
        "--epochs", "2", "--batch-size", "32", "--no-progress"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def start(cmd):
    """``cmd`` in a session of its own, so that a signal reaches torchrun's workers too."""
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV,
                            start_new_session=True)


def finish(proc):
    out, _ = proc.communicate(timeout=HANG_TIMEOUT)
    assert proc.returncode == 0, out
    return out


def run(cmd):
    return finish(start(cmd))


def ols(*args):
    return [sys.executable, "-m", "ols", *args]


def standalone(ranks, *args, restarts=0):
    return TORCHRUN + ["--standalone", f"--nproc-per-node={ranks}", f"--max-restarts={restarts}",
                       "-m", "ols", *args]


def checkpoint(run_dir):
    try:
        return torch.load(run_dir / "checkpoint.pt", weights_only=True)
    except Exception:  # not written yet
        return None


def mid_epoch(run_dir):
    ckpt = checkpoint(run_dir)
    return ckpt is not None and ckpt.get("epoch_state") is not None and ckpt["epoch"] >= 1


def wait_for(proc, condition):
    deadline = time.time() + HANG_TIMEOUT
    while not condition():
        assert proc.poll() is None, "the run ended too soon: " + proc.stdout.read()[-2000:]
        assert time.time() < deadline
        time.sleep(0.05)


def signal_all(proc, sig):
    """``sig`` to the process and every descendant (torchrun starts each worker in a session of its own)."""
    pids, todo = [], [proc.pid]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo += children(pid)
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def kill_mid_epoch(proc, run_dir):
    """Freeze the run once its checkpoint is an in-epoch one of epoch 2, then kill -9 every process."""
    while True:
        wait_for(proc, lambda: mid_epoch(run_dir))
        signal_all(proc, signal.SIGSTOP)
        if mid_epoch(run_dir):  # still so with nothing running: the file stays what it is
            break
        signal_all(proc, signal.SIGCONT)
    signal_all(proc, signal.SIGKILL)
    proc.communicate(timeout=HANG_TIMEOUT)
    return checkpoint(run_dir)


def assert_same_run(a, b, exact=True):
    ca, cb = checkpoint(a), checkpoint(b)
    assert ca["epoch"] == cb["epoch"] == 2 and ca["epoch_state"] is None
    for key in ca["model"]:
        if exact:
            assert torch.equal(ca["model"][key], cb["model"][key]), key
        else:
            torch.testing.assert_close(ca["model"][key], cb["model"][key])
    assert torch.equal(ca["criterion"]["store.soft_labels"], cb["criterion"]["store.soft_labels"])
    strip = [[{k: v for k, v in m.items() if k != "seconds"} for m in read_jsonl(d / "metrics.jsonl")]
             for d in (a, b)]
    assert strip[0] == strip[1]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def one(tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "run"
    run(ols("train", *BASE, "--out", str(out)))
    return out


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    out = tmp_path_factory.mktemp("two") / "run"
    run(standalone(2, "train", *BASE, "--out", str(out)))
    return out


def test_in_epoch_checkpoint_after_kill_resumes_exactly_and_on_two_ranks(tmp_path, one):
    out = tmp_path / "run"
    proc = start(ols("train", *BASE, "--save-every-steps", "5", "--out", str(out)))
    ckpt = kill_mid_epoch(proc, out)
    assert ckpt["epoch_state"]["batches"] % 5 == 0 and ckpt["world_size"] == 1
    assert not list(out.glob(".checkpoint.pt.*"))  # the write is atomic: no temporary file left
    grown = tmp_path / "grown"
    shutil.copytree(out, grown)
    text = run(ols("train", "--resume", str(out)))
    assert f"batch {ckpt['epoch_state']['batches']}" in text
    assert_same_run(one, out)  # bit-identical to the run that was never stopped (nor saved mid-epoch)
    # 1 -> 2: the same checkpoint resumed by two ranks; the epoch's rest is dealt out to them
    text = run(standalone(2, "train", "--resume", str(grown)))
    assert "resuming on 2 rank(s) a run checkpointed on 1" in text
    summary = json.loads((grown / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["soft_labels_same_on_all_ranks"] is True
    assert [m["epoch"] for m in read_jsonl(grown / "metrics.jsonl")] == [1, 2]


def test_two_ranks_killed_mid_epoch_resume_on_two_and_on_one(tmp_path, two):
    out = tmp_path / "run"
    proc = start(standalone(2, "train", *BASE, "--save-every-steps", "4", "--out", str(out)))
    ckpt = kill_mid_epoch(proc, out)
    assert ckpt["world_size"] == 2 and ckpt["epoch_state"]["world_size"] == 2
    assert len(ckpt["epoch_state"]["aug_rngs"]) == 2 and ckpt["rank_local"]["world_size"] == 2
    shrunk = tmp_path / "shrunk"
    shutil.copytree(out, shrunk)
    run(standalone(2, "train", "--resume", str(out)))
    assert_same_run(two, out)  # each rank got its own sums, generator and OLS statistics back
    # 2 -> 1: one process takes both ranks' statistics and the rest of the epoch
    text = run(ols("train", "--resume", str(shrunk)))
    assert "resuming on 1 rank(s) a run checkpointed on 2 inside epoch 2" in text
    summary = json.loads((shrunk / "summary.json").read_text())
    assert summary["world_size"] == 1 and [m["epoch"] for m in read_jsonl(shrunk / "metrics.jsonl")] == [1, 2]
    last = read_jsonl(shrunk / "metrics.jsonl")[-1]
    assert last["train_err"] < 60 and last["test_top1_err"] < 60  # it trained on (chance: 90 %)


def test_two_agents_joined_by_rendezvous_train_as_one_two_rank_run(tmp_path, two):
    """``torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d`` started twice: two "nodes"."""
    out = tmp_path / "run"
    port = free_port()
    agent = TORCHRUN + ["--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d",
                        f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=ols-test", "-m", "ols", "train",
                        *BASE, "--out", str(out)]
    first, second = start(agent), start(agent)
    finish(first)
    finish(second)
    assert json.loads((out / "summary.json").read_text())["world_size"] == 2
    assert_same_run(two, out)  # the same run as two ranks on one node


def test_a_killed_worker_restarts_the_group_and_resumes_from_the_in_epoch_checkpoint(tmp_path, two):
    out = tmp_path / "run"
    proc = start(standalone(2, "train", *BASE, "--save-every-steps", "4", "--out", str(out), restarts=1))
    wait_for(proc, lambda: mid_epoch(out))
    workers = children(proc.pid)
    assert len(workers) == 2
    os.kill(workers[-1], signal.SIGKILL)  # one rank dies; torchrun stops the other and starts both again
    text = finish(proc)
    assert "resuming" in text and "after epoch 1, batch" in text
    assert_same_run(two, out)


def children(pid):
    """The pids whose parent is ``pid``, in order (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return sorted(found)
