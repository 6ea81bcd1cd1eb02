"""Every benchmark script runs in its ``--quick`` form: ``make bench`` and the README's commands work.

The scripts run one after the other in one Python (``runpy``), so torch is imported once; ``topk_ab.py``,
which imports a second ``ols`` tree, and ``gpu.py`` (``test_gpu_benchmark.py``) run in processes of their
own.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: loss_ops.py last: it switches the losses' at-once label check off for the rest of its process
SCRIPTS = ["loss_overhead.py", "loss_precision.py", "self_distillation.py", "topk.py", "train_throughput.py",
           "noisy_methods.py", "step_checkpoints.py", "loss_ops.py"]
DRIVER = """
import runpy, sys
for script in sys.argv[1:]:
    sys.argv = [script, "--quick"]
    print(f"=== {script}", flush=True)
    runpy.run_path(script, run_name="__main__")
"""


@pytest.mark.slow
def test_every_benchmark_runs_in_its_quick_form(tmp_path):
    res = subprocess.run([sys.executable, "-c", DRIVER, *(str(ROOT / "benchmarks" / s) for s in SCRIPTS)],
                         capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    parts = dict(re.findall(r"=== (\S+)\n(.*?)(?====|\Z)", res.stdout, re.S))
    assert set(parts) == {str(ROOT / "benchmarks" / s) for s in SCRIPTS}
    out = {Path(k).name: v for k, v in parts.items()}
    overhead = out["loss_overhead.py"]
    assert "50% of rows correct" in overhead  # the accumulation is timed by default
    for loss in ("pskd", "cskd", "byot", "ddgsd", "l2rw", "pencil"):  # every registry loss, each fed its way
        assert f"| (16, 10) | {loss} |" in overhead, loss
    row = re.compile(r"^\| (\S+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|", re.M)
    noisy = {m.group(1): m.groups()[1:] for m in row.finditer(out["noisy_methods.py"])}
    expected = {"ce"} | {f"{m}{b}" for m in ("l2rw", "mwnet", "bmm", "pencil", "self_learning", "coteaching",
                                             "coteaching_plus", "elr", "dividemix") for b in ("", "+ols")}
    assert set(noisy) == expected and noisy["ce"][1] == "1.00"
    for method in ("bmm", "self_learning", "dividemix"):  # their once-an-epoch fits ran
        assert float(noisy[method][2]) > 0, method
    assert "| ols |" in out["loss_ops.py"] and "| (16, 100) |" in out["loss_precision.py"]
    assert "byot+ols" in out["self_distillation.py"] and "engine+ols" in out["train_throughput.py"]
    assert "step() at K = 500" in out["topk.py"]
    assert "| hook armed, no write in the window |" in out["step_checkpoints.py"]
    assert re.search(r"one in-epoch checkpoint: \d+ ms, [\d.]+ MiB", out["step_checkpoints.py"])


@pytest.mark.slow
def test_the_ab_benchmark_runs_two_trees_in_quick_form():
    src = str(ROOT / "src")
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "topk_ab.py"), src, src, "--quick"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "| (16, 500) |" in res.stdout
