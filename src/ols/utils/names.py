"""The one error for a name that is not in a registry, with the nearest known name."""

from __future__ import annotations

import difflib
from typing import Iterable


def unknown_name(kind: str, name: str, known: Iterable[str], also: str = "", plural: str = "") -> ValueError:
    """``unknown loss 'focl' (did you mean 'focal'?); known losses: ...`` as a ``ValueError``.

    ``plural`` defaults to ``kind + "s"``; ``also`` ends the list (``, or timm:<name>``).
    """
    known = sorted(known)
    close = difflib.get_close_matches(str(name), known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    plural = plural or kind + "s"
    return ValueError(f"unknown {kind} {name!r}{hint}; known {plural}: {', '.join(known)}{also}")
