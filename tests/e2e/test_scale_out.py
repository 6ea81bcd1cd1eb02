"""Runs past one process: in-epoch checkpoints (--save-every-steps) under torchrun after kill -9,
resumed on two ranks and on one; two torchrun agents joined by c10d rendezvous (two "nodes" on this
machine); an elastic restart after a worker is killed. One process: tests/e2e/test_engine.py."""

import json
import os
import shutil
import signal
import sys

import numpy as np
import pytest
import torch

from ols.rundir import read_jsonl
from procs import (
    TORCHRUN,
    checkpoint,
    children,
    finish,
    free_port,
    kill_mid_epoch,
    run,
    standalone,
    start,
    wait_for,
)

pytestmark = pytest.mark.slow
BASE = ["--dataset", "digits", "--model", "cnn", "--loss", "ols", "--noise-rate", "0.3", "--seed", "1",
        "--epochs", "2", "--batch-size", "32", "--no-progress"]


def mid_epoch(run_dir):
    ckpt = checkpoint(run_dir)
    return ckpt is not None and ckpt.get("epoch_state") is not None and ckpt["epoch"] >= 1


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


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    out = tmp_path_factory.mktemp("two") / "run"
    run(standalone(2, "train", *BASE, "--out", str(out)))
    return out


def test_two_ranks_killed_mid_epoch_resume_on_two_and_on_one(tmp_path, two):
    out = tmp_path / "run"
    proc = start(standalone(2, "train", *BASE, "--save-every-steps", "4", "--out", str(out)))
    ckpt = kill_mid_epoch(proc, out, after_epoch=1)
    assert ckpt["world_size"] == 2 and ckpt["epoch_state"]["world_size"] == 2
    assert len(ckpt["epoch_state"]["aug_rngs"]) == 2 and ckpt["rank_local"]["world_size"] == 2
    shrunk = tmp_path / "shrunk"
    shutil.copytree(out, shrunk)
    run(standalone(2, "train", "--resume", str(out)))
    assert_same_run(two, out)  # each rank got its own sums, generator and OLS statistics back
    soft = np.load(out / "soft_labels.npy")  # learned from both ranks' correct predictions
    assert np.allclose(soft.sum(1), 1, atol=1e-5) and not np.allclose(soft, 0.1)
    # 2 -> 1: one process takes both ranks' statistics and the rest of the epoch
    text = run([sys.executable, "-m", "ols", "train", "--resume", str(shrunk)])
    assert "resuming on 1 rank(s) a run checkpointed on 2 inside epoch 2" in text
    summary = json.loads((shrunk / "summary.json").read_text())
    assert summary["world_size"] == 1 and [m["epoch"] for m in read_jsonl(shrunk / "metrics.jsonl")] == [1, 2]
    last = read_jsonl(shrunk / "metrics.jsonl")[-1]
    assert last["train_err"] < 60 and last["test_top1_err"] < 60  # it trained on (chance: 90 %)


def test_two_agents_joined_by_rendezvous_train_as_one_two_rank_run(tmp_path, two):
    """``torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d`` started twice: two "nodes" on this
    machine (gloo) train the run that two ranks on one node train."""
    out = tmp_path / "run"
    agent = TORCHRUN + ["--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d",
                        f"--rdzv-endpoint=127.0.0.1:{free_port()}", "--rdzv-id=ols-test", "-m", "ols",
                        "train", *BASE, "--out", str(out)]
    first, second = start(agent), start(agent)
    texts = finish(first) + finish(second)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["soft_labels_same_on_all_ranks"] is True
    assert texts.count("epoch 2/2:") == 1  # only rank 0 logs
    assert_same_run(two, out)


def test_a_killed_worker_restarts_the_group_and_resumes_from_the_in_epoch_checkpoint(tmp_path, two):
    """``--max-restarts 1``: one worker killed mid-epoch; torchrun stops the other and starts both
    again, they resume from the last in-epoch checkpoint, and the run ends as the uninterrupted one."""
    out = tmp_path / "run"
    proc = start(standalone(2, "train", *BASE, "--save-every-steps", "4", "--out", str(out), restarts=1))
    wait_for(proc, lambda: mid_epoch(out))
    workers = children(proc.pid)
    assert len(workers) == 2
    os.kill(workers[-1], signal.SIGKILL)
    text = finish(proc)
    assert "resuming" in text and "after epoch 1, batch" in text
    assert_same_run(two, out)
