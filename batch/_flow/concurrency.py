"""The concurrency limiter: how many requests may be in flight at once, and a fair line for the rest.

The limit starts at ``INITIAL_IN_FLIGHT`` and grows by one for every successful answer that came back
while the limit was full (so it doubles each round trip while the pool is saturated, as TCP's
slow start does), up to ``maximum``. ``at_least`` raises it at once to what Little's law says a
rate needs at the measured latency. A 429 never lowers it: the answer to a rate limit is the
learned rate (``batch._flow.pace``), and an in-flight cap cut on 429s would only add a second,
slower controller fighting the first.

Slow start stops short of flooding a server that is already as busy as it gets, as HyStart++ (RFC 9406)
does for TCP: once answers take ``QUEUE_GAIN`` times the least latency seen, requests are queueing there,
and the limit grows a quarter as fast (``CSS_DIVISOR``), and only while each round trip's answers still
came faster by at least ``MARGINAL`` of what the limit grew (a server that batches answers more the more
it holds) and took under ``QUEUE_LIMIT`` times the least latency; otherwise it stops growing. A queue at
the server brings no answer sooner, and whatever is queued there when a budget runs out is refused all at
once.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

__all__ = ["ConcurrencyLimit", "INITIAL_IN_FLIGHT", "LATENCY_WEIGHT", "QUEUE_GAIN", "CSS_DIVISOR", "MARGINAL",
           "QUEUE_LIMIT"]

#: The first volley of a worker: enough for 640 requests/s at 100 ms before the first answer, few
#: enough that a capped endpoint refuses only the part of it above its burst.
INITIAL_IN_FLIGHT = 64
#: Weight of the newest latency in the moving average the Little's-law floor uses.
LATENCY_WEIGHT = 0.2
#: Answers taking this many times the least latency seen means requests queue at the server: HyStart++'s rise
#: of an eighth (without its 16 ms cap, which would be noise at a model's latency of seconds).
QUEUE_GAIN = 1.125
#: While they queue, the limit grows one for this many answers (HyStart++'s conservative slow start)...
CSS_DIVISOR = 4
#: ...and only while a round trip's answers came faster than the last one's by at least this share of what
#: the limit grew between them (a limit 20% higher must bring at least 10% more answers a second)...
MARGINAL = 0.5
#: ...and never once answers take this many times the least latency: twice the least latency's worth of
#: answers in flight is as much as BBR keeps (its ``cwnd_gain``), and half of them would be queued.
QUEUE_LIMIT = 2.0


class ConcurrencyLimit:
    """An in-flight limit between ``initial`` and ``maximum`` that grows while it is what holds the pool back."""

    def __init__(self, maximum: int, *, initial: int = INITIAL_IN_FLIGHT,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.maximum = maximum
        self.limit = min(maximum, initial)
        self.in_flight = 0
        self.latency = 0.0  # seconds, a moving average of answered requests; 0 until one is answered
        self.clock = clock
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.restart()

    def restart(self) -> None:
        """A new busy period (a new job): its least latency and round trips are measured afresh."""
        self.min_latency = 0.0  # the least latency answered in this busy period
        self._round_at = float("-inf")
        self._answers = 0  # answered in this round trip
        self._rate = 0.0  # answers a second in the last whole round trip, and the limit when this one began
        self._round_limit = self.limit
        self._base: tuple[float, int] | None = None  # the two when requests began to queue
        self._gaining = True  # answers came faster since then by enough for the limit's growth
        self._credit = 0

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
            self._answered(latency)
            if self._waiters and self.limit < self.maximum:  # the limit held the pool back: one more...
                if self.latency < QUEUE_GAIN * self.min_latency or not self.min_latency:
                    self.limit += 1
                elif self._gaining and self.latency < QUEUE_LIMIT * self.min_latency:
                    # ...or a quarter of one while requests queue and more still answer faster
                    self._credit += 1
                    if self._credit >= CSS_DIVISOR:
                        self._credit = 0
                        self.limit += 1
        self._release_slot()

    def _answered(self, latency: float) -> None:
        """Round trips, each as long as the least latency: their answers a second say whether a higher
        limit still brings answers faster."""
        now = self.clock()
        if latency < self.min_latency or not self.min_latency:
            self.min_latency = latency
        self._answers += 1
        if self._round_at == float("-inf"):
            self._round_at = now
            return
        length = now - self._round_at
        if length < self.min_latency or length <= 0:
            return
        rate = self._answers / length  # the answers of requests sent in the last round, under its limit
        if self.latency < QUEUE_GAIN * self.min_latency:
            self._base, self._gaining = None, True
        elif self._base is None:  # requests began to queue: what more in flight brings is measured from here
            self._base = (max(rate, self._rate), self._round_limit)
        elif self._gaining:  # against where the queue began, not the last round alone: a round's answers
            base_rate, base_limit = self._base  # come in clumps, and one round says little
            self._gaining = rate / base_rate - 1.0 >= MARGINAL * (self._round_limit / base_limit - 1.0)
        self._rate, self._round_limit = rate, self.limit
        self._round_at, self._answers = now, 0

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
