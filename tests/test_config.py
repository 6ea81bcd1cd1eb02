import argparse
import re

import pytest

from ols.config import TrainConfig, add_config_arguments, config_from_args


def parse(argv):
    p = argparse.ArgumentParser()
    add_config_arguments(p)
    return config_from_args(p.parse_args(argv))


def test_defaults_live_in_the_dataclass():
    assert parse([]) == TrainConfig()


def test_flags_override_and_loss_args():
    cfg = parse(["--loss", "ls", "--lr", "0.2", "--loss-arg", "eps=0.3", "--no-progress"])
    assert cfg.loss == "ls" and cfg.lr == 0.2 and cfg.loss_args == {"eps": 0.3}
    assert cfg.progress is False


@pytest.mark.parametrize("kw,msg", [({"noise_rate": 1.5}, "noise_rate"), ({"epochs": 0}, "epochs"),
                                    ({"schedule": "step"}, "schedule"), ({"lr": 0}, "lr")])
def test_bad_values_name_the_field(kw, msg):
    with pytest.raises(ValueError, match=msg):
        TrainConfig(**kw)


from pathlib import Path  # noqa: E402

from ols.config import config_from_dict, load_config, read_yaml  # noqa: E402

CONFIGS = sorted((Path(__file__).parents[1] / "configs").rglob("*.yaml"))


def test_yaml_gives_keys_and_flags_override(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: resnet20\nlr: 1e-3\nmilestones: [2, 4]\nschedule: multistep\n"
                    "loss_args:\n  eps: 0.2\n")
    cfg = load_config(str(path))
    assert cfg.model == "resnet20" and cfg.lr == 1e-3 and cfg.milestones == [2, 4]  # YAML reads 1e-3 as text
    p = argparse.ArgumentParser()
    add_config_arguments(p)
    over = config_from_args(p.parse_args(["--lr", "0.5", "--milestones", "3", "5"]),
                            {"model": "resnet20", "schedule": "multistep", "milestones": [2, 4]})
    assert over.lr == 0.5 and over.milestones == [3, 5] and over.model == "resnet20"


@pytest.mark.parametrize("text,msg", [
    ("lrr: 0.1\n", "run.yaml: unknown key 'lrr' \\(did you mean 'lr'\\?\\)"),
    ("epochs: ten\n", "run.yaml: key 'epochs' must be int, got 'ten'"),
    ("epochs: 2.5\n", "key 'epochs' must be int"),
    ("nesterov: 1\n", "key 'nesterov' must be bool"),
    ("milestones: 150\n", "key 'milestones' must be a list of int"),
    ("alpha: high\n", "key 'alpha' must be float or null"),
    ("- a list\n", "must hold a mapping"),
    ("model: [unclosed\n", "not valid YAML"),
])
def test_yaml_errors_name_the_key(tmp_path, text, msg):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=msg):
        load_config(str(path))


def test_missing_config_file():
    with pytest.raises(ValueError, match="config file not found: nope.yaml"):
        load_config("nope.yaml")


def test_multistep_needs_milestones():
    with pytest.raises(ValueError, match="needs milestones"):
        config_from_dict({"schedule": "multistep"})


def test_shipped_configs_load_and_follow_the_paper():
    """One recipe per schedule; the network and loss are flags, and the run folder follows them."""
    assert sorted(p.relative_to(CONFIGS[0].parents[1]).as_posix() for p in CONFIGS) == [
        "cifar100/paper.yaml", "finegrained/cub.yaml", "finegrained/list.yaml", "imagenet/paper.yaml"]
    for path in CONFIGS:
        cfg = load_config(str(path))
        for loss in ("ce", "ls", "ols"):
            other = config_from_dict({**read_yaml(str(path)), "loss": loss, "seed": 3})
            assert other.loss == loss and other.out.endswith(f"/{other.model}-{loss}-seed3"), path
        if "cifar100" in path.parts:  # Table II: 300 epochs, batch 128, lr 0.1 /10 at 150, 225, Nesterov
            assert (cfg.dataset, cfg.epochs, cfg.batch_size, cfg.lr, cfg.milestones, cfg.weight_decay,
                    cfg.nesterov) == ("cifar100", 300, 128, 0.1, [150, 225], 5e-4, True), path
        elif "imagenet" in path.parts:  # Table IV
            assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.milestones, cfg.weight_decay) == \
                (250, 256, 0.1, [75, 150, 225], 1e-4), path
        else:  # Table VI
            assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.milestones, cfg.weight_decay) == \
                (100, 64, 0.01, [45, 80], 1e-4), path
        assert cfg.loss == "ols" and cfg.alpha is None  # OLS's own default alpha, 0.5, the paper's
    self_distillation = config_from_dict({**read_yaml(str(CONFIGS[0].parents[1] / "cifar100/paper.yaml")),
                                          "model": "resnet50", "exits": "byot", "loss": "byot+ols"})
    assert self_distillation.out == "runs/cifar100/resnet50-byot+ols-seed0"


