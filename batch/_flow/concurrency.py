"""The concurrency limiter: how many requests may be in flight at once, and a fair line for the rest.

The limit starts at ``INITIAL_IN_FLIGHT`` and grows by one for every successful answer that came back
while the limit was full (so it doubles each round trip while the pool is saturated, as TCP's
slow start does), up to ``maximum``. ``at_least`` raises it at once to what Little's law says a
rate needs at the measured latency. A 429 never lowers it: the answer to a rate limit is the
learned rate (``batch._flow.pace``), and an in-flight cap cut on 429s would only add a second,
slower controller fighting the first.
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["ConcurrencyLimit", "INITIAL_IN_FLIGHT", "LATENCY_WEIGHT"]

#: The first volley of a worker: enough for 640 requests/s at 100 ms before the first answer, few
#: enough that a capped endpoint refuses only the part of it above its burst.
INITIAL_IN_FLIGHT = 64
#: Weight of the newest latency in the moving average the Little's-law floor uses.
LATENCY_WEIGHT = 0.2


class ConcurrencyLimit:
    """An in-flight limit between ``initial`` and ``maximum`` that grows while it is what holds the pool back."""

    def __init__(self, maximum: int, *, initial: int = INITIAL_IN_FLIGHT) -> None:
        self.maximum = maximum
        self.limit = min(maximum, initial)
        self.in_flight = 0
        self.latency = 0.0  # seconds, a moving average of answered requests; 0 until one is answered
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> None:
        if self.in_flight < self.limit and not self._waiters:
            self.in_flight += 1
            return
        future = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled():
                self._release_slot()
            raise

    def release(self, latency: float | None = None) -> None:
        """A request ended; ``latency`` when it was answered with a success (only those count towards the latency
        and slow start), None otherwise."""
        if latency is not None:
            self.latency = latency if not self.latency else self.latency + LATENCY_WEIGHT * (latency - self.latency)
            if self._waiters and self.limit < self.maximum:  # the limit held the pool back: one more
                self.limit += 1
        self._release_slot()

    def at_least(self, needed: int) -> None:
        """Raise the limit to ``needed`` (capped at ``maximum``) when it is lower."""
        if needed > self.limit:
            self.limit = min(self.maximum, needed)
            self._wake()

    def _release_slot(self) -> None:
        self.in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_flight < self.limit:
            future = self._waiters.popleft()
            if not future.done():
                self.in_flight += 1
                future.set_result(None)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def __repr__(self) -> str:
        return f"ConcurrencyLimit(limit={self.limit}, in_flight={self.in_flight}, waiting={len(self._waiters)})"
