"""The learned rate on a fake clock: what it learns from 429s and how it probes for spare capacity."""

import pytest

from batch._flow import law
from batch._flow.pace import LearnedRate as AdaptiveRate
from support import Clock


def deliver(rate: AdaptiveRate, clock: Clock, per_second: float, seconds: float) -> None:
    steps = int(per_second * seconds)
    for _ in range(steps):
        clock.now += 1.0 / per_second
        rate.sent()
        rate.success()


def cut_after(per_second: float) -> tuple[Clock, AdaptiveRate]:
    """A learned rate that delivered ``per_second`` for a second, then got its first 429."""
    clock = Clock()
    rate = AdaptiveRate(clock=clock)
    deliver(rate, clock, per_second, 1.0)
    rate.rate_limited()
    return clock, rate


def keep_up(rate: AdaptiveRate, clock: Clock, seconds: float, least: float = 0.0) -> list[float]:
    """Send as fast as the pace allows (``least`` at the very least); returns each pace seen."""
    seen, end = [rate.rate], clock.now + seconds
    while clock.now < end:
        clock.now += 1.0 / max(least, rate.rate)
        rate.sent()
        rate.success()
        if rate.rate != seen[-1]:
            seen.append(rate.rate)
    return seen


def test_unpaced_until_the_first_429():
    clock = Clock()
    rate = AdaptiveRate(clock=clock)
    deliver(rate, clock, 200, 1.0)
    assert rate.rate is None and rate.reserve() == 0.0


def test_first_429_paces_just_below_what_was_delivered():
    clock, rate = cut_after(400)
    assert rate.rate == pytest.approx(400 * law.CUT, rel=0.02)


def test_a_burst_of_429s_is_one_cut():
    clock, rate = cut_after(100)
    first = rate.rate
    for _ in range(50):
        clock.now += 0.001
        rate.rate_limited()
    assert rate.rate == first
    clock.now += 1.0  # a later 429, after the window, cuts again (nothing was delivered meanwhile)
    rate.rate_limited()
    assert rate.rate < first


def test_climbs_back_to_the_last_cap_then_probes_above_it_in_growing_steps():
    clock, rate = cut_after(100)
    deliver(rate, clock, 10, 1.0)  # the first cap is a guess made while ramping up; a second one settles it
    deliver(rate, clock, 100, 1.5)
    before = rate.rate
    rate.rate_limited()
    assert rate.cuts == 2 and rate.ceiling == pytest.approx(100, rel=0.05)
    assert before > rate.ceiling * 1.1 and rate.rate == pytest.approx(law.CUT * rate.ceiling, rel=0.01)
    seen = keep_up(rate, clock, 2.0, least=100)
    below = [r for r in seen if r < rate.ceiling]
    above = [r for r in seen if r >= rate.ceiling]
    assert below == sorted(below) and len(below) <= 12  # back near the cap within about a second
    steps = [b / a - 1 for a, b in zip(above, above[1:])]
    assert steps == sorted(steps) and steps[-1] <= 0.1 + 1e-9  # each step above the cap bigger, capped


def test_answers_of_requests_sent_before_a_429_raise_the_cap_it_measured_up_to_the_pace_then():
    """A pace rising fast is delivered a round trip and half a window late: the delivered rate when the 429
    comes is below what was being sent, and the answers still to come say by how much."""
    clock, rate = cut_after(400)
    keep_up(rate, clock, 1.0)
    deliver(rate, clock, 400, 0.5)  # answers lag the pace
    sending = rate.rate
    assert sending > 600
    rate.rate_limited()
    assert rate.ceiling == pytest.approx(400, rel=0.05)
    deliver(rate, clock, 2000, 0.3)  # the answers of what was sent at the pace, and more than it
    risen = rate.ceiling
    assert 550 < risen <= sending
    clock.now += 1.0
    deliver(rate, clock, 900, 0.5)  # a window after the 429, answers measure nothing more
    assert rate.ceiling == risen


def test_answers_after_a_429_never_raise_its_cap_above_a_stated_limit():
    clock, rate = cut_after(400)
    keep_up(rate, clock, 1.0)
    deliver(rate, clock, 400, 0.5)
    rate.rate_limited()
    rate.stated(30000)  # the endpoint now says 30,000 a minute: 500 a second
    deliver(rate, clock, 2000, 0.3)
    assert rate.ceiling == 500.0 and rate.rate <= 500.0


