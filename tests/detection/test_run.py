"""``ols detect train`` / ``ols detect eval`` end to end on tiny canvas sets and a VOC-layout fixture:
each loss trains, a stopped run resumes to the same weights, the files a run promises are there."""

import json

import numpy as np
import pytest
import torch

from ols.cli import main
from ols.detection import run as detect_run
from ols.detection.config import DetectConfig

pytestmark = pytest.mark.slow  # about a minute: a few tiny training runs

TINY = [
    "--num-train",
    "48",
    "--num-test",
    "16",
    "--width",
    "0.25",
    "--batch-size",
    "16",
    "--no-progress",
    "--warmup-epochs",
    "1",
]


@pytest.mark.parametrize(
    "loss, extra", [("ce", []), ("ls", []), ("ols", []), ("ols", ["--statistic", "raw_sigmoid"])]
)
def test_each_loss_trains_and_evaluates(tmp_path, loss, extra, capsys):
    out = tmp_path / loss
    assert main(["detect", "train", "--loss", loss, "--epochs", "2", "--out", str(out), *TINY, *extra]) == 0
    text = capsys.readouterr().out
    assert "detection training on cpu" in text and f"canvas, class loss {loss}: test mAP@0.5" in text
    summary = json.loads((out / "summary.json").read_text())
    assert 0 <= summary["test_map"] <= 1 and summary["loss"] == loss
    assert 0 < summary["test_pos_other_sigmoid"] < 1 and 0 <= summary["test_pos_correct"] <= 1
    assert [m["epoch"] for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())] == [1, 2]
    soft = out / "soft_labels.npy"
    assert soft.exists() == (loss == "ols")
    if loss == "ols" and not extra:  # learned from the correct positives: rows sum to one
        np.testing.assert_allclose(np.load(soft).sum(1), 1.0, rtol=1e-5)
    if extra:  # per-class means of sigmoids: each entry a probability, recorded in the settings
        assert json.loads((out / "config.json").read_text())["statistic"] == "raw_sigmoid"
        assert ((np.load(soft) >= 0) & (np.load(soft) <= 1)).all()
    if loss == "ols":
        assert (out / "soft_labels.png").stat().st_size > 10_000
    assert main(["detect", "eval", str(out)]) == 0
    result = json.loads((out / "eval.json").read_text())
    assert result["map"] == pytest.approx(summary["test_map"]) and len(result["ap"]) >= 5
    assert result["pos_true_sigmoid"] == pytest.approx(summary["test_pos_true_sigmoid"])
    assert result["files"] == ["detections.png"] and (out / "detections.png").stat().st_size > 10_000


