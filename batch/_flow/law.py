"""The control law: pure functions from what was observed to the next sending rate, in-flight limit or pause.

No clock, no I/O and no state of their own, so they are tested as tables
(``tests/test_flow_law.py``). ``batch._flow.pace`` keeps the state they read and
write; ``batch._flow.control`` applies them to requests. The ideas, in order:

* **Additive increase, multiplicative decrease on the rate** (Jacobson 1988, on a rate rather than a
  window): a 429 sets the rate a little below what was *delivered* in the last moment, the best
  estimate of the cap (raised by the answers still in for half a second after it, those of requests
  sent before it: a rising rate is delivered late); while no 429 comes the rate climbs back to that
  cap quickly, then probes above it in steps that grow the longer no 429 comes.
* **The endpoint's own figure wins** when it states one (``x-ratelimit-limit-requests``): the rate
  starts there and never probes above it.
* **Little's law** (L = lambda W): to send ``rate`` requests a second that each take ``latency``
  seconds, about ``rate * latency`` must be in flight; the in-flight limit is raised to that at once
  instead of being found one step per round trip.
* **No probing at the end of the work**: a probe finds a few percent more rate at the price of a 429,
  whose request then waits what the server asked. While much work is left that wait overlaps the
  rest; in the last seconds it lengthens the whole run, so once the work left would take less than
  ``PROBE_HORIZON`` server waits the rate is brought just under the cap measured last (``CLOSING``).
* **A budget spent in bursts is spread over its window**: a fixed window (a per-minute limit refilled
  at the minute's turn) answers nothing for long, then everything, then refuses everything once it
  is spent. Two turns of the window (a pool-wide pause ended by a probe) with a storm between them
  measure it: what got through between them is one window's budget, the time between them its length.
  When the rate delivered at the storm was well above budget over length (``BURSTY``), the rate is set
  just under that and held there for a few windows, then probed one step a window.
* **One 429 among successes means "slightly over"**: that request waits what the server asked and
  the rate is cut; the pool does not stop. Only a storm (most recent answers refused, or most of what
  was sent from a refused request on: a spent window, a full concurrency cap) pauses the pool, and
  then single probe requests go out at growing gaps so the pool resumes as soon as one is answered,
  not a rounded-up second later.
"""

from __future__ import annotations

import math

__all__ = [
    "CUT", "KEEP_OF_PEAK", "FLOOR", "RECOVER", "MIN_RECOVER", "SEARCH_UNMEASURED", "SEARCH_RAMPING", "PROBE",
    "MAX_STREAK", "PROBE_HORIZON", "CLOSING", "DEFAULT_WAIT", "HEADROOM", "STORM_WEIGHT", "STORM_SHARE",
    "FIRST_PROBE_GAP", "MAX_PROBE_GAP", "STORM_REFUSED", "sends_refused",
    "raised", "worth_probing", "cut", "unmeasured_cut", "stated_rate", "in_flight_for", "refused_share", "is_storm",
    "probe_gap", "BURSTY", "MIN_WINDOW", "SPREAD_SHARE", "spread_rate",
]

#: The rate after a 429, as a share of the rate delivered when it came: just under the measured cap.
CUT = 0.95
#: A cut never goes below this share of the best rate delivered lately: 429s that come whatever the
#: rate (a limit shared with other clients, faults) would otherwise walk the rate down cut after cut.
KEEP_OF_PEAK = 0.5
#: Requests per second no cut goes below: a rate of zero would never learn anything again.
FLOOR = 0.5
#: Below the last measured cap, each step closes this share of the gap (recovering after a cut)...
RECOVER = 0.5
#: ...and at least this share of the rate, so the last percent of the gap does not take forever.
MIN_RECOVER = 0.01
#: Growth per step when no cap was ever measured: the rate is a guess, look further fast.
SEARCH_UNMEASURED = 1.25
#: Growth per step when the only cap measured came while ramping up (the first 429 of a run).
SEARCH_RAMPING = 1.1
#: Above a cap measured twice, the first probing step; the n-th step without a 429 is ``n * PROBE``.
PROBE = 0.01
#: Probing steps stop growing after this many (a 10% step at most).
MAX_STREAK = 10
#: Probing stops once the work left would take less than this many of the server's last asked waits.
PROBE_HORIZON = 2.0
#: ...and the rate is brought to this share of the cap measured last: a probe made before then may still be
#: draining the server's burst, the cap measured is a few percent high as often as low, and a 429 in the
#: last seconds makes its request, and so the work, end a server's wait later (a second, for whole-second
#: Retry-After), where seven percent of two seconds' rate costs a seventh of a second.
CLOSING = 0.93
#: Seconds a refused request is taken to wait before the server has said (a whole-second Retry-After).
DEFAULT_WAIT = 1.0
#: In-flight requests allowed per request a second a latency needs: twice Little's law, so latency
#: spikes and the jitter of the pacer do not starve the rate.
HEADROOM = 2.0
#: Weight of the newest answer in the moving share of answers that were 429s.
STORM_WEIGHT = 0.2
#: A moving share of 429s at or above this is a storm: five 429s in a row after many successes, or a
#: first answer that is a 429; one in two refused, alternating, stays below it (about 0.56).
STORM_SHARE = 0.6
#: Seconds before the first probe request of a pool-wide pause; each later gap doubles...
FIRST_PROBE_GAP = 0.05
#: ...up to this many seconds: the most of a refilled budget (a window's turn) left unused.
MAX_PROBE_GAP = 0.25


