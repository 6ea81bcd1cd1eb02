"""Faults and mistakes end in one line, no broken run writes a result, and no finished work is lost."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings

import pytest
import torch

from ols.cli import main
from ols.rundir import read_jsonl

pytestmark = pytest.mark.slow
TINY = ["--dataset", "digits", "--epochs", "1", "--batch-size", "128", "--no-progress"]
HANG_TIMEOUT = 3600  # a guard against a hung process, not a speed check


def train(out, *extra, code=0):
    got = main(["train", *TINY, "--out", str(out), *extra])
    assert got == code
    return out


def error_of(capsys):
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err  # one line
    return err


def test_a_diverging_run_stops_names_the_epoch_and_writes_no_result(tmp_path, capsys):
    out = tmp_path / "run"
    train(out, "--lr", "1e9", code=2)
    err = error_of(capsys)
    assert "epoch 1: the training loss is nan" in err and "--lr 1e+09" in err and "nothing was saved" in err
    assert not (out / "summary.json").exists() and not (out / "checkpoint.pt").exists()
    assert not (out / "metrics.jsonl").exists() or not (out / "metrics.jsonl").read_text().strip()
    train(tmp_path / "ls", "--lr", "1e9", "--loss", "ls", "--loss-arg", "eps=0.2", code=2)
    assert "--lr 1e+09) or its options (--loss-arg eps=0.2)" in error_of(capsys)


def test_divergence_after_a_good_epoch_keeps_its_checkpoint(tmp_path, capsys, monkeypatch):
    import ols.trainer as trainer

    clean = train(tmp_path / "clean", "--epochs", "2")
    real = trainer.epoch_training_metrics
    calls = []

    def second_epoch_diverges(*args):
        metrics = real(*args)
        calls.append(1)
        return {**metrics, "train_loss": float("inf")} if len(calls) == 2 else metrics

    monkeypatch.setattr(trainer, "epoch_training_metrics", second_epoch_diverges)
    out = tmp_path / "run"
    train(out, "--epochs", "2", code=2)
    assert "epoch 2: the training loss is inf" in error_of(capsys)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert [m["epoch"] for m in read_jsonl(out / "metrics.jsonl")] == [1]
    monkeypatch.setattr(trainer, "epoch_training_metrics", real)
    assert main(["train", "--resume", str(out)]) == 0  # the kept epoch resumes to the clean result
    for key in ("test_top1_err", "train_loss", "test_nll"):
        assert json.loads((out / "summary.json").read_text())[key] == \
            json.loads((clean / "summary.json").read_text())[key]


def test_eval_refuses_non_finite_weights(tmp_path, capsys):
    out = train(tmp_path / "run")
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    name = next(k for k, v in ckpt["model"].items() if v.is_floating_point() and v.numel() > 1)
    ckpt["model"][name].view(-1)[0] = float("nan")
    torch.save(ckpt, out / "checkpoint.pt")
    assert main(["eval", str(out), "--device", "cpu"]) == 2
    err = error_of(capsys)
    assert "non-finite model weights" in err and name in err and not (out / "eval.json").exists()


def test_a_run_directory_in_use_is_refused_and_a_stale_lock_taken_over(tmp_path, capsys):
    import socket

    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text(f"{socket.gethostname()} {os.getpid()}\n")  # this test process: alive
    train(out, code=2)
    assert "is in use by another run (process" in error_of(capsys)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / ".lock").write_text(f"{socket.gethostname()} {dead.pid}\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a notice, not a Python warning with its source line
        train(out)
    notice = [line for line in capsys.readouterr().err.splitlines() if "stale lock" in line]
    assert notice == [f"ols: {out / '.lock'}: took over a stale lock (a lock of process {dead.pid}, which no "
                      "longer runs)"], notice
    assert not (out / ".lock").exists()


def test_overwrite_checks_first_then_removes_everything_of_the_old_run(tmp_path, capsys):
    out = train(tmp_path / "run", "--epochs", "2", "--save-every", "1")
    assert main(["eval", str(out), "--device", "cpu"]) == 0
    (out / ".checkpoint.pt.dead.tmp").write_bytes(b"half")
    before = (out / "checkpoint.pt").read_bytes()
    train(out, "--overwrite", "--model", "nosuchnet", code=2)  # a bad new config: the old run is untouched
    assert "unknown model 'nosuchnet'" in error_of(capsys)
    assert (out / "checkpoint.pt").read_bytes() == before and (out / "eval.json").exists()
    train(out, "--overwrite", "--save-every", "1")
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == ["epoch_0001.pt"]
    assert not (out / "eval.json").exists() and not list(out.glob(".*.tmp"))


def test_resume_checks_the_checkpoint_belongs_and_repairs_what_it_can(tmp_path, capsys):
    out = train(tmp_path / "run")
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "loss": "ce", "seed": 5}))
    assert main(["train", "--resume", str(out), "--epochs", "2"]) == 2
    err = error_of(capsys)
    assert "does not belong to this run" in err
    assert "loss: 'ols' in the checkpoint, 'ce' in config.json" in err
    (out / "config.json").write_text("{ torn")
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "train_lo')  # a crash in the middle of a line
    (out / ".checkpoint.pt.x1.tmp").write_bytes(b"orphan")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["train", "--resume", str(out), "--epochs", "2"]) == 0
    said = " ".join(str(w.message) for w in caught)
    assert "rebuilt it from checkpoint.pt" in said and "line 2 is cut short" in said
    assert [m["epoch"] for m in read_jsonl(out / "metrics.jsonl")] == [1, 2]
    assert json.loads((out / "config.json").read_text())["loss"] == "ols"
    assert not list(out.glob(".*.tmp"))


def test_a_checkpoint_of_another_model_gives_one_line(tmp_path, capsys):
    out = train(tmp_path / "run")
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    ckpt["model"] = {k: v for k, v in list(ckpt["model"].items())[:-1]}  # a missing tensor
    torch.save(ckpt, out / "checkpoint.pt")
    assert main(["train", "--resume", str(out), "--epochs", "2"]) == 2
    err = error_of(capsys)
    assert "its model (cnn) does not fit this run's" in err and "Missing key" in err


def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        out = train(tmp_path / "run")
    finally:
        os.umask(old)
    for name in ("checkpoint.pt", "config.json", "summary.json"):
        assert (out / name).stat().st_mode & 0o777 == 0o640, name


def test_a_file_as_out_and_an_unreadable_pretrained_file(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    train(tmp_path / "f", code=2)
    assert "--out" in error_of(capsys)
    (tmp_path / "w.pt").write_text("not torch")
    train(tmp_path / "run", "--pretrained", str(tmp_path / "w.pt"), code=2)
    assert f"--pretrained: {tmp_path / 'w.pt'} is not a loadable weights file" in error_of(capsys)


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_ends_in_one_line_and_the_last_checkpoint_resumes(tmp_path, small_disk, capsys):
    clean = train(tmp_path / "clean")  # the same run on a disk with room: one epoch, then extended to two
    assert main(["train", "--resume", str(clean), "--epochs", "2"]) == 0
    out = train(small_disk / "run")
    free = shutil.disk_usage(small_disk).free
    with open(small_disk / "filler", "wb") as f:
        f.write(b"\0" * (free - 200_000))  # less room than one checkpoint
    assert main(["train", "--resume", str(out), "--epochs", "2"]) == 1
    err = error_of(capsys)
    assert "No space left on device" in err and str(small_disk) in err
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1
    (small_disk / "filler").unlink()
    assert main(["train", "--resume", str(out), "--epochs", "2"]) == 0
    got = json.loads((out / "summary.json").read_text())
    want = json.loads((clean / "summary.json").read_text())
    assert got["test_top1_err"] == want["test_top1_err"] and got["train_loss"] == want["train_loss"]


def test_settings_that_do_nothing_or_are_out_of_range_are_errors(tmp_path, capsys):
    cases = [
        (["train", *TINY, "--milestones", "5"], "--milestones has no effect with --schedule cosine"),
        (["train", *TINY, "--gamma", "0"], "gamma must be positive"),
        (["train", *TINY, "--momentum", "0", "--nesterov"], "nesterov needs a momentum above 0"),
        (["train", *TINY, "--loss-arg", "update_every=often"], "--loss-arg update_every='often'"),
        (["train", *TINY, "--data-arg", "test_fraction=1.5"], "test_fraction must be in (0, 1)"),
        (["train", *TINY, "--augment", "cutout", "--cutout-size", "12"], "--cutout-size 12 is larger"),
    ]
    for argv, msg in cases:
        assert main(argv + ["--out", str(tmp_path / "r")]) == 2, argv
        assert msg in error_of(capsys), argv
    out = train(tmp_path / "ok")
    for argv, msg in [(["--classes", "1"], "--classes picks the bar plots of --soft-labels"),
                      (["--attack", "fgsm", "--eps", "-1"], "--eps must be a finite radius"),
                      (["--attack", "pgd", "--steps", "0"], "--steps must be at least 1"),
                      (["--steps", "5"], "--steps and --step-size set PGD")]:
        assert main(["eval", str(out), "--device", "cpu", *argv]) == 2, argv
        assert msg in error_of(capsys), argv
    (tmp_path / "nan.yaml").write_text("lr: .nan\n")
    assert main(["train", "-c", str(tmp_path / "nan.yaml"), *TINY, "--out", str(tmp_path / "y")]) == 2
    assert "lr must be a finite number, got nan" in error_of(capsys)


def _spec(tmp_path, methods, epochs=1):
    import yaml

    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "out": str(tmp_path / "sweep"),
                                    "base": {"dataset": "digits", "epochs": epochs, "batch_size": 128},
                                    "methods": methods, "grid": {"seed": [0]}}))
    return str(path)


def test_sweep_refuses_shared_folders_and_changed_settings(tmp_path, capsys):
    assert main(["sweep", _spec(tmp_path, {"A B": {"loss": "ce"}, "A_B": {"loss": "ls"}})]) == 2
    assert "would share the run folder 'A_B'" in error_of(capsys)
    assert main(["sweep", _spec(tmp_path, {"CE": {"loss": "ce"}})]) == 0
    capsys.readouterr()
    assert main(["sweep", _spec(tmp_path, {"CE": {"loss": "ce", "lr": 0.02}})]) == 2
    err = capsys.readouterr().err
    assert "were made with other settings" in err and "lr 0.01 -> 0.02" in err
    assert "--overwrite-changed" in err
    assert main(["sweep", _spec(tmp_path, {"CE": {"loss": "ce", "lr": 0.02}}), "--overwrite-changed"]) == 0
    run = tmp_path / "sweep" / "CE" / "seed=0"
    assert json.loads((run / "config.json").read_text())["lr"] == 0.02


def test_ctrl_c_stops_the_whole_sweep(tmp_path):
    spec = _spec(tmp_path, {"A": {"loss": "ce"}, "B": {"loss": "ls"}}, epochs=30)
    proc = subprocess.Popen([sys.executable, "-m", "ols", "sweep", spec], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    first = tmp_path / "sweep" / "A" / "seed=0" / "metrics.jsonl"
    deadline = time.time() + HANG_TIMEOUT
    while not (first.exists() and first.read_text().strip()):
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground group
    text, _ = proc.communicate(timeout=HANG_TIMEOUT)
    assert proc.returncode == 130, text
    assert "resumes where it stopped" in text
    assert not (tmp_path / "sweep" / "B" / "seed=0" / "sweep.log").exists()  # B never started
    assert (first.parent / "checkpoint.pt").exists()  # A stopped cleanly, resumable


def test_companion_settings_without_their_flag_are_errors(tmp_path, capsys):
    for argv, msg in [(["--cutout-size", "4"], "--cutout-size 4 has no effect without cutout in --augment"),
                      (["--crop-padding", "2", "--augment", "flip"], "--crop-padding 2 has no effect"),
                      (["--noise-type", "asymmetric"], "--noise-type asymmetric has no effect without")]:
        assert main(["train", *TINY, "--out", str(tmp_path / "r"), *argv]) == 2, argv
        assert msg in error_of(capsys), argv


def test_a_read_only_destination_ends_in_one_line(tmp_path, capsys):
    mount = tmp_path / "ro"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {done.stderr.decode().strip()}")
    try:
        assert main(["train", *TINY, "--out", str(mount / "run")]) == 1
        err = error_of(capsys)
        assert "Read-only file system" in err and str(mount / "run") in err
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_eval_of_a_checkpoint_from_another_model_gives_one_line(tmp_path, capsys):
    out = train(tmp_path / "run")
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "model": "resnet20"}))
    assert main(["eval", str(out), "--device", "cpu"]) == 2
    err = error_of(capsys)
    assert "checkpoint.pt: its model (resnet20) does not fit this run's" in err


@pytest.mark.parametrize("mixing", [["--mixup-alpha", "0.4"],
                                    ["--cutmix-alpha", "1.0", "--mix-mode", "elem"]])
def test_a_mixed_run_stopped_mid_epoch_resumes_exactly(tmp_path, monkeypatch, mixing, stop_after):
    import ols.trainer as trainer

    args = ["--dataset", "synthetic", "--data-arg", "train_per_class=8", "--epochs", "2",
            "--batch-size", "64", *mixing]
    clean = train(tmp_path / "clean", *args)

    monkeypatch.setattr(trainer, "StopRequest", stop_after(3))  # a Ctrl-C after the 3rd batch
    out = train(tmp_path / "run", *args, code=130)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch_state"]["batches"] == 3
    monkeypatch.undo()
    assert main(["train", "--resume", str(out)]) == 0
    a, b = (torch.load(r / "checkpoint.pt", weights_only=True) for r in (clean, out))
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert torch.equal(a["criterion"]["store.soft_labels"], b["criterion"]["store.soft_labels"])


def test_resuming_a_finished_run_without_its_metrics_says_what_to_do(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--model", "cnn", "--epochs", "1", "--no-progress",
                 "--out", str(out)]) == 0
    (out / "metrics.jsonl").unlink()
    (out / "summary.json").unlink()
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "metrics.jsonl holds none of them" in err[0] and f"ols eval {out}" in err[0]
    assert (out / "checkpoint.pt").is_file()  # the run's work is kept


def test_resuming_from_a_snapshot_copied_over_the_checkpoint_is_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--model", "cnn", "--epochs", "1", "--save-every", "1",
                 "--no-progress", "--out", str(out)]) == 0
    shutil.copy(out / "snapshots" / "epoch_0001.pt", out / "checkpoint.pt")
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--epochs", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lacks optimizer, scheduler, criterion" in err[0]
    assert "snapshot copied over" in err[0]


def test_constant_images_are_named_as_the_cause_of_a_nan_loss(tmp_path, capsys):
    import struct

    import numpy as np

    from ols.data.idx import FILES

    def write_idx(path, array):  # magic (0, 0, uint8, ndim), big-endian dims, the bytes
        path.write_bytes(bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
                         + array.tobytes())

    root = tmp_path / "data"
    root.mkdir()
    labels = np.arange(40, dtype=np.uint8) % 4
    for stem, array in zip(FILES, (np.zeros((40, 8, 8), np.uint8), labels, np.zeros((8, 8, 8), np.uint8),
                                   labels[:8])):
        write_idx(root / stem, array)
    code = main(["train", "--dataset", "mnist", "--data-dir", str(root), "--model", "cnn", "--epochs", "1",
                 "--no-progress", "--out", str(tmp_path / "run")])
    assert code == 2
    err = error_of(capsys)
    assert "training loss is nan" in err and "zero variance in channel(s) 0" in err and "--lr" not in err


def test_the_summary_line_mentions_noise_only_when_asked_for(tmp_path, capsys):
    train(tmp_path / "clean")
    assert "realised noise" not in capsys.readouterr().out
    train(tmp_path / "noisy", "--noise-rate", "0.2")
    assert "realised noise 2" in capsys.readouterr().out  # about 20%, as drawn


def test_an_empty_lock_or_one_whose_pid_was_reused_is_stale(tmp_path, capsys):
    import socket

    from ols.rundir import _started

    out = tmp_path / "run"
    out.mkdir()
    lock = out / ".lock"
    lock.write_text("")  # a crash between creating the lock and writing it; ols publishes a lock whole,
    train(out)  # so an empty one, however fresh, is never one being written
    assert "stale lock (an empty lock left by a crash)" in error_of(capsys)
    assert _started(os.getpid()), "this test needs /proc"
    # this test process is alive, but not the one that wrote the lock: it started at another time
    lock.write_text(f"{socket.gethostname()} {os.getpid()} 1\n")
    train(out, "--overwrite")
    assert "a number now taken by another process" in error_of(capsys)
    lock.write_text(f"{socket.gethostname()} {os.getpid()} {_started(os.getpid())}\n")  # truly live
    train(out, "--overwrite", code=2)
    assert "is in use by another run (process" in error_of(capsys)
