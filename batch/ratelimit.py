"""Flow control for one endpoint inside one event loop: how many requests may be in flight, and when.

Three ideas, each small:

* ``RateBudget``: requests (or tokens) per second as a schedule of reserved start
  times (the generic cell rate algorithm). A reservation is O(1), first come first
  served, and never sends a burst larger than ``burst`` units.
* ``AdaptiveLimit``: the in-flight cap, found by additive increase and
  multiplicative decrease. Success raises it by about one per round trip; a 429
  cuts it, at most once per round trip, so one storm is one cut.
* ``FlowControl``: both of the above, the pace learned from 429s
  (``batch.adaptive.AdaptiveRate``) and a pool-wide pause after a 429, so that the
  whole pool (not just the one request) backs off as the server asked.

Everything takes ``clock`` and ``sleep`` so tests step a fake clock and never wait.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Awaitable, Callable

from .adaptive import AdaptiveRate
from .budget import Clock, RateBudget

__all__ = ["RateBudget", "AdaptiveLimit", "FlowControl", "INITIAL_IN_FLIGHT"]

INITIAL_IN_FLIGHT = 64
POOL_PAUSE_GAP = 0.5
IDLE_RESTART = 2.0  # seconds without a request in flight after which the pool learns the endpoint afresh

Sleep = Callable[[float], Awaitable[None]]


class AdaptiveLimit:
    """An in-flight cap between ``minimum`` and ``maximum`` that follows the endpoint's capacity."""

    def __init__(self, maximum: int, *, minimum: int = 1, initial: float | None = None,
                 decrease: float = 0.7, slow_start: bool = False, clock: Clock = time.monotonic) -> None:
        """``slow_start``: grow by one per success (doubling each round trip) until the first 429."""
        self.maximum, self.minimum, self.decrease = maximum, minimum, decrease
        self.slow_start = slow_start
        self.limit = float(initial if initial is not None else maximum)
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._clock = clock
        self._last_cut = float("-inf")
        self.rtt = 0.1

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
            self.rtt = 0.8 * self.rtt + 0.2 * latency
        if rate_limited:
            self.slow_start = False
            self._cut()
        elif latency is not None and self.limit < self.maximum:
            step = 1.0 if self.slow_start else 1.0 / max(1.0, self.limit)
            self.limit = min(float(self.maximum), self.limit + step)
        self._release_slot()

    def _cut(self) -> None:
        now = self._clock()
        if now - self._last_cut >= self.rtt:
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
                 sleep: Sleep = asyncio.sleep, share: str | None = None) -> None:
        """``share``: a key naming the endpoint, to learn its pace together with the host's other workers."""
        self.clock, self.sleep = clock, sleep
        # The in-flight cap slow-starts; the answer to 429s is the learned pace, not a smaller cap.
        self.limit = AdaptiveLimit(max_concurrency, initial=min(max_concurrency, INITIAL_IN_FLIGHT),
                                   slow_start=True, decrease=1.0, clock=clock)
        self.pace = AdaptiveRate(clock=clock, share=share)
        self.requests = RateBudget(requests_per_second, clock=clock) if requests_per_second else None
        self.tokens = (RateBudget(tokens_per_second, burst=tokens_per_second, clock=clock)
                       if tokens_per_second else None)
        self.paused_until = 0.0
        self.last_done = clock()
        self._turns: deque[asyncio.Future[None]] = deque()
        self._pacer: asyncio.Task[None] | None = None

    async def admit(self, estimated_tokens: int = 0) -> None:
        """Wait for a slot, then for the pause and the budgets; the slot is held until ``done``."""
        if self.limit.in_flight == 0 and self.clock() - self.last_done > IDLE_RESTART:
            self._restart()
        await self.limit.acquire()
        try:
            await self._wait_turn(estimated_tokens)
        except BaseException:
            self.limit.release()
            raise
        self.pace.sent()

    async def _wait_turn(self, estimated_tokens: int) -> None:
        now = self.clock()
        booked = now  # the configured budgets never change, so they are booked once
        if self.requests:
            booked = max(booked, now + self.requests.reserve(1.0))
        if self.tokens and estimated_tokens:
            booked = max(booked, now + self.tokens.reserve(estimated_tokens))
        while True:
            paused = self.paused_until
            now = self.clock()
            until = max(booked, paused)
            if until <= now:
                break
            await self.sleep(until - now)
            # A 429 that came while we slept holds us back too: the server asked the whole pool to wait.
            if self.paused_until <= paused:
                break
        if self.pace.rate or self._turns:
            await self._paced_turn()

    async def _paced_turn(self) -> None:
        """Wait in line for the pacer, which lets requests go one at a time at the learned pace.

        Turns are booked one at a time, not one per waiter: a backlog booked ahead at an old pace
        would hold requests back long after the pace rose, and would crowd out the other workers
        that share the pace.
        """
        loop = asyncio.get_running_loop()
        turn = loop.create_future()
        self._turns.append(turn)
        if self._pacer is None or self._pacer.done():
            self._pacer = loop.create_task(self._pace_out())
        await turn

    async def _pace_out(self) -> None:
        turns = self._turns
        while turns:
            cuts, paused = self.pace.cuts, self.paused_until
            now = self.clock()
            until = max(paused, now + self.pace.reserve())
            if until > now:
                await self.sleep(until - now)
                # A cut pace or a pause that came while we slept voids the turn: book again.
                if self.pace.cuts != cuts or self.paused_until > paused:
                    continue
            while turns:
                turn = turns.popleft()
                if not turn.done():  # a waiter that gave up is skipped
                    turn.set_result(None)
                    break

    def _restart(self) -> None:
        """After a long quiet spell (a new Spark job in a reused worker), ramp up afresh; the pace is
        learned afresh too unless another worker of the host is using it."""
        self.pace.forget(IDLE_RESTART)
        self.limit.limit = float(min(self.limit.maximum, INITIAL_IN_FLIGHT))
        self.limit.slow_start = True

    def done(self, latency: float | None, *, rate_limited: bool = False, token_error: int = 0) -> None:
        self.last_done = self.clock()
        if self.tokens and token_error:
            self.tokens.adjust(token_error)
        if rate_limited:
            self.pace.rate_limited()
        elif latency is not None:
            self.pace.success()
        self.limit.release(latency, rate_limited=rate_limited)

    def pause(self, seconds: float) -> bool:
        """The server said "wait": nobody in this pool starts a request before then.

        At most one pool-wide pause per ``POOL_PAUSE_GAP`` after the last one ended: 429s that keep
        coming whatever we do (a shared limit) would otherwise hold the pool still; the pace is the
        lasting answer. Returns False when only the caller should wait.
        """
        now = self.clock()
        until = now + seconds
        if until <= self.paused_until:
            return True
        if now < self.paused_until + POOL_PAUSE_GAP and self.paused_until > 0:
            return False
        self.paused_until = until
        if self.requests:
            self.requests.push_back(until)
        self.pace.push_back(until)
        return True

    def close(self) -> None:
        self.pace.close()

    def __repr__(self) -> str:
        return f"FlowControl({self.limit!r}, {self.pace!r}, requests={self.requests!r}, tokens={self.tokens!r})"
