"""Rate-limit profiles of batch.serve: each limiter on a fake clock, then each profile over real HTTP, headers exact."""

from __future__ import annotations

import re

import httpx
import pytest

from batch.serve import ServerProcess
from batch.serve import limits
from batch.serve.settings import default_options
import support
from support import Clock

DURATION = re.compile(r"^(\d+ms|\d+(\.\d+)?s|\d+m\d+(\.\d+)?s)$")


def options(**changes):
    return {**default_options(), **changes}


# ---------------------------------------------------------------- pure pieces

@pytest.mark.parametrize("seconds,text", [
    (0.0, "0ms"), (0.02, "20ms"), (0.0124, "12ms"), (0.9996, "1s"), (1.0, "1s"), (1.5, "1.5s"),
    (59.558, "59.558s"), (360.0, "6m0s"), (61.25, "1m1.25s"),
])
def test_reset_durations_are_written_as_openai_does(seconds, text):
    assert limits.format_duration(seconds) == text


@pytest.mark.parametrize("seconds,text", [(0.001, "1"), (0.5, "1"), (1.0, "1"), (1.01, "2"), (2.9, "3")])
def test_retry_after_is_whole_seconds_rounded_up_at_least_one(seconds, text):
    assert limits.whole_seconds(seconds) == text


@pytest.mark.parametrize("body,prompt,cost", [
    ({"max_tokens": 50}, 7, 57.0), ({"max_completion_tokens": 9}, 1, 10.0), ({}, 7, 15.0),
    ({"max_tokens": True}, 3, 7.0),
])
def test_a_request_costs_its_prompt_and_its_output_limit(body, prompt, cost):
    assert limits.request_cost(body, prompt) == cost


def test_no_profile_caps_anything_without_its_setting():
    assert limits.build(options()) is None
    with pytest.raises(ValueError, match="tokens_per_minute"):
        limits.build(options(limit_profile="tpm"))
    with pytest.raises(ValueError, match="max_concurrent"):
        limits.build(options(limit_profile="concurrency"))


def test_fixed_window_refuses_until_the_turn_then_refills():
    clock = Clock(0.0)
    limiter = limits.build(options(limit_profile="window", rate_limit=2.0, window_s=5.0), clock)
    assert [limiter.admit(1, 1) for _ in range(10)] == [None] * 10
    clock.now = 1.2
    refusal = limiter.admit(1, 1)
    assert refusal.headers == {"Retry-After": "4"}
    clock.now = 4.5
    assert limiter.admit(1, 1).headers == {"Retry-After": "1"}
    clock.now = 5.0
    assert limiter.admit(1, 1) is None
    assert limiter.snapshot()["per_window"] == [10, 1] and limiter.snapshot()["budget"] == 10


def test_token_cap_counts_each_request_by_its_cost():
    clock = Clock()
    limiter = limits.build(options(limit_profile="tpm", tokens_per_minute=6000.0), clock)  # 100/s, holds 10
    assert limiter.admit(8, 1) is None
    refusal = limiter.admit(8, 1)  # 2 left, 6 more take 60 ms
    assert refusal.headers == {"Retry-After": "1"}
    clock.now += 0.06
    assert limiter.admit(8, 1) is None
    assert limiter.snapshot()["tokens_admitted"] == 16


def test_concurrency_cap_counts_requests_in_flight_only():
    limiter = limits.build(options(limit_profile="concurrency", max_concurrent=2))
    assert limiter.admit(1, 2) is None
    assert limiter.admit(1, 3).headers == {}


# ---------------------------------------------------------------- over HTTP

@pytest.fixture(scope="module")
def srv():
    with ServerProcess() as server:
        yield server


@pytest.fixture
def http(srv):
    with httpx.Client(base_url=srv.url, timeout=10) as client:
        yield client


def configure(srv, **changes):
    """Every option back at its default (token-bucket, no cap, no latency), then ``changes``."""
    support.restore(srv, **changes)


def ask(http, words: int = 2, **extra):
    body = {"model": "m", "messages": [{"role": "user", "content": " ".join(["w"] * words)}], **extra}
    return http.post("/v1/chat/completions", json=body)


def spend(http, n):
    return [ask(http) for _ in range(n)]


RATE = dict(rate_limit=0.5, burst=2)  # two at once, then one every two seconds: a test's requests meet a full bucket


def test_token_bucket_stays_the_default_profile(srv, http):
    configure(srv, **RATE)
    assert srv.configure()["limit_profile"] == "token-bucket"
    ok, _, refused = spend(http, 3)
    assert ok.status_code == 200 and "retry-after" not in ok.headers
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "2"
    assert 1000.0 < float(refused.headers["retry-after-ms"]) <= 2000.0
    assert refused.json()["error"]["type"] == "rate_limit_error"


