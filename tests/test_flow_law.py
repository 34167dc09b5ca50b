"""The control law as tables: each step a pure function of what was observed, no clock and no waiting."""

from __future__ import annotations

import pytest

from batch._flow import law
from batch._flow.headers import budget_from, parse_duration


@pytest.mark.parametrize("rate,ceiling,measured,streak,stated,expected", [
    (50.0, 100.0, 1, 0, 0.0, (75.0, 0)),            # below the last cap: close half the gap
    (99.5, 100.0, 2, 3, 0.0, (100.0, 3)),           # ...at least 1% of the rate, never past the cap
    (100.0, 0.0, 0, 0, 0.0, (125.0, 0)),            # no cap measured yet: search fast
    (100.0, 100.0, 1, 0, 0.0, (110.0, 0)),          # one cap measured while ramping up: search
    (100.0, 100.0, 2, 0, 0.0, (101.0, 1)),          # a cap measured twice: probe 1% above it...
    (101.0, 100.0, 2, 1, 0.0, (103.02, 2)),         # ...in steps that grow
    (100.0, 100.0, 2, 10, 0.0, (110.0, 10)),        # up to 10%
    (100.0, 0.0, 0, 0, 16.0, (16.0, 0)),            # never above what the endpoint stated
])
def test_raised(rate, ceiling, measured, streak, stated, expected):
    new, new_streak = law.raised(rate, ceiling, measured, streak, stated)
    assert (pytest.approx(new), new_streak) == expected


@pytest.mark.parametrize("rate,ceiling,measured,streak,expected", [
    (105.0, 100.0, 2, 5, (93.0, 0)),   # probing above the cap: brought just under it, the streak forgotten
    (93.0, 100.0, 2, 0, (93.0, 0)),    # already there: kept
    (50.0, 100.0, 1, 0, (71.5, 0)),    # after a cut: recovers, towards just under the cap
    (100.0, 0.0, 0, 0, (125.0, 0)),    # no cap measured: nothing to stay under, the search goes on
])
def test_raised_in_the_last_seconds(rate, ceiling, measured, streak, expected):
    new, new_streak = law.raised(rate, ceiling, measured, streak, probe=False, closing=True)
    assert (pytest.approx(new), new_streak) == expected


@pytest.mark.parametrize("rate,ceiling,measured,streak,expected", [
    (100.0, 100.0, 2, 5, (100.0, 0)),  # held at a measured rate: kept, not probed, not lowered
    (50.0, 100.0, 2, 0, (75.0, 0)),    # below it: recovers towards it
])
def test_raised_while_held(rate, ceiling, measured, streak, expected):
    new, new_streak = law.raised(rate, ceiling, measured, streak, probe=False)
    assert (pytest.approx(new), new_streak) == expected


@pytest.mark.parametrize("rate,delivered,peak,expected", [
    (1000.0, 1000.0, 1000.0, 950.0),   # just under what got through
    (1200.0, 1000.0, 1000.0, 950.0),   # the rate sent was higher than what got through: the latter counts
    (0.0, 800.0, 800.0, 760.0),        # no rate yet: what was delivered
    (100.0, 100.0, 1000.0, 500.0),     # 429s whatever the rate: never below half the peak
    (0.2, 0.1, 0.0, law.FLOOR),        # never below the floor
])
def test_cut(rate, delivered, peak, expected):
    assert law.cut(rate, delivered, peak) == pytest.approx(expected)


@pytest.mark.parametrize("rate,volley,opening,measured_before,expected", [
    (900.0, 2000.0, True, True, None),   # the opening volley overran a burst: a rate measured before holds
    (0.0, 2000.0, True, False, 1000.0),  # nothing known: half the volley
    (400.0, 2000.0, False, True, 200.0), # later, nothing gets through: halve
    (0.0, 0.0, False, False, law.FLOOR),
])
def test_unmeasured_cut(rate, volley, opening, measured_before, expected):
    assert law.unmeasured_cut(rate, volley, opening, measured_before) == expected


