"""Finding an endpoint's request rate from its 429s: additive increase, multiplicative decrease, on the rate.

A rate cap answers 429 quickly, so a client that only limits concurrency keeps
re-sending into a full bucket and most of its traffic becomes 429s. Pacing on a
rate avoids that: a 429 sets the pace a little below what was actually delivered in the
last moment (a good estimate of the cap); while no 429 comes, the pace climbs back
quickly to that level and then creeps above it, in steps that grow the longer no
429 comes, to find spare capacity; the next 429 cuts it again. Requests already
waiting for their turn book again at the new pace, so one cut is not followed by
a volley booked at the old one.

The state lives in a ``Slab``: shared by every worker on the host when given a key,
so that the workers of one machine learn one pace together, as one client.
"""

from __future__ import annotations

import time
from typing import Callable

from .budget import after, book
from .shared import Slab

__all__ = ["AdaptiveRate"]

MAX_STREAK = 10
MIN_SAMPLES = 20
PEAK_HALF_LIFE = 30.0
LAYOUT = 3.0  # bumped when the cells below change meaning, so an old file is laid out afresh
SLOTS = 25    # a window is counted in this many slots
FLUSH = 0.005  # seconds a worker may keep its counts to itself before adding them to the shared cells

# Cells of the slab. Times are ``clock()`` readings; RATE 0 means no pace yet.
(VERSION, RATE, BURST, NEXT, CEILING, CUTS, MEASURED, STREAK, BEST, BEST_AT, LAST_CHANGE, LAST_CUT,
 FIRST_DONE, LAST_DONE, FIRST_SENT, LAST_SENT, SENT_SINCE, CHECKED) = range(18)
DONE_RING = 18
SENT_RING = DONE_RING + 2 * (SLOTS + 1)
SIZE = SENT_RING + 2 * (SLOTS + 1)
NEVER = float("-inf")