def test_retry_after_profile_sends_whole_seconds_only(srv, http):
    configure(srv, limit_profile="retry-after", **RATE)
    refused = spend(http, 3)[-1]
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "2"
    assert "retry-after-ms" not in refused.headers and not any(k.startswith("x-ratelimit") for k in refused.headers)


def test_bare_profile_sends_no_header(srv, http):
    configure(srv, limit_profile="bare", **RATE)
    refused = spend(http, 3)[-1]
    assert refused.status_code == 429
    assert not any(k.startswith(("retry-after", "x-ratelimit")) for k in refused.headers)


@pytest.mark.parametrize("profile", ["openai", "openai-retry"])
def test_openai_profiles_report_the_budget_on_every_answer(srv, http, profile):
    configure(srv, limit_profile=profile, tokens_per_minute=600_000, **RATE)
    ok, second, refused = spend(http, 3)
    h = ok.headers
    assert h["x-ratelimit-limit-requests"] == "30" and h["x-ratelimit-remaining-requests"] == "1"
    assert h["x-ratelimit-limit-tokens"] == "600000"
    assert DURATION.match(h["x-ratelimit-reset-requests"]) and DURATION.match(h["x-ratelimit-reset-tokens"])
    assert second.headers["x-ratelimit-remaining-requests"] == "0"
    reset = second.headers["x-ratelimit-reset-requests"]  # two requests' refill, less the real time between them
    assert re.fullmatch(r"\d+(\.\d+)?s", reset) and 3.9 <= float(reset[:-1]) <= 4.0, reset
    assert refused.status_code == 429 and refused.headers["x-ratelimit-remaining-requests"] == "0"
    if profile == "openai":
        assert "retry-after" not in refused.headers and "retry-after-ms" not in refused.headers
    else:
        assert refused.headers["retry-after"] == "2" and 1000 < int(refused.headers["retry-after-ms"]) <= 2000


def test_azure_profile_sends_retry_after_ms_and_retry_after(srv, http):
    configure(srv, limit_profile="azure", **RATE)
    ok, _, refused = spend(http, 3)
    assert ok.headers["x-ratelimit-remaining-requests"] == "1" and "x-ratelimit-remaining-tokens" in ok.headers
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "2" and 1000 < int(refused.headers["retry-after-ms"]) <= 2000


def test_window_profile_over_http_counts_each_window(srv, http):
    configure(srv, limit_profile="window", rate_limit=0.05, window_s=60)  # 3 per minute
    answers = spend(http, 4)
    assert [r.status_code for r in answers] == [200, 200, 200, 429]
    assert 1 <= int(answers[-1].headers["Retry-After"]) <= 60 and set(answers[-1].headers) >= {"retry-after"}
    snapshot = srv.stats()["limit"]
    assert snapshot["profile"] == "window" and snapshot["budget"] == 3 and snapshot["per_window"][-1] == 3


def test_tpm_profile_charges_long_requests_more(srv, http):
    configure(srv, limit_profile="tpm", tokens_per_minute=600)  # 10 tokens/s, holding 1
    assert ask(http, words=4).status_code == 200  # 4 + 5 = 9 tokens
    refused = ask(http, words=4)
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
    assert srv.stats()["limit"]["tokens_admitted"] == 9.0


def test_concurrency_profile_refuses_above_the_cap_with_no_header(srv):
    import concurrent.futures
    configure(srv, limit_profile="concurrency", max_concurrent=2, latency_ms=300)
    with httpx.Client(base_url=srv.url, timeout=10) as client, concurrent.futures.ThreadPoolExecutor(5) as pool:
        codes = sorted(r.status_code for r in pool.map(lambda _: ask(client), range(5)))
    assert codes == [200, 200, 429, 429, 429]
    stats = srv.stats()
    assert stats["limit"]["refused"] == 3 and stats["rate_limited"] == 3


def test_a_bad_profile_is_refused_and_changes_nothing(srv):
    configure(srv)
    with pytest.raises(httpx.HTTPStatusError):
        srv.configure(limit_profile="nonsense")
    assert srv.configure()["limit_profile"] == "token-bucket"


def test_the_profile_is_a_command_line_flag():
    with ServerProcess(limit_profile="bare", rate_limit=0.5, burst=1) as server, \
            httpx.Client(base_url=server.url, timeout=10) as client:
        answers = spend(client, 2)
    assert [r.status_code for r in answers] == [200, 429] and "retry-after" not in answers[1].headers
