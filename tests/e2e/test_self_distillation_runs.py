"""Self-distillation runs end to end: exact resume of multi-exit and two-view runs after Ctrl-C
and kill -9, torchrun with 2 gloo processes, ``ols eval --exits all``, and the set-up's refusals."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from test_engine import HANG_TIMEOUT, cli, load, metrics_without_time, run_to_end

from ols.cli import main
from ols.eval import classification_metrics

pytestmark = pytest.mark.slow
COMMON = ["--dataset", "digits", "--seed", "2", "--epochs", "2", "--batch-size", "32", "--no-progress"]
RUNS = {
    "multi-exit": ["--model", "resnet20", "--exits", "byot", "--loss", "ds+ols"],
    "two-view": ["--model", "cnn", "--loss", "ddgsd", "--augment", "crop,cutout", "--crop-padding", "1",
                 "--cutout-size", "3"],
}


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd")
    for name, args in RUNS.items():
        run_to_end("train", *COMMON, *args, "--out", str(root / name))
    return root


def assert_same_run(a, b):
    ca, cb = load(a), load(b)
    assert ca["epoch"] == cb["epoch"] == 2
    for part in ("model", "criterion"):
        assert ca[part].keys() == cb[part].keys()
        for key in ca[part]:
            assert torch.equal(ca[part][key], cb[part][key]), (part, key)
    assert metrics_without_time(a) == metrics_without_time(b)


# each kind once and each signal once (tests/e2e/test_engine.py resumes a plain run after both signals)
@pytest.mark.parametrize("kind,sig", [("multi-exit", signal.SIGKILL), ("two-view", signal.SIGINT)])
def test_an_interrupted_self_distillation_run_resumes_exactly(tmp_path, references, kind, sig):
    out = tmp_path / "run"
    proc = cli("train", *COMMON, *RUNS[kind], "--out", str(out))
    deadline = time.time() + HANG_TIMEOUT
    while not (out / "metrics.jsonl").exists() or not (out / "metrics.jsonl").read_text().strip():
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.02)
    time.sleep(0.2)  # land inside epoch 2
    proc.send_signal(sig)
    text, _ = proc.communicate(timeout=HANG_TIMEOUT)
    assert not (out / "summary.json").exists(), "the run finished before the signal; nothing was tested"
    assert proc.returncode == (130 if sig == signal.SIGINT else -signal.SIGKILL), text
    run_to_end("train", "--resume", str(out))
    assert_same_run(references / kind, out)


def test_eval_reports_every_exit_and_their_ensemble(references, capsys):
    run = references / "multi-exit"
    assert main(["eval", str(run), "--exits", "all", "--soft-labels", "--device", "cpu"]) == 0  # loss rebuilt
    printed = capsys.readouterr().out
    assert "exit 0 (deepest): top-1 error" in printed and "ensemble of the exits" in printed
    result = json.loads((run / "eval.json").read_text())
    assert set(result["exits"]) == {"0", "1", "2", "ensemble"}
    assert result["exits"]["0"]["top1_err"] == result["test_top1_err"]
    from ols.config import config_from_dict
    from ols.data import load_dataset
    from ols.models import Classifier, create_model

    cfg = config_from_dict(json.loads((run / "config.json").read_text()))
    data = load_dataset("digits")
    model = Classifier(create_model("resnet20", 10, exits="byot", in_channels=1), data.mean, data.std)
    model.load_state_dict(load(run)["model"])
    with torch.no_grad():
        zs = model.eval().forward_exits(data.test_x)  # digits are float32 in [0, 1]
    ens = classification_metrics(torch.stack(zs).mean(0), data.test_y)
    assert cfg.exits == "byot"
    assert abs(result["exits"]["ensemble"]["top1_err"] - ens["top1_err"]) < 1e-9
    shallow = classification_metrics(zs[2], data.test_y)
    assert abs(result["exits"]["2"]["top1_err"] - shallow["top1_err"]) < 1e-9


def test_torchrun_byot_ols_with_a_deepest_only_first_epoch_agrees_on_both_ranks(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ols",
           "train", "--dataset", "digits", "--model", "resnet20", "--exits", "byot", "--loss", "byot+ols",
           "--loss-arg", "first_period_deepest_only=true", "--epochs", "2", "--batch-size", "32",
           "--no-progress", "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=HANG_TIMEOUT)
    assert res.returncode == 0, res.stdout + res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["soft_labels_same_on_all_ranks"] is True
    soft = np.load(out / "soft_labels.npy")
    assert np.allclose(soft.sum(1), 1, atol=1e-5) and not np.allclose(soft, 0.1)
    assert int(load(out)["criterion"]["base.store.num_updates"]) == 2


def test_set_up_refusals_name_the_fix(tmp_path, capsys):
    def error(*args):
        assert main(["train", "--dataset", "digits", "--epochs", "1", "--no-progress", "--out",
                     str(tmp_path / "r"), *args]) == 2
        return capsys.readouterr().err.strip().splitlines()[-1]

    assert "add --exits byot" in error("--model", "resnet20", "--loss", "byot")
    assert "--exits byot: the model cnn has no stages" in error("--model", "cnn", "--exits", "byot", "--loss",
                                                                 "byot")
    assert "takes one output; use byot" in error("--model", "resnet20", "--exits", "byot", "--loss", "ce")
    assert "--augment auto (none for digits) makes them" in error("--model", "cnn", "--loss", "ddgsd")
    assert "T (the distillation temperature) must be > 0" in error("--model", "resnet20", "--exits", "byot",
                                                                    "--loss", "byot", "--loss-arg", "T=0")
    assert "shallow_hard must be a finite weight >= 0" in error("--model", "resnet20", "--exits", "byot",
                                                                "--loss", "ds+ols", "--loss-arg",
                                                                "shallow_hard=-1")
    assert "do not combine with the self-distillation" in error("--model", "resnet20", "--exits", "byot",
                                                                "--loss", "byot", "--mixup-alpha", "0.2")
    assert not (tmp_path / "r").exists()  # refused before anything was written: not even the folder
    image = pytest.importorskip("PIL.Image")
    for split in ("train", "val"):  # an image folder: augmentation off means two identical views
        for name in ("cat", "dog"):
            (tmp_path / "f" / split / name).mkdir(parents=True)
            image.new("RGB", (10, 10), (200, 10, 10)).save(tmp_path / "f" / split / name / "0.png")
    assert "and --augment none makes them identical; use e.g. --augment crop,flip" in error(
        "--dataset", "folder", "--data-dir", str(tmp_path / "f"), "--augment", "none", "--model", "cnn",
        "--loss", "ddgsd", "--data-arg", "image_size=8", "--data-arg", "resize=9")
