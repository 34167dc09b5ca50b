"""Admission for one endpoint inside one event loop: the limiters and the control law applied to requests.

Every request of an ``EndpointClient`` passes ``FlowControl.admit`` before it is sent
and reports ``done`` when its answer (or failure) comes back. In order, a request waits for:

1. a slot under the in-flight limit (``batch._flow.concurrency``);
2. the configured budgets, when the endpoint entry sets ``requests_per_minute`` or
   ``tokens_per_minute`` (``batch._flow.rate``);
3. a pool-wide pause, only while a storm of 429s lasts, with single probe requests
   let through at growing gaps (``batch._flow.law.probe_gap``);
4. its turn at the learned rate (``batch._flow.pace``), handed out one at a time by a pacer.

What an answer teaches goes the other way: a success may raise the rate and, by
Little's law, the in-flight limit; a 429 cuts the rate once per window; the
``x-ratelimit-*`` headers set the rate to what the endpoint states. A single 429 makes
only its own request wait what the server asked (the retry loop in ``batch._client``).

Everything takes ``clock`` and ``sleep`` so tests step a fake clock and never wait.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable

from . import law
from .concurrency import ConcurrencyLimit
from .headers import Budget
from .pace import LearnedRate
from .rate import RateBudget

__all__ = ["FlowControl", "IDLE_RESTART"]

#: Seconds with nothing in flight after which the next request starts a new busy period (a new job):
#: the learned rate is kept or forgotten as ``LearnedRate.restart`` decides.
IDLE_RESTART = 2.0

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class FlowControl:
    """The limiters and the learned rate of one endpoint, for one event loop."""

    def __init__(self, *, max_concurrency: int, requests_per_second: float | None = None,
                 tokens_per_second: float | None = None, clock: Clock = time.monotonic,
                 sleep: Sleep = asyncio.sleep, share: str | None = None) -> None:
        """``share``: a key naming the endpoint, to learn its rate together with the host's other workers."""
        self.clock, self.sleep = clock, sleep
        self.limit = ConcurrencyLimit(max_concurrency, clock=clock)
        self.pace = LearnedRate(clock=clock, share=share)
        self.requests = RateBudget(requests_per_second, clock=clock) if requests_per_second else None
        self.tokens = (RateBudget(tokens_per_second, burst=tokens_per_second, clock=clock)
                       if tokens_per_second else None)
        self.refused = 0.0            # moving share of answers that were 429s (``law.refused_share``)
        self.answers = 0              # answers in this busy period
        self.paused_until = 0.0       # a storm's pool-wide pause ends then, or when a probe is answered
        self.paused_at = float("-inf")
        self.pause_stated = False     # the pause is a wait the server asked for, not a backoff of our own
        self.resuming = False         # a storm began and nothing sent since has been answered yet
        self.probe_at = 0.0
        self.probes = 0
        self.wait = law.DEFAULT_WAIT  # seconds the server last asked a refused request to wait
        self.sent = 0                 # requests sent and not yet done: the others holding a slot wait their turn
        self.sent_total = 0           # requests sent in all: the last one sent is number ``sent_total``
        self.refusals_at = float("-inf")  # when a 429 began the count of refusals among what was sent since:
        self.refusals_from = 0        # the number of the refused request, and how many from it on were refused
        self.refusals = 0
        self.last_done = clock()
        self._turns: deque[asyncio.Future[None]] = deque()
        self._pacer: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ before a request

    async def admit(self, estimated_tokens: int = 0) -> None:
        """Wait for a slot, the budgets, a storm's pause and a turn; the slot is held until ``done``."""
        if self.limit.in_flight == 0:
            now = self.clock()
            if now - self.last_done > IDLE_RESTART and now >= self.paused_until:  # not a pause's quiet
                self._restart()
        await self.limit.acquire()
        try:
            await self._wait_turn(estimated_tokens)
        except BaseException:
            self.limit.release()
            raise
        self.sent += 1
        self.sent_total += 1
        self.pace.sent()

    async def _wait_turn(self, estimated_tokens: int) -> None:
        if self.requests or (self.tokens and estimated_tokens):
            now = self.clock()
            booked = now  # the configured budgets never change, so they are booked once
            if self.requests:
                booked = max(booked, now + self.requests.reserve(1.0))
            if self.tokens and estimated_tokens:
                booked = max(booked, now + self.tokens.reserve(estimated_tokens))
            if booked > now:
                await self.sleep(booked - now)
        if self.paused_until and await self._wait_pause():
            return  # a probe goes at once: the line at the pacer waits for the end of the pause it is sent to find
        if self.pace.rate or self._turns:
            await self._paced_turn()

    async def _wait_pause(self) -> bool:
        """Hold while a storm's pause lasts; the first request (or the pacer, for the first in its line) to find
        a probe due goes as that probe (True)."""
        while True:
            now = self.clock()
            if now >= self.paused_until:
                return False
            if now >= self.probe_at:
                self.probes += 1
                self.probe_at = now + law.probe_gap(self.probes)
                return True
            await self.sleep(min(self.paused_until, self.probe_at) - now)
            if self.clock() == now:  # a clock that stands still (a test's) would hold us for ever
                return False

    async def _paced_turn(self) -> None:
        """Wait in line for the pacer, which lets requests go one at a time at the learned rate.

        Turns are booked one at a time, not one per waiter: a backlog booked ahead at an old rate
        would hold requests back long after the rate rose, and would crowd out the other workers
        that share the rate.
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
            if self.pause_stated and self.paused_until > self.clock() and await self._wait_pause():
                self._release_one()  # the server said when: requests in line wait too, but for its probes
                continue
            cuts = self.pace.cuts
            wait = self.pace.reserve()
            if wait > 0:
                await self.sleep(wait)
                if self.pace.cuts != cuts:  # a cut that came while we slept voids the turn: book again
                    continue
            self._release_one()

    def _release_one(self) -> None:
        turns = self._turns
        while turns:
            turn = turns.popleft()
            if not turn.done():  # a waiter that gave up is skipped
                turn.set_result(None)
                return

    def _restart(self) -> None:
        """A new busy period: the learned rate is kept where safe (see ``LearnedRate.restart``); the
        in-flight limit, reached by answers that came back, is kept, its least latency measured afresh."""
        self.pace.restart()
        self.limit.restart()
        self.refused, self.answers = 0.0, 0
        self.refusals_at = float("-inf")
        self.wait, self.resuming = law.DEFAULT_WAIT, False

    # ------------------------------------------------------------ after a request

    def done(self, latency: float | None, *, rate_limited: bool = False, token_error: int = 0,
             seq: int | None = None) -> None:
        """A request ended: ``latency`` when an answer came (a 429 included), None when it failed otherwise;
        ``seq`` its number (``sent_total`` once it was admitted; None: taken as the last one sent)."""
        now = self.clock()
        self.last_done = now
        self.sent -= 1
        if self.tokens and token_error:
            self.tokens.adjust(token_error)
        if latency is None:
            self.limit.release()
            return
        self.answers += 1
        self.refused = law.refused_share(self.refused, rate_limited, self.answers)
        if rate_limited:
            seq = self.sent_total if seq is None else seq
            if now - self.refusals_at > self.pace.window:  # what was sent from this request on is counted anew
                self.refusals_at, self.refusals_from, self.refusals = now, seq, 1
            elif seq >= self.refusals_from:
                self.refusals += 1
            if self.resuming:
                self.pace.refused(now - latency)
            if self.paused_until <= now or not self.pause_stated:
                self.pace.rate_limited()  # in a stated pause only probes go: what gets through says nothing
            self.limit.release()
            return
        limit, sent = self.limit, self.sent + 1  # this request counts until its slot is released below
        self.pace.success(law.worth_probing(limit.waiting + limit.in_flight - sent, sent, limit.latency, self.wait))
        if self.resuming and now - latency > self.paused_at:  # the first answer sent since a storm began:
            self.resuming = False                               # the limit refilled, and any pause ends
            self.paused_until = min(self.paused_until, now)
            self.pace.resumed(now - latency)
        self.limit.release(latency)
        if not self.sent:
            self.pace.idle()
        rate = self.pace.rate
        if rate:
            self.limit.at_least(law.in_flight_for(rate, self.limit.latency))

    def refused_for(self, seconds: float, stated: bool = True) -> bool:
        """A refused request waits ``seconds``: what the server asked (``stated``), or a backoff of our own.
        In a storm the whole pool waits too (with probes); otherwise only that request does. A stated wait
        also holds the requests already in line at the pacer; a backoff of our own is a guess, and holds
        only those still to come. True when a pool-wide pause holds now."""
        now = self.clock()
        if stated:  # our own backoff grows with each retry of one request: it says nothing of the work left
            self.wait = seconds
        if self.paused_until > now:
            self.paused_until = max(self.paused_until, now + seconds)
            self.pause_stated = self.pause_stated or stated
            return True
        sent_since = self.sent_total - self.refusals_from + 1
        if not (law.is_storm(self.refused) or law.sends_refused(self.refusals, sent_since)):
            return False
        self.paused_until, self.paused_at, self.pause_stated, self.resuming = now + seconds, now, stated, True
        self.refusals_at = float("-inf")  # what the pause ends is counted afresh: a 429 after it is one 429
        self.pace.storm()
        self.probes = 0
        self.probe_at = now + law.probe_gap(0)
        return True

    def stated(self, budget: Budget) -> None:
        """What the endpoint's ``x-ratelimit-*`` headers said about its limits."""
        if budget.limit_requests:
            self.pace.stated(budget.limit_requests)

    def close(self) -> None:
        self.pace.close()

    def __repr__(self) -> str:
        return f"FlowControl({self.limit!r}, {self.pace!r}, requests={self.requests!r}, tokens={self.tokens!r})"