class AdaptiveRate:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic, window: float = 0.5,
                 decrease: float = 0.95, probe: float = 0.01, interval: float = 0.1,
                 floor: float = 0.5, share: str | None = None) -> None:
        """``decrease``: the pace after a 429, as a share of what was delivered. ``probe``: the first step
        above that level per ``interval`` without a 429 (it grows by the same amount every interval).
        ``share``: a key naming the endpoint; every worker on the host with the same key shares the pace."""
        self.clock, self.window, self.decrease = clock, window, decrease
        self.probe, self.interval, self.floor = probe, interval, floor
        self.slot = window / SLOTS
        self.slab = Slab(SIZE, share)
        self.v = self.slab.values
        # Counts kept in this worker for up to ``FLUSH`` seconds, so that most requests take no lock.
        self._sent = self._done = 0
        self._flushed = NEVER
        now = clock()
        self.slab.lock()
        try:
            # A file from another layout, or from before a reboot (the clock went back), is started afresh.
            if self.v[VERSION] != LAYOUT or max(self.v[LAST_SENT], self.v[LAST_DONE]) > now:
                self._reset()
        finally:
            self.slab.unlock()

    def _reset(self) -> None:
        v = self.v
        self.slab.clear()
        for i in (CHECKED, LAST_CHANGE, LAST_CUT, FIRST_DONE, LAST_DONE, FIRST_SENT, LAST_SENT):
            v[i] = NEVER
        v[VERSION] = LAYOUT

    @property
    def rate(self) -> float | None:
        return self.v[RATE] or None

    @property
    def ceiling(self) -> float:
        """The delivered rate when the last 429 came: the best guess of the cap."""
        return self.v[CEILING]

    @property
    def cuts(self) -> int:
        """How many times the pace was cut, so waiters can tell their booking went stale."""
        return int(self.v[CUTS])

    def delivered(self) -> float:
        """Successful answers per second over the last window."""
        now = self.clock()
        self.slab.lock()
        try:
            self._flush(now)
            return self._rate_of(DONE_RING, FIRST_DONE, now)
        finally:
            self.slab.unlock()

    def reserve(self) -> float:
        """Seconds to wait before the next request may start (0 while no pace is set)."""
        v = self.v
        if not v[RATE]:
            return 0.0
        now = self.clock()
        self.slab.lock()
        try:
            self._flush(now)
            v[NEXT], wait = book(v[NEXT], now, 1.0, v[RATE], v[BURST])
        finally:
            self.slab.unlock()
        return wait

    def push_back(self, until: float) -> None:
        """No request starts before ``until`` (the server asked the pool to wait)."""
        v = self.v
        self.slab.lock()
        if v[RATE]:
            v[NEXT] = max(v[NEXT], after(until, v[RATE], v[BURST]))
        self.slab.unlock()

    def forget(self, idle: float) -> bool:
        """Start learning afresh if no worker of the host sent or received anything for ``idle`` seconds:
        what was learned may no longer hold, and a stale pace would throttle or flood new work."""
        v = self.v
        now = self.clock()
        self.slab.lock()
        try:
            self._flush(now)
            if now - max(v[LAST_SENT], v[LAST_DONE]) <= idle:
                return False
            self._reset()
            return True
        finally:
            self.slab.unlock()

    def sent(self) -> None:
        """A request went out: while nothing is answered, what we send is all there is to go by."""
        now = self.clock()
        self._sent += 1
        if now - self._flushed < FLUSH:
            return
        self.slab.lock()
        try:
            self._flush(now)
        finally:
            self.slab.unlock()

    def success(self) -> None:
        v = self.v
        now = self.clock()
        self._done += 1
        if now - self._flushed < FLUSH and (
                not v[RATE] or now - v[LAST_CHANGE] < self.interval or now - v[CHECKED] < self.interval):
            return  # nothing to decide yet: the count waits in this worker for a moment
        self.slab.lock()
        try:
            self._flush(now)
            rate = v[RATE]
            if not rate or now - v[LAST_CHANGE] < self.interval or now - v[CHECKED] < self.interval:
                return
            # Sent since the last look, against what the pace allowed: when the pace is not what holds
            # the pool back (few rows left, a slow endpoint), a higher one would be a guess nothing tested.
            used = v[SENT_SINCE] + 1.0 >= 0.75 * rate * (now - max(v[CHECKED], v[FIRST_SENT]))
            v[CHECKED], v[SENT_SINCE] = now, 0.0
            if not used:
                return
            ceiling = v[CEILING]
            if rate < ceiling:  # recovering: close a good part of the gap to the last known cap
                rate = min(ceiling, rate + max((ceiling - rate) * 0.5, rate * 0.01))
            elif v[MEASURED] < 2:  # no cap measured yet, or one taken while ramping up: look further, fast
                rate *= 1.25 if not v[MEASURED] else 1.1
            else:  # probing for more: small steps right after the cap, larger the longer no 429 comes
                v[STREAK] = min(v[STREAK] + 1, MAX_STREAK)
                rate *= 1.0 + self.probe * v[STREAK]
            self._set(rate, now)
        finally:
            self.slab.unlock()

    def rate_limited(self) -> None:
        """One cut per window: a burst of 429s from one overshoot is one signal, not many."""
        v = self.v
        now = self.clock()
        self.slab.lock()
        try:
            self._flush(now)
            if now - v[LAST_CUT] < self.window:
                return
            rate = v[RATE]
            # A rate needs enough answers over long enough: the first answers of a busy period come in
            # one clump, a round trip after the opening volley, and say nothing about a rate.
            measured = self._recent(DONE_RING, now) >= MIN_SAMPLES and now - v[FIRST_DONE] >= self.interval
            if not (measured or rate) and self._recent(SENT_RING, now) < MIN_SAMPLES:
                return  # nothing to learn from yet: the server's Retry-After pause is the answer
            v[LAST_CUT], v[STREAK] = now, 0.0
            if measured:
                delivered = self._rate_of(DONE_RING, FIRST_DONE, now)
                current = rate or delivered
                # 429s that come whatever our pace (a limit shared with others, injected faults) would walk
                # the pace down cut after cut; half the best rate seen lately is kept.
                keep = self._peak(delivered, now) * 0.5
                v[CEILING] = delivered
                v[MEASURED] += 1
                self._set(max(self.floor, keep, min(current, delivered) * self.decrease), now)
            else:
                # Too few answers to measure. Early in a busy period, the opening volley overran the
                # server's burst before any answer could come back: a pace measured before still holds,
                # and otherwise half of what the volley sent is a start. Later, nothing gets through:
                # halve the pace until something does.
                opening = now - v[FIRST_SENT] < self.window
                if opening and rate and v[MEASURED]:
                    return
                volley = (self._rate_of(SENT_RING, FIRST_SENT, now)
                          if self._recent(SENT_RING, now) >= MIN_SAMPLES else 0.0)
                self._set(max(self.floor, ((volley or rate) if opening else (rate or volley)) * 0.5), now)
            v[CUTS] += 1
            v[CHECKED], v[SENT_SINCE] = now, 0.0  # whether the new pace is used is measured from here
            # Bookings made at the old pace are void: waiters book again, from now and with no burst,
            # since the 429 says the server has none left.
            v[NEXT] = after(now, v[RATE], v[BURST])
        finally:
            self.slab.unlock()

    def close(self) -> None:
        self.slab.close()

    # ------------------------------------------------------------ under the lock

    def _flush(self, now: float) -> None:
        """Add the counts this worker kept to itself to the shared cells."""
        v = self.v
        if self._sent:
            if now - v[LAST_SENT] > self.window:
                v[SENT_SINCE] = 0.0  # a new busy period: what was sent before it says nothing about now
            self._count(SENT_RING, FIRST_SENT, LAST_SENT, now, self._sent)
            v[SENT_SINCE] += self._sent
            self._sent = 0
        if self._done:
            self._count(DONE_RING, FIRST_DONE, LAST_DONE, now, self._done)
            self._done = 0
        self._flushed = now

    def _count(self, ring: int, first: int, last: int, now: float, events: int) -> None:
        """More events in ``ring``; after a quiet spell the new busy period is measured on its own."""
        v = self.v
        if now - v[last] > self.window:
            v[first] = now
        v[last] = now
        epoch = now // self.slot
        cell = ring + 2 * int(epoch % (SLOTS + 1))
        if v[cell] != epoch:
            v[cell], v[cell + 1] = epoch, 0.0
        v[cell + 1] += events

    def _recent(self, ring: int, now: float) -> float:
        """Events in the current slot and the ``SLOTS`` before it: the last window and a bit."""
        v = self.v
        epoch = now // self.slot
        total = 0.0
        for back in range(SLOTS + 1):
            stamp = epoch - back
            cell = ring + 2 * int(stamp % (SLOTS + 1))
            if v[cell] == stamp:
                total += v[cell + 1]
        return total

    def _rate_of(self, ring: int, first: int, now: float) -> float:
        if self.v[first] == NEVER:
            return 0.0
        counted = self.window + now % self.slot  # what ``_recent`` covers
        # Early on the window is not full yet: dividing by all of it would understate the rate.
        return self._recent(ring, now) / max(min(counted, now - self.v[first]), self.interval)

    def _peak(self, delivered: float, now: float) -> float:
        """The best delivered rate seen, fading by half every ``PEAK_HALF_LIFE`` seconds."""
        v = self.v
        best = v[BEST]
        faded = best * 0.5 ** ((now - v[BEST_AT]) / PEAK_HALF_LIFE) if best else 0.0
        if delivered >= faded:
            v[BEST], v[BEST_AT] = delivered, now
            return delivered
        return faded

    def _set(self, rate: float, now: float) -> None:
        self.v[LAST_CHANGE], self.v[RATE], self.v[BURST] = now, rate, max(1.0, rate * 0.02)

    def __repr__(self) -> str:
        where = "shared" if self.slab.shared else "private"
        return (f"AdaptiveRate(rate={self.rate}, ceiling={self.ceiling:.1f}, "
                f"delivered={self.delivered():.1f}/s, {where})")
