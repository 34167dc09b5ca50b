"""Flow control on a fake clock: budgets, the concurrency limit, storms and their probes, with no real waiting."""

from __future__ import annotations

import asyncio
import math
import random

import pytest

from batch._flow import ConcurrencyLimit, FlowControl, RateBudget, law
from support import SteppedTime, run, settle


# ---------------------------------------------------------------- RateBudget

def test_budget_bursts_then_paces():
    t = SteppedTime()
    budget = RateBudget(10.0, burst=3, clock=t.clock)
    assert [budget.reserve() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert [budget.reserve() for _ in range(4)] == pytest.approx([0.1, 0.2, 0.3, 0.4])


def test_budget_long_run_holds_the_rate():
    t = SteppedTime()
    budget = RateBudget(20.0, burst=2, clock=t.clock)
    waits = [budget.reserve() for _ in range(60)]
    # the n-th start is at (n - burst) / rate: 60 starts take (60 - 2) / 20 seconds, never less
    assert waits[-1] == pytest.approx((60 - 2) / 20.0)
    starts = sorted(waits)
    for i in range(len(starts)):
        in_window = [s for s in starts if starts[i] <= s < starts[i] + 1.0]
        assert len(in_window) <= 20 + 2


def test_budget_burst_refills_after_idle_but_never_banks_more():
    t = SteppedTime()
    budget = RateBudget(10.0, burst=3, clock=t.clock)
    for _ in range(5):
        budget.reserve()
    t.now = 100.0  # a long idle spell
    assert [budget.reserve() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert budget.reserve() == pytest.approx(0.1)


def test_budget_default_burst_and_validation():
    assert RateBudget(100.0).burst == 10.0
    assert RateBudget(5.0).burst == 1.0
    assert RateBudget(5.0, burst=0.2).burst == 1.0
    for rate in (0, -1):
        with pytest.raises(ValueError):
            RateBudget(rate)


def test_budget_token_amounts_and_adjust():
    t = SteppedTime()
    tokens = RateBudget(100.0, burst=100.0, clock=t.clock)
    assert tokens.reserve(50) == 0.0
    tokens.adjust(150)  # the answer said 200 tokens, not the 50 estimated: the debt is paid by later callers
    assert tokens.reserve(1) == pytest.approx(1.01)

    t2 = SteppedTime()
    tokens = RateBudget(100.0, burst=100.0, clock=t2.clock)
    assert tokens.reserve(100) == 0.0
    assert tokens.reserve(100) == pytest.approx(1.0)
    tokens.adjust(-100)  # the second request used nothing: its share comes back
    assert tokens.reserve(100) == pytest.approx(1.0)


def test_budget_push_back_only_moves_forward():
    t = SteppedTime()
    budget = RateBudget(10.0, burst=1, clock=t.clock)
    budget.push_back(5.0)
    budget.push_back(1.0)  # an earlier deadline does not undo a later one
    assert budget.reserve() == pytest.approx(5.0)
    assert budget.reserve() == pytest.approx(5.1)
    assert "RateBudget(rate=10/s" in repr(budget)


# ---------------------------------------------------------------- ConcurrencyLimit

def test_limit_caps_in_flight_and_wakes_waiters_in_order():
    async def main():
        limit = ConcurrencyLimit(2)
        order: list[str] = []

        async def worker(name: str) -> None:
            await limit.acquire()
            order.append(name)

        await limit.acquire()
        await limit.acquire()
        assert limit.in_flight == 2
        tasks = [asyncio.create_task(worker(n)) for n in "abcde"]
        await settle()
        assert order == [] and limit.in_flight == 2 and "waiting=5" in repr(limit)
        for expected in (["a"], ["a", "b"], ["a", "b", "c"]):
            limit.release()
            await settle()
            assert order == expected and limit.in_flight == 2
        limit.release()
        limit.release()
        await settle()
        assert order == list("abcde")
        await asyncio.gather(*tasks)
        for _ in range(2):
            limit.release()
        assert limit.in_flight == 0
    run(main())


def test_limit_newcomers_queue_behind_waiters():
    async def main():
        limit = ConcurrencyLimit(1)
        await limit.acquire()
        order: list[str] = []

        async def worker(name: str) -> None:
            await limit.acquire()
            order.append(name)
            limit.release()

        first = asyncio.create_task(worker("first"))
        await settle()
        limit.release()  # hands the slot to "first" before "late" even asks
        late = asyncio.create_task(worker("late"))
        await asyncio.gather(first, late)
        assert order == ["first", "late"] and limit.in_flight == 0
    run(main())


def test_cancelled_waiter_does_not_leak_a_slot():
    async def main():
        limit = ConcurrencyLimit(1)
        await limit.acquire()
        waiting = asyncio.create_task(limit.acquire())
        await settle()
        waiting.cancel()
        await settle()
        assert waiting.cancelled() and limit.in_flight == 1
        limit.release()
        assert limit.in_flight == 0
        await asyncio.wait_for(limit.acquire(), 5)  # the slot is free, not held by the cancelled waiter
        assert limit.in_flight == 1
        limit.release()
        assert limit.in_flight == 0
    run(main())


def test_cancel_after_the_slot_was_handed_over_gives_it_back():
    async def main():
        limit = ConcurrencyLimit(1)
        await limit.acquire()
        granted = asyncio.create_task(limit.acquire())
        after = asyncio.create_task(limit.acquire())
        await settle()
        limit.release()  # the slot goes to "granted", which has not run yet...
        assert limit.in_flight == 1
        granted.cancel()  # ...and is cancelled before it could use it
        await settle()
        assert granted.cancelled()
        assert after.done() and limit.in_flight == 1  # the slot went on to the next waiter
        limit.release()
        assert limit.in_flight == 0
    run(main())


# ---------------------------------------------------------------- FlowControl

def test_flow_admits_up_to_max_concurrency():
    t = SteppedTime()

    async def main():
        flow = FlowControl(max_concurrency=3, clock=t.clock, sleep=t.sleep)
        admitted = []

        async def request(i: int) -> None:
            await flow.admit()
            admitted.append(i)

        tasks = [asyncio.create_task(request(i)) for i in range(5)]
        await settle()
        assert admitted == [0, 1, 2]
        flow.done(0.1)
        await settle()
        assert admitted == [0, 1, 2, 3]
        for _ in range(4):
            flow.done(0.1)
        await asyncio.gather(*tasks)
        assert flow.limit.in_flight == 0 and t.sleeps == []
    run(main())


def test_flow_paces_requests_per_second():
    t = SteppedTime()

    async def main():
        flow = FlowControl(max_concurrency=100, requests_per_second=20.0, clock=t.clock, sleep=t.sleep)
        started: list[float] = []

        async def request() -> None:
            await flow.admit()
            started.append(t.now)
            flow.done(0.01)

        tasks = [asyncio.create_task(request()) for _ in range(60)]
        await t.advance(10.0)
        await asyncio.gather(*tasks)
        assert len(started) == 60
        assert started[:2] == [0.0, 0.0]  # the burst of rate / 10
        assert started[-1] == pytest.approx(58 / 20.0)
        for s in started:
            assert len([x for x in started if s <= x < s + 1.0 - 1e-9]) <= 20 + 2
    run(main())


def test_flow_token_budget_and_adjust():
    t = SteppedTime()

    async def main():
        flow = FlowControl(max_concurrency=10, tokens_per_second=100.0, clock=t.clock, sleep=t.sleep)
        await flow.admit(estimated_tokens=100)  # the whole one-second burst
        flow.done(0.1, token_error=100)  # it really used 200
        admitted = asyncio.create_task(flow.admit(estimated_tokens=10))
        await t.advance(1.0)
        assert not admitted.done()
        await t.advance(1.2)
        assert admitted.done()
        assert t.sleeps == [pytest.approx(1.1)]
        flow.done(0.1)
        await flow.admit()  # no estimate: only the cap applies
        flow.done(0.1)
        assert flow.limit.in_flight == 0
    run(main())


def test_flow_repr_names_no_secrets_and_shows_state():
    flow = FlowControl(max_concurrency=4, requests_per_second=2.0, tokens_per_second=50.0)
    text = repr(flow)
    assert "ConcurrencyLimit(limit=4" in text and "RateBudget(rate=2/s" in text and "RateBudget(rate=50/s" in text


def test_flow_waiters_go_at_the_new_pace_as_soon_as_it_rises():
    """Turns are booked one at a time, so requests already waiting are not held to an old, slower pace."""
    t = SteppedTime()

    async def main():
        flow = FlowControl(max_concurrency=100, clock=t.clock, sleep=t.sleep)
        flow.pace._set(10.0, t.now)
        started: list[float] = []

        async def request() -> None:
            await flow.admit()
            started.append(t.now)

        tasks = [asyncio.create_task(request()) for _ in range(50)]
        await t.advance(1.0)
        assert 9 <= len(started) <= 12  # about ten a second so far
        flow.pace._set(100.0, t.now)
        await t.advance(0.5)
        assert len(started) >= 40  # at the new pace after at most one turn booked at the old one (not 16)
        await t.advance(1.0)
        await asyncio.gather(*tasks)
    run(main())


def test_limit_doubles_each_round_trip_only_while_it_holds_the_pool_back():
    limit = ConcurrencyLimit(100, initial=4)
    for _ in range(4):
        limit.in_flight += 1
    limit.release(0.1)  # nobody waited: the limit was not what held the pool back
    assert limit.limit == 4
    limit._waiters.extend([asyncio.get_event_loop_policy().new_event_loop().create_future() for _ in range(8)])
    for _ in range(4):
        limit.in_flight += 1
        limit.release(0.1)
    assert limit.limit == 8  # one more per answer while saturated: double after a round trip
    limit.at_least(60)
    assert limit.limit == 60
    limit.at_least(1000)
    assert limit.limit == 100  # never above the maximum


def test_one_429_among_successes_holds_only_its_request_a_storm_holds_the_pool_with_probes():
    t = SteppedTime()
    flow = FlowControl(max_concurrency=10, clock=t.clock, sleep=t.sleep)
    for _ in range(50):
        flow.done(0.1)
    flow.done(0.0, rate_limited=True)
    assert flow.refused_for(1.0) is False and flow.paused_until == 0.0  # slightly over: no pause
    for _ in range(5):
        flow.done(0.0, rate_limited=True)
    assert flow.refused_for(1.0) is True and flow.paused_until == pytest.approx(t.now + 1.0)

    async def admissions():
        probe = asyncio.create_task(flow.admit())
        await t.advance(0.049)
        held = not probe.done()
        await t.advance(0.002)  # the first probe goes after 50 ms, not after the whole second
        return held, probe.done()

    assert run(admissions()) == (True, True)
    t.now += 0.1
    flow.done(0.1)  # the probe, sent after the pause began, was answered: the pause is over
    assert flow.paused_until == pytest.approx(t.now)


def _traffic(flow: FlowControl, t: SteppedTime, steps: list[str], wait: float = 3.0) -> list[bool]:
    """Sends and answers on a fake clock, a millisecond apart: "s" asks to send one request (it goes when
    admitted), "ok" answers the oldest sent with a success, "429" refuses the newest sent at once and asks
    it to wait ``wait`` seconds. ``refused_for``'s verdicts are returned (a pool-wide pause or not), up to
    the first pause."""
    sent: list[tuple[float, int]] = []  # when each request still out was sent, and its number
    verdicts: list[bool] = []

    async def main() -> None:
        for step in steps:
            await t.advance(0.001)
            if step == "s":
                asyncio.create_task(flow.admit()).add_done_callback(lambda _: sent.append((t.now, flow.sent_total)))
            elif step == "ok":
                at, seq = sent.pop(0)
                flow.done(t.now - at, seq=seq)
            else:
                at, seq = sent.pop()
                flow.done(t.now - at, rate_limited=True, seq=seq)
                verdicts.append(flow.refused_for(wait))
                if verdicts[-1]:
                    return
    run(main())
    return verdicts


def test_a_spent_window_is_a_storm_as_soon_as_most_of_what_was_sent_since_is_refused():
    """At a window's end, answers of requests sent before it ran out still come for a latency, a success for
    each 429: the moving share of answers stays near one in two. Against what was sent since the first 429,
    every one is refused: the pool pauses after a few, not a latency later."""
    t = SteppedTime()
    flow = FlowControl(max_concurrency=10_000, clock=t.clock, sleep=t.sleep)
    verdicts = _traffic(flow, t, ["s"] * 60 + ["ok"] * 30 + ["s", "429", "ok"] * 12)
    assert verdicts.index(True) == law.STORM_REFUSED - 1  # eight refused of the nine sent from the first on
    assert flow.refused < law.STORM_SHARE  # the answers alone would not have told it yet


def test_after_a_short_pause_one_429_is_one_429_not_the_storm_again():
    t = SteppedTime()
    flow = FlowControl(max_concurrency=10_000, clock=t.clock, sleep=t.sleep)
    verdicts = _traffic(flow, t, ["s"] * 60 + ["ok"] * 30 + ["s", "429", "ok"] * 12, wait=0.02)
    assert verdicts[-1] is True
    t.now += 0.05  # the pause the server asked for is over, well within half a second of the first 429
    for _ in range(10):  # answers of requests sent before it
        flow.done(0.1, seq=flow.sent_total)
    flow.done(0.001, rate_limited=True, seq=flow.sent_total)
    assert flow.refused_for(0.02) is False


def test_a_bucket_slightly_over_refuses_a_few_of_what_is_sent_and_is_no_storm():
    t = SteppedTime()
    flow = FlowControl(max_concurrency=10_000, clock=t.clock, sleep=t.sleep)
    verdicts = _traffic(flow, t, ["s"] * 60 + ["ok"] * 30 + (["s", "ok"] * 4 + ["s", "429"]) * 12)  # a fifth refused
    assert verdicts and not any(verdicts) and flow.paused_until == 0.0


def test_a_probe_goes_out_at_once_not_behind_the_pacers_held_line():
    """A stated pause holds the requests in line at the pacer too; its probe is sent to find the pause's end,
    so it goes when due, not after a turn of its own at the pacer."""
    t = SteppedTime()
    flow = FlowControl(max_concurrency=10, clock=t.clock, sleep=t.sleep)
    flow.pace.stated(60)  # the endpoint said 60 a minute: a turn a second
    for _ in range(5):
        flow.done(0.0, rate_limited=True)
    assert flow.refused_for(5.0) is True  # a storm, and the server said how long

    async def admissions():
        waiting = [asyncio.create_task(flow.admit()) for _ in range(3)]
        await t.advance(0.051)
        return [task.done() for task in waiting]

    assert sorted(run(admissions())) == [False, False, True]  # one probe, after 50 ms; the rest held


def test_with_every_slot_in_line_at_the_pacer_the_pacer_sends_the_probe():
    """Requests waiting their turn when a stated pause begins are held with it; when no new request comes to
    take a probe (every slot is in line), the pacer lets the first in line go as the probe."""
    t = SteppedTime()
    flow = FlowControl(max_concurrency=3, clock=t.clock, sleep=t.sleep)
    flow.pace.stated(60)  # a turn a second
    for _ in range(50):
        flow.done(0.1)

    async def admissions():
        waiting = [asyncio.create_task(flow.admit()) for _ in range(3)]
        await t.advance(0.01)  # the first had its turn; two wait in line, a second apart
        for _ in range(5):
            flow.done(0.0, rate_limited=True)
        assert flow.refused_for(5.0) is True  # a storm: the server asked for five seconds
        await t.advance(1.1)
        return [task.done() for task in waiting]

    assert run(admissions()) == [True, True, True]  # the turn booked before the pause, then a probe


def _slow_start(latency_at, rounds: int = 14, lengths=lambda: 1.0) -> ConcurrencyLimit:
    """A saturated pool against a server whose latency at ``n`` in flight is ``latency_at(n)`` times each answer's
    ``lengths()``: each round trip, the limit's worth of answers come back spread over it (the pool always has
    more waiting)."""
    t = SteppedTime()
    limit = ConcurrencyLimit(100_000, initial=64, clock=t.clock)
    loop = asyncio.new_event_loop()
    for _ in range(rounds):
        n = limit.limit
        latency = latency_at(n)
        for _ in range(n):
            t.now += latency / n
            limit.in_flight = limit.limit
            limit._waiters.append(loop.create_future())
            limit.release(latency * lengths())
    loop.close()
    return limit


def test_answers_of_varied_lengths_are_no_queue():
    """A model's answers take from one to ten times the shortest: the average is far above the least, but each
    round trip's quickest answer stays where it was, and slow start goes on doubling."""
    lengths = random.Random(7).uniform
    limit = _slow_start(lambda n: 0.5, rounds=8, lengths=lambda: lengths(1.0, 10.0))
    assert limit.limit >= 64 * 2 ** 6 and limit.queued < 1.125


@pytest.mark.parametrize("seed", range(4))
def test_answers_whose_quickest_wanders_slow_the_start_but_never_hold_it(seed):
    """Lognormal answer times (a long tail both ways): one round trip's quickest answer is sometimes far below
    the next one's, which reads as a queue; the limit then grows more slowly, as far as answers a second keep
    up, and still reaches the default maximum of 1,024 within ten round trips."""
    draw = random.Random(seed).gauss
    limit = _slow_start(lambda n: 0.5, rounds=10, lengths=lambda: math.exp(draw(0.0, 1.0)))
    assert limit.limit >= 1024


@pytest.mark.parametrize("capacity", [2000, 4000])
def test_slow_start_stops_once_answers_queue_at_a_server_that_answers_no_faster(capacity):
    # 100 ms of work and ``capacity`` answers a second at most: above capacity x 0.1 in flight, the rest queue
    limit = _slow_start(lambda n: max(0.1, n / capacity))
    full = capacity * 0.1
    assert full * 1.25 <= limit.limit <= full * 2  # past the point where latency shows the queue, not doubling on
    unchecked = _slow_start(lambda n: 0.1, rounds=10)
    assert unchecked.limit >= 64 * 2 ** 9  # with no queue it doubles every round trip


def test_slow_start_goes_on_while_more_in_flight_still_brings_answers_faster():
    # a server that batches: each answer takes longer the more it holds (twice as long at 400), but answers
    # a second grow too, towards 4,000
    latency = lambda n: 0.1 * (1 + n / 400)  # noqa: E731
    limit = _slow_start(latency, rounds=60)
    n = limit.limit
    assert n / latency(n) >= 2000  # half of what it can give...
    assert n <= 800  # ...but not where twice as many in flight would bring a fifth more
    assert limit.min_latency == pytest.approx(latency(64))
