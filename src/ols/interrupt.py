"""Ctrl-C (SIGINT) and SIGTERM as a request to stop at the next batch boundary.

Inside :class:`StopRequest`, the first signal only sets ``requested``; the training loop
checks it between batches, saves and exits, so a batch is never left half-applied. A
second signal raises ``KeyboardInterrupt`` at once.
"""

from __future__ import annotations

import signal
import threading
from typing import Any


class StopRequest:
    """Context manager: ``with StopRequest() as stop: ... if stop.requested: ...``."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested = False
        self._previous: dict = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> StopRequest:
        if self.enabled:
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