def test_after_the_first_cut_the_pace_grows_fast_until_a_second_429():
    clock, rate = cut_after(50)
    first = rate.rate
    deliver(rate, clock, 50, 1.05)
    assert rate.rate > max(first, rate.ceiling) * 1.25  # 10% steps: a low first guess is left behind quickly


def test_a_pace_the_pool_does_not_use_is_not_raised():
    clock, rate = cut_after(100)
    paced = rate.rate
    deliver(rate, clock, paced / 4, 2.0)  # few rows left: the pool sends far less than the pace allows
    assert rate.rate == paced  # neither back to the cap nor above it
    keep_up(rate, clock, 1.0)  # busy again: the climb goes on
    assert rate.rate > rate.ceiling * 1.05


def test_when_everything_is_refused_the_pace_halves_what_was_sent():
    clock = Clock()
    rate = AdaptiveRate(clock=clock)
    for _ in range(400):  # 800 requests a second go out, none is answered
        clock.now += 1 / 800
        rate.sent()
    rate.rate_limited()
    assert rate.rate == pytest.approx(400, rel=0.05)
    clock.now += 0.6
    rate.rate_limited()
    assert rate.rate == pytest.approx(200, rel=0.05)


def test_no_pace_from_a_429_before_anything_was_delivered():
    clock = Clock()
    rate = AdaptiveRate(clock=clock)
    rate.rate_limited()
    assert rate.rate is None


def test_pacing_spreads_requests_at_the_learned_rate():
    clock, rate = cut_after(50)
    waits = [rate.reserve() for _ in range(100)]
    # After a small burst, request i waits about i / rate seconds.
    assert waits[-1] == pytest.approx(100 / rate.rate, rel=0.05)
    assert waits == sorted(waits)


def test_never_below_the_floor():
    clock, rate = cut_after(100)
    for _ in range(100):
        clock.now += 1.0
        rate.rate_limited()
    assert rate.rate == law.FLOOR


def test_429s_that_come_whatever_the_pace_keep_half_the_best_rate():
    """A limit shared with others, or faults, refuse one request in five at any pace: the pace sinks no
    lower than half the best rate delivered lately, instead of being cut window after window."""
    clock = Clock()
    rate = AdaptiveRate(clock=clock)
    deliver(rate, clock, 1000, 1.0)
    lowest, sent, end = float("inf"), 0, clock.now + 10.0
    while clock.now < end:
        clock.now += 1.0 / (rate.rate or 1000)
        rate.sent()
        sent += 1
        if sent % 5 == 0:
            rate.rate_limited()
        else:
            rate.success()
        lowest = min(lowest, rate.rate or lowest)
    assert rate.cuts >= 10 and lowest >= 0.5 * 800 * 0.5 ** (10 / 30)  # half of 800 delivered, fading


def test_the_endpoints_stated_limit_sets_the_rate_and_bounds_the_probe():
    clock = Clock()
    rate = AdaptiveRate(clock=clock)
    rate.stated(60000)  # x-ratelimit-limit-requests: 60,000 a minute
    assert rate.rate == 1000.0 and rate.stated_rate == 1000.0 and rate.ceiling == 1000.0
    assert max(keep_up(rate, clock, 2.0)) == 1000.0  # used to the full, and never probed above


def test_a_second_job_starts_from_a_recent_rate_and_forgets_an_old_one():
    clock, rate = cut_after(100)
    learned = rate.rate
    clock.now += 30.0
    assert rate.restart() is False and rate.rate == learned  # 30 s later: kept, and checked again...
    clock.now += 200.0
    assert rate.restart() is True and rate.rate is None      # minutes later: learned afresh
    rate.stated(6000)
    deliver(rate, clock, 10, 0.5)
    clock.now += 300.0
    assert rate.restart() is False and rate.rate == 100.0    # a stated limit is kept longer


def measured_twice() -> tuple[Clock, AdaptiveRate]:
    """A learned rate cut twice by 429s while delivering about 100 a second: the cap is known."""
    clock, rate = cut_after(100)
    for _ in range(100):
        clock.now += 1.0 / rate.rate
        rate.sent()
        rate.success(probe=False)
    rate.rate_limited()
    return clock, rate


def test_no_probe_above_the_cap_when_little_work_is_left():
    clock, rate = measured_twice()
    for _ in range(300):
        clock.now += 1.0 / rate.rate
        rate.sent()
        rate.success(probe=False)
    assert rate.rate == pytest.approx(rate.ceiling * law.CLOSING)  # just under the cap measured, not above it
    keep_up(rate, clock, 1.0)
    assert rate.rate > rate.ceiling  # with work left, it probes again


