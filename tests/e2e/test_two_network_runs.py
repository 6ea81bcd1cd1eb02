"""Two networks as one run (issue 43): kill -9 mid-epoch resumes bit-identically, `ols eval` reports each
network and their ensemble, --peer-model builds another architecture, and what cannot work is refused in one
line."""

import json
import sys

import pytest
import torch

from ols.cli import main
from ols.models.pair import ensemble_log_probs

#: half of digits, a CNN each, DivideMix with its division from epoch 2: 15 steps an epoch
ARGS = ["train", "--dataset", "digits", "--data-arg", "test_fraction=0.5", "--model", "cnn", "--loss",
        "dividemix", "--loss-arg", "warmup_epochs=1", "--noise-rate", "0.4", "--epochs", "2",
        "--batch-size", "64", "--seed", "2", "--no-progress"]
SMALL = ["--dataset", "manyclass", "--data-arg", "classes=10", "--data-arg", "train_per_class=40",
         "--epochs", "2", "--batch-size", "32", "--no-progress"]


@pytest.mark.slow
def test_a_two_network_run_killed_mid_epoch_resumes_bit_identically_and_eval_reports_both(tmp_path):
    from procs import kill_mid_epoch, run, start

    whole, cut = tmp_path / "whole", tmp_path / "cut"
    first = start([sys.executable, "-m", "ols", *ARGS, "--out", str(whole)])
    proc = start([sys.executable, "-m", "ols", *ARGS, "--save-every-steps", "5", "--out", str(cut)])
    ckpt = kill_mid_epoch(proc, cut, after_epoch=1)  # inside epoch 2: after the first division
    assert ckpt["criterion"]["fitted"] and ckpt["epoch_state"]["batches"] % 5 == 0
    first.communicate(timeout=600)
    assert first.returncode == 0
    run([sys.executable, "-m", "ols", "train", "--resume", str(cut)])
    a, b = (torch.load(d / "checkpoint.pt", weights_only=True) for d in (whole, cut))
    assert {k.split(".")[1] for k in a["model"]} == {"0", "1"}
    for part in ("model", "optimizer", "criterion"):
        flat_a, flat_b = _tensors(a[part]), _tensors(b[part])
        assert flat_a.keys() == flat_b.keys()
        for key in flat_a:
            assert torch.equal(flat_a[key], flat_b[key]), (part, key)

    assert main(["eval", str(whole)]) == 0
    result = json.loads((whole / "eval.json").read_text())
    nets = result["networks"]
    assert nets["ensemble"]["top1_err"] == pytest.approx(result["test_top1_err"])
    # the ensemble is the mean of the two softmaxes: recomputed here from the members' own logits
    from ols.config import saved_config
    from ols.data import load_dataset
    from ols.evaluate import _model

    cfg = saved_config(json.loads((whole / "config.json").read_text()), whole)
    data = load_dataset("digits", test_fraction=0.5)
    pair = _model(cfg, data, a["model"], torch.device("cpu"))
    with torch.no_grad():
        logits = torch.stack([m(data.test_x) for m in pair.members])
    assert not torch.equal(logits[0], logits[1])  # initialised apart, trained on each other's split
    for m in range(2):
        err = 100.0 * float((logits[m].argmax(1) != data.test_y).double().mean())
        assert nets[str(m + 1)]["top1_err"] == pytest.approx(err)
    ens = 100.0 * float((ensemble_log_probs(logits).argmax(1) != data.test_y).double().mean())
    assert nets["ensemble"]["top1_err"] == pytest.approx(ens)


def _tensors(tree, prefix=""):
    """Every tensor of a nested state dict, by its path."""
    out = {}
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(_tensors(v, f"{prefix}.{k}"))
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            out.update(_tensors(v, f"{prefix}.{i}"))
    return out


def test_peer_model_builds_another_architecture_for_the_second_network(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--model", "mlp", "--peer-model", "linear", "--loss", "coteaching",
                 "--noise-rate", "0.2", "--out", str(out)]) == 0
    state = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    first = {k for k in state if k.startswith("members.0.")}
    second = {k for k in state if k.startswith("members.1.")}
    assert len(first) > len(second) > 0  # the MLP has more layers than the linear model
    assert main(["eval", str(out)]) == 0  # rebuilt from the saved config: both architectures
    assert set(json.loads((out / "eval.json").read_text())["networks"]) == {"1", "2", "ensemble"}


@pytest.mark.parametrize("args,message", [
    (["--model", "mlp", "--peer-model", "cnn", "--loss", "coteaching"], "--peer-model cnn: the network cnn"),
    (["--model", "mlp", "--peer-model", "linear", "--loss", "ce"], "--peer-model is the second network"),
    (["--model", "mlp", "--loss", "coteaching", "--loss-arg", "noise_rate=0.3"], "ols train sets it"),
    (["--model", "mlp", "--loss", "coteaching", "--loss-arg", "forget_rate=1.0"], "forget_rate must be in"),
    (["--model", "mlp", "--loss", "dividemix", "--mixup-alpha", "0.2"], "do not combine with DivideMix"),
    (["--model", "mlp", "--loss", "elr", "--loss-arg", "beta=1.5"], "beta must be in [0, 1)"),
])
def test_what_cannot_work_is_refused_in_one_line(tmp_path, capsys, args, message):
    assert main(["train", *SMALL, *args, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and len(err[-1]) < 400, err
