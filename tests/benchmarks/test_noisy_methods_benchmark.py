"""``benchmarks/noisy_methods.py --quick`` times every method with CE and OLS under it, and its epoch work."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_noisy_label_benchmark_runs_every_method_in_quick_mode():
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "noisy_methods.py"), "--quick"],
                         check=True, capture_output=True, text=True)
    row = re.compile(r"^\| (\S+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|", re.M)
    rows = {m.group(1): m.groups()[1:] for m in row.finditer(res.stdout)}
    expected = {"ce"} | {f"{m}{b}" for m in ("l2rw", "mwnet", "bmm", "pencil", "self_learning")
                         for b in ("", "+ols")}
    assert set(rows) == expected, res.stdout
    assert rows["ce"][1] == "1.00" and all(float(ms) > 0 for ms, _, _ in rows.values())
    assert float(rows["bmm"][2]) > 0 and float(rows["self_learning"][2]) > 0  # their once-an-epoch fits ran
