"""``examples/timm_mixup.py`` with a tiny timm model: runs in the vision environment (``make test``
runs it there; elsewhere timm does not import beside the CPU torch and it is skipped)."""

import os

import pytest
from test_examples import check_trained, run_example

if not os.environ.get("OLS_REQUIRE_VISION"):
    pytest.importorskip("timm")


def test_timm_mixup_example(tmp_path):
    out = run_example("timm_mixup.py", "--epochs", "2", "--model", "test_resnet", cwd=tmp_path)
    check_trained(out, 2, max_error=60)