@pytest.mark.parametrize("limit,expected", [(60000, 1000.0), (30, 0.5), (None, 0.0), (0, 0.0), (-1, 0.0),
                                            (float("inf"), 0.0)])
def test_stated_rate(limit, expected):
    assert law.stated_rate(limit) == expected


@pytest.mark.parametrize("rate,latency,expected", [(1000.0, 0.1, 200), (500.0, 1.0, 1000), (3.0, 0.05, 1)])
def test_in_flight_for_is_littles_law_with_headroom(rate, latency, expected):
    assert law.in_flight_for(rate, latency) == expected


@pytest.mark.parametrize("answers,storm_after", [
    ([True], 1),                                  # the very first answer is a 429: nothing got through
    ([False] * 50 + [True] * 10, 55),             # after successes it takes five 429s in a row
    ([False, True] * 30, None),                   # one in two refused, alternating: never a storm
    ([False] * 99 + [True], None),                # one 429 among successes: slightly over, no storm
])
def test_storms(answers, storm_after):
    share, seen = 0.0, None
    for n, refused in enumerate(answers, 1):
        share = law.refused_share(share, refused, n)
        if seen is None and law.is_storm(share):
            seen = n
    assert seen == storm_after


@pytest.mark.parametrize("refused,sent,storm", [
    (7, 7, False),    # every one refused, but too few to say
    (8, 8, True),     # a spent window: all of what was sent from the first refused on
    (8, 13, True),    # 0.6 of them, and at least eight
    (8, 14, False),   # under 0.6: a rate over its cap by half refuses a third of what it sends
    (20, 100, False),  # a bucket slightly over
])
def test_storm_among_what_was_sent(refused, sent, storm):
    assert law.sends_refused(refused, sent) is storm


@pytest.mark.parametrize("successes,seconds,delivered,expected", [
    (5000.0, 5.0, 4000.0, 980.0),  # a window's budget spent at four times its rate: spread, just under it
    (5000.0, 5.0, 1100.0, None),   # delivered about the budget rate: a rate slightly over, not a burst
    (300.0, 0.5, 3000.0, None),    # turns closer than a second: a bucket's storms, not a window's
    (0.0, 5.0, 4000.0, None),      # nothing got through: nothing to spread
    (1.0, 60.0, 100.0, law.FLOOR), # never below the floor
])
def test_spread_rate(successes, seconds, delivered, expected):
    assert law.spread_rate(successes, seconds, delivered) == (pytest.approx(expected) if expected else None)


def test_probe_gaps_double_up_to_a_bound():
    assert [law.probe_gap(n) for n in range(5)] == [0.05, 0.1, 0.2, 0.25, 0.25]


@pytest.mark.parametrize("text,seconds", [
    ("20ms", 0.02), ("1s", 1.0), ("1.5s", 1.5), ("6m0s", 360.0), ("1m30.5s", 90.5), ("1h2m3s", 3723.0),
    ("0.25", 0.25), ("7", 7.0), ("", None), ("soon", None), ("5x", None), ("-1", None), (None, None),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == (pytest.approx(seconds) if seconds is not None else None)


@pytest.mark.parametrize("headers,expected", [
    ({"x-ratelimit-limit-requests": "5000", "x-ratelimit-remaining-requests": "4999",
      "x-ratelimit-reset-requests": "12ms", "x-ratelimit-limit-tokens": "160000",
      "x-ratelimit-remaining-tokens": "159976", "x-ratelimit-reset-tokens": "6m0s"},
     (5000.0, 4999.0, 0.012, 160000.0, 159976.0, 360.0)),
    ({"X-RateLimit-Remaining-Requests": "3"}, (None, 3.0, None, None, None, None)),   # Azure: remaining only
])
def test_budget_from_headers(headers, expected):
    budget = budget_from(headers)
    assert tuple(budget) == tuple(pytest.approx(v) if v is not None else None for v in expected)


@pytest.mark.parametrize("headers", [{"retry-after": "1"}, {"x-ratelimit-limit-requests": "-1",
                                                            "x-ratelimit-remaining-requests": "-1"}])
def test_no_budget_or_azures_unknown_is_none(headers):
    assert budget_from(headers) is None
