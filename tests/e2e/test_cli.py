"""`ols train` and `ols demo` end to end on the real digits."""

import json

import numpy as np
import pytest

from ols.cli import main
from ols.rundir import read_jsonl


def train(tmp_path, name, *extra):
    out = tmp_path / name
    argv = ["train", "--dataset", "digits", "--model", "cnn", "--loss", "ols", "--noise-rate",
            "0.4", "--seed", "0", "--epochs", "3", "--out", str(out), "--no-progress", *extra]
    assert main(argv) == 0
    return out


@pytest.mark.slow
def test_train_writes_run_directory_and_is_deterministic(tmp_path):
    a = train(tmp_path, "a")
    cfg = json.loads((a / "config.json").read_text())
    assert cfg["loss"] == "ols" and cfg["epochs"] == 3 and cfg["lr"] == 0.01
    metrics = read_jsonl(a / "metrics.jsonl")
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    summary = json.loads((a / "summary.json").read_text())
    for key in ("test_top1_err", "test_ece", "train_loss", "epochs", "seconds"):
        assert key in summary
    assert summary["realised_noise_rate"] == pytest.approx(0.4, abs=1e-3)
    assert 0 <= summary["test_top1_err"] <= 100
    soft = np.load(a / "soft_labels.npy")
    assert soft.shape == (10, 10) and np.allclose(soft.sum(1), 1, atol=1e-5)
    flipped = np.load(a / "train_flipped.npy")
    assert flipped.mean() == pytest.approx(0.4, abs=1e-3)

    b = train(tmp_path, "b")
    sb = json.loads((b / "summary.json").read_text())
    for key in ("test_top1_err", "test_ece", "train_loss", "test_nll"):
        assert summary[key] == sb[key]
    np.testing.assert_array_equal(soft, np.load(b / "soft_labels.npy"))


def _plain_losses():
    """Every registry loss that trains on a plain model and one view (the self-distillation losses over
    exits and two views, and the noisy-label methods, have end-to-end tests of their own)."""
    from ols.losses import LOSSES

    own = {"byot", "byot+ols", "deep_supervision", "ds+ols", "ddgsd", "l2rw", "mwnet", "bmm", "pencil",
           "self_learning"}
    return sorted(set(LOSSES) - own)


@pytest.mark.slow
@pytest.mark.parametrize("loss", _plain_losses())
def test_every_registered_loss_trains(tmp_path, loss):
    out = tmp_path / loss
    assert main(["train", "--loss", loss, "--epochs", "1", "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / "summary.json").read_text())["epochs"] == 1


def test_bad_input_exits_with_message(tmp_path, capsys):
    assert main(["train", "--loss", "focall", "--out", str(tmp_path / "x")]) == 2
    assert "unknown loss 'focall'" in capsys.readouterr().err
    assert main(["train", "--loss", "ce", "--alpha", "0.3", "--out", str(tmp_path / "y")]) == 2
    assert "has no alpha parameter" in capsys.readouterr().err
    assert main(["train", "--noise-rate", "2", "--out", str(tmp_path / "z")]) == 2
    assert "noise_rate must be in [0, 1]" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_small(tmp_path, capsys):
    # the digits keep it short; the Fashion-MNIST subset runs in tests/test_packaging.py
    assert main(["demo", "--out", str(tmp_path), "--seeds", "0", "1", "--epochs", "1",
                 "--dataset", "digits"]) == 0
    out = capsys.readouterr().out
    assert "| OLS (alpha=0.5) |" in out and "figure:" in out
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    assert (tmp_path / "results.md").exists()


@pytest.mark.slow  # a subprocess, or every shipped spec parsed: several seconds
def test_python_dash_m_entry_point():
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "ols", "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.startswith("ols ")


@pytest.mark.slow
@pytest.mark.parametrize("period,updates", [(23, 3), (46, 1)])
def test_update_every_is_the_only_stepping(tmp_path, period, updates):
    # digits at batch 64: 23 iterations an epoch. With update_every the loss steps itself and the
    # run loop adds no epoch-end step: 3 epochs are 3 periods of 23, or one period of 46 and a
    # period left open (an epoch-end step would close an empty period and warn).
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an empty period's warning fails the test
        out = train(tmp_path, f"p{period}", "--loss-arg", f"update_every={period}")
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)["criterion"]
    assert int(ckpt["num_iterations"]) == 69
    assert int(ckpt["store.num_updates"]) == updates
    soft = np.load(out / "soft_labels.npy")
    # learned, never reset to 1/K: each class's own entry is its soft label's largest
    assert (soft.argmax(1) == np.arange(10)).all() and soft.diagonal().min() > 0.1


@pytest.mark.slow
def test_the_engine_feeds_maxsup_the_runs_progress_and_resumes_it(tmp_path, monkeypatch):
    from ols.losses.maxsup import MaxSup

    seen = []
    monkeypatch.setattr(MaxSup, "set_progress", lambda self, f: seen.append(f))
    args = ["train", "--dataset", "digits", "--loss", "maxsup", "--epochs", "2", "--no-progress",
            "--out", str(tmp_path / "run")]
    assert main(args) == 0 and seen == [0.0, 0.5]
    assert main(["train", "--resume", str(tmp_path / "run"), "--epochs", "4"]) == 0
    assert seen == [0.0, 0.5, 0.5, 0.75]  # the extended run: epoch / its new length
