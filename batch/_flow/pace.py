"""The rate learned for one endpoint, shared by every Python worker of a host: the state the control law reads.

A rate cap answers 429 at once, so a client that only limits concurrency keeps
re-sending into a full bucket. Pacing on a rate avoids that. ``LearnedRate`` keeps
what the law in ``batch._flow.law`` needs (the rate, the cap measured at the last
429, the best rate delivered lately, counts of requests sent and answered over the
last half second) and applies the law's steps: ``success`` may raise the rate,
``rate_limited`` cuts it, ``stated`` takes the endpoint's own figure. ``reserve``
books the next request's turn at the rate (``batch._flow.rate.book``).

The state lives in a ``Slab`` (``batch._flow.shared``): shared by every worker on the
host when given a key, so that the workers of one machine learn one rate together,
as one client, and a second job on the endpoint starts from it (see ``restart``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from . import law
from .rate import after, book
from .shared import Cells, Slab

__all__ = ["LearnedRate", "LEARNED_TTL", "STATED_TTL"]

#: Answers needed in the last window before a 429 measures a delivered rate.
MIN_SAMPLES = 20
#: The best delivered rate fades by half every this many seconds (``law.KEEP_OF_PEAK`` reads it).
PEAK_HALF_LIFE = 30.0
#: Bumped when the cells below change meaning, so a file laid out by another version starts afresh.
LAYOUT = 10.0
#: A window of counts is kept in this many slots.
SLOTS = 25
#: Seconds a worker may keep its counts to itself before adding them to the shared cells (fewer locks).
FLUSH = 0.005
#: Seconds with no answer after which the answers that follow are measured on their own (``_rate_of``): a
#: window of answers that straddles a quiet spell (the moment between two jobs) is no rate the endpoint
#: allowed, and a 429 at a warm start cut to it (285 a second, against a cap of 970). Sent requests are
#: measured from a quiet spell of a window: a pause's probes go a quarter of a second apart.
ANSWER_GAP = 0.1
#: Seconds a pace may go unused before the burst it banked is forfeit. The burst lets the pacer's own late
#: wake-ups catch up within a busy stretch; sent at once after an idle spell (a new job, a task's start) it
#: lands on top of a full rate, and a concurrency cap kept at its rate refuses it: five refusals in a row at
#: a warm start against the concurrency profile, a storm, and a cut to half the rate.
UNUSED = 0.1
#: After a quiet spell a rate learned from 429s is kept this long (a second job right after the first
#: starts at it); older, the endpoint is learned afresh: the cap, or who else shares it, may have changed.
LEARNED_TTL = 60.0
#: A rate the endpoint stated in its headers is kept this long after a quiet spell.
STATED_TTL = 600.0
#: Seconds within which storms seen by several workers are one storm.
STORM_GAP = 1.0
#: Seconds at most after a new busy period kept the last one's rate that no 429 cuts it (``rate_limited``): its
#: opening volley, whose answers come a latency after the start; the hold ends sooner, a window after them.
KEPT_HOLD = 2.0
#: A budget spread over its window (``resumed``) is held, unprobed, for this many windows.
HOLD_WINDOWS = 3.0

# Cells of the slab. Times are ``clock()`` readings; RATE 0 means no pace yet. Until MEASURING_UNTIL, the
# answers of requests sent before the last 429 raise its CEILING, up to RATE_REFUSED, the rate it came at.
# WINDOW is the length of the window whose budget was spread (0: none seen), PROBED_AT the last step above a cap,
# KEPT_AT when a new busy period kept the rate of the one before (NEVER once its opening is over, see KEPT_HOLD).
(VERSION, RATE, BURST, NEXT, CEILING, CUTS, MEASURED, STREAK, BEST, BEST_AT, LAST_CHANGE, LAST_CUT,
 FIRST_DONE, LAST_DONE, FIRST_SENT, LAST_SENT, SENT_SINCE, CHECKED, STATED, DONE_TOTAL, STORM_AT, STORM_DELIVERED,
 HOLD_UNTIL, RESUMED_AT, RESUMED_DONE, FROM_START, REFUSED_SENT, MEASURING_UNTIL, RATE_REFUSED, WINDOW,
 PROBED_AT, KEPT_AT) = range(32)
DONE_RING = 32
SENT_RING = DONE_RING + 2 * (SLOTS + 1)
SIZE = SENT_RING + 2 * (SLOTS + 1)
NEVER = float("-inf")


class LearnedRate:
    """The rate for one endpoint. ``window``: seconds of answers a delivered rate is measured over (and
    the least time between two cuts: one overshoot's burst of 429s is one signal). ``interval``: the
    least time between two raises. ``share``: a key naming the endpoint; every worker of the host with
    the same key reads and writes the same rate."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, window: float = 0.5,
                 interval: float = 0.1, share: str | None = None) -> None:
        self.clock, self.window, self.interval = clock, window, interval
        self.slot = window / SLOTS
        self.slab = Slab(SIZE, share)
        self.v: Cells = self.slab.values
        # Counts kept in this worker for up to ``FLUSH`` seconds, so that most requests take no lock.
        self._sent = self._done = 0
        self._flushed = NEVER
        now = clock()
        self.slab.lock()
        try:
            # A file from another layout, or from before a reboot (the clock went back), is started afresh.
            if self.v[VERSION] != LAYOUT or self._quiet(now) < 0:
                self._reset()
        finally:
            self.slab.unlock()

    def _reset(self) -> None:
        v = self.v
        self.slab.clear()
        for i in (CHECKED, LAST_CHANGE, LAST_CUT, FIRST_DONE, LAST_DONE, FIRST_SENT, LAST_SENT, STORM_AT, RESUMED_AT,
                  REFUSED_SENT, MEASURING_UNTIL, PROBED_AT, KEPT_AT):
            v[i] = NEVER
        v[VERSION] = LAYOUT

    @property
    def rate(self) -> float | None:
        return self.v[RATE] or None

    @property
    def ceiling(self) -> float:
        """The delivered rate when the last 429 came (raised by the answers of the half second after it, see
        ``success``): the best guess of the cap."""
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
            if now - v[NEXT] > UNUSED:
                v[NEXT] = after(now, v[RATE], v[BURST])
            v[NEXT], wait = book(v[NEXT], now, 1.0, v[RATE], v[BURST])
        finally:
            self.slab.unlock()
        return wait

    @property
    def stated_rate(self) -> float:
        """Requests per second the endpoint stated (``x-ratelimit-limit-requests``); 0 when it said nothing."""
        return self.v[STATED]

    def restart(self) -> bool:
        """A new busy period after a quiet spell (a second job): keep the rate where that is safe.

        A rate the endpoint stated is kept for ``STATED_TTL`` after the host's last request, one learned
        from 429s for ``LEARNED_TTL``; older, the endpoint is learned afresh. A kept rate keeps how often
        it was measured, so one measured twice is checked again by probing from the first small step: a
        search (``law.SEARCH_RAMPING``) from a rate that was the cap a moment ago would only overrun it,
        and no 429 cuts it before a window of the new job's answers is in (``KEPT_HOLD`` at most), unless
        a storm comes first (``storm``). A window's budget rate held by ``resumed`` stays held for the
        windows left of its hold: it is the endpoint's budget, not the last job's.
        True when forgotten.
        """
        v = self.v
        now = self.clock()
        self.slab.lock()
        try:
            self._flush(now)
            quiet = self._quiet(now)
            if quiet <= (STATED_TTL if v[STATED] else LEARNED_TTL):
                if quiet > self.window:  # the host was quiet too: the last storm was another job's
                    v[STREAK], v[STORM_AT] = 0.0, NEVER
                return False
            self._reset()
            return True
        finally:
            self.slab.unlock()

    def stated(self, limit_per_minute: float | None) -> None:
        """The endpoint said its limit: start there, and never probe above it."""
        stated = law.stated_rate(limit_per_minute)
        v = self.v
        if not stated or stated == v[STATED]:
            return
        now = self.clock()
        self.slab.lock()
        try:
            v[STATED] = stated
            if not v[RATE] or v[RATE] > stated or not v[MEASURED]:
                self._set(stated, now)
                v[NEXT] = after(now, stated, v[BURST])
            v[CEILING] = max(v[CEILING], stated) if v[MEASURED] else stated
            v[MEASURED] = max(v[MEASURED], 2.0)
        finally:
            self.slab.unlock()

    def sent(self) -> None:
        """A request went out: while nothing is answered, what we send is all there is to go by."""
        now = self.clock()
        self._sent += 1
        if now - self._flushed >= FLUSH:
            self._flush_locked(now)

    def success(self, probe: bool = True) -> None:
        """An answer came; ``probe`` False when too little work is left to probe above the cap
        (``law.worth_probing``): the rate is then brought just under it (``law.CLOSING``)."""
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
            if now < v[MEASURING_UNTIL]:  # a rising rate is delivered late: answers still in measure the cap
                v[CEILING] = max(v[CEILING], min(self._rate_of(DONE_RING, FIRST_DONE, now), v[RATE_REFUSED],
                                                 v[STATED] or v[RATE_REFUSED]))
            # A window answers a probe only when its budget runs out, so above a window's budget one step is
            # taken per window: a step each interval would spend the next window in a burst before any 429.
            held = now < v[HOLD_UNTIL] or now - v[PROBED_AT] < v[WINDOW]
            new, streak = law.raised(rate, v[CEILING], int(v[MEASURED]), int(v[STREAK]), v[STATED],
                                     probe=probe and not held, closing=not probe)
            if new > rate >= v[CEILING]:
                v[PROBED_AT] = now
            v[STREAK] = streak
            self._set(new, now)
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
            answering = now - v[FIRST_DONE]
            if v[KEPT_AT] != NEVER:
                # A rate kept from the last job holds through the first window of this one's answers: a 429 then
                # is the opening volley overrunning the server's burst, and what a ramp delivers is no rate
                # (cutting to it halved warm starts against a concurrency cap).
                opening = now - v[KEPT_AT] < KEPT_HOLD and (v[FIRST_DONE] < v[KEPT_AT] or answering < self.window)
                if not opening:
                    v[KEPT_AT] = NEVER
                elif rate:
                    return
            measured = self._recent(DONE_RING, now) >= MIN_SAMPLES and answering >= self.interval
            if not (measured or rate) and self._recent(SENT_RING, now) < MIN_SAMPLES:
                return  # nothing to learn from yet: the server's Retry-After pause is the answer
            v[LAST_CUT], v[STREAK] = now, 0.0
            if measured:
                delivered = self._rate_of(DONE_RING, FIRST_DONE, now)
                v[CEILING] = delivered
                v[MEASURED] += 1
                v[MEASURING_UNTIL], v[RATE_REFUSED] = now + self.window, rate or delivered
                new = law.cut(rate, delivered, self._peak(delivered, now))
            else:
                opening = now - v[FIRST_SENT] < self.window
                volley = (self._rate_of(SENT_RING, FIRST_SENT, now)
                          if self._recent(SENT_RING, now) >= MIN_SAMPLES else 0.0)
                unmeasured = law.unmeasured_cut(rate, volley, opening, bool(v[MEASURED]))
                if unmeasured is None:
                    return
                new = unmeasured
            self._lowered(new, now)
        finally:
            self.slab.unlock()

    def storm(self) -> None:
        """A storm began: most answers are 429s. Noted (once for all the workers that see it) with the rate
        delivered as it came, for ``resumed`` to tell a budget spent in a burst."""
        v = self.v
        now = self.clock()
        self.slab.lock()
        try:
            self._flush(now)
            v[KEPT_AT] = NEVER  # a storm says the kept rate is wrong: its 429s cut it
            if now - v[STORM_AT] < STORM_GAP:
                return  # the same storm, seen by another worker
            delivered = self._rate_of(DONE_RING, FIRST_DONE, now)
            if v[STORM_AT] >= v[RESUMED_AT]:  # a later storm of the same pause: nothing was delivered in it
                delivered = max(delivered, v[STORM_DELIVERED])
            v[STORM_AT], v[STORM_DELIVERED] = now, delivered
        finally:
            self.slab.unlock()

    def refused(self, sent_at: float) -> None:
        """A request sent at ``sent_at`` (a ``clock()`` time) was refused during a storm: the limit had not
        refilled yet then."""
        self.slab.lock()
        try:
            self.v[REFUSED_SENT] = max(self.v[REFUSED_SENT], sent_at)
        finally:
            self.slab.unlock()

    def resumed(self, sent_at: float) -> None:
        """A request sent at ``sent_at`` was answered after a storm: the limit refilled (a window turned) after
        the last refused request of any worker was sent and before this one was; halfway is the guess.

        Between two such turns with a storm in between, what got through is one window's budget and the
        time between them its length. When that budget was spent in a burst (``law.spread_rate``), pace at
        budget over length and hold there for ``HOLD_WINDOWS`` windows: each window is then spent evenly
        instead of in its first moments. After the hold the rate is probed one step a window (``success``): a
        window refuses a rate above its budget only once that budget is spent. Until a first turn is seen, the
        start of the busy period stands for one: what got through from then is only part of a window's budget,
        taken only when below the pace (so the next window is not spent in a burst too) and held for that span
        alone.
        """
        v = self.v
        now = self.clock()
        self.slab.lock()
        try:
            self._flush(now)
            if v[STORM_AT] < v[RESUMED_AT]:
                return  # this pause's turn, already seen by another worker
            at = (max(v[REFUSED_SENT], v[STORM_AT]) + sent_at) / 2
            since, budget, from_start = at - v[RESUMED_AT], v[DONE_TOTAL] - v[RESUMED_DONE], v[FROM_START]
            v[RESUMED_AT], v[RESUMED_DONE], v[FROM_START] = at, v[DONE_TOTAL], 0.0
            if since == float("inf"):
                return
            spread = law.spread_rate(budget, since, v[STORM_DELIVERED])
            if spread is None:
                return
            if from_start and v[RATE] and spread >= v[RATE]:
                return  # the work began inside a window: a part of one measures a rate only to stop the next burst
            v[CEILING], v[MEASURED] = spread, max(v[MEASURED], 2.0)
            if not from_start:  # a whole window, turn to turn: its length paces the probing after the hold
                v[WINDOW] = since
            v[MEASURING_UNTIL] = NEVER  # a refilled window's burst of answers measures no cap
            v[HOLD_UNTIL] = now + (1.0 if from_start else HOLD_WINDOWS) * since
            self._lowered(spread, now)
        finally:
            self.slab.unlock()

    def idle(self) -> None:
        """Nothing of this worker's is in flight: its counts go to the shared cells now. Kept here, they would be
        added when its next request goes, a new job's perhaps, as answers of that moment: the host would seem
        busy through the quiet between two jobs."""
        if self._sent or self._done:
            self._flush_locked(self.clock())

    def close(self) -> None:
        self.slab.close()

    def _flush_locked(self, now: float) -> None:
        self.slab.lock()
        try:
            self._flush(now)
        finally:
            self.slab.unlock()

    # ------------------------------------------------------------ under the lock

    def _flush(self, now: float) -> None:
        """Add the counts this worker kept to itself to the shared cells."""
        v = self.v
        if self._sent:
            if v[RATE] and not self._done and self._quiet(now) > self.window:
                # A new busy period at a rate kept from the last (a job that follows another within a second or
                # two is one too, whether or not ``restart`` was called): its opening volley is held (``KEPT_HOLD``).
                v[KEPT_AT] = now
            if now - v[LAST_SENT] > self.window:
                v[SENT_SINCE] = 0.0  # a new busy period: what was sent before it says nothing about now
                # and its start stands for a window's turn until one is seen: the quiet before it spent nothing
                v[RESUMED_AT], v[RESUMED_DONE], v[FROM_START] = now, v[DONE_TOTAL], 1.0
            self._count(SENT_RING, FIRST_SENT, LAST_SENT, now, self._sent, self.window)
            v[SENT_SINCE] += self._sent
            self._sent = 0
        if self._done:
            self._count(DONE_RING, FIRST_DONE, LAST_DONE, now, self._done, ANSWER_GAP)
            v[DONE_TOTAL] += self._done
            self._done = 0
        self._flushed = now

    def _quiet(self, now: float) -> float:
        """Seconds since the host last sent a request or had one answered (counts still in this worker aside)."""
        return now - max(self.v[LAST_SENT], self.v[LAST_DONE])

    def _count(self, ring: int, first: int, last: int, now: float, events: int, gap: float) -> None:
        """More events in ``ring``; after ``gap`` seconds with none, those that follow are measured on their own."""
        v = self.v
        if now - v[last] > gap:
            v[first] = now
        v[last] = now
        epoch = now // self.slot
        cell = ring + 2 * int(epoch % (SLOTS + 1))
        if v[cell] != epoch:
            v[cell], v[cell + 1] = epoch, 0.0
        v[cell + 1] += events

    def _recent(self, ring: int, now: float, since: float = NEVER) -> float:
        """Events in the current slot and the ``SLOTS`` before it (the last window and a bit), none before
        the slot of ``since``."""
        v = self.v
        epoch = now // self.slot
        oldest = since // self.slot if since != NEVER else NEVER
        total = 0.0
        for back in range(SLOTS + 1):
            stamp = epoch - back
            if stamp < oldest:
                break
            cell = ring + 2 * int(stamp % (SLOTS + 1))
            if v[cell] == stamp:
                total += v[cell + 1]
        return total

    def _rate_of(self, ring: int, first: int, now: float) -> float:
        if self.v[first] == NEVER:
            return 0.0
        counted = self.window + now % self.slot  # what ``_recent`` covers
        # Early on the window is not full yet: dividing by all of it would understate the rate.
        return self._recent(ring, now, self.v[first]) / max(min(counted, now - self.v[first]), self.interval)

    def _peak(self, delivered: float, now: float) -> float:
        """The best delivered rate seen, fading by half every ``PEAK_HALF_LIFE`` seconds."""
        v = self.v
        best = v[BEST]
        faded = best * 0.5 ** ((now - v[BEST_AT]) / PEAK_HALF_LIFE) if best else 0.0
        if delivered >= faded:
            v[BEST], v[BEST_AT] = delivered, now
            return delivered
        return faded

    def _lowered(self, rate: float, now: float) -> None:
        """The pace was lowered to ``rate`` by what the server refused: a cut, or a spent budget spread."""
        v = self.v
        self._set(rate, now)
        v[LAST_CUT], v[STREAK] = now, 0.0
        v[CUTS] += 1
        v[CHECKED], v[SENT_SINCE] = now, 0.0  # whether the new pace is used is measured from here
        # Bookings made at the old pace are void: waiters book again, from now and with no burst,
        # since the 429 says the server has none left.
        v[NEXT] = after(now, rate, v[BURST])

    def _set(self, rate: float, now: float) -> None:
        self.v[LAST_CHANGE], self.v[RATE], self.v[BURST] = now, rate, max(1.0, rate * 0.02)

    def __repr__(self) -> str:
        where = "shared" if self.slab.shared else "private"
        return (f"LearnedRate(rate={self.rate}, ceiling={self.ceiling:.1f}, stated={self.stated_rate:g}/s, "
                f"delivered={self.delivered():.1f}/s, {where})")
