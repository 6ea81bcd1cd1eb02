import argparse

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
