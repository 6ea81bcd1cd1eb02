"""The demo's table: its columns, and the line that explains under-confidence only when it appears."""

import os
from pathlib import Path

import pytest

from ols.data.idx import FASHION_MNIST_DIR
from ols.demo import METHODS, demo_dataset, results_table


def _run(err, ece, signed, ece_ts, t):
    return {"test_top1_err": err, "test_ece": ece, "test_ece_signed": signed, "test_ece_ts": ece_ts,
            "temperature": t}


def test_the_table_reports_calibration_before_and_after_temperature_scaling():
    over = {"ce": [_run(10.0, 5.0, 5.0, 1.0, 1.5), _run(12.0, 7.0, 7.0, 3.0, 1.7)]}
    text = results_table(over, 0.0, "digits")
    row = "| CE (hard labels) | 11.00 ± 1.41 |  6.00 ± 1.41 |  6.00 ± 1.41 |  2.00 ± 1.41 |  1.60 ± 0.14 |"
    assert row in text  # mean ± sample std of each column
    assert "under-confidence" not in text
    under = {**over, "ls-0.5": [_run(10.0, 20.0, -20.0, 2.0, 0.3)]}
    assert "A negative confidence − accuracy is under-confidence" in results_table(under, 0.0, "digits")
    assert "| " + METHODS["ls-0.5"][2] + " |" in results_table(under, 0.0, "digits")


def test_one_seed_shows_no_spread():
    text = results_table({"ce": [_run(10.0, 5.0, 5.0, 1.0, 1.5)]}, 0.4, "digits")
    assert "| CE (hard labels) | 10.00 |  5.00 |  5.00 |  1.00 |  1.50 |" in text
    assert "±" not in text.split("\n", 1)[1]
    assert text.startswith("digits, 40% symmetric label noise, 1 seed (n = 1: no spread)")


def test_the_demo_takes_the_fashion_mnist_subset_when_it_is_installed():
    if not Path(FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz").is_file():
        if os.environ.get("OLS_REQUIRE_FASHION_MNIST"):
            pytest.fail(f"Fashion-MNIST is not in {FASHION_MNIST_DIR}")
        pytest.skip("Fashion-MNIST is not installed")
    name, data_args, what = demo_dataset()
    assert (name, data_args) == ("fashion-mnist", {"train_per_class": 150, "test_per_class": 50})
    assert what == "Fashion-MNIST (1,500 training, 500 test images)"
