"""Flow control for one endpoint inside one event loop: how many requests may be in flight, and when.

Three ideas, each small:

* ``RateBudget``: requests (or tokens) per second as a schedule of reserved start
  times (the generic cell rate algorithm). A reservation is O(1), first come first
  served, and never sends a burst larger than ``burst`` units.
* ``AdaptiveLimit``: the in-flight cap, found by additive increase and
  multiplicative decrease. Success raises it by about one per round trip; a 429
  cuts it, at most once per round trip, so one storm is one cut.
* ``FlowControl``: both of the above plus a pool-wide pause after a 429, so that
  the whole pool (not just the one request) backs off as the server asked.

Everything takes ``clock`` and ``sleep`` so tests step a fake clock and never wait.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Awaitable, Callable

__all__ = ["RateBudget", "AdaptiveLimit", "FlowControl"]

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class RateBudget:
    """``rate`` units per second, at most ``burst`` units at once."""

    def __init__(self, rate: float, burst: float | None = None, *, clock: Clock = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = max(1.0, burst if burst is not None else rate / 10.0)
        self._clock = clock
        self._next = clock()  # when the budget spent so far is paid off

    def reserve(self, amount: float = 1.0) -> float:
        """Book ``amount`` units and return how long the caller must wait before using them."""
        now = self._clock()
        self._next = max(self._next, now) + amount / self.rate
        wait = self._next - self.burst / self.rate - now
        return wait if wait > 1e-9 else 0.0  # float dust inside the burst is not worth a trip through the loop

    def adjust(self, amount: float) -> None:
        """Correct an earlier estimate (tokens are known only once the answer arrives)."""
        self._next += amount / self.rate

    def push_back(self, until: float) -> None:
        self._next = max(self._next, until)

    def __repr__(self) -> str:
        return f"RateBudget(rate={self.rate:g}/s, burst={self.burst:g}, backlog={self._next - self._clock():.3f}s)"


class AdaptiveLimit:
    """An in-flight cap between ``minimum`` and ``maximum`` that follows the endpoint's capacity."""

    def __init__(self, maximum: int, *, minimum: int = 1, initial: float | None = None,
                 decrease: float = 0.7, clock: Clock = time.monotonic) -> None:
        self.maximum, self.minimum, self.decrease = maximum, minimum, decrease
        self.limit = float(initial if initial is not None else maximum)
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._clock = clock
        self._last_cut = float("-inf")
        self._rtt = 0.1

    async def acquire(self) -> None:
        if self.in_flight < int(self.limit) and not self._waiters:
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

    def release(self, latency: float | None = None, *, rate_limited: bool = False) -> None:
        if latency is not None:
            self._rtt = 0.8 * self._rtt + 0.2 * latency
        if rate_limited:
            self._cut()
        elif latency is not None and self.limit < self.maximum:
            self.limit = min(float(self.maximum), self.limit + 1.0 / max(1.0, self.limit))
        self._release_slot()

    def _cut(self) -> None:
        now = self._clock()
        if now - self._last_cut >= self._rtt:
            self._last_cut = now
            self.limit = max(float(self.minimum), self.limit * self.decrease)

    def _release_slot(self) -> None:
        self.in_flight -= 1
        while self._waiters and self.in_flight < int(self.limit):
            future = self._waiters.popleft()
            if not future.done():
                self.in_flight += 1
                future.set_result(None)

    def __repr__(self) -> str:
        return f"AdaptiveLimit(limit={self.limit:.1f}, in_flight={self.in_flight}, waiting={len(self._waiters)})"


class FlowControl:
    """Admission for one endpoint: rate budgets, the adaptive cap and the pool-wide pause after a 429."""

    def __init__(self, *, max_concurrency: int, requests_per_second: float | None = None,
                 tokens_per_second: float | None = None, clock: Clock = time.monotonic,
                 sleep: Sleep = asyncio.sleep) -> None:
        self.clock, self.sleep = clock, sleep
        self.limit = AdaptiveLimit(max_concurrency, clock=clock)
        self.requests = RateBudget(requests_per_second, clock=clock) if requests_per_second else None
        self.tokens = (RateBudget(tokens_per_second, burst=tokens_per_second, clock=clock)
                       if tokens_per_second else None)
        self.paused_until = 0.0

    async def admit(self, estimated_tokens: int = 0) -> None:
        """Wait for a slot, then for the pause and the budgets; the slot is held until ``done``."""
        await self.limit.acquire()
        try:
            wait = self.paused_until - self.clock()
            if self.requests:
                wait = max(wait, self.requests.reserve(1.0))
            if self.tokens and estimated_tokens:
                wait = max(wait, self.tokens.reserve(estimated_tokens))
            if wait > 0:
                paused = self.paused_until
                await self.sleep(wait)
                # A 429 that arrived while we slept on the budget holds us back too: the server
                # asked the whole pool to wait, not only the requests that had yet to ask.
                while self.paused_until > paused:
                    paused = self.paused_until
                    wait = paused - self.clock()
                    if wait <= 0:
                        break
                    await self.sleep(wait)
        except BaseException:
            self.limit.release()
            raise

    def done(self, latency: float | None, *, rate_limited: bool = False, token_error: int = 0) -> None:
        if self.tokens and token_error:
            self.tokens.adjust(token_error)
        self.limit.release(latency, rate_limited=rate_limited)

    def pause(self, seconds: float) -> None:
        """The server said "wait": nobody in this pool starts a request before then."""
        until = self.clock() + seconds
        self.paused_until = max(self.paused_until, until)
        if self.requests:
            self.requests.push_back(until)

    def __repr__(self) -> str:
        return f"FlowControl({self.limit!r}, requests={self.requests!r}, tokens={self.tokens!r})"
