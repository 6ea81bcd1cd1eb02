"""ols eval: attacks, human KL, ensembles, class relations, and the command end to end."""

import importlib.util
import json
import math

import numpy as np
import pytest
import torch

from ols.cli import main
from ols.eval import (
    average_probs,
    calibration_bins,
    expected_calibration_error,
    fgsm,
    human_kl,
    pgd,
    pick_uniform,
    probability_metrics,
    within_group_share,
)
from ols.eval.attacks import parse_fraction


@pytest.fixture(scope="module")
def run_dir(trained_run):
    return trained_run  # tests/conftest.py: one digits run per session


@pytest.fixture(scope="module")
def trained(run_dir):
    from ols.config import config_from_dict
    from ols.data import load_dataset
    from ols.evaluate import _model
    from ols.rundir import read_json

    cfg = config_from_dict(read_json(run_dir / "config.json"))
    data = load_dataset("digits")
    model = _model(cfg, data, torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"],
                   torch.device("cpu"))
    return model, data.test_x[:200], data.test_y[:200]


def test_attacks_stay_in_the_ball_and_the_pixel_range(trained):
    model, x, y = trained
    eps = 8 / 255
    gen = torch.Generator().manual_seed(0)
    for adv in (fgsm(model, x, y, eps), pgd(model, x, y, eps, steps=5, generator=gen)):
        assert (adv - x).abs().max() <= eps + 1e-6
        assert adv.min() >= 0 and adv.max() <= 1
        assert not torch.equal(adv, x)
    # FGSM moves every pixel that has a gradient by exactly eps, unless clamped
    adv = fgsm(model, x, y, eps)
    inside = (x > eps) & (x < 1 - eps)
    moved = (adv - x).abs()[inside]
    assert ((moved - eps).abs() < 1e-6).float().mean() > 0.9


def test_pgd_is_at_least_as_strong_as_fgsm_and_never_below_clean(trained):
    model, x, y = trained
    with torch.no_grad():
        clean = (model(x).argmax(1) != y).float().mean()
    eps = 0.1
    f = (model(fgsm(model, x, y, eps)).argmax(1) != y).float().mean()
    p = (model(pgd(model, x, y, eps, steps=10, generator=torch.Generator().manual_seed(0))).argmax(1) != y)
    p = p.float().mean()
    assert clean <= f <= p and p > clean
    # with eps = 0 nothing moves: adversarial error equals clean error
    p0 = (model(pgd(model, x, y, 0.0, steps=3)).argmax(1) != y).float().mean()
    assert p0 == clean


def test_parse_fraction():
    assert parse_fraction("8/255") == pytest.approx(8 / 255) and parse_fraction("0.5") == 0.5
    with pytest.raises(ValueError, match="such as 8/255"):
        parse_fraction("eight")


def test_human_kl_by_hand():
    human = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.2, 0.3, 0.5]], dtype=torch.float64)
    logits = torch.log(torch.tensor([[0.8, 0.1, 0.1], [0.6, 0.2, 0.2], [0.9, 0.05, 0.05]]))
    target = torch.tensor([0, 0, 2])  # the third image is wrong, so it is left out
    kl0 = 0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.1)
    kl1 = math.log(1 / 0.6)
    assert human_kl(human, logits, target) == pytest.approx((kl0 + kl1) / 2, rel=1e-6)


def test_ensemble_average_and_pick():
    a, b = torch.randn(5, 4), torch.randn(5, 4)
    manual = (torch.softmax(a.double(), 1) + torch.softmax(b.double(), 1)) / 2
    assert torch.allclose(average_probs([a, b]), manual)
    assert pick_uniform(range(1, 21), 6) == [1, 5, 9, 12, 16, 20]
    assert pick_uniform([3, 6, 9], 1) == [3]
    with pytest.raises(ValueError, match="only 3 snapshots"):
        pick_uniform([3, 6, 9], 4)
    target = torch.tensor([0, 1, 2, 3, 0])
    m = probability_metrics(manual, target)
    assert m["nll"] == pytest.approx(float(-torch.log(manual[torch.arange(5), target]).mean()))


def test_within_group_share_by_hand():
    soft = torch.tensor([[0.6, 0.3, 0.1, 0.0], [0.2, 0.4, 0.2, 0.2],
                         [0.0, 0.0, 1.0, 0.0], [0.1, 0.1, 0.4, 0.4]])
    share = within_group_share(soft, [0, 0, 1, 1])
    # class 0: 0.3 of 0.4; class 1: 0.2 of 0.6; class 2: no off-target mass -> 0; class 3: 0.4 of 0.6
    assert share["share"] == pytest.approx((0.75 + 1 / 3 + 0 + 2 / 3) / 4)
    assert share["chance"] == pytest.approx(1 / 3)


def test_calibration_bins_match_a_loop():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(300, 5, generator=g), 1)
    target = torch.randint(0, 5, (300,), generator=g)
    count, conf_sum, hit_sum = calibration_bins(probs, target, 15)
    conf, pred = probs.max(1)
    for b in range(15):
        lo, hi = b / 15, (b + 1) / 15
        members = [i for i in range(300) if (lo < conf[i] <= hi) or (b == 0 and conf[i] == 0)]
        assert count[b] == len(members)
        assert conf_sum[b] == pytest.approx(float(sum(conf[i].double() for i in members)), abs=1e-5)
        assert hit_sum[b] == sum(int(pred[i] == target[i]) for i in members)
    assert expected_calibration_error(probs, target) == pytest.approx(
        100 * float((conf_sum - hit_sum).abs().sum()) / 300)