def test_out_takes_settings_in_braces():
    assert TrainConfig(model="cnn", loss="ls", seed=2, out="runs/{dataset}/{model}-{loss}-s{seed}").out == \
        "runs/digits/cnn-ls-s2"
    assert TrainConfig(out="runs/plain").out == "runs/plain"
    with pytest.raises(ValueError, match=r"out: \{modle\} is not a setting"):
        TrainConfig(out="runs/{modle}")
    with pytest.raises(ValueError, match="has a brace that is not a"):
        TrainConfig(out="runs/{model")


@pytest.mark.parametrize("kw,words", [
    ({"loss_args": {"mixed_update": "all"}}, "--loss-arg mixed_update=... has no effect without --mixup"),
    ({"loss_args": {"mixed_threshold": 0.6}}, "--loss-arg mixed_threshold=... has no effect"),
    ({"mixup_alpha": 0.2, "mix_off_epoch": 1}, "--mix-off-epoch 1 turns mixing off from the first epoch"),
])
def test_mixing_settings_without_effect_are_refused(kw, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        TrainConfig(**kw)
    TrainConfig(mixup_alpha=0.2, mix_off_epoch=2, loss_args={"mixed_update": "all"})  # with mixing: fine


def test_a_file_that_is_not_utf8_or_not_yaml_is_one_line_naming_it(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_bytes(b"epochs: 1\n\xff\xfe lr: [\n")  # saved in another encoding, or binary
    with pytest.raises(ValueError, match="run.yaml is not UTF-8 text \\(byte 0xff at offset 10\\)") as err:
        load_config(str(path))
    assert "\n" not in str(err.value)
    path.write_text("model: [unclosed\n")
    with pytest.raises(ValueError, match="run.yaml is not valid YAML: ") as err:
        load_config(str(path))
    assert "\n" not in str(err.value)


def test_train_help_is_in_sections_and_lists_the_names(capsys):
    from ols.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    sections = [line[:-1] for line in text.splitlines()
                if line and not line.startswith(" ") and line.endswith(":")]
    assert sections[0] in ("options", "optional arguments")  # argparse's heading; the latter on Python 3.9
    assert sections[1:] == ["data", "Mixup and CutMix", "model and loss", "optimisation",
                            "speed (CUDA)", "run directory and logging", "examples",
                            "--data-arg options, by dataset (KEY=VALUE, repeatable)"]
    assert "ols train -c cifar100/paper --model resnet56 --loss ols" in text  # the examples, as written
    assert "  fashion-mnist   train_per_class=0, test_per_class=0" in text  # each dataset's options
    flat = " ".join(text.split())
    assert "fashion-mnist" in flat and "resnet56" in flat and "label_relaxation" in flat
    assert "see `ols train --help`" not in flat  # the old help pointed at itself


@pytest.mark.parametrize("command", [["eval"], ["sweep"], ["report"], ["detect", "train"]])
def test_every_command_help_ends_with_examples(capsys, command):
    from ols.cli import main

    with pytest.raises(SystemExit):
        main([*command, "--help"])
    text = capsys.readouterr().out
    examples = text[text.index("\nexamples:\n"):].splitlines()[2:]
    assert len(examples) >= 3 and all(line.startswith("  ols ") for line in examples[:3]), examples


@pytest.mark.parametrize("flag,name,near", [("--loss", "focl", "focal"), ("--model", "resnet5", "resnet56"),
                                            ("--dataset", "fashion_mnist", "fashion-mnist")])
def test_a_misspelt_name_gets_the_nearest_one(tmp_path, capsys, flag, name, near):
    from ols.cli import main

    assert main(["train", flag, name, "--epochs", "1", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert f"(did you mean {near!r}?)" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_print_config_gives_a_file_that_trains_the_same_settings(tmp_path, capsys, monkeypatch):
    from ols.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["train", "--print-config", "--loss", "ls", "--loss-arg", "eps=0.2", "--epochs", "3"]) == 0
    text = capsys.readouterr().out
    (tmp_path / "run.yaml").write_text(text)
    assert main(["train", "-c", str(tmp_path / "run.yaml"), "--print-config"]) == 0
    assert capsys.readouterr().out == text
    import yaml

    assert config_from_dict(yaml.safe_load(text)) == TrainConfig(loss="ls", loss_args={"eps": 0.2}, epochs=3)
    assert not (tmp_path / "runs").exists()  # nothing was trained or written
