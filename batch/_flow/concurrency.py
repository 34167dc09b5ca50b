"""The concurrency limiter: how many requests may be in flight at once, and a fair line for the rest.

The limit starts at ``INITIAL_IN_FLIGHT`` and grows by one for every successful answer that came back
while the limit was full (so it doubles each round trip while the pool is saturated, as TCP's
slow start does), up to ``maximum``. ``at_least`` raises it at once to what Little's law says a
rate needs at the measured latency. A 429 never lowers it: the answer to a rate limit is the
learned rate (``batch._flow.pace``), and an in-flight cap cut on 429s would only add a second,
slower controller fighting the first.

Slow start stops short of flooding a server that is already as busy as it gets, after HyStart++ (RFC 9406)
for TCP: once a round trip's quickest answer takes ``QUEUE_GAIN`` times the quickest of the busy period's
round trips, requests are queueing there (a queue delays every answer, the quickest too, while answers of
varied lengths leave each round trip's quickest where it was). The limit then grows a quarter as fast
(``CSS_DIVISOR``), and no further than a quarter above where the queue began plus what answers a second
gained since over ``MARGINAL``: a server that batches, answering more the more it holds, still gets more,
and one that answers no faster stops the growth. A queue at the server brings no answer sooner, and
whatever is queued there when a budget runs out is refused all at once.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

__all__ = ["ConcurrencyLimit", "INITIAL_IN_FLIGHT", "LATENCY_WEIGHT", "QUEUE_GAIN", "ROUND_SAMPLES", "CSS_DIVISOR",
           "MARGINAL"]

#: The first volley of a worker: enough for 640 requests/s at 100 ms before the first answer, few
#: enough that a capped endpoint refuses only the part of it above its burst.
INITIAL_IN_FLIGHT = 64
#: Weight of the newest latency in the moving average the Little's-law floor uses.
LATENCY_WEIGHT = 0.2
#: A round trip's quickest answer taking this many times the quickest of the busy period's round trips means
#: requests queue at the server: HyStart++'s rise of an eighth (without its 16 ms cap, which would be noise at
#: a model's latency of seconds).
QUEUE_GAIN = 1.125
#: Answers of a round trip before its quickest says anything (HyStart++'s ``N_RTT_SAMPLE``).
ROUND_SAMPLES = 8
#: While they queue, the limit grows one for this many answers (HyStart++'s conservative slow start), to at
#: most a ``1 / CSS_DIVISOR`` above where the queue began...
CSS_DIVISOR = 4
#: ...plus what answers a second gained since over this share (a limit 20% higher must have brought 10% more
#: answers a second before it grows on). No bound on latency itself: answers of varied lengths make a round
#: trip's quickest answer wander, and a bound there held slow start where it was for good.
MARGINAL = 0.5


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
        self.min_latency = 0.0  # the least of the busy period's round trips' quickest answers (0: none yet)
        self.queued = 1.0  # this round trip's quickest answer so far over that (the last one's, early in it)
        self._round_at = float("-inf")
        self._round_min = float("inf")
        self._answers = 0  # answered in this round trip
        self._rate = 0.0  # answers a second in the last whole round trip, and the limit when this one began
        self._round_limit = self.limit
        self._base: tuple[float, int] | None = None  # the two when requests began to queue
        self._css_cap = float("inf")  # how far the limit may grow while they queue
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
                if self.queued < QUEUE_GAIN:
                    self.limit += 1
                elif self.limit < self._css_cap:
                    # ...or a quarter of one while requests queue and more still answer faster
                    self._credit += 1
                    if self._credit >= CSS_DIVISOR:
                        self._credit = 0
                        self.limit += 1
        self._release_slot()

    def _answered(self, latency: float) -> None:
        """Round trips, each as long as the average latency: their quickest answers say whether requests
        queue, their answers a second whether a higher limit still brings answers faster."""
        now = self.clock()
        self._answers += 1
        self._round_min = min(self._round_min, latency)
        if self._answers >= ROUND_SAMPLES and self.min_latency:
            self.queued = self._round_min / self.min_latency
            if self.queued >= QUEUE_GAIN and self._base is None and now > self._round_at:
                # requests began to queue: what more in flight brings is measured from the answers a second now
                self._base = (max(self._rate, self._answers / (now - self._round_at)), self._round_limit)
                self._css_cap = self._round_limit * (1.0 + 1.0 / CSS_DIVISOR)
        if self._round_at == float("-inf"):
            self._round_at = now
            return
        length = now - self._round_at
        if length < self.latency or length <= 0:
            return
        if self._answers >= ROUND_SAMPLES and (self._round_min < self.min_latency or not self.min_latency):
            self.min_latency = self._round_min
        rate = self._answers / length  # the answers of requests sent in the last round, under its limit
        if self.queued < QUEUE_GAIN:
            self._base, self._css_cap = None, float("inf")
        elif self._base is not None:  # from where the queue began, not the last round alone:
            base_rate, base_limit = self._base  # a round's answers come in clumps
            gained = max(0.0, rate / base_rate - 1.0)
            self._css_cap = base_limit * (1.0 + 1.0 / CSS_DIVISOR + gained / MARGINAL)
        self._rate, self._round_limit = rate, self.limit
        self._round_at, self._round_min, self._answers = now, float("inf"), 0

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
