"""A sweep stopped by SIGTERM or SIGINT sent to its own process (not the terminal's group):
the training child is stopped too, saves its checkpoint, and the sweep exits 130 with one line."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow
#: a guard against a hung process, not a speed check
HANG_TIMEOUT = 600


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is not running any more
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[0] != "Z"


# Ctrl-C to the whole sweep: tests/e2e/test_hardening.py::test_ctrl_c_stops_the_whole_sweep
@pytest.mark.parametrize("sig", [signal.SIGTERM])
def test_a_signalled_sweep_stops_its_child_which_saves(tmp_path, sig):
    spec = {"name": "t", "base": {"dataset": "digits", "epochs": 200, "batch_size": 16},
            "methods": {"CE": {"loss": "ce"}}, "grid": {"seed": [0, 1]}, "out": str(tmp_path / "sw")}
    path = tmp_path / "spec.yaml"
    path.write_text(json.dumps(spec))
    # a session of its own, so that the signal reaches the sweep's process alone, as `kill PID` does
    sweep = subprocess.Popen([sys.executable, "-m", "ols", "sweep", str(path)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    run = tmp_path / "sw" / "CE" / "seed=0"
    deadline = time.time() + HANG_TIMEOUT
    while not (run / "metrics.jsonl").exists() or not (run / "metrics.jsonl").read_text().strip():
        assert time.time() < deadline and sweep.poll() is None, sweep.communicate()
        time.sleep(0.05)
    child = int((run / ".lock").read_text().split()[1])
    sweep.send_signal(sig)
    out, err = sweep.communicate(timeout=HANG_TIMEOUT)
    assert sweep.returncode == 130, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "stopped" in lines[0] and "resumes" in lines[0], err
    deadline = time.time() + HANG_TIMEOUT
    while alive(child):  # the sweep waited for it; allow for the kernel's bookkeeping
        assert time.time() < deadline, f"training child {child} still runs after the sweep stopped"
        time.sleep(0.05)
    assert (run / "checkpoint.pt").exists() and not (run / ".lock").exists()
    assert not (run / "summary.json").exists()
    assert not (tmp_path / "sw" / "CE" / "seed=1" / "checkpoint.pt").exists()  # nothing new started
    dry = subprocess.run([sys.executable, "-m", "ols", "sweep", str(path), "--dry-run"], capture_output=True,
                         text=True, timeout=HANG_TIMEOUT)
    assert dry.returncode == 0 and "resume CE {'seed': 0}" in dry.stdout, dry.stdout
