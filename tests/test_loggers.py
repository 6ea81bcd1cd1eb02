"""--log csv tensorboard mlflow wandb: each logger holds what metrics.jsonl holds, read back with
the tool's own reader, and a resumed run continues the same tracked run."""

import csv
import glob
import json
import struct
import sys

import numpy as np
import pytest

from ols.cli import main
from ols.rundir import read_jsonl

pytestmark = pytest.mark.slow
FLAGS = ["--epochs", "2", "--batch-size", "128", "--no-progress", "--schedule", "constant"]

def _train_size():
    from ols.data import load_dataset

    return int(load_dataset("digits").train_y.shape[0])


N = _train_size()
STEPS = -(-N // 128)  # batches of 128 an epoch, the last one ragged


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-epoch run with every logger, then resumed to 3 epochs."""
    pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    out = tmp_path_factory.mktemp("logged") / "run"
    assert main(["train", *FLAGS, "--log", "csv", "tensorboard", "mlflow", "wandb", "--out", str(out)]) == 0
    first = {name: (out / f"{name}_run_id").read_text() for name in ("mlflow", "wandb")}
    assert main(["train", "--resume", str(out), "--epochs", "3"]) == 0
    return out, first, read_jsonl(out / "metrics.jsonl")


def test_the_csv_holds_every_epoch_of_metrics_jsonl(run):
    out, _, logged = run
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    for row, m in zip(rows, logged):
        for key in ("train_loss", "test_top1_err", "test_ece", "lr"):
            assert float(row[key]) == pytest.approx(m[key], rel=1e-12)


def test_tensorboard_has_the_epochs_every_step_and_the_soft_labels(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _, logged = run
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    errs = [(e.step, e.value) for e in events.Scalars("test_top1_err")]
    assert errs == [(m["epoch"], pytest.approx(m["test_top1_err"], rel=1e-6)) for m in logged]
    steps = events.Scalars("train_loss_step")
    assert [e.step for e in steps] == list(range(3 * STEPS))
    # an epoch's train_loss is the sample-weighted mean of its step losses (the last batch is smaller)
    sizes = np.array([128] * (STEPS - 1) + [N - 128 * (STEPS - 1)])
    for epoch, m in enumerate(logged):
        step_losses = np.array([e.value for e in steps[epoch * STEPS:(epoch + 1) * STEPS]])
        assert (step_losses * sizes).sum() / sizes.sum() == pytest.approx(m["train_loss"], rel=1e-5)
    assert [e.step for e in events.Images("soft_labels")] == [1, 2, 3]


def test_mlflow_has_one_run_with_the_settings_the_metrics_and_the_soft_labels(run, monkeypatch):
    from mlflow.tracking import MlflowClient

    out, first, logged = run
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient((out / "mlruns").resolve().as_uri())
    run_id = (out / "mlflow_run_id").read_text()
    assert run_id == first["mlflow"]  # the resumed run went on in the same MLflow run
    tracked = client.get_run(run_id)
    assert tracked.info.status == "FINISHED" and tracked.data.params["loss"] == "ols"
    history = client.get_metric_history(run_id, "test_top1_err")
    assert [(h.step, h.value) for h in history] == [(m["epoch"], m["test_top1_err"]) for m in logged]
    assert [a.path for a in client.list_artifacts(run_id)] == ["soft_labels.npy"]


def _wandb_records(path, block=32768):
    """The protobuf records of a ``.wandb`` file: a 7-byte header, then LevelDB-log records (a 7-byte
    header each: checksum, length, kind 1 full / 2 first / 3 middle / 4 last) in 32 KiB blocks."""
    data, pos, part, out = open(path, "rb").read(), 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        part += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            out.append(part)
            part = b""
    return out


def test_wandb_logs_offline_and_a_resume_continues_its_run(run):
    from wandb.proto import wandb_internal_pb2

    out, first, logged = run
    run_id = (out / "wandb_run_id").read_text()
    files = sorted(glob.glob(str(out / "wandb" / f"offline-run-*-{run_id}" / "*.wandb")))
    assert run_id == first["wandb"] and len(files) == 2  # two sessions of one W&B run, offline
    history = []
    for path in files:
        for raw in _wandb_records(path):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(raw)
            if record.WhichOneof("record_type") == "history":
                history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                for i in record.history.item})
    assert [(h["_step"], h["test_top1_err"]) for h in history] == [(m["epoch"], m["test_top1_err"])
                                                                    for m in logged]


def test_a_logger_without_its_package_is_one_line_before_anything_is_written(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow now fails
    assert main(["train", *FLAGS, "--log", "mlflow", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "--log mlflow needs mlflow: pip install 'ols[mlflow]'" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()
    assert main(["train", *FLAGS, "--log", "neptune", "--out", str(tmp_path / "r")]) == 2
    assert "--log neptune: unknown logger; known: csv, tensorboard, mlflow, wandb" in capsys.readouterr().err
