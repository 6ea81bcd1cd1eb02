"""The dataclass -> argparse helper reads real type hints, Optional[int] included."""

import argparse
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import pytest

from ols.utils.dataclass_cli import add_dataclass_arguments, check_field_value, given_arguments


@dataclass
class Options:
    count: Optional[int] = field(default=None, metadata={"help": "how many"})
    rate: float = 0.5
    names: List[str] = field(default_factory=list, metadata={"choices": ("a", "b")})
    sizes: List[int] = field(default_factory=list)
    flag: bool = False
    extra: Dict[str, Any] = field(default_factory=dict, metadata={"flag": "--extra-arg"})


def parse(argv):
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, Options)
    return given_arguments(parser.parse_args(argv), Options)


def test_flags_follow_the_type_hints():
    got = parse(["--count", "3", "--rate", "2", "--names", "a", "b", "--sizes", "4", "5", "--flag",
                 "--extra-arg", "k=1", "--extra-arg", "s=none"])
    assert got == {"count": 3, "rate": 2.0, "names": ["a", "b"], "sizes": [4, 5], "flag": True,
                   "extra": {"k": 1, "s": None}}
    assert Options(**got).count == 3
    assert parse([]) == {}
    assert parse(["--no-flag"]) == {"flag": False}


def test_bad_flags_exit_with_argparse_messages(capsys):
    with pytest.raises(SystemExit):
        parse(["--count", "x"])
    assert "invalid int value: 'x'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse(["--names", "c"])
    assert "invalid choice: 'c'" in capsys.readouterr().err


@pytest.mark.parametrize("name,value,want", [
    ("count", None, None), ("count", 4, 4), ("rate", 1, 1.0), ("rate", "1e-4", 1e-4),
    ("sizes", (1, 2), [1, 2]), ("extra", {"a": 1}, {"a": 1}),
])
def test_checked_values(name, value, want):
    assert check_field_value(Options, name, value) == want


@pytest.mark.parametrize("name,value,msg", [
    ("count", 2.5, "key 'count' must be int or null, got 2.5"),
    ("count", True, "key 'count' must be int or null"),
    ("rate", None, "key 'rate' must be float, got None"),
    ("sizes", [1, "2"], "key 'sizes' must be a list of int"),
    ("flag", "yes", "key 'flag' must be bool"),
    ("extra", [1], "key 'extra' must be a mapping"),
])
def test_bad_values_name_the_key(name, value, msg):
    with pytest.raises(ValueError, match=msg):
        check_field_value(Options, name, value, "file.yaml: ")
