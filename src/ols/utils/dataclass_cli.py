"""Dataclasses as command lines and checked mappings: one field, one flag, one type, one check.

Types come from the real type hints (``typing.get_type_hints``), so ``Optional[int]``,
``List[str]`` and ``Dict[str, Any]`` fields all work. Supported field types: ``bool``,
``int``, ``float``, ``str``, ``Optional`` of these, ``List[int]``, ``List[str]`` and
``Dict[str, Any]`` (a repeatable ``KEY=VALUE`` flag). A field's ``metadata`` may give
``help``, ``flag`` (its flag name) and ``choices``.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import typing
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple


def option(default: Any, help: str, **metadata: Any) -> Any:
    """A dataclass field with ``help`` (and ``flag``, ``choices``, ...) metadata; a list or dict is copied."""
    meta = {"help": help, **metadata}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@functools.cache
def _hints(cls: type) -> Dict[str, Any]:
    """``typing.get_type_hints(cls)``, evaluated once a class (it compiles every annotation)."""
    return typing.get_type_hints(cls)


def field_kind(cls: type, name: str) -> Tuple[Any, bool]:
    """``(base type, optional)`` of field ``name``: ``Optional[int]`` -> ``(int, True)``."""
    hint = _hints(cls)[name]
    if typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0], True
    return hint, False


def _describe(base: Any, optional: bool) -> str:
    origin = typing.get_origin(base)
    if origin is dict:
        text = "a mapping"
    elif origin is list:
        text = f"a list of {typing.get_args(base)[0].__name__}"
    else:
        text = base.__name__
    return f"{text} or null" if optional else text


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_field_value(cls: type, name: str, value: Any, where: str = "") -> Any:
    """``value`` converted to field ``name``'s type, or a ``ValueError`` naming the key.

    Ints are accepted for floats, and numeric strings such as ``1e-4`` (which YAML 1.1
    reads as text) for floats too.
    """
    base, optional = field_kind(cls, name)
    bad = ValueError(f"{where}key {name!r} must be {_describe(base, optional)}, got {value!r} "
                     f"({type(value).__name__})")
    if value is None:
        if optional:
            return None
        raise bad
    origin = typing.get_origin(base)
    if base is bool and isinstance(value, bool):
        return value
    if base is int and _is_int(value):
        return value
    if base is float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise bad from None
        if _is_int(value) or isinstance(value, float):
            return float(value)
    if base is str and isinstance(value, str):
        return value
    if origin is list and isinstance(value, (list, tuple)):
        item = typing.get_args(base)[0]
        if all(_is_int(v) if item is int else isinstance(v, item) for v in value):
            return list(value)
    if origin is dict and isinstance(value, Mapping):
        return dict(value)
    raise bad


def checked_fields(cls: type, values: Mapping[str, Any], where: str = "") -> Dict[str, Any]:
    """``values`` checked and converted as dataclass ``cls``'s keyword arguments.

    An unknown key (with a did-you-mean) or a wrong type is a ``ValueError`` naming the key,
    prefixed by ``where``.
    """
    names = [f.name for f in dataclasses.fields(cls)]
    checked = {}
    for key, value in values.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{where}unknown key {key!r}{hint}; known keys: {', '.join(names)}")
        checked[key] = check_field_value(cls, key, value, where)
    return checked


def parse_value(text: str) -> Any:
    """``"0.2"`` -> 0.2, ``"3"`` -> 3, ``"true"`` -> True, ``"none"`` -> None, else the text."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _key_value(text: str) -> tuple:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip().replace("-", "_"), parse_value(value.strip())


def field_default(f: dataclasses.Field) -> Any:
    """The default value of a dataclass field (a fresh one for ``default_factory`` fields)."""
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type,
                            groups: Optional[Mapping[str, str]] = None,
                            names: Optional[Mapping[str, Sequence[str]]] = None) -> None:
    """One flag per field of dataclass ``cls``; every default is ``None`` (= not given).

    ``groups`` maps a field to the title of the help section it opens (later fields join
    it until the next); ``names`` maps a field to the names it accepts, listed in its help.
    """
    target: Any = parser
    for f in dataclasses.fields(cls):
        if groups and f.name in groups:
            target = parser.add_argument_group(groups[f.name])
        flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
        known = f"; one of: {', '.join(names[f.name])}" if names and f.name in names else ""
        helptext = f"{f.metadata.get('help', '')}{known} (default: {field_default(f)})"
        base, _ = field_kind(cls, f.name)
        origin = typing.get_origin(base)
        kw: Dict[str, Any] = {"dest": f.name, "default": None, "help": helptext}
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        if origin is dict:
            target.add_argument(flag, action="append", type=_key_value, metavar="KEY=VALUE", **kw)
        elif base is bool:
            target.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif origin is list:
            target.add_argument(flag, type=typing.get_args(base)[0], nargs="*", **kw)
        else:
            target.add_argument(flag, type=base, **kw)


def given_arguments(args: argparse.Namespace, cls: type) -> Dict[str, Any]:
    """The fields of ``cls`` set on the command line (``None`` means not given)."""
    out = {}
    for f in dataclasses.fields(cls):
        given = getattr(args, f.name, None)
        if given is not None:
            out[f.name] = dict(given) if typing.get_origin(field_kind(cls, f.name)[0]) is dict else given
    return out