def test_a_stopped_run_resumes_to_the_same_weights(tmp_path, monkeypatch, stop_after):
    straight = tmp_path / "straight"
    assert main(["detect", "train", "--epochs", "2", "--out", str(straight), *TINY]) == 0
    stopped = tmp_path / "stopped"
    monkeypatch.setattr(detect_run, "StopRequest", stop_after(2))  # stop in epoch 1, after batch 2 of 3
    assert main(["detect", "train", "--epochs", "2", "--out", str(stopped), *TINY]) == 130
    ckpt = torch.load(stopped / "checkpoint.pt", weights_only=False)
    assert ckpt["state"]["epoch"] == 0 and ckpt["state"]["batch"] == 2
    monkeypatch.undo()
    assert main(["detect", "train", "--resume", str(stopped)]) == 0
    a = torch.load(straight / "checkpoint.pt", weights_only=False)
    b = torch.load(stopped / "checkpoint.pt", weights_only=False)
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        a["class_loss"]["store.soft_labels"], b["class_loss"]["store.soft_labels"], rtol=1e-5, atol=1e-6
    )
    # the interrupted epoch logs the means over all its batches, as the uninterrupted run does
    logged = [[json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
              for d in (straight, stopped)]
    for key in ("loss", "box", "obj", "cls"):
        assert [m[key] for m in logged[1]] == pytest.approx([m[key] for m in logged[0]], rel=1e-5), key
    # extending a finished run trains the further epochs only
    assert main(["detect", "train", "--resume", str(straight), "--epochs", "3"]) == 0
    assert [json.loads(x)["epoch"] for x in (straight / "metrics.jsonl").read_text().splitlines()] == [
        1,
        2,
        3,
    ]


def test_bad_input_is_one_line(tmp_path, capsys):
    assert main(["detect", "train", "--train-sizes", "50", "--out", str(tmp_path / "a")]) == 2
    assert "--train-sizes must be multiples of 32" in capsys.readouterr().err
    assert main(["detect", "train", "--dataset", "voc", "--out", str(tmp_path / "b")]) == 2
    assert "--dataset voc needs --data-dir" in capsys.readouterr().err
    assert (
        main(["detect", "train", "--loss", "ce", "--statistic", "softmax", "--out", str(tmp_path / "s")]) == 2
    )
    assert "--statistic softmax applies to --loss ols only" in capsys.readouterr().err
    assert (
        main(
            ["detect", "train", "--dataset", "voc", "--data-dir", str(tmp_path), "--out", str(tmp_path / "c")]
        )
        == 2
    )
    assert "no VOC2007/ or VOC2012/ folder" in capsys.readouterr().err and not (tmp_path / "c").exists()
    out = tmp_path / "d"
    assert main(["detect", "train", "--epochs", "1", "--out", str(out), *TINY]) == 0
    assert main(["detect", "train", "--epochs", "1", "--out", str(out), *TINY]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["detect", "train", "--resume", str(out), "--lr", "0.5"]) == 2
    assert "--lr cannot change on --resume" in capsys.readouterr().err
    assert main(["detect", "eval", str(tmp_path)]) == 2
    assert "holds no detection run" in capsys.readouterr().err


def test_voc_layout_trains_from_a_fixture(tmp_path, capsys):
    pytest.importorskip("PIL")
    from test_voc import write_devkit

    objects = {
        f"{i:06d}": [("dog", (2, 3, 20, 25), False), ("cat", (22, 5, 38, 28), i % 2 == 0)] for i in range(6)
    }
    write_devkit(
        tmp_path,
        {
            ("2007", "trainval"): objects,
            ("2012", "trainval"): {"2008_000001": objects["000000"]},
            ("2007", "test"): {"000100": objects["000001"]},
        },
    )
    out = tmp_path / "run"
    assert (
        main(
            [
                "detect",
                "train",
                "--dataset",
                "voc",
                "--data-dir",
                str(tmp_path),
                "--epochs",
                "1",
                "--train-sizes",
                "64",
                "96",
                "--test-sizes",
                "64",
                "96",
                "--width",
                "0.25",
                "--batch-size",
                "4",
                "--num-workers",
                "2",  # the images decoded in two worker processes
                "--no-progress",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["test_ap"]) == {"cat", "dog"} or set(summary["test_ap"]) == {"dog"}
    cfg = DetectConfig(dataset="voc", data_dir=str(tmp_path))
    assert cfg.out == "runs/detect/voc-ols-seed0"


def test_a_detection_sweep_runs_and_reports_the_map(tmp_path, capsys):
    import yaml

    spec = {
        "name": "det",
        "command": "detect",
        "out": str(tmp_path / "sweep"),
        "base": {"num_train": 32, "num_test": 16, "width": 0.25, "batch_size": 16, "epochs": 1},
        "methods": {"hard": {"loss": "ce"}, "OLS": {"loss": "ols"}},
        "grid": {"seed": [0]},
        "report": {"metrics": ["test_map"]},
    }
    path = tmp_path / "det.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["sweep", str(path)]) == 0
    report = (tmp_path / "sweep" / "report.md").read_text()
    assert "mAP@0.5 (VOC area AP, 0-1)" in report and "| OLS |" in report and "| hard |" in report
    summary = json.loads((tmp_path / "sweep" / "OLS" / "seed=0" / "summary.json").read_text())
    assert summary["loss"] == "ols" and (tmp_path / "sweep" / "OLS" / "seed=0" / "soft_labels.npy").exists()


def test_detection_specs_are_checked_as_detection_settings(tmp_path):
    from ols.experiments.spec import load_spec, parse_spec

    with pytest.raises(ValueError, match="'noise_rate' is not a detection setting"):
        parse_spec({"command": "detect", "base": {"noise_rate": 0.2}})
    with pytest.raises(ValueError, match="command 'segment'"):
        parse_spec({"command": "segment", "base": {"epochs": 1}})
    with pytest.raises(ValueError, match="a detection run is evaluated by its own training"):
        parse_spec({"command": "detect", "base": {"epochs": 1}, "eval": {"soft_labels": True}})
    with pytest.raises(ValueError, match="--train-sizes must be multiples of 32"):
        parse_spec({"command": "detect", "base": {"train_sizes": [40]}})
    spec = load_spec("table10-voc")
    assert spec.command == "detect" and len(spec.runs()) == 9
    assert {r.config["loss"] for r in spec.runs()} == {"ce", "ls", "ols"}
