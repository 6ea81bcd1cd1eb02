"""Each file in ``examples/`` runs as a user runs it (its own interpreter, a few epochs) and
trains: the test error falls well below chance (90 %), and the soft labels were stepped once per
epoch and moved away from their uniform start (0.1 on the true class)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FINAL = re.compile(r"final: \w+ error ([0-9.]+)%.*?soft labels stepped (\d+) times, "
                   r"mean mass on the true class ([0-9.]+)", re.S)


def run_example(name, *args, cwd, python=sys.executable, timeout=900):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([python, str(EXAMPLES / name), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def check_trained(stdout, epochs, max_error):
    found = FINAL.search(stdout)
    assert found, stdout[-2000:]
    error, stepped, mass = float(found[1]), int(found[2]), float(found[3])
    assert error < max_error and stepped == epochs and mass > 0.2, found[0]


@pytest.mark.slow
def test_own_loop_example(tmp_path):
    out = run_example("own_loop.py", "--epochs", "3", cwd=tmp_path)
    check_trained(out.replace("\nsoft labels", " soft labels"), 3, max_error=15)
    assert len(re.findall(r"^epoch \d+: test error", out, re.M)) == 3
    ce = run_example("own_loop.py", "--epochs", "1", "--loss", "ce", cwd=tmp_path)
    assert "with ce" in ce and "soft labels" not in ce


@pytest.mark.slow
def test_lightning_example(tmp_path):
    pytest.importorskip("lightning")
    out = run_example("lightning_module.py", "--epochs", "3", "--out", str(tmp_path / "run"), cwd=tmp_path)
    check_trained(out, 3, max_error=15)
    assert list((tmp_path / "run").rglob("epoch=2-step=*.ckpt"))  # ModelCheckpoint's file, soft labels inside


@pytest.mark.slow
def test_hf_trainer_example(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    out = run_example("hf_trainer.py", "--epochs", "3", "--out", str(tmp_path / "run"), cwd=tmp_path)
    check_trained(out, 3, max_error=15)
    assert list((tmp_path / "run").glob("checkpoint-*/ols_loss.pt"))
