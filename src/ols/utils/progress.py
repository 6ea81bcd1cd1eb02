"""A progress bar that appears only on a terminal: tqdm when installed, else a plain one."""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, Optional, TypeVar

T = TypeVar("T")


class _PlainBar:
    def __init__(self, total: int, desc: str):
        self.total, self.desc, self.n, self.start = total, desc, 0, time.perf_counter()
        self.postfix = ""

    def update(self, n: int = 1) -> None:
        self.n += n
        frac = self.n / max(self.total, 1)
        bar = "#" * int(30 * frac)
        elapsed = time.perf_counter() - self.start
        sys.stderr.write(
            f"\r{self.desc} [{bar:<30}] {self.n}/{self.total} {elapsed:5.1f}s {self.postfix}"
        )
        sys.stderr.flush()

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def close(self) -> None:
        sys.stderr.write("\n")
        sys.stderr.flush()


def progress(iterable: Iterable[T], total: int, desc: str, enabled: bool = True,
             initial: int = 0) -> Iterator[T]:
    """Yield from ``iterable`` with a bar on stderr when ``enabled`` and stderr is a TTY.

    ``initial`` items count as already done (a resumed epoch).
    """
    if not (enabled and sys.stderr.isatty()):
        yield from iterable
        return
    bar: Optional[object]
    try:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, initial=initial)
    except ImportError:
        bar = _PlainBar(total, desc)
        bar.n = initial
    try:
        for item in iterable:
            yield item
            bar.update(1)  # type: ignore[attr-defined]
    finally:
        bar.close()  # type: ignore[attr-defined]
