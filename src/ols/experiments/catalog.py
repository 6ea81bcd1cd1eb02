"""``ols list-presets``: one line about each shipped config and sweep spec."""

from __future__ import annotations

from pathlib import Path

from ..presets import resolve
from .spec import parse_spec


def preset_summary(kind: str, name: str) -> str:
    """One line about a shipped preset: its file's first comment line, and its size.

    A config adds its epochs and batch size; a spec its number of runs (read with
    PyYAML when installed; the comment alone otherwise).
    """
    path = Path(resolve(name, kind))
    text = path.read_text(encoding="utf-8")
    comments = [line.lstrip("# ").strip().rstrip(" ,:;") for line in text.splitlines()
                if line.startswith("#")]
    first = comments[0] if comments else ""
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
