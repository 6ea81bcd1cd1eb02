"""Runs that survive: exact resume after Ctrl-C and kill -9, snapshots, run-directory safety,
other datasets and models end to end, and torchrun with 2 gloo processes."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from ols.cli import main
from ols.rundir import read_jsonl

pytestmark = pytest.mark.slow
#: a guard against a hung process, not a speed check: a busy machine may take many times longer
HANG_TIMEOUT = 3600
BASE = ["--dataset", "digits", "--model", "cnn", "--loss", "ols", "--noise-rate", "0.3", "--seed", "1",
        "--epochs", "3", "--batch-size", "32", "--no-progress"]


def cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "ols", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def run_to_end(*args):
    proc = cli(*args)
    out, _ = proc.communicate(timeout=HANG_TIMEOUT)
    assert proc.returncode == 0, out
    return out


def load(run):
    return torch.load(run / "checkpoint.pt", weights_only=True)


def metrics_without_time(run):
    return [{k: v for k, v in m.items() if k != "seconds"} for m in read_jsonl(run / "metrics.jsonl")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    run_to_end("train", *BASE, "--out", str(out))
    return out


def assert_same_run(a, b):
    ca, cb = load(a), load(b)
    assert ca["epoch"] == cb["epoch"] == 3 and ca["epoch_state"] is None
    for key in ca["model"]:
        assert torch.equal(ca["model"][key], cb["model"][key]), key
    assert torch.equal(ca["criterion"]["store.soft_labels"], cb["criterion"]["store.soft_labels"])
    assert metrics_without_time(a) == metrics_without_time(b)
    sa, sb = (json.loads((r / "summary.json").read_text()) for r in (a, b))
    assert sa["test_top1_err"] == sb["test_top1_err"] and sa["train_loss"] == sb["train_loss"]


# Ctrl-C inside an epoch, resumed exactly: tests/e2e/test_hardening.py (mixed runs) and
# tests/e2e/test_self_distillation_runs.py (a real SIGINT)


def test_in_epoch_checkpoint_after_kill_resumes_exactly_and_on_two_ranks(tmp_path, reference):
    """``--save-every-steps``: kill -9 inside an epoch loses at most those steps, and the run resumed
    there ends bit-identical to one never stopped (nor saved mid-epoch); two ranks resume it too."""
    from procs import kill_mid_epoch, run, standalone, start

    out = tmp_path / "run"
    proc = start([sys.executable, "-m", "ols", "train", *BASE, "--save-every-steps", "5", "--out", str(out)],
                 env=dict(os.environ))  # as many threads as the reference had
    ckpt = kill_mid_epoch(proc, out)
    assert ckpt["epoch_state"]["batches"] % 5 == 0 and ckpt["world_size"] == 1
    assert not list(out.glob(".checkpoint.pt.*"))  # the write is atomic: no temporary file left
    grown = tmp_path / "grown"
    shutil.copytree(out, grown)
    text = run_to_end("train", "--resume", str(out))
    assert f"batch {ckpt['epoch_state']['batches']}" in text
    assert_same_run(reference, out)
    # 1 -> 2: the same checkpoint resumed by two ranks; the epoch's rest is dealt out to them
    text = run(standalone(2, "train", "--resume", str(grown)))
    assert "resuming on 2 rank(s) a run checkpointed on 1" in text
    summary = json.loads((grown / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["soft_labels_same_on_all_ranks"] is True
    assert [m["epoch"] for m in read_jsonl(grown / "metrics.jsonl")] == [1, 2, 3]


def test_resume_extends_snapshots_and_guards(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--dataset", "digits", "--epochs", "2", "--save-every", "1", "--no-progress",
            "--out", str(out)]
    assert main(args) == 0
    assert main(args) == 2 and "already holds a run" in capsys.readouterr().err
    assert main(["train", "--resume", str(out), "--lr", "0.5"]) == 2
    assert "--lr cannot change on --resume" in capsys.readouterr().err
    assert main(["train", "--resume", str(out), "--epochs", "3"]) == 0
    assert [m["epoch"] for m in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3]
    assert json.loads((out / "summary.json").read_text())["epochs"] == 3
    snaps = sorted(p.name for p in (out / "snapshots").iterdir())
    assert snaps == ["epoch_0001.pt", "epoch_0002.pt", "epoch_0003.pt"]
    last = torch.load(out / "snapshots" / "epoch_0003.pt", weights_only=True)
    assert all(torch.equal(v, load(out)["model"][k]) for k, v in last["model"].items())
    assert main(args + ["--overwrite"]) == 0
    assert len(read_jsonl(out / "metrics.jsonl")) == 2
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_noise_tracking_columns_are_consistent(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *BASE, "--epochs", "2", "--out", str(out)]) == 0
    rate = float(np.load(out / "train_flipped.npy").mean())
    for m in read_jsonl(out / "metrics.jsonl"):
        for key in ("train_loss", "train_err", "test_top1_err", "test_top5_err", "test_nll", "test_ece", "lr",
                    "seconds", "train_err_noisy_vs_noisy", "train_err_noisy_vs_true", "train_err_clean"):
            assert key in m
        # the training error against the noisy labels splits into the flipped and the clean part
        mixed = rate * m["train_err_noisy_vs_noisy"] + (1 - rate) * m["train_err_clean"]
        assert m["train_err"] == pytest.approx(mixed, abs=1e-6)


def test_yaml_config_and_tensorboard(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"dataset: synthetic\ndata_args:\n  groups: 3\n  classes_per_group: 2\n"
                   f"  train_per_class: 8\n  test_per_class: 4\nmodel: resnet20\nloss: ols\nepochs: 1\n"
                   f"batch_size: 16\nschedule: multistep\nmilestones: [1]\nwarmup_epochs: 0.5\n"
                   f"augment: crop,flip,cutout\nout: {tmp_path / 'run'}\n")
    assert main(["train", "-c", str(cfg), "--no-progress", "--tensorboard"]) == 0
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model"] == "resnet20" and saved["milestones"] == [1] and saved["warmup_epochs"] == 0.5
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    cfg.write_text("epoch: 3\n")
    assert main(["train", "-c", str(cfg)]) == 2
    assert "unknown key 'epoch' (did you mean 'epochs'?)" in capsys.readouterr().err


def test_cifar_and_image_folder_train_end_to_end(tmp_path):
    import pickle

    PIL = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (8, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 10, 8)]}
        with open(root / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    assert main(["train", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--model", "resnet20",
                 "--epochs", "1", "--batch-size", "16", "--noise-rate", "0.2", "--noise-type", "asymmetric",
                 "--no-progress", "--out", str(tmp_path / "c10")]) == 0

    for split in ("train", "val"):
        for k, colour in enumerate([(200, 30, 30), (30, 30, 200), (30, 200, 30)]):
            for i in range(3):
                path = tmp_path / "folder" / split / f"class{k}" / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                PIL.new("RGB", (20 + i, 18), colour).save(path)
    assert main(["train", "--dataset", "folder", "--data-dir", str(tmp_path / "folder"), "--model", "cnn",
                 "--data-arg", "image_size=16", "--data-arg", "resize=18", "--num-workers", "2",
                 "--epochs", "2", "--batch-size", "4", "--no-progress", "--out", str(tmp_path / "f")]) == 0
    assert len(read_jsonl(tmp_path / "f" / "metrics.jsonl")) == 2


# two ranks that sync, log once and resume: tests/e2e/test_scale_out.py


@pytest.mark.parametrize("loss", ["cskd"])
def test_torchrun_two_processes_with_pairs_and_per_sample_state(tmp_path, loss):
    """CS-KD draws each rank's partners from its own shard; PS-KD keeps each rank's shard of its
    per-sample store, gathered into one layout for the checkpoint: both train on 2 gloo ranks, and
    PS-KD's run resumes in one process. (A sharded per-sample store gathered through the CLI and resumed
    by one process is also ELR's and PENCIL's in test_noisy_label_runs.py's two-rank run, so PS-KD's case
    is not run here: pass ``pskd`` to run it.)"""
    out = tmp_path / loss
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "ols", "train"]
    args = ["--dataset", "digits", "--model", "cnn", "--loss", loss, "--epochs", "2", "--batch-size", "64",
            "--no-progress", "--out", str(out)]
    res = subprocess.run(base + args, capture_output=True, text=True, env=env, timeout=HANG_TIMEOUT)
    assert res.returncode == 0, res.stdout + res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and 0 <= summary["test_top1_err"] < 75  # chance: 90 %; 2 short epochs
    # a 2-rank run resumed on two ranks: tests/e2e/test_scale_out.py
    if loss == "pskd":  # both ranks' shards in the checkpoint: every sample's row
        state = torch.load(out / "checkpoint.pt", weights_only=False)["criterion"]
        store = next(v for k, v in state.items() if v.dim() == 2 and v.shape[0] == 1438)
        assert (store.sum(1) > 0.99).float().mean() > 0.99  # each row a softmax from the last epoch
        res = subprocess.run([sys.executable, "-m", "ols", "train", "--resume", str(out), "--epochs", "3"],
                             capture_output=True, text=True, env=env, timeout=HANG_TIMEOUT)
        assert res.returncode == 0, res.stdout + res.stderr  # one process resumes the 2-rank layout
        assert [m["epoch"] for m in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3]
