"""Finding an endpoint's request rate from its 429s: additive increase, multiplicative decrease, on the rate.

A rate cap answers 429 quickly, so a client that only limits concurrency keeps
re-sending into a full bucket and most of its traffic becomes 429s. Pacing on a
rate avoids that: the first 429 sets the pace to what was actually delivered in
the last moment (a good estimate of our share of the cap), a little below it;
while no 429 comes, the pace creeps up by a small step per interval to find
spare capacity; the next 429 cuts it again. The sawtooth stays within a few per
cent of the cap and each cycle costs a handful of 429s.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable

from .ratelimit import RateBudget

__all__ = ["AdaptiveRate"]


class AdaptiveRate:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic, window: float = 0.5,
                 decrease: float = 0.95, increase: float = 0.01, interval: float = 0.1,
                 floor: float = 0.5) -> None:
        """``increase`` is the share added per ``interval`` without a 429; ``decrease`` the cut on one."""
        self.clock, self.window, self.decrease = clock, window, decrease
        self.increase, self.interval, self.floor = increase, interval, floor
        self.budget: RateBudget | None = None  # None until the endpoint first says 429
        self._done: deque[float] = deque()
        self._last_change = float("-inf")

    @property
    def rate(self) -> float | None:
        return self.budget.rate if self.budget else None

    def delivered(self) -> float:
        """Successful answers per second over the last window."""
        now = self.clock()
        while self._done and self._done[0] < now - self.window:
            self._done.popleft()
        return len(self._done) / self.window

    def reserve(self) -> float:
        """Seconds to wait before the next request may start (0 while no pace is set)."""
        return self.budget.reserve(1.0) if self.budget else 0.0

    def success(self) -> None:
        now = self.clock()
        self._done.append(now)
        if self.budget and now - self._last_change >= self.interval:
            self._set(self.budget.rate * (1.0 + self.increase), now)

    def rate_limited(self) -> None:
        """One cut per window: a burst of 429s from one overshoot is one signal, not many."""
        now = self.clock()
        if now - self._last_change < self.window and self.budget:
            return
        current = self.budget.rate if self.budget else float("inf")
        delivered = self.delivered()
        target = min(current, delivered if delivered > 0 else current) * self.decrease
        self._set(max(self.floor, target if target != float("inf") else self.floor), now)

    def _set(self, rate: float, now: float) -> None:
        self._last_change = now
        if self.budget is None:
            self.budget = RateBudget(rate, burst=max(1.0, rate * 0.02), clock=self.clock)
        else:
            self.budget.rate = rate
            self.budget.burst = max(1.0, rate * 0.02)

    def __repr__(self) -> str:
        return f"AdaptiveRate(rate={self.rate}, delivered={self.delivered():.1f}/s)"