def test_eval_command_end_to_end(run_dir, capsys):
    assert main(["eval", str(run_dir), "--attack", "fgsm", "pgd", "--steps", "3", "--ensemble", "2", "4",
                 "--soft-labels", "--tsne",
                 "--save-predictions", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "FGSM top-1 error (%), eps 8/255" in printed and "ensemble of 4 snapshots" in printed
    result = json.loads((run_dir / "eval.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert result["test_top1_err"] == pytest.approx(summary["test_top1_err"])
    assert result["test_ece"] == pytest.approx(summary["test_ece"])
    # temperature scaling: the trainer and ols eval rebuild the same held-out split and fit the same T
    for key in ("temperature", "test_nll_ts", "test_ece_ts", "test_ece_signed", "test_aurc"):
        assert result[key] == pytest.approx(summary[key], rel=1e-6), key
    held = np.load(run_dir / "held_out_index.npy")
    assert result["held_out_samples"] == summary["held_out_samples"] == len(held)
    assert "temperature T" in printed and "T fitted on" in printed and "mean confidence - accuracy" in printed
    assert "evaluated" in printed and f"epoch {summary['epochs']} of {summary['epochs']}" in printed
    assert result["pgd_err"] >= result["test_top1_err"] and result["fgsm_err"] >= result["test_top1_err"]
    assert result["ensemble"]["2"]["epochs"] == [1, 4]
    assert result["ensemble"]["4"]["epochs"] == [1, 2, 3, 4]
    pred = np.load(run_dir / "predictions.npz")
    assert pred["logits"].shape == pred["adv_logits_fgsm"].shape == (359, 10)
    assert pred["adv_logits_pgd"].shape == (359, 10)
    # the ensemble: the average of the two snapshots' softmax, recomputed here from the files
    from ols.config import config_from_dict
    from ols.data import load_dataset
    from ols.evaluate import _model

    cfg = config_from_dict(json.loads((run_dir / "config.json").read_text()))
    data = load_dataset("digits")
    probs = []
    for epoch in (1, 4):
        state = torch.load(run_dir / "snapshots" / f"epoch_{epoch:04d}.pt", weights_only=True)["model"]
        with torch.no_grad():
            logits = _model(cfg, data, state, torch.device("cpu"))(data.test_x)
        probs.append(torch.softmax(logits.double(), 1))
    manual_err = 100 * float(((probs[0] + probs[1]).argmax(1) != data.test_y).double().mean())
    assert result["ensemble"]["2"]["test_top1_err"] == pytest.approx(manual_err)

    figures = [run_dir / name for name in ("reliability.png", "soft_labels.png", "tsne.png")]
    if importlib.util.find_spec("matplotlib") is None:  # the [plot] extra: the numbers come without it
        assert not any(path.exists() for path in figures)
    else:
        assert all(path.stat().st_size > 10_000 for path in figures)


def test_eval_errors(run_dir, tmp_path, capsys):
    assert main(["eval", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
    (tmp_path / "config.json").write_text((run_dir / "config.json").read_text())
    assert main(["eval", str(tmp_path)]) == 2
    assert "has no checkpoint" in capsys.readouterr().err
    assert main(["eval", str(run_dir), "--human-probs", str(tmp_path / "h.npy")]) == 2
    assert "no such file" in capsys.readouterr().err
    np.save(tmp_path / "h.npy", np.full((10, 10), 0.1))
    assert main(["eval", str(run_dir), "--human-probs", str(tmp_path / "h.npy")]) == 2
    assert "has shape (10, 10), but the test set needs (359, 10)" in capsys.readouterr().err
    assert main(["eval", str(run_dir), "--ensemble", "9"]) == 2
    assert "only 4 snapshots" in capsys.readouterr().err


def test_a_checkpoint_without_a_state_format_is_refused_with_one_line(run_dir, tmp_path, capsys):
    # a run whose checkpoint was written before formats were recorded (ols before 2026-12-04)
    import shutil

    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    ckpt = torch.load(old / "checkpoint.pt", weights_only=True)
    ckpt["criterion"] = {key: t for key, t in ckpt["criterion"].items() if not key.endswith("state_format")}
    torch.save(ckpt, old / "checkpoint.pt")
    for argv in (["eval", str(old), "--soft-labels", "--device", "cpu"],
                 ["train", "--resume", str(old), "--epochs", "5", "--no-progress"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert "has no format record (written by ols before 2026-12-04)" in err[-1], err
        assert "Traceback" not in "\n".join(err)


def test_stray_files_in_snapshots_are_named_and_left_out(run_dir, tmp_path):
    import shutil

    from ols.evaluate import _snapshot_epochs

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / "snapshots" / "notes.txt").write_text("keep the best one")
    shutil.copy(copy / "snapshots" / "epoch_0004.pt", copy / "snapshots" / "epoch_final.pt")
    with pytest.warns(UserWarning, match="not named epoch_NNNN.pt: epoch_final.pt, notes.txt"):
        found = _snapshot_epochs(copy)
    assert sorted(found) == [1, 2, 3, 4] and found[4].name == "epoch_0004.pt"