def test_a_kept_rate_is_checked_again_by_small_probes_not_a_search():
    clock, rate = measured_twice()
    clock.now += 30.0
    assert rate.restart() is False
    steps = keep_up(rate, clock, 0.7)
    above = [step for step in steps if step > rate.ceiling]
    assert above and above[0] <= rate.ceiling * 1.011  # a first probe of 1%, then 2%, ...: not a 10% search


def test_a_kept_rate_holds_through_the_first_window_of_a_new_busy_periods_answers():
    clock, rate = measured_twice()
    kept, cuts = rate.rate, rate.cuts
    clock.now += 5.0
    assert rate.restart() is False
    deliver(rate, clock, kept, 0.3)
    rate.rate_limited()  # the opening volley overran the server's burst: a ramp's answers measure no rate
    assert rate.cuts == cuts and rate.rate >= kept
    deliver(rate, clock, kept, 0.3)
    before = rate.rate
    rate.rate_limited()  # a whole window of answers is in: now a 429 cuts
    assert rate.cuts == cuts + 1 and rate.rate < before
    clock.now += 5.0
    rate.restart()
    deliver(rate, clock, kept, 0.3)
    rate.storm()  # most answers refused: the kept rate is wrong, and its 429s cut it at once
    rate.rate_limited()
    assert rate.cuts == cuts + 2
    clock.now += 5.0
    rate.restart()
    for _ in range(140):  # no answer in the opening (a slow endpoint, or every request refused): after
        clock.now += 0.015  # two seconds of it the hold has lapsed
        rate.sent()
    rate.rate_limited()
    assert rate.cuts == cuts + 3


def test_a_job_that_follows_within_a_second_is_a_new_busy_period_and_its_opening_volley_is_held():
    """No ``restart`` (less than ``IDLE_RESTART`` of quiet), but more than a window with nothing sent or answered."""
    clock, rate = measured_twice()
    kept, cuts = rate.rate, rate.cuts
    clock.now += 1.0
    deliver(rate, clock, kept, 0.3)
    rate.rate_limited()  # the new job's opening volley: its ramp's answers measure no rate
    assert rate.cuts == cuts and rate.rate >= kept
    deliver(rate, clock, kept, 0.3)
    rate.rate_limited()
    assert rate.cuts == cuts + 1
    clock.now += 0.2  # a short gap inside a job is no new busy period: its 429 cuts
    deliver(rate, clock, rate.rate, 0.6)
    rate.rate_limited()
    assert rate.cuts == cuts + 2


def test_a_429_after_a_short_quiet_measures_the_answers_since_not_the_quiet():
    """Two jobs a third of a second apart are one busy period, but the quiet between them delivered nothing the
    endpoint refused: a 429 early in the second cuts from what its own answers delivered."""
    clock, rate = measured_twice()
    kept = rate.rate
    clock.now += 0.3
    deliver(rate, clock, kept, 0.3)
    rate.rate_limited()
    assert rate.rate == pytest.approx(law.CUT * kept, rel=0.05)  # over the whole window: 0.6 of it


def test_a_pace_left_unused_sends_no_burst_when_it_is_used_again():
    """The burst absorbs the pacer's late wake-ups while busy; after an idle spell it would land on a full
    rate at once (a concurrency cap refuses it)."""
    clock, rate = cut_after(500)
    clock.now += 0.02  # the pacer woke late: the requests it owes go at once
    assert [rate.reserve() for _ in range(5)] == [0.0] * 5
    clock.now += 1.0
    waits = [rate.reserve() for _ in range(5)]
    assert waits[0] == 0.0
    assert waits[1:] == pytest.approx([i / rate.rate for i in range(1, 5)])


@pytest.mark.parametrize("backlog,in_flight,latency,wait,expected", [
    (1000, 100, 0.1, 1.0, False),   # 1 s of work left against a 1 s Retry-After: not worth a 429
    (100, 100, 0.1, 1.0, False),    # 0.1 s of work left: a 429 now would add most of a second to the run
    (5000, 100, 0.1, 1.0, True),    # 5 s left: a refused request's wait overlaps the rest of the work
    (100, 100, 0.1, 0.02, True),    # 0.1 s left but the server asks only 20 ms
    (0, 0, 0.0, 1.0, True),         # nothing measured yet: nothing to go by
])
def test_worth_probing(backlog, in_flight, latency, wait, expected):
    assert law.worth_probing(backlog, in_flight, latency, wait) is expected


