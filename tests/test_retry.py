"""Retry decisions as tables: what the server asked for, how long to back off, what is worth retrying."""

from __future__ import annotations

import email.utils

import httpx
import pytest

from batch.errors import (EndpointError, HTTPRequestError, InvalidResponseError, ParseCastError, QuotaExceededError,
                          RateLimitError, ServerError, TransportError, status_error)
from batch._retry import MAX_RETRY_AFTER, RetryPolicy, parse_retry_after, retry_delay, should_retry

NOW = 1_700_000_000.0  # a fixed wall clock for HTTP dates


def http_date(offset: float) -> str:
    return email.utils.formatdate(NOW + offset, usegmt=True)


@pytest.mark.parametrize("headers,expected", [
    ({}, None),
    ({"retry-after": "7"}, 7.0),
    ({"retry-after": " 3 "}, 3.0),
    ({"retry-after": "1.5"}, 1.5),
    ({"retry-after": "0"}, 0.0),
    ({"retry-after-ms": "1500"}, 1.5),
    ({"retry-after-ms": "250.5"}, 0.2505),
    ({"retry-after-ms": "0"}, 0.0),
    # the millisecond header is the more precise one and wins
    ({"retry-after-ms": "200", "retry-after": "1"}, 0.2),
    # a useless millisecond header falls back to the seconds header
    ({"retry-after-ms": "soon", "retry-after": "2"}, 2.0),
    ({"retry-after-ms": "-5", "retry-after": "2"}, 2.0),
    ({"retry-after-ms": "9999999", "retry-after": "2"}, 2.0),
    ({"retry-after-ms": "nan", "retry-after": "2"}, 2.0),
    ({"retry-after-ms": "nonsense"}, None),
    # HTTP dates, measured against the injected wall clock
    ({"retry-after": http_date(30)}, 30.0),
    ({"retry-after": http_date(0)}, 0.0),
    ({"retry-after": http_date(-120)}, 0.0),  # a date already past: go now
    ({"retry-after": http_date(MAX_RETRY_AFTER + 60)}, None),
    # garbage
    ({"retry-after": ""}, None),
    ({"retry-after": "soon"}, None),
    ({"retry-after": "5 seconds"}, None),
    ({"retry-after": "Tue, 32 Foo 2020"}, None),
    ({"retry-after": "nan"}, None),
    ({"retry-after": "inf"}, None),
    # negative delays are not delays
    ({"retry-after": "-5"}, None),
    ({"retry-after": "-0.5"}, None),
    # above the cap: no batch job should sit idle that long on one server's word
    ({"retry-after": str(MAX_RETRY_AFTER)}, MAX_RETRY_AFTER),
    ({"retry-after": str(MAX_RETRY_AFTER + 1)}, None),
    ({"retry-after": "86400"}, None),
    ({"retry-after-ms": str(MAX_RETRY_AFTER * 1000 + 1)}, None),
])
def test_parse_retry_after(headers, expected):
    got = parse_retry_after(headers, now=NOW)
    assert got == (pytest.approx(expected) if expected is not None else None)
    # the same answer from real response headers, whatever the case the server used
    shouted = httpx.Headers({k.title(): v for k, v in headers.items()})
    assert parse_retry_after(shouted, now=NOW) == got


def test_parse_retry_after_plain_mapping_is_case_insensitive():
    assert parse_retry_after({"Retry-After": "4"}, now=NOW) == 4.0
    assert parse_retry_after({"Retry-After-Ms": "40"}, now=NOW) == pytest.approx(0.04)


def test_parse_retry_after_date_uses_the_real_clock_by_default():
    far = email.utils.formatdate(usegmt=True)  # now, give or take a second
    assert 0.0 <= parse_retry_after({"retry-after": far}) <= 1.0


POLICY = RetryPolicy(max_retries=5, initial_backoff=0.5, max_backoff=30.0)


@pytest.mark.parametrize("attempt,rand,expected", [
    # exponential growth: the full value at rand=1, half of it at rand=0 ("equal jitter")
    (0, 1.0, 0.5), (1, 1.0, 1.0), (2, 1.0, 2.0), (3, 1.0, 4.0), (4, 1.0, 8.0),
    (0, 0.0, 0.25), (1, 0.0, 0.5), (2, 0.0, 1.0), (3, 0.0, 2.0),
    (2, 0.5, 1.5),
    # the cap
    (6, 1.0, 30.0), (6, 0.0, 15.0), (10, 1.0, 30.0), (1000, 1.0, 30.0), (1000, 0.0, 15.0),
])
def test_retry_delay_backoff(attempt, rand, expected):
    assert retry_delay(attempt, POLICY, None, rand) == pytest.approx(expected)


