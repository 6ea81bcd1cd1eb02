"""The fourth round of hardening, end to end: ``ols eval`` says what it evaluated (and that a run is
still training), finds moved data and missing snapshots, skips what a run lacks; ``ols train`` and
``ols sweep`` refuse what cannot be meant (a seed out of range, a loss option the engine sets, a YAML
key given twice, a seed listed twice) before writing anything; runs print their set-up time and an
estimate of the time left; ``list-presets`` never cuts a sentence."""

import json
import os
import shutil
import socket
import struct

import numpy as np
import pytest

from ols.cli import main
from ols.rundir import _started

pytestmark = pytest.mark.slow


def one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


@pytest.fixture
def run_copy(trained_run, tmp_path):
    """A copy of the session's finished OLS run (4 epochs, a snapshot each, 10 % held out)."""
    return shutil.copytree(trained_run, tmp_path / "run")


def test_eval_names_the_epoch_and_a_run_still_training(run_copy, capsys):
    assert main(["eval", str(run_copy), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "evaluating checkpoint.pt: epoch 4 of 4\n" in out
    assert "evaluated" in out and "checkpoint.pt, epoch 4 of 4" in out  # the table's first row
    assert json.loads((run_copy / "eval.json").read_text())["still_training"] is False
    me = f"{socket.gethostname()} {os.getpid()} {_started(os.getpid())}"
    (run_copy / ".lock").write_text(me + "\n")  # as if a training process held it
    assert main(["eval", str(run_copy), "--device", "cpu", "--checkpoint",
                 str(run_copy / "snapshots" / "epoch_0002.pt")]) == 0
    out = capsys.readouterr().out
    assert (f"evaluating epoch_0002.pt: epoch 2 of 4; {run_copy} is still training (process {os.getpid()} "
            in out) and "so this is its last saved epoch, not its result" in out
    assert json.loads((run_copy / "eval.json").read_text())["still_training"] is True
    assert (run_copy / ".lock").exists()  # ols eval never takes or removes a training run's lock


def test_eval_lists_snapshots_for_a_missing_checkpoint_and_names_a_newer_config(run_copy, capsys):
    missing = run_copy / "snapshots" / "epoch_0009.pt"
    assert main(["eval", str(run_copy), "--checkpoint", str(missing)]) == 2
    err = one_line_error(capsys)
    assert f"--checkpoint {missing}: no such file; {run_copy / 'snapshots'} holds epoch_0001.pt, " in err
    assert "this version" not in err
    config = json.loads((run_copy / "config.json").read_text())
    (run_copy / "config.json").write_text(json.dumps({**config, "future_key": 1}))
    assert main(["eval", str(run_copy)]) == 2
    err = one_line_error(capsys)
    assert f"{run_copy / 'config.json'}: unknown key 'future_key'" in err and "newer version of ols" in err


def test_eval_skips_soft_labels_a_snapshot_lacks_and_draws_the_curves(run_copy, capsys):
    pytest.importorskip("matplotlib")
    snapshot = run_copy / "snapshots" / "epoch_0003.pt"
    assert main(["eval", str(run_copy), "--checkpoint", str(snapshot), "--soft-labels",
                 "--device", "cpu"]) == 0
    printed = capsys.readouterr()
    assert "--soft-labels: skipped, epoch_0003.pt is a snapshot, which holds the model only" in printed.err
    result = json.loads((run_copy / "eval.json").read_text())
    assert result["soft_labels_note"].startswith("skipped") and result["test_top1_err"] >= 0
    assert (run_copy / "curves.png").stat().st_size > 5_000


def write_idx(path, array, code=0x08):
    path.write_bytes(bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
                     + array.tobytes())


def test_eval_reads_moved_data_from_data_dir(tmp_path, capsys):
    g = np.random.default_rng(0)
    data = tmp_path / "mnist"
    data.mkdir()
    for stem, n in (("train", 40), ("t10k", 20)):
        write_idx(data / f"{stem}-images-idx3-ubyte", g.integers(0, 256, (n, 8, 8), dtype=np.uint8))
        write_idx(data / f"{stem}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8))
    run = tmp_path / "run"
    assert main(["train", "--dataset", "mnist", "--data-dir", str(data), "--model", "cnn16", "--epochs", "1",
                 "--no-progress", "--out", str(run)]) == 0
    data.rename(tmp_path / "moved")
    assert main(["eval", str(run)]) == 2
    assert "--data-dir" in capsys.readouterr().err
    assert main(["eval", str(run), "--data-dir", str(tmp_path / "moved"), "--no-curves"]) == 0
    assert json.loads((run / "eval.json").read_text())["test_top1_err"] == pytest.approx(
        json.loads((run / "summary.json").read_text())["test_top1_err"])


@pytest.mark.parametrize("flags, message", [
    (["--seed", "-1"], "--seed must be in [0, 2**32), got -1"),
    (["--seed", str(2**32)], "--seed must be in [0, 2**32)"),
    (["--loss", "pskd", "--loss-arg", "num_samples=5"], "--loss-arg num_samples: ols train sets it"),
    (["--loss", "pskd", "--loss-arg", "epochs=3"], "--loss-arg epochs: ols train sets it"),
])
def test_train_refuses_what_it_would_not_do_before_writing(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--epochs", "1", *flags, "--out", str(out)]) == 2
    assert message in one_line_error(capsys) and not out.exists()


def test_a_yaml_key_given_twice_is_refused_with_its_lines(tmp_path, capsys):
    pytest.importorskip("yaml")
    config = tmp_path / "c.yaml"
    config.write_text("dataset: digits\nlr: 0.5\nepochs: 1\nlr: 0.001\n")
    assert main(["train", "-c", str(config), "--out", str(tmp_path / "run")]) == 2
    err = one_line_error(capsys)
    assert f"{config}: line 4: key 'lr' is given twice (also on line 2)" in err
    spec = tmp_path / "s.yaml"
    spec.write_text("base: {dataset: digits, epochs: 1}\nmethods:\n  CE: {loss: ce}\n  CE: {loss: ls}\n")
    assert main(["sweep", str(spec), "--dry-run"]) == 2
    assert f"{spec}: line 4: key 'CE' is given twice (also on line 3)" in one_line_error(capsys)


def test_a_sweep_refuses_a_seed_or_grid_value_listed_twice(tmp_path, capsys):
    pytest.importorskip("yaml")
    spec = tmp_path / "s.yaml"
    spec.write_text("base: {dataset: digits, epochs: 1}\nmethods:\n  CE: {loss: ce}\n")
    assert main(["sweep", str(spec), "--seeds", "0", "0", "--dry-run"]) == 2
    assert "--seeds lists 0 more than once" in one_line_error(capsys)
    spec.write_text("base: {dataset: digits, epochs: 1}\nmethods:\n  CE: {loss: ce}\n"
                    "grid:\n  noise_rate: [0.2, 0.4, 0.2]\n")
    assert main(["sweep", str(spec), "--dry-run"]) == 2
    assert "grid key 'noise_rate' lists 0.2 more than once" in one_line_error(capsys)


def test_train_prints_its_set_up_time_and_the_time_left(tmp_path, capsys):
    assert main(["train", "--dataset", "digits", "--epochs", "2", "--no-progress",
                 "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "set-up: " in out and "s (reading the data, building the model); 23 steps an epoch" in out
    lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert "; about " in lines[0] and " left" in lines[0] and "left" not in lines[1]


def test_list_presets_prints_whole_sentences(capsys):
    assert main(["list-presets"]) == 0
    for line in capsys.readouterr().out.splitlines():
        if not line.startswith("  ") or line.startswith("   "):
            continue
        description = line.strip().split(None, 1)[1] if len(line.strip().split(None, 1)) > 1 else ""
        assert description.count("(") == description.count(")"), line
        assert "for (" not in description, line
