"""Detection behaves as ``ols train`` does on bad input: a named folder never falls back to other
data, non-finite and out-of-range settings are refused, a diverging run stops and keeps its last good
checkpoint, broken VOC boxes and an unscorable test set are named, and the two kinds of run folder
point at each other's command."""

import json

import pytest
import torch
from test_voc import OBJ, XML, write_devkit

from ols.cli import main
from ols.detection import canvas
from ols.detection import run as detect_run
from ols.detection.config import DetectConfig
from ols.detection.voc import TEST_SETS, VOCDetection, check_scorable, read_annotation, training_sets

TINY = ["--num-train", "48", "--num-test", "16", "--width", "0.25", "--batch-size", "16", "--no-progress",
        "--warmup-epochs", "1"]


def test_canvas_with_a_named_folder_reads_it_or_says_why(tmp_path, monkeypatch):
    cfg = DetectConfig(dataset="canvas", data_dir=str(tmp_path / "fm_gooood"), num_train=4, num_test=2)
    with pytest.raises(ValueError, match=r"fm_gooood.*train-images-idx3-ubyte"):
        detect_run.load_data(cfg)  # a misspelt folder: the reader's error, not the digits
    monkeypatch.setattr(canvas, "FASHION_MNIST_DIR", str(tmp_path / "no-debian-here"))
    train, test, names, channels, note = detect_run.load_data(DetectConfig(num_train=4, num_test=2))
    assert names[:2] == ("0", "1") and channels == 1
    assert note == (f"canvas items: digits (Fashion-MNIST not found in {tmp_path / 'no-debian-here'}; "
                    "--data-dir names its folder)")


def test_non_finite_and_out_of_range_settings_are_refused_up_front(tmp_path, capsys):
    for flags, message in ((["--lr", "nan"], "--lr must be a finite number, got nan"),
                           (["--momentum", "inf"], "--momentum must be a finite number, got inf"),
                           (["--nms-iou", "5"], "--nms-iou must be in (0, 1]"),
                           (["--nms-iou", "0"], "--nms-iou must be in (0, 1]"),
                           (["--score-threshold", "-1"], "--score-threshold must be in [0, 1)"),
                           (["--seed", "-1"], "--seed must be in [0, 2**32)")):
        out = tmp_path / "r"
        assert main(["detect", "train", *flags, "--out", str(out)]) == 2, flags
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()


@pytest.mark.slow
def test_a_diverging_run_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    real, calls = detect_run.yolo_loss, []

    def nan_in_epoch_two(*args, **kw):
        losses = real(*args, **kw)
        calls.append(1)
        if len(calls) > 3:  # three batches an epoch: epoch 2 goes NaN
            losses = {k: v * float("nan") for k, v in losses.items()}
        return losses

    monkeypatch.setattr(detect_run, "yolo_loss", nan_in_epoch_two)
    out = tmp_path / "run"
    assert main(["detect", "train", "--epochs", "3", "--out", str(out), *TINY]) == 2
    err = capsys.readouterr().err
    assert "epoch 2: the training loss is nan (not finite), so the run stopped" in err
    assert f"{out / 'checkpoint.pt'} still holds epoch 1" in err and "--lr" in err
    assert torch.load(out / "checkpoint.pt", weights_only=False)["state"]["epoch"] == 1
    assert not (out / "summary.json").exists()
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1]


@pytest.mark.slow
def test_short_runs_say_the_warmup_takes_them(tmp_path, capsys):
    assert main(["detect", "train", "--epochs", "1", "--num-train", "16", "--num-test", "8",
                 "--width", "0.25", "--batch-size", "16", "--no-progress", "--out", str(tmp_path / "r")]) == 0
    printed = capsys.readouterr()
    assert "note: --epochs 1 is not above --warmup-epochs 2" in printed.err
    assert "canvas items:" in printed.out  # where the items came from


def annotation(tmp_path, box, size=(40, 30)):
    path = tmp_path / "a.xml"
    body = OBJ.format(name="dog", b=box, d=0)
    size_tag = f"<width>{size[0]}</width><height>{size[1]}</height>"
    text = XML.format(id="a", objects=body).replace("<width>40</width><height>30</height>", size_tag)
    path.write_text(text)
    return path


