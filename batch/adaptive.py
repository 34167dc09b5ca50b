"""Finding an endpoint's request rate from its 429s: additive increase, multiplicative decrease, on the rate.

A rate cap answers 429 quickly, so a client that only limits concurrency keeps
re-sending into a full bucket and most of its traffic becomes 429s. Pacing on a
rate avoids that: a 429 sets the pace a little below what was actually delivered in the
last moment (a good estimate of our share of the cap); while no 429 comes, the
pace climbs back quickly to that level and then creeps above it, in steps that
grow the longer no 429 comes, to find spare capacity; the next 429 cuts it again.
Requests already waiting for their turn book again at the new pace, so one cut
is not followed by a volley booked at the old one.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable

from .budget import RateBudget

__all__ = ["AdaptiveRate"]

MAX_STREAK = 10
MIN_SAMPLES = 20
PEAK_HALF_LIFE = 30.0


class AdaptiveRate:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic, window: float = 0.5,
                 decrease: float = 0.95, probe: float = 0.01, interval: float = 0.1,
                 floor: float = 0.5) -> None:
        """``decrease``: the pace after a 429, as a share of what was delivered. ``probe``: the first step
        above that level per ``interval`` without a 429 (it grows by the same amount every interval)."""
        self.clock, self.window, self.decrease = clock, window, decrease
        self.probe, self.interval, self.floor = probe, interval, floor
        self.budget: RateBudget | None = None  # None until the endpoint first says 429
        self.ceiling = 0.0   # the delivered rate when the last 429 came: our best guess of the cap
        self.cuts = 0        # how many times the pace was cut, so waiters can tell their booking went stale
        self._done: deque[float] = deque()
        self._sent: deque[float] = deque()
        self._best, self._best_at = 0.0, 0.0
        self._last_change = self._last_cut = float("-inf")
        self._streak = 0
        self._first: float | None = None

    @property
    def rate(self) -> float | None:
        return self.budget.rate if self.budget else None

    def delivered(self) -> float:
        """Successful answers per second over the last window."""
        now = self.clock()
        while self._done and self._done[0] < now - self.window:
            self._done.popleft()
        if self._first is None:
            return 0.0
        # Early on the window is not full yet: dividing by all of it would understate the rate.
        return len(self._done) / max(min(self.window, now - self._first), self.interval)

    def reserve(self) -> float:
        """Seconds to wait before the next request may start (0 while no pace is set)."""
        return self.budget.reserve(1.0) if self.budget else 0.0

    def success(self) -> None:
        now = self.clock()
        if not self._done or now - self._done[-1] > self.window:
            self._first = now  # after a quiet spell, measure the new busy period on its own
        self._done.append(now)
        if self._done[0] < now - 2 * self.window:
            self.delivered()
        if self.budget is None or now - self._last_change < self.interval:
            return
        rate = self.budget.rate
        if rate < self.ceiling:  # recovering: close a good part of the gap to the last known cap
            rate = min(self.ceiling, rate + max((self.ceiling - rate) * 0.5, rate * 0.01))
        elif self.cuts < 2:  # the first cap came while the pool was still ramping up: look further
            rate *= 1.1
        else:  # probing for more: small steps right after the cap, larger the longer no 429 comes
            self._streak = min(self._streak + 1, MAX_STREAK)
            rate *= 1.0 + self.probe * self._streak
        self._set(rate, now)

    def rate_limited(self) -> None:
        """One cut per window: a burst of 429s from one overshoot is one signal, not many."""
        now = self.clock()
        if now - self._last_cut < self.window:
            return
        delivered = self.delivered()
        if len(self._done) < MIN_SAMPLES:
            delivered = 0.0  # too few answers to measure anything
        if self.budget is None:
            sent = self._rate_of(self._sent, now)
            if delivered == 0 and len(self._sent) < MIN_SAMPLES:
                return  # nothing to learn from yet: the server's Retry-After pause is the answer
            current = delivered or sent
        else:
            current = self.budget.rate
        self._last_cut, self._streak = now, 0
        self.cuts += 1
        # 429s that come whatever our pace (a limit shared with others, injected faults) would walk the
        # pace down cut after cut; half the best rate seen lately is kept unless nothing gets through.
        keep = self._peak(delivered, now) * 0.5
        if delivered == 0:  # everything refused: halve what we send until something gets through
            self._set(max(self.floor, current * 0.5), now)
        else:  # never more than halve at once: one odd measurement must not throttle the pool for long
            self.ceiling = delivered
            self._set(max(self.floor, keep, min(current, delivered) * self.decrease, current * 0.5), now)
        self.budget.restart()  # bookings made at the old pace are void: waiters book again

    def _peak(self, delivered: float, now: float) -> float:
        """The best delivered rate seen, fading by half every ``PEAK_HALF_LIFE`` seconds."""
        faded = self._best * 0.5 ** ((now - self._best_at) / PEAK_HALF_LIFE) if self._best else 0.0
        if delivered >= faded:
            self._best, self._best_at = delivered, now
            return delivered
        return faded

    def sent(self) -> None:
        """A request went out: while nothing is answered, what we send is all there is to go by."""
        now = self.clock()
        self._sent.append(now)
        if self._sent[0] < now - 2 * self.window:  # keep only the recent past, whatever the volume
            self._rate_of(self._sent, now)

    def _rate_of(self, stamps: deque[float], now: float) -> float:
        while stamps and stamps[0] < now - self.window:
            stamps.popleft()
        return len(stamps) / self.window

    def _set(self, rate: float, now: float) -> None:
        self._last_change = now
        if self.budget is None:
            self.budget = RateBudget(rate, burst=max(1.0, rate * 0.02), clock=self.clock)
        else:
            self.budget.rate = rate
            self.budget.burst = max(1.0, rate * 0.02)

    def __repr__(self) -> str:
        return f"AdaptiveRate(rate={self.rate}, ceiling={self.ceiling:.1f}, delivered={self.delivered():.1f}/s)"
