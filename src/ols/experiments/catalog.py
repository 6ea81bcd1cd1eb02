"""``ols list-presets``: one line about each shipped config and sweep spec."""

from __future__ import annotations

from pathlib import Path

from ..presets import resolve
from .spec import parse_spec


def first_sentence(text: str) -> str:
    """The first sentence of a file's opening comment, which may run over several comment lines.

    It ends at the first full stop followed by a space (not inside parentheses, as "Sec. V-A"), at a
    comment line starting a new part (``Run:``, ``Sized``), or where the comment ends.
    """
    words = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        body = line.lstrip("#").strip()
        if not body or (words and body.startswith(("Run:", "Sized", "Pick", "ols ", "torchrun"))):
            break
        words.append(body)
    joined = " ".join(words)
    depth = 0
    for i, ch in enumerate(joined):
        depth += (ch == "(") - (ch == ")")
        if ch == "." and depth == 0 and (i + 1 == len(joined) or joined[i + 1] == " "):
            before = joined[:i].rsplit(" ", 1)[-1]
            if len(before) > 3 or not before[:1].isupper():  # not an abbreviation such as "Sec." or "Fig."
                return joined[:i + 1]
    return joined.rstrip(" ,:;")


def preset_summary(kind: str, name: str) -> str:
    """One line about a shipped preset: its file's first comment line, and its size.

    A config adds its epochs and batch size; a spec its number of runs (read with
    PyYAML when installed; the comment alone otherwise).
    """
    path = Path(resolve(name, kind))
    text = path.read_text(encoding="utf-8")
    first = first_sentence(text)
    try:
        import yaml
    except ImportError:
        return first
    data = yaml.safe_load(text) or {}
    if kind == "config":
        size = f"{data.get('epochs', '?')} epochs, batch {data.get('batch_size', '?')}"
    else:
        size = f"{len(parse_spec(data, str(path)).runs())} runs"
    return f"{first} ({size})" if first else size
