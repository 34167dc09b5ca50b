"""A live progress line on the driver: rows done of total, rows per second, errors, tokens, ETA.

Redrawn in place about once a second on a terminal; silent otherwise, so scheduled
jobs' logs hold the summary and not thousands of carriage returns.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO
from collections.abc import Callable

__all__ = ["Progress"]


class Progress:
    def __init__(self, label: str = "", stream: TextIO | None = None, live: bool | None = None,
                 clock: Callable[[], float] = time.monotonic, interval: float = 1.0) -> None:
        self.label, self.stream = label, stream or sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.clock, self.interval = clock, interval
        self.total = self.done = self.failed = self.tokens = 0
        self.started = clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @classmethod
    def quiet(cls) -> Progress:
        return cls(live=False)

    def start(self, total: int) -> None:
        self.total, self.started = total, self.clock()
        if self.live:
            self._thread = threading.Thread(target=self._tick, name="progress", daemon=True)
            self._thread.start()

    def advance(self, rows: int, failed: int = 0, tokens: int = 0) -> None:
        with self._lock:
            self.done += rows
            self.failed += failed
            self.tokens += tokens
        self._draw()

    def line(self) -> str:
        elapsed = max(self.clock() - self.started, 1e-9)
        rate = self.done / elapsed
        share = f" ({self.done / self.total:.0%})" if self.total else ""
        eta = "" if not rate or self.done >= self.total else f" | ETA {_duration((self.total - self.done) / rate)}"
        prefix = f"[{self.label}] " if self.label else ""
        return (f"{prefix}{self.done:,}/{self.total:,} rows{share} | {rate:,.1f} rows/s | {self.failed:,} errors | "
                f"{self.tokens:,} tokens | {_duration(elapsed)}{eta}")

    def _draw(self) -> None:
        if self.live:
            with self._lock:
                self.stream.write("\r\x1b[2K" + self.line())
                self.stream.flush()

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            self._draw()

    def finish(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self.live:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
