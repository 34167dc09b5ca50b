"""The rate limiter: ``rate`` units per second as a schedule of reserved start times.

The generic cell rate algorithm (GCRA, the virtual-scheduling form of a token bucket):
a reservation is O(1), first come first served, and never lets more than ``burst``
units through at once. ``RateBudget`` holds a configured budget (``requests_per_minute``,
``tokens_per_minute``); ``book`` and ``after`` are the same arithmetic on plain numbers,
for the learned rate whose state lives in shared cells (``batch._flow.pace``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["RateBudget", "Clock", "after", "book"]

Clock = Callable[[], float]


def book(paid_until: float, now: float, amount: float, rate: float, burst: float) -> tuple[float, float]:
    """One reservation: the new ``paid_until`` and how long the caller must wait before using ``amount``."""
    paid_until = max(paid_until, now) + amount / rate
    wait = paid_until - burst / rate - now
    return paid_until, (wait if wait > 1e-9 else 0.0)  # float dust: not worth a trip through the loop


def after(moment: float, rate: float, burst: float) -> float:
    """The ``paid_until`` that lets the next request start at ``moment`` and the ones after it at ``rate``,
    with no burst: after a 429 the server has none left to give."""
    return moment + (burst - 1.0) / rate


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
        self._next, wait = book(self._next, self._clock(), amount, self.rate, self.burst)
        return wait

    def adjust(self, amount: float) -> None:
        """Correct an earlier estimate (tokens are known only once the answer arrives)."""
        self._next += amount / self.rate

    def push_back(self, until: float) -> None:
        """Nothing starts before ``until``, and no burst then: the server asked us to wait."""
        self._next = max(self._next, after(until, self.rate, self.burst))

    def __repr__(self) -> str:
        return f"RateBudget(rate={self.rate:g}/s, burst={self.burst:g}, backlog={self._next - self._clock():.3f}s)"
