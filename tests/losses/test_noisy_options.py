"""The noisy-label methods refuse what cannot work in one line; their phases follow the run's length."""

import pytest

from ols import create_loss
from ols.cli import main
from ols.config import TrainConfig
from ols.distributed import DistContext
from ols.run_setup import build_run

K = 5


@pytest.mark.parametrize("name,kw,words", [
    ("l2rw", {"base": "soft"}, "base='soft': a method builds on one of ce, ols"),
    ("l2rw", {"alpha": 0.5}, "--alpha is OLS's weight of the hard label, and this method builds on CE"),
    ("l2rw", {"meta_batch_size": 0}, "meta_batch_size must be a positive whole number"),
    ("mwnet", {"meta_optimizer": "rmsprop"}, "meta_optimizer='rmsprop': use one of sgd, adam"),
    ("mwnet", {"meta_lr": float("nan")}, "meta_lr=nan must be a finite number"),
    ("mwnet", {"hidden": 0}, "hidden must be a positive whole number"),
    ("bmm", {"variant": "medium"}, r"variant='medium': use hard \(M-DYR-H\) or soft \(M-DYR-S\)"),
    ("bmm", {"warmup_epochs": 0}, r"warmup_epochs=0 must be a whole number of epochs in \[1, 10\]"),
    ("bmm", {"warmup_epochs": 11}, r"warmup_epochs=11 must be a whole number of epochs in \[1, 10\]"),
    ("bmm", {"mixup_alpha": -1.0}, "mixup_alpha must be a finite number > 0"),
    ("bmm", {"reg": float("inf")}, "reg=inf must be a finite number"),
    ("pencil", {"label_lr": 0.0}, "label_lr must be a finite number > 0"),
    ("pencil", {"backbone_epochs": 6, "joint_epochs": 5}, r"joint_epochs=5 must be a whole .*\[0, 4\]"),
    ("self_learning", {"corrected_weight": 1.5}, r"corrected_weight must be in \[0, 1\]"),
    ("self_learning", {"prototypes": 0}, "prototypes must be a positive whole number"),
    ("self_learning", {"initial_epochs": 0}, r"initial_epochs=0 must be a whole number of epochs in \[1, "),
])
def test_a_bad_option_is_one_line_naming_it(name, kw, words):
    extra = {"num_samples": 20} if name in ("bmm", "pencil", "self_learning") else {}
    with pytest.raises(ValueError, match=words):
        create_loss(name, K, epochs=10, **extra, **kw)


def test_every_phase_defaults_to_the_papers_share_of_the_run_and_a_short_run_passes_through_each():
    long = {n: create_loss(n, K, num_samples=4, epochs=300) for n in ("bmm", "pencil", "self_learning")}
    assert long["bmm"].warmup_epochs == 105  # the official 105 of 300
    pencil = long["pencil"]
    assert (pencil.backbone_epochs, pencil.joint_epochs) == (66, 122)  # round(300 * 70/320), of 130/320
    assert long["self_learning"].initial_epochs == 20  # 1 of 15
    short = {n: create_loss(n, K, num_samples=4, epochs=3) for n in ("bmm", "pencil", "self_learning")}
    assert short["bmm"].warmup_epochs == 1 and short["bmm"].bootstrapping_in(2)
    pencil = short["pencil"]
    stages = []
    for epoch in range(3):
        pencil.set_progress(epoch / 3)
        stages.append(pencil.stage)
    assert stages == [1, 2, 3]
    assert short["self_learning"].initial_epochs == 1
    assert "epoch 1 backbone learning" in pencil.phases() and "epoch 3 fine-tuning" in pencil.phases()


def _cfg(tmp_path, **kw):
    base = dict(dataset="digits", model="cnn", epochs=2, out=str(tmp_path / "run"))
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("kw,words", [
    ({"loss": "l2rw"}, "loss 'l2rw' learns its sample weights from a clean held-out set: give --meta-size N"),
    ({"loss": "mwnet", "meta_size": 0}, "give --meta-size N"),
    ({"loss": "bmm", "mixup_alpha": 0.4}, "bmm, which mixes with its own --loss-arg mixup_alpha"),
    ({"loss": "self_learning", "cutmix_alpha": 1.0}, "--mixup-alpha/--cutmix-alpha do not combine with"),
    ({"loss": "pencil", "mixup_alpha": 0.4}, "cannot take mixed targets"),
    ({"loss": "l2rw", "meta_size": 50, "model": "resnet20", "exits": "byot"}, "loss 'l2rw' takes one output"),
])
def test_a_run_the_method_cannot_train_is_refused_before_anything_is_written(tmp_path, kw, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        build_run(_cfg(tmp_path, **kw), DistContext())
    assert not (tmp_path / "run").exists()


def test_cifar_gets_its_thousand_clean_images_by_default_and_nothing_else_does(tmp_path):
    from ols.run_setup import meta_size

    assert meta_size(_cfg(tmp_path, dataset="cifar100", loss="l2rw")) == 1000
    assert meta_size(_cfg(tmp_path, dataset="cifar100", loss="ce")) == 0
    assert meta_size(_cfg(tmp_path, dataset="cifar10", loss="mwnet", meta_size=500)) == 500
    assert meta_size(_cfg(tmp_path, loss="l2rw")) == 0  # digits: the run refuses, and says why


def test_the_meta_learning_methods_refuse_cuda_graphs_by_name(tmp_path, monkeypatch):
    import ols.run_setup as run_setup

    monkeypatch.setattr(run_setup, "graph_refusal", lambda *a, **k: None)  # as if on CUDA with data on it
    for loss, words in (("l2rw", "second-order meta step"), ("bmm", "warm-up and bootstrapping steps differ"),
                        ("pencil", "label distribution by a gradient step")):
        with pytest.raises(ValueError, match=f"--cuda-graph cannot capture loss '{loss}': .*{words}"):
            build_run(_cfg(tmp_path, loss=loss, meta_size=50, cuda_graph=True), DistContext())


def test_the_cli_says_so_in_one_line_with_exit_status_2(tmp_path, capsys):
    assert main(["train", "--loss", "mwnet", "--epochs", "1", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "give --meta-size N" in err[0]
    assert main(["train", "--loss", "l2rw", "--meta-size", "50", "--val-fraction", "0.1", "--out",
                 str(tmp_path / "y")]) == 2
    assert "drop --val-fraction" in capsys.readouterr().err


@pytest.mark.parametrize("name,classes,samples", [("table7-noise-cifar100", 100, 50_000),
                                                  ("table7-methods-fashion-mnist", 10, 2_000)])
def test_the_table_vii_specs_hold_every_row_and_each_builds_its_loss(name, classes, samples, tmp_path):
    from ols.config import config_from_dict
    from ols.experiments.spec import load_spec
    from ols.run_setup import build_loss

    spec = load_spec(name)
    losses = {run.config["loss"] for run in spec.runs()}
    assert {"ce", "ls", "ols", "sce", "l2rw", "mwnet", "bmm", "pencil", "self_learning"} <= losses
    combined = {run.config["loss"] for run in spec.runs()
                if run.config.get("loss_args", {}).get("base") == "ols"}
    assert combined == {"l2rw", "mwnet", "bmm", "pencil", "self_learning"}  # OLS under each method
    for run in spec.runs()[::3]:  # one seed of each row: its options are the loss's own
        build_loss(config_from_dict(run.config), classes, samples)
    assert main(["sweep", name, "--dry-run", "--out", str(tmp_path / "sweep")]) == 0
