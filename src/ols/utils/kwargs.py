"""Keyword values from the command line (``--loss-arg``, ``--data-arg``) converted to the declared types.

``KEY=VALUE`` text is parsed before anyone knows where it goes (``none`` becomes ``None``,
``3`` an int), so the value is converted again here, to the type the receiving
parameter declares: ``reduction=none`` is the string ``"none"``, an int is fine for a
float, and a value of the wrong kind is an error that names the key.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any, Callable, Dict


def _hints(fn: Callable) -> Dict[str, Any]:
    target = fn.__init__ if inspect.isclass(fn) else fn
    try:
        return typing.get_type_hints(target)
    except Exception:  # unresolvable annotations: leave the values as they are
        return {}


def _convert(value: Any, hint: Any) -> Any:
    """``value`` as ``hint`` (raises ``TypeError`` when it cannot be one)."""
    if typing.get_origin(hint) is typing.Union:
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None and len(options) < len(typing.get_args(hint)):
            return None
        hint = options[0] if len(options) == 1 else Any
    if hint is Any or hint is None or not isinstance(hint, type):
        return value
    if hint is str:
        if value is None:
            return "none"
        if isinstance(value, bool):
            return "true" if value else "false"
        return value if isinstance(value, str) else str(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    else:
        return value
    raise TypeError(hint.__name__)


def typed_kwargs(fn: Callable, values: Dict[str, Any], flag: str, owner: str) -> Dict[str, Any]:
    """``values`` converted to the parameter types of ``fn`` (a function or a class).

    ``flag`` and ``owner`` name the source in errors, e.g. ``--loss-arg`` and ``loss 'ols'``.
    """
    hints = _hints(fn)
    out = {}
    for key, value in values.items():
        try:
            out[key] = _convert(value, hints.get(key, Any))
        except TypeError as err:
            raise ValueError(f"{flag} {key}={value!r}: {owner} takes {key} as {err}, got "
                             f"{type(value).__name__}") from None
    return out
