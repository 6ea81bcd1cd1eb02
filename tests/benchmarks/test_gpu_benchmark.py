"""``benchmarks/gpu.py --device cpu --quick`` runs every section and writes one row per measurement."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_gpu_benchmark_runs_on_the_cpu_in_quick_mode(tmp_path):
    out = tmp_path / "rows.jsonl"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--device", "cpu", "--quick",
                           "--out", str(out)], check=True, capture_output=True, text=True)
    assert "Warning" not in done.stderr, done.stderr[-2000:]  # no misuse warning of its own (ddp section)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert not [r for r in rows if "error" in r], rows
    sections = {r["section"] for r in rows}
    assert sections == {"machine", "syncs", "steps", "equality", "loss", "topk", "resnet50", "folder",
                        "compile", "ddp"}
    steps = [r for r in rows if r["section"] == "steps"]
    assert {r["mode"] for r in steps} == {"eager", "graph"} and all(r["ce_img_s"] > 0 for r in steps)
    # the un-captured graph step is the eager step's arithmetic: same soft labels and weights on the CPU
    for r in (r for r in rows if r["section"] in ("equality", "ddp")):  # ddp: through a one-rank gloo DDP
        assert r["soft_labels_max_abs"] < 1e-5 and r["weights_max_abs"] < 1e-5
