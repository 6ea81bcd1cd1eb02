"""Processes for the tests that stop runs the hard way: start a command in its own session, find
its descendants (torchrun starts each worker in a session of its own), freeze the whole tree once
a condition on disk holds, and kill -9 it."""

import contextlib
import os
import signal
import subprocess
import sys
import time

#: a guard against a hung process, not a speed check: a busy machine may take many times longer
HANG_TIMEOUT = 3600
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def start(cmd, env=None):
    """``cmd`` in a session of its own, its output captured; ``env``: :data:`ENV` (one thread a process).

    A run compared bit for bit with another must use the same number of threads.
    """
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=ENV if env is None else env, start_new_session=True)


def finish(proc):
    out, _ = proc.communicate(timeout=HANG_TIMEOUT)
    assert proc.returncode == 0, out[-4000:]
    return out


def run(cmd):
    return finish(start(cmd))


def standalone(ranks, *args, restarts=0):
    """``torchrun --standalone`` with ``ranks`` processes running ``ols ARGS``."""
    return TORCHRUN + ["--standalone", f"--nproc-per-node={ranks}", f"--max-restarts={restarts}",
                       "-m", "ols", *args]


def children(pid):
    """The pids whose parent is ``pid`` (from /proc)."""
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


def signal_all(pid, sig):
    """``sig`` to ``pid`` and every descendant."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += children(p)
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, sig)


def wait_for(proc, condition):
    deadline = time.time() + HANG_TIMEOUT
    while not condition():
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError("the run ended before the moment the test waits for: " + out[-2000:])
        assert time.time() < deadline
        time.sleep(0.05)


def kill_when(proc, condition):
    """Freeze the process tree once ``condition()`` holds (and still holds when frozen), then kill -9 it."""
    while True:
        wait_for(proc, condition)
        signal_all(proc.pid, signal.SIGSTOP)
        if condition():  # still so with nothing running: the files stay what they are
            break
        signal_all(proc.pid, signal.SIGCONT)
    signal_all(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=HANG_TIMEOUT)


def checkpoint(run_dir):
    """``RUN_DIR/checkpoint.pt`` of an ``ols train`` run, or ``None`` before the first is written."""
    import torch

    try:
        return torch.load(run_dir / "checkpoint.pt", weights_only=True)
    except Exception:
        return None


def kill_mid_epoch(proc, run_dir, after_epoch=0):
    """Kill -9 the run once its checkpoint is an in-epoch one (``--save-every-steps``) of an epoch after
    ``after_epoch``; return that checkpoint."""
    def inside():
        ckpt = checkpoint(run_dir)
        return ckpt is not None and ckpt.get("epoch_state") is not None and ckpt["epoch"] >= after_epoch

    kill_when(proc, inside)
    return checkpoint(run_dir)


def free_port():
    """A TCP port free on localhost now (for a rendezvous or a process group)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def gloo_group(rank, world, port):
    """This process as rank ``rank`` of a ``world``-process gloo group on localhost.

    The group goes last: the garbage collection first frees a DDP wrapper held by cycles (freed after
    its group, its reducer can deadlock gloo's teardown), and the barrier keeps a rank done early from
    tearing gloo down under the others.
    """
    import gc

    import torch.distributed as dist

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        yield
    finally:
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()
