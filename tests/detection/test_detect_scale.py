"""``ols detect train`` past one process: each rank's share of a batch and its loss weight, a DDP step
on two gloo ranks against one process stepping on the same shares, in-epoch checkpoints after
kill -9 under torchrun (resumed on two ranks exactly, and on one), and the --amp options."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp

from ols.detection.config import DetectConfig
from ols.detection.run import (
    Parts,
    Precision,
    _step,
    class_loss_for,
    load_data,
    make_batch,
    mixed_precision,
    rank_share,
)
from ols.detection.yolo import YOLOv3MobileNetV2, assign, padded_truth, yolo_loss
from ols.distributed import DistContext
from procs import free_port, gloo_group, signal_all

HANG_TIMEOUT = 3600  # a guard against a hung process, not a speed check
TINY = ["--num-train", "32", "--num-test", "16", "--width", "0.25", "--batch-size", "16", "--no-progress",
        "--warmup-epochs", "1", "--epochs", "1", "--loss", "ols"]


def test_the_shares_split_every_batch_and_weigh_to_its_mean():
    for size, world in [(16, 2), (5, 2), (7, 3), (1, 2)]:
        batch = list(range(100, 100 + size))
        shares = [rank_share(batch, r, world) for r in range(world)]
        real = [s for s, w in shares if w > 0]
        assert sorted(i for s in real for i in s) == batch  # every image once
        assert sum(w for _, w in shares) == pytest.approx(world)  # DDP's mean over ranks: weight one
    cfg = DetectConfig(num_train=8, num_test=2, width=0.25)
    train, _, names, channels, _ = load_data(cfg)
    torch.manual_seed(0)
    model = YOLOv3MobileNetV2(len(names), channels, cfg.width).eval()  # batch norm by running statistics
    crit = class_loss_for(cfg, len(names)).eval()

    def loss(indices):
        images, targets = make_batch([train[i] for i in indices], 64)
        return yolo_loss(model(images), assign(targets, 64), padded_truth(targets), 64, crit)["loss"]

    batch = [0, 1, 2, 3, 4]
    whole = loss(batch)
    parts = [w * loss(s) for s, w in (rank_share(batch, r, 2) for r in range(2))]
    torch.testing.assert_close(sum(parts) / 2, whole)  # what DDP's average of the ranks' losses gives


def _parts(world, rank, ddp):
    cfg = DetectConfig(num_train=8, num_test=2, width=0.25)
    train, _, names, channels, _ = load_data(cfg)
    torch.manual_seed(0)
    model = YOLOv3MobileNetV2(len(names), channels, cfg.width)
    crit = class_loss_for(cfg, len(names))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    wrapped = torch.nn.parallel.DistributedDataParallel(model) if ddp else model
    return train, Parts(model, wrapped, crit, opt, Precision(None, None),
                        DistContext(rank, world, torch.device("cpu")))


BATCH = [0, 1, 2, 3, 4]


def _ddp_worker(rank, world, port, out):
    with gloo_group(rank, world, port):
        train, p = _ddp_parts(rank, world)
        for _ in range(2):
            share, weight = rank_share(BATCH, rank, world)
            _step(p, [train[i] for i in share], 64, None, weight)
        if rank == 0:
            torch.save(p.model.state_dict(), out)


def _ddp_parts(rank, world):
    return _parts(world, rank, ddp=True)


@pytest.mark.slow
def test_a_ddp_step_on_two_ranks_equals_one_process_stepping_on_the_same_shares(tmp_path):
    mp.spawn(_ddp_worker, args=(2, free_port(), str(tmp_path / "ddp.pt")), nprocs=2, join=True)
    ddp = torch.load(tmp_path / "ddp.pt")
    train, p = _parts(1, 0, ddp=False)  # one process: each share's weighted loss, gradients averaged
    for _ in range(2):
        p.optimizer.zero_grad(set_to_none=True)
        for r in range(2):
            share, weight = rank_share(BATCH, r, 2)
            images, targets = make_batch([train[i] for i in share], 64)
            out = yolo_loss(p.model(images), assign(targets, 64), padded_truth(targets), 64, p.crit)
            (out["loss"] * weight / 2).backward()
        p.optimizer.step()
    for name, value in p.model.named_parameters():  # batch norm's running statistics follow rank 0 alone
        torch.testing.assert_close(ddp[name], value.detach(), rtol=1e-5, atol=1e-6, msg=name)


def test_amp_options():
    assert mixed_precision("bf16", torch.device("cpu")).dtype is None  # ignored on the CPU
    with pytest.raises(ValueError, match="--amp must be off, bf16 or fp16"):
        DetectConfig(amp="fp8")
    if torch.cuda.is_available():
        half = mixed_precision("fp16", torch.device("cuda"))
        assert half.dtype is torch.float16 and half.scaler is not None


def _checkpoint(run):
    try:
        return torch.load(run / "checkpoint.pt", weights_only=False)
    except Exception:
        return None


def _mid_epoch(run):
    ckpt = _checkpoint(run)
    return ckpt is not None and ckpt["state"]["epoch"] == 0 and ckpt["state"]["batch"] > 0


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "ols"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(cmd):
    res = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=HANG_TIMEOUT)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout


@pytest.mark.slow
def test_torchrun_detection_killed_mid_epoch_resumes_on_two_ranks_exactly(tmp_path):
    straight = tmp_path / "straight"
    text = _run(TORCHRUN + ["detect", "train", *TINY, "--out", str(straight)])
    assert "2 ranks, each a share of every batch" in text
    assert json.loads((straight / "summary.json").read_text())["world_size"] == 2
    killed = tmp_path / "killed"
    proc = subprocess.Popen(TORCHRUN + ["detect", "train", *TINY, "--save-every-steps", "1", "--out",
                                        str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=ENV, start_new_session=True)
    deadline = time.time() + HANG_TIMEOUT
    while True:
        while not _mid_epoch(killed):
            assert proc.poll() is None and time.time() < deadline, "the run ended before it was killed"
            time.sleep(0.05)
        signal_all(proc.pid, signal.SIGSTOP)
        if _mid_epoch(killed):
            break
        signal_all(proc.pid, signal.SIGCONT)
    signal_all(proc.pid, signal.SIGKILL)
    proc.wait(timeout=HANG_TIMEOUT)
    ckpt = _checkpoint(killed)
    assert ckpt["world_size"] == 2 and ckpt["rank_local"]["world_size"] == 2 and ckpt["state"]["sums"]
    _run(TORCHRUN + ["detect", "train", "--resume", str(killed)])
    a, b = _checkpoint(straight), _checkpoint(killed)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert torch.equal(a["class_loss"]["store.soft_labels"], b["class_loss"]["store.soft_labels"])
    logs = [[{k: v for k, v in json.loads(x).items() if k != "seconds"}
             for x in (d / "metrics.jsonl").read_text().splitlines()] for d in (straight, killed)]
    assert logs[0] == logs[1]
