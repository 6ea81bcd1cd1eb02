"""A progress bar that appears only on a terminal: tqdm when installed, else a plain one.

Its text may show a device value (the running loss) through :class:`LaggedValue`, which
never waits for the device: it shows the last value whose copy to the host has finished.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, Iterable, Iterator, Optional, TypeVar

import torch

T = TypeVar("T")


class _PlainBar:
    def __init__(self, total: int, desc: str):
        self.total, self.desc, self.n, self.start = total, desc, 0, time.perf_counter()
        self.postfix = ""

    def update(self, n: int = 1) -> None:
        self.n += n
        elapsed = time.perf_counter() - self.start
        if self.total:
            bar = "#" * int(30 * self.n / self.total)
            text = f"\r{self.desc} [{bar:<30}] {self.n}/{self.total} {elapsed:5.1f}s {self.postfix}"
        else:
            text = f"\r{self.desc} {self.n} {elapsed:5.1f}s {self.postfix}"
        sys.stderr.write(text)
        sys.stderr.flush()

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfix = text

    def close(self) -> None:
        sys.stderr.write("\n")
        sys.stderr.flush()


class LaggedValue:
    """A device scalar for display on the host, read without waiting for the device.

    ``text()`` starts a non-blocking copy of ``value()`` to (pinned) host memory at most
    every ``every`` calls and shows the newest copy that has completed (a CUDA event
    says so); on the CPU the value is at hand and is read directly.
    """

    def __init__(self, value: Callable[[], torch.Tensor], fmt: str = "loss {:.4f}", every: int = 10) -> None:
        self.value, self.fmt, self.every = value, fmt, every
        self.calls, self.shown = 0, ""
        self.pending: Optional[tuple] = None

    def text(self) -> str:
        self.calls += 1
        if self.pending is not None and self.pending[1].query():
            self.shown = self.fmt.format(float(self.pending[0]))
            self.pending = None
        if self.pending is None and (self.calls - 1) % self.every == 0:
            v = self.value().detach()
            if v.device.type != "cuda":
                self.shown = self.fmt.format(float(v))
            else:
                host = torch.empty(v.shape, dtype=v.dtype, pin_memory=True)
                host.copy_(v, non_blocking=True)
                done = torch.cuda.Event()
                done.record()
                self.pending = (host, done)
        return self.shown


def progress(iterable: Iterable[T], total: Optional[int], desc: str, enabled: bool = True,
             initial: int = 0, postfix: Optional[Callable[[], str]] = None) -> Iterator[T]:
    """Yield from ``iterable`` with a bar on stderr when ``enabled`` and stderr is a TTY.

    ``initial`` items count as already done (a resumed epoch); ``postfix()``, called after
    each item while the bar shows, gives the text beside it (see :class:`LaggedValue`).
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
            if postfix is not None:
                bar.set_postfix_str(postfix(), refresh=False)  # type: ignore[attr-defined]
            bar.update(1)  # type: ignore[attr-defined]
    finally:
        bar.close()  # type: ignore[attr-defined]