def raised(rate: float, ceiling: float, measured: int, streak: int, stated: float = 0.0,
           probe: bool = True, closing: bool = False) -> tuple[float, int]:
    """One step up after an interval with no 429 in which the rate was used: ``(new rate, new streak)``.

    ``ceiling`` is the cap the last 429 measured (``LearnedRate.ceiling``), ``measured`` how many 429s measured it,
    ``streak`` how many probing steps came in a row, ``stated`` the endpoint's own limit (0: none),
    ``probe`` False while a rate is held (no step above a measured ceiling), ``closing`` True near the end
    of the work (``worth_probing`` False): no step above ``CLOSING`` of a measured ceiling, and a rate
    above that is brought down to it. Either way a later probe starts again from the first step.
    """
    if closing and measured:  # the last seconds: aim under the cap
        ceiling, streak = ceiling * CLOSING, 0
        if rate >= ceiling:
            return (min(ceiling, stated) if stated else ceiling), streak
    elif not probe and measured and rate >= ceiling:
        return rate, 0
    if rate < ceiling:
        new = min(ceiling, rate + max((ceiling - rate) * RECOVER, rate * MIN_RECOVER))
    elif measured < 2:
        new = rate * (SEARCH_RAMPING if measured else SEARCH_UNMEASURED)
    else:
        streak = min(streak + 1, MAX_STREAK)
        new = rate * (1.0 + PROBE * streak)
    return (min(new, stated) if stated else new), streak


def worth_probing(backlog: int, in_flight: int, latency: float, wait: float) -> bool:
    """Whether the work left is long enough to pay for a probe: ``backlog`` requests not yet sent, going
    out as fast as the ``in_flight`` ones of ``latency`` seconds come back (Little's law), against the
    seconds ``wait`` a refused request waits."""
    if not latency or not in_flight:
        return True
    return backlog * latency / in_flight > PROBE_HORIZON * wait


def cut(rate: float, delivered: float, peak: float) -> float:
    """The rate after a 429 measured over enough answers: below what was delivered, never below half the peak."""
    current = rate or delivered
    return max(FLOOR, peak * KEEP_OF_PEAK, min(current, delivered) * CUT)


def unmeasured_cut(rate: float, volley: float, opening: bool, measured_before: bool) -> float | None:
    """The rate after a 429 that came before enough answers to measure anything (None: keep the rate).

    Early in a busy period the opening volley overran the server's burst before any answer could
    come back: a rate measured before still holds; otherwise half of what the volley sent is a start.
    Later, nothing gets through: halve the rate until something does.
    """
    if opening and rate and measured_before:
        return None
    base = (volley or rate) if opening else (rate or volley)
    return max(FLOOR, base * 0.5)


def stated_rate(limit_per_minute: float | None) -> float:
    """Requests per second an ``x-ratelimit-limit-requests`` (a per-minute figure) allows; 0 when unknown."""
    if not limit_per_minute or limit_per_minute <= 0 or not math.isfinite(limit_per_minute):
        return 0.0
    return limit_per_minute / 60.0


def in_flight_for(rate: float, latency: float) -> int:
    """Little's law with headroom: the in-flight limit a rate needs at this latency."""
    return math.ceil(HEADROOM * rate * latency)


def refused_share(share: float, refused: bool, answers: int) -> float:
    """The moving share of answers that were 429s, after the ``answers``-th answer of a busy period.

    The first answers weigh ``1/answers`` (a plain average), later ones ``STORM_WEIGHT``: a busy period
    whose very first answer is a 429 has had nothing through at all, which is a storm.
    """
    return share + max(STORM_WEIGHT, 1.0 / max(1, answers)) * ((1.0 if refused else 0.0) - share)


def is_storm(share: float) -> bool:
    """Most recent answers were refused: the limit is spent for now, not slightly exceeded."""
    return share >= STORM_SHARE


#: Refusals among the requests sent from a refused one on that, with ``STORM_SHARE`` of those sent, tell a storm
#: (``sends_refused``).
STORM_REFUSED = 8


def sends_refused(refused: int, sent: int) -> bool:
    """Most requests sent from a refused one on were refused already (``refused`` of ``sent``): a storm.

    The moving share of answers (``is_storm``) tells it only once the answers of requests sent before the
    limit ran out stop coming, a latency later: a 429 comes back at once, a success only after the work.
    Counting against what was *sent*, before those answers are in, tells a spent window at once, while a
    bucket slightly over refuses only the part of what is sent above its rate.
    """
    return refused >= STORM_REFUSED and refused >= STORM_SHARE * sent


#: A storm while the delivered rate is above this many times the budget rate of the window it spent means
#: a budget spent in bursts (a fixed window), not a rate slightly exceeded.
BURSTY = 1.2
#: Seconds of the shortest window taken for one: per-second windows are the shortest limits documented, and
#: a bucket's storms (a cold start's) come closer together than that.
MIN_WINDOW = 1.0
#: A window's budget rate is paced at this share of it, so that timing noise does not spend a window
#: a moment before its turn.
SPREAD_SHARE = 0.98


def spread_rate(successes: float, seconds: float, delivered: float) -> float | None:
    """The rate that spends a window's budget evenly: ``successes`` answered in the ``seconds`` between two
    turns of the window (a pool-wide pause ended by a probe), when the ``delivered`` rate at the storm
    between them was well above their average (None: not a budget spent in a burst)."""
    if seconds < MIN_WINDOW or successes <= 0:
        return None
    average = successes / seconds
    return max(FLOOR, SPREAD_SHARE * average) if delivered > BURSTY * average else None


def probe_gap(probes_sent: int) -> float:
    """Seconds between probe requests during a pool-wide pause, after ``probes_sent`` probes."""
    return min(MAX_PROBE_GAP, FIRST_PROBE_GAP * 2.0 ** probes_sent)
