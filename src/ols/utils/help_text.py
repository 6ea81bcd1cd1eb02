"""``--help`` layout shared by ``ols`` and ``ols detect``: epilogs printed line by line."""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.HelpFormatter):
    """argparse's wrapping for descriptions, and the epilog's lines (examples, option lists) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line + "\n" for line in text.splitlines())
        return super()._fill_text(text, width, indent)


def examples(*commands: str) -> str:
    """An ``examples:`` epilog, one indented command a line."""
    return "examples:\n" + "\n".join(f"  {c}" for c in commands)