@pytest.mark.parametrize("attempt", range(12))
@pytest.mark.parametrize("rand", [0.0, 0.1, 0.5, 0.9, 0.999999])
def test_retry_delay_equal_jitter_bounds(attempt, rand):
    base = min(POLICY.max_backoff, POLICY.initial_backoff * 2 ** attempt)
    delay = retry_delay(attempt, POLICY, None, rand)
    assert base / 2 <= delay <= base <= POLICY.max_backoff


@pytest.mark.parametrize("retry_after,rand,expected", [
    (2.0, 0.0, 2.0), (2.0, 0.5, 2.1), (2.0, 1.0, 2.2), (0.0, 1.0, 0.0), (120.0, 1.0, 132.0),
])
@pytest.mark.parametrize("attempt", [0, 3, 50])
def test_retry_delay_server_hint_wins(retry_after, rand, expected, attempt):
    # whatever the attempt and the backoff cap, the server's hint plus at most 10% jitter
    delay = retry_delay(attempt, POLICY, retry_after, rand)
    assert delay == pytest.approx(expected)
    assert retry_after <= delay <= retry_after * 1.1 + 1e-12


def test_retry_delay_default_randomness_stays_in_bounds():
    for attempt in range(8):
        base = min(POLICY.max_backoff, POLICY.initial_backoff * 2 ** attempt)
        for _ in range(50):
            assert base / 2 <= retry_delay(attempt, POLICY) <= base
            assert 3.0 <= retry_delay(attempt, POLICY, 3.0) <= 3.3


ENDPOINT = "my-chat"


@pytest.mark.parametrize("error,retryable", [
    (RateLimitError(ENDPOINT, "slow down", status=429), True),
    (ServerError(ENDPOINT, "oops", status=503), True),
    (TransportError(ENDPOINT, "connection dropped"), True),
    (InvalidResponseError(ENDPOINT, "not JSON", status=200), True),
    (InvalidResponseError(ENDPOINT, "wrong shape", status=200, retryable=False), False),
    (HTTPRequestError(ENDPOINT, "bad request", status=400), False),
    (ParseCastError(ENDPOINT, "does not fit"), False),
    (EndpointError(ENDPOINT, "generic"), False),
])
@pytest.mark.parametrize("attempt,max_retries,budget_left", [
    (0, 0, False), (0, 1, True), (1, 1, False), (0, 3, True), (2, 3, True), (3, 3, False), (7, 3, False),
])
def test_should_retry(error, retryable, attempt, max_retries, budget_left):
    policy = RetryPolicy(max_retries=max_retries)
    assert should_retry(error, attempt, policy) is (retryable and budget_left)


@pytest.mark.parametrize("status,cls,retryable", [
    (429, RateLimitError, True),
    (408, ServerError, True), (500, ServerError, True), (502, ServerError, True),
    (503, ServerError, True), (504, ServerError, True),
    (400, HTTPRequestError, False), (401, HTTPRequestError, False), (403, HTTPRequestError, False),
    (404, HTTPRequestError, False), (413, HTTPRequestError, False), (501, HTTPRequestError, False),
    (505, HTTPRequestError, False),
])
def test_status_error(status, cls, retryable):
    error = status_error(ENDPOINT, status, "the endpoint's own words", retry_after=1.5)
    assert type(error) is cls and error.retryable is retryable and error.status == status
    text = str(error)
    assert "AI_FUNCTION_HTTP_REQUEST_ERROR" in text and ENDPOINT in text and str(status) in text
    assert "the endpoint's own words" in text
    assert error.retry_after == (1.5 if retryable else None)


@pytest.mark.parametrize("kind", ["insufficient_quota", "billing_hard_limit_reached"])
def test_a_spent_quota_is_not_a_rate_limit(kind):
    error = status_error(ENDPOINT, 429, f"{kind}: no credit", retry_after=20.0, kind=kind)
    assert type(error) is QuotaExceededError and not error.retryable and error.retry_after is None
    assert error.detail == (f"{kind}: no credit (the account has no quota left, so the request is not retried: add "
                            "credit or raise the quota, then run again)")
    assert type(status_error(ENDPOINT, 429, "slow down", kind="rate_limit_exceeded")) is RateLimitError
    assert type(status_error(ENDPOINT, 400, "x", kind=kind)) is HTTPRequestError  # only a 429 means a spent quota