@pytest.mark.parametrize("box, message", [
    ((500, 400, 900, 800), r"a\.xml: object 1 \(dog\) box \(500, 400, 900, 800\) lies outside the 40x30"),
    ((-50, -20, 10, 10), r"a\.xml: object 1 \(dog\) box \(-50, -20, 10, 10\) lies outside"),
    (("nan", 1, 5, 5), r"a\.xml: object 1 \(dog\) has no complete <bndbox> with numeric"),
    ((1, 1, "inf", 5), r"a\.xml: object 1 \(dog\) has no complete <bndbox> with numeric"),
])
def test_voc_boxes_outside_the_image_or_not_numbers_are_named(tmp_path, box, message):
    with pytest.raises(ValueError, match=message):
        read_annotation(annotation(tmp_path, box))


def test_voc_box_checked_against_the_decoded_image_too(tmp_path):
    pytest.importorskip("PIL")
    root = write_devkit(tmp_path, {("2007", "test"): {"000001": [("cat", (2, 2, 38, 28), False)]}})
    ann = root / "VOCdevkit" / "VOC2007" / "Annotations" / "000001.xml"
    ann.write_text(ann.read_text().replace("<width>40</width>", "<width>80</width>"))  # the XML lies
    data = VOCDetection(str(root), TEST_SETS)
    with pytest.raises(ValueError, match="000001.jpg: the image is 40x30, but 000001.xml gives its <size> "
                                         "as 80x30"):
        data[0]


def test_voc_test_set_with_nothing_to_score_is_an_error_naming_the_list(tmp_path):
    pytest.importorskip("PIL")
    root = write_devkit(tmp_path, {("2007", "test"): {"000001": [("cat", (2, 2, 9, 9), True)],
                                                      "000002": [("dog", (2, 2, 9, 9), True)]}})
    with pytest.raises(ValueError, match="VOC2007/ImageSets/Main/test.txt: none of its 2 images has an "
                                         "object that is not <difficult>"):
        check_scorable(VOCDetection(str(root), TEST_SETS))
    (root / "VOCdevkit" / "VOC2007" / "Annotations" / "000002.xml").write_text(
        XML.format(id="000002", objects=OBJ.format(name="dog", b=(2, 2, 9, 9), d=0)))
    check_scorable(VOCDetection(str(root), TEST_SETS))  # one scorable object is enough


def test_voc2007_alone_trains_on_07_trainval_and_says_so(tmp_path):
    pytest.importorskip("PIL")
    root = write_devkit(tmp_path, {("2007", "trainval"): {"000005": [("chair", (1, 2, 10, 12), False)]}})
    sets, note = training_sets(str(root))
    assert sets == [("2007", "trainval")]
    assert note == (f"VOC training set: 2007 trainval (VOC2012 not in {root / 'VOCdevkit'}, so not the "
                    "paper's 07+12)")
    with pytest.raises(ValueError, match="none of VOC2012 is there to train on"):
        training_sets(str(root), [("2012", "trainval")])


def test_each_kind_of_run_folder_names_the_command_that_reads_it(tmp_path, capsys):
    cls_run, det_run = tmp_path / "cls", tmp_path / "det"
    for folder, config in ((cls_run, {"model": "cnn", "loss_args": {}}),
                           (det_run, {"canvas_size": 96, "statistic": "softmax"})):
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(config))
        (folder / "checkpoint.pt").write_bytes(b"")
    resume_cls = f"continue it with `ols train --resume {cls_run}`"
    cases = [(["detect", "eval", str(cls_run)], f"evaluate it with `ols eval {cls_run}`"),
             (["detect", "train", "--resume", str(cls_run)], resume_cls),
             (["detect", "train", "--out", str(cls_run)], f"`ols train --resume {cls_run}` continues it"),
             (["eval", str(det_run)], f"evaluate it with `ols detect eval {det_run}`"),
             (["train", "--resume", str(det_run)], f"continue it with `ols detect train --resume {det_run}`"),
             (["train", "--out", str(det_run)], f"`ols detect train --resume {det_run}` continues it")]
    for argv, fix in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "holds a" in err and fix in err, (argv, err)
    assert (cls_run / "config.json").exists() and (det_run / "config.json").exists()


def test_resume_and_overwrite_together_are_refused(tmp_path, capsys):
    for command in (["detect", "train"], ["train"]):
        assert main([*command, "--resume", str(tmp_path), "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert f"--resume continues {tmp_path} and --overwrite would start it afresh" in err