# ---------------------------------------------------------------- a fixed window's budget

def spend(rate: AdaptiveRate, clock: Clock, budget: int, per_second: float) -> None:
    """A window's ``budget`` answered at ``per_second``, or at the pace when that is lower."""
    for _ in range(budget):
        clock.now += 1.0 / min(per_second, rate.rate or per_second)
        rate.sent()
        rate.success()


def refused_until(rate: AdaptiveRate, clock: Clock, turn: float, later_storm_at: float | None = None) -> float:
    """A storm, probes refused every 250 ms until the window's ``turn``, then a probe answered; returns the
    pace just before that answer's turn was taken."""
    rate.rate_limited()
    rate.storm()
    while clock.now + 0.25 < turn:
        clock.now += 0.25
        rate.sent()
        rate.refused(clock.now)
        if later_storm_at is not None and clock.now >= later_storm_at:
            rate.storm()  # another worker's first answer is a 429 in the same pause
            later_storm_at = None
    clock.now = turn + 0.1
    rate.sent()
    rate.success()
    before = rate.rate
    rate.resumed(clock.now - 0.02)
    return before


def test_a_windows_budget_is_measured_between_two_turns_and_held():
    """Windows of 5 s holding 2,500 requests (500 a second); the work starts 2 s into one and sends 2,000 a
    second. The part of the first window seen only lowers the pace; the next window, turn to turn, measures
    the budget: the pace becomes just under 500 a second and is not probed above it for three windows."""
    clock = Clock(2.0)
    rate = AdaptiveRate(clock=clock)
    spend(rate, clock, 2500, 2000.0)
    refused_until(rate, clock, 5.0)
    first = rate.rate
    assert first == pytest.approx(law.SPREAD_SHARE * 2501 / 3.0, rel=0.03)  # 2,500 answered in 3 s of it
    spend(rate, clock, 2500, 2000.0)
    refused_until(rate, clock, 10.0, later_storm_at=clock.now + 1.0)
    assert rate.rate == pytest.approx(law.SPREAD_SHARE * 500, rel=0.02)
    held = rate.rate
    rate.resumed(clock.now - 0.01)  # the same turn, seen by a second worker: measured once
    assert rate.rate == held
    assert max(keep_up(rate, clock, 10.0)) <= held * 1.001  # held, not probed


def test_after_its_hold_a_windows_budget_is_probed_one_step_a_window():
    """A window answers a probe only when its budget runs out: a step every tenth of a second would spend the
    next window in a burst before the first 429, so above the budget the pace takes one small step a window."""
    clock = Clock(2.0)
    rate = AdaptiveRate(clock=clock)
    spend(rate, clock, 2500, 2000.0)
    refused_until(rate, clock, 5.0)
    spend(rate, clock, 2500, 2000.0)
    refused_until(rate, clock, 10.0)
    held, steps = rate.rate, []
    assert max(keep_up(rate, clock, 3 * 5.0 - 0.2)) == held  # the hold: three windows of 5 s
    end = clock.now + 12.0
    while clock.now < end:  # the next windows: a step at the hold's end, then one each 5 s
        before = rate.rate
        clock.now += 1.0 / before
        rate.sent()
        rate.success()
        if rate.rate != before:
            steps.append((clock.now, rate.rate / before))
    assert [round(up, 6) for _, up in steps] == [1 + law.PROBE] * 3
    assert all(later - earlier == pytest.approx(5.0, abs=0.3) for (earlier, _), (later, _) in zip(steps, steps[1:]))


def test_a_part_of_a_window_seen_from_the_start_does_not_slow_the_probing_after_it():
    """The span from the start of the work to a first turn is only part of a window (or a bucket's storm): its
    hold lasts that span, and the probing after it takes its usual steps, not one a span."""
    clock = Clock(2.0)
    rate = AdaptiveRate(clock=clock)
    spend(rate, clock, 2500, 2000.0)
    refused_until(rate, clock, 5.0)
    keep_up(rate, clock, 3.2)  # past the hold: the 3 s from the start of the work to the turn
    assert len(keep_up(rate, clock, 1.0)) > 5


def test_a_storm_and_turn_within_a_second_measure_no_window():
    """A bucket's storm (an opening volley far above its burst) comes and goes within a second: no spread."""
    clock = Clock()
    rate = AdaptiveRate(clock=clock)
    spend(rate, clock, 200, 2000.0)
    assert refused_until(rate, clock, clock.now + 0.3) == rate.rate  # the turn changed nothing
