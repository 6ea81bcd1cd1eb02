"""Table VII's noisy-label methods end to end from the CLI: every phase, a Ctrl-C and an exact resume,
two gloo ranks (equal to one process for the meta-learning methods), and the run directory's files."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ols.cli import main
from ols.rundir import read_jsonl

HANG_TIMEOUT = 600
#: each method with its phases set so that a 3-epoch run passes through all of them
METHODS = {
    "l2rw": ["--meta-size", "100"],
    "mwnet": ["--meta-size", "100", "--loss-arg", "base=ols"],
    "bmm": ["--loss-arg", "warmup_epochs=1"],
    "pencil": ["--loss-arg", "backbone_epochs=1", "--loss-arg", "joint_epochs=1", "--loss-arg", "base=ols"],
    "self_learning": ["--loss-arg", "initial_epochs=1", "--loss-arg", "samples_per_class=6"],
    # beyond Table VII (issue 43): the two-network ones on a NetworkPair
    "coteaching": ["--loss-arg", "gradual_epochs=2"],
    "coteaching_plus": ["--loss-arg", "init_epochs=1", "--loss-arg", "base=ols"],
    "elr": ["--loss-arg", "base=ols"],
    "dividemix": ["--loss-arg", "warmup_epochs=1", "--loss-arg", "base=ols"],
}
#: 10 classes of 40 feature vectors (manyclass): a run of 3 epochs takes about a second
SMALL = ["--dataset", "manyclass", "--data-arg", "classes=10", "--data-arg", "train_per_class=40",
         "--model", "mlp", "--epochs", "3", "--batch-size", "32", "--noise-rate", "0.4", "--no-progress"]


def _state(run):
    return torch.load(Path(run) / "checkpoint.pt", weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("loss", sorted(METHODS))
def test_each_method_stopped_mid_epoch_resumes_exactly(tmp_path, monkeypatch, stop_after, loss, capsys):
    import ols.trainer as trainer

    args = ["train", *SMALL, "--loss", loss, *METHODS[loss]]
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    printed = capsys.readouterr().out
    assert f"{loss}" in printed and "epoch 3/3" in printed  # the phases line, then every epoch
    monkeypatch.setattr(trainer, "StopRequest", stop_after(16))  # a Ctrl-C in epoch 2
    assert main([*args, "--out", str(tmp_path / "cut")]) == 130
    cut = _state(tmp_path / "cut")
    assert cut["epoch"] == 1 and cut["epoch_state"]["batches"] > 0  # stopped inside epoch 2
    monkeypatch.undo()
    assert main(["train", "--resume", str(tmp_path / "cut")]) == 0
    a, b = _state(tmp_path / "whole"), _state(tmp_path / "cut")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key, value in a["criterion"].items():  # the method's whole state: labels, mixture, MLP, its optimiser
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, b["criterion"][key]), key
    assert str(a["criterion"].get("_extra_state")) == str(b["criterion"].get("_extra_state"))
    whole, cut = (read_jsonl(tmp_path / run / "metrics.jsonl") for run in ("whole", "cut"))
    assert [m["test_top1_err"] for m in whole] == [m["test_top1_err"] for m in cut]
    summary = json.loads((tmp_path / "whole" / "summary.json").read_text())
    if loss in ("l2rw", "mwnet"):  # the clean set: out of training, saved, and what T is fitted on
        meta = np.load(tmp_path / "whole" / "meta_index.npy")
        assert len(meta) == summary["meta_size"] == 100
        assert summary["temperature_fitted_on"] == "the clean held-out set (100 images, clean labels)"
        assert summary["realised_noise_rate"] == pytest.approx(0.4, abs=1e-3)
    elif loss in ("coteaching", "coteaching_plus", "dividemix"):  # both networks in the one model entry
        assert {k.split(".")[1] for k in a["model"]} == {"0", "1"}
        if loss == "dividemix":  # the split's share and precision, from the fit after the warm-up
            assert 0 < summary["dividemix_labelled"] <= 100 and "dividemix_labelled_clean" in summary
    elif loss == "elr":
        assert a["criterion"]["target"].shape == (400, 10) and a["criterion"]["target"].any()
    else:  # the methods that correct labels save them, and say how right they are
        corrected = np.load(tmp_path / "whole" / "corrected_labels.npy")
        assert corrected.shape == (400,) and "label_correction_acc" in summary


@pytest.mark.slow
def test_two_gloo_ranks_train_every_method_and_the_meta_learning_ones_equal_one_process(tmp_path):
    """One ``torchrun`` with two gloo ranks runs every method (the script keeps one process group for all of
    them); ``l2rw`` and ``mwnet``, with a model without batch norm and a global batch that matches, must end
    where one process with the whole batch ends: the virtual step's gradient and the meta-gradient are
    reduced over the ranks. PENCIL's sharded label logits are gathered into one layout and resumed by one
    process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = Path(__file__).with_name("noisy_ranks.py")
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(script), str(tmp_path)], capture_output=True, text=True, env=env,
                         timeout=HANG_TIMEOUT)
    assert res.returncode == 0, res.stdout + res.stderr
    from noisy_ranks import META, one_process_args  # the settings the script used

    for loss in ("l2rw", "mwnet"):
        assert main([*one_process_args(loss), "--out", str(tmp_path / f"{loss}-one")]) == 0
        a, b = _state(tmp_path / loss), _state(tmp_path / f"{loss}-one")
        assert json.loads((tmp_path / loss / "summary.json").read_text())["world_size"] == 2
        for key in a["model"]:
            torch.testing.assert_close(a["model"][key], b["model"][key], rtol=1e-4, atol=1e-6)
        for key in (k for k in a["criterion"] if k.startswith("net.")):
            torch.testing.assert_close(a["criterion"][key], b["criterion"][key], rtol=1e-4, atol=1e-7)
    for loss in ("bmm", "self_learning"):
        assert np.load(tmp_path / loss / "corrected_labels.npy").shape == (META["samples"],)
    pencil = _state(tmp_path / "pencil")["criterion"]  # both ranks' shards, in one (N, K) layout
    assert pencil["label_logits"].shape == (META["samples"], 10) and pencil["started"].all()
    assert [m["epoch"] for m in read_jsonl(tmp_path / "pencil" / "metrics.jsonl")] == [1, 2, 3]
    assert main(["train", "--resume", str(tmp_path / "pencil"), "--epochs", "4", "--no-progress"]) == 0
    assert _state(tmp_path / "pencil")["criterion"]["label_logits"].shape == (META["samples"], 10)
    # ELR's sharded running targets: one (N, K) layout, resumed by one process
    elr = _state(tmp_path / "elr")["criterion"]["target"]
    assert elr.shape == (META["samples"], 10) and bool((elr.sum(1) > 0).all())  # every sample visited
    assert main(["train", "--resume", str(tmp_path / "elr"), "--epochs", "3", "--no-progress"]) == 0
    for loss in ("coteaching_plus", "dividemix"):  # both networks trained and saved by the two ranks
        assert json.loads((tmp_path / loss / "summary.json").read_text())["world_size"] == 2
        assert [m["epoch"] for m in read_jsonl(tmp_path / loss / "metrics.jsonl")] == [1, 2]
        assert {k.split(".")[1] for k in _state(tmp_path / loss)["model"]} == {"0", "1"}
