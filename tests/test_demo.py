"""The demo's table: its columns, and the line that explains under-confidence only when it appears."""

from ols.demo import METHODS, results_table


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
