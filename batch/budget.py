"""A rate budget: ``rate`` units per second as a schedule of reserved start times.

The generic cell rate algorithm: a reservation is O(1), first come first served,
and never lets more than ``burst`` units through at once. Used for configured
request and token budgets and for the pace learned from 429s.
"""

from __future__ import annotations

import time
from typing import Callable

__all__ = ["RateBudget", "Clock"]

Clock = Callable[[], float]


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

    def restart(self) -> None:
        """Forget the bookings made so far (they were made at another rate)."""
        self._next = self._clock()

    def push_back(self, until: float) -> None:
        self._next = max(self._next, until)

    def __repr__(self) -> str:
        return f"RateBudget(rate={self.rate:g}/s, burst={self.burst:g}, backlog={self._next - self._clock():.3f}s)"
