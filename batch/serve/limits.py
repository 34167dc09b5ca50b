"""Rate-limit profiles: the ways real endpoints refuse traffic above their limit, one per name.

``--limit-profile`` (or ``{"limit_profile": ...}`` posted to ``/_admin/config``) picks one:

==================  ====================================================================================
``token-bucket``    today's default: a bucket of ``rate_limit``/s holding ``burst``; a 429 carries
                    ``Retry-After`` (whole seconds, at least 1) and ``retry-after-ms`` (the exact wait),
                    or what ``--retry-after`` says (``none``, or a fixed number of seconds).
``retry-after``     the same bucket; a 429 carries only ``Retry-After`` in whole seconds, at least 1, as
                    gateways, LiteLLM and Anthropic send it.
``bare``            the same bucket; a 429 carries no header at all, as nginx ``limit_req`` with
                    ``limit_req_status 429`` (a leaky bucket, ``burst`` requests deep) and some
                    self-hosted servers do.
``openai``          the same bucket; every answer carries OpenAI's ``x-ratelimit-limit-requests`` (per
                    minute), ``x-ratelimit-remaining-requests`` and ``x-ratelimit-reset-requests`` (a
                    duration such as ``20ms``, ``1s``, ``6m0s``: the time until the bucket is full again),
                    and the same three for tokens; a 429 carries nothing more.
``openai-retry``    ``openai`` plus ``retry-after-ms`` and ``retry-after`` (whole seconds) on a 429.
``azure``           the same bucket; a 429 carries Azure OpenAI's ``retry-after-ms`` and ``retry-after``
                    (whole seconds); every answer carries ``x-ratelimit-remaining-requests`` and
                    ``x-ratelimit-remaining-tokens``.
``window``          a fixed window: ``rate_limit * window_s`` requests per window of ``window_s`` seconds
                    (60 by default, a per-minute limit), refilled at the window's turn; a request above the
                    budget gets a 429 with ``Retry-After`` in whole seconds until the turn.
``tpm``             a token bucket of ``tokens_per_minute``: a request costs its prompt tokens plus its
                    ``max_tokens`` (or, without one, its prompt tokens again: the simulator echoes the
                    prompt), as OpenAI and Azure count a request before answering it; a 429 carries
                    ``Retry-After`` in whole seconds.
``concurrency``     at most ``max_concurrent`` requests in flight, the rest refused at once with a 429 and
                    no header (a text-generation server's ``max_concurrent_requests``); no rate cap.
==================  ====================================================================================

The simulator's buckets hold ``burst`` requests (``rate_limit / 10`` by default), not a minute's worth:
providers also enforce their per-minute limits over short windows (Azure checks RPM over 1 or 10
seconds), and a bucket that held a minute would never refuse anything in a benchmark.
Limiters read the settings by name (``Settings.as_dict()``); everything takes a ``clock`` so tests
can step time by hand.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["PROFILES", "RATE_OPTIONS", "Limiter", "Refusal", "TokenBucket", "build", "format_duration", "request_cost",
           "retry_headers"]

Clock = Callable[[], float]

PROFILES = ("token-bucket", "retry-after", "bare", "openai", "openai-retry", "azure", "window", "tpm",
            "concurrency")
DEFAULT_PROFILE = "token-bucket"
DEFAULT_WINDOW_S = 60.0
# the settings a limiter is built from: changing one builds a new limiter
RATE_OPTIONS = ("limit_profile", "rate_limit", "burst", "retry_after", "window_s", "tokens_per_minute",
                "max_concurrent")


class Refusal:
    """A 429: its message and headers."""

    __slots__ = ("message", "headers")

    def __init__(self, message: str, headers: dict[str, str]) -> None:
        self.message, self.headers = message, headers


def whole_seconds(seconds: float) -> str:
    """``Retry-After`` as servers send it: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds - 1e-9)))


def format_duration(seconds: float) -> str:
    """A duration as OpenAI writes it in ``x-ratelimit-reset-*``: ``20ms``, ``1s``, ``1.5s``, ``6m0s``."""
    ms = max(0, round(seconds * 1000))
    if ms < 1000:
        return f"{ms}ms"
    if ms < 60_000:
        return f"{ms / 1000:g}s"
    minutes, rest = divmod(ms, 60_000)
    return f"{minutes}m{rest / 1000:g}s"


def retry_headers(setting: str | float, wait: float | None) -> dict[str, str]:
    """The token-bucket profile's 429 headers (and those of an injected ``429`` fault): ``setting`` is
    ``auto`` (the real wait, or 0.1 s when there is none), ``none`` (no header) or fixed seconds."""
    if setting == "none":
        return {}
    seconds = (wait or 0.1) if setting == "auto" else float(setting)
    whole = max(1, math.ceil(seconds)) if seconds > 0 else 0
    return {"Retry-After": str(whole), "retry-after-ms": f"{seconds * 1000:.3f}"}


class TokenBucket:
    """Admits ``rate`` units per second with bursts up to ``capacity``."""

    def __init__(self, rate: float, capacity: float | None = None, clock: Clock = time.monotonic) -> None:
        self.rate = rate
        self.capacity = capacity if capacity else max(1.0, rate / 10)
        self.tokens = self.capacity
        self.clock = clock
        self.stamp = clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self, amount: float = 1.0) -> float:
        """0 when admitted, else the seconds until ``amount`` fits. An amount larger than the whole
        bucket goes through when the bucket is full and leaves it in debt."""
        self._refill()
        if self.tokens >= min(amount, self.capacity):
            self.tokens -= amount
            return 0.0
        return (min(amount, self.capacity) - self.tokens) / self.rate

    def wait(self) -> float:
        self._refill()
        return max(0.0, (1.0 - self.tokens) / self.rate)

    def until_full(self) -> float:
        self._refill()
        return (self.capacity - self.tokens) / self.rate


def request_cost(body: dict, prompt_tokens: int) -> float:
    """Tokens a request counts against a tokens-per-minute cap before it is answered."""
    limit = body.get("max_tokens") or body.get("max_completion_tokens") or body.get("max_output_tokens")
    completion = limit if isinstance(limit, int) and not isinstance(limit, bool) else prompt_tokens + 1
    return float(prompt_tokens + completion)


class Limiter:
    """One profile's admission: ``admit`` before a request is answered, ``headers`` for its answer."""

    by_tokens = False

    def __init__(self, options: Mapping[str, Any], clock: Clock = time.monotonic) -> None:
        self.profile = options["limit_profile"]
        self.options = options
        self.clock = clock
        self.admitted = self.refused = 0

    def admit(self, cost: float, in_flight: int) -> Refusal | None:
        raise NotImplementedError

    def headers(self) -> dict[str, str] | None:
        """Headers for an answer that was admitted (None: nothing to add)."""
        return None

    def snapshot(self) -> dict[str, Any]:
        return {"profile": self.profile, "admitted": self.admitted, "refused": self.refused}


class BucketLimiter(Limiter):
    """``rate_limit`` requests per second: token-bucket, retry-after, bare, openai, openai-retry, azure."""

    def __init__(self, options: Mapping[str, Any], clock: Clock = time.monotonic) -> None:
        super().__init__(options, clock)
        self.bucket = TokenBucket(options["rate_limit"], options["burst"], clock)
        # A token budget to report in the headers; far above what the request cap lets through.
        self.token_rate = options["tokens_per_minute"] / 60.0 or self.bucket.rate * 10_000
        self.token_bucket = TokenBucket(self.token_rate, self.token_rate * self.bucket.capacity / self.bucket.rate,
                                        clock)
        self.last_cost = 0.0

    def admit(self, cost: float, in_flight: int) -> Refusal | None:
        wait = self.bucket.take()
        if not wait:
            self.admitted += 1
            self.token_bucket.take(cost)
            return None
        self.refused += 1
        return Refusal("rate limit exceeded", self._refusal_headers(wait))

    def _refusal_headers(self, wait: float) -> dict[str, str]:
        profile = self.profile
        if profile == "token-bucket":
            return retry_headers(self.options["retry_after"], wait)
        if profile == "retry-after":
            return {"Retry-After": whole_seconds(wait)}
        if profile == "bare":
            return {}
        headers = self._openai_headers() if profile.startswith("openai") else self._azure_headers()
        if profile in ("openai-retry", "azure"):
            headers["retry-after-ms"] = str(max(1, math.ceil(wait * 1000)))
            headers["retry-after"] = whole_seconds(wait)
        return headers

    def headers(self) -> dict[str, str] | None:
        if self.profile.startswith("openai"):
            return self._openai_headers()
        if self.profile == "azure":
            return self._azure_headers()
        return None

    def _openai_headers(self) -> dict[str, str]:
        bucket, tokens = self.bucket, self.token_bucket
        return {
            "x-ratelimit-limit-requests": str(round(bucket.rate * 60)),
            "x-ratelimit-remaining-requests": str(max(0, math.floor(bucket.tokens))),
            "x-ratelimit-reset-requests": format_duration(bucket.until_full()),
            "x-ratelimit-limit-tokens": str(round(tokens.rate * 60)),
            "x-ratelimit-remaining-tokens": str(max(0, math.floor(tokens.tokens))),
            "x-ratelimit-reset-tokens": format_duration(tokens.until_full()),
        }

    def _azure_headers(self) -> dict[str, str]:
        self.bucket._refill()
        self.token_bucket._refill()
        return {"x-ratelimit-remaining-requests": str(max(0, math.floor(self.bucket.tokens))),
                "x-ratelimit-remaining-tokens": str(max(0, math.floor(self.token_bucket.tokens)))}


class WindowLimiter(Limiter):
    """A fixed window of ``window_s`` seconds holding ``rate_limit * window_s`` requests, refilled at its turn."""

    def __init__(self, options: Mapping[str, Any], clock: Clock = time.monotonic) -> None:
        super().__init__(options, clock)
        self.length = options["window_s"]
        self.budget = max(1, round(options["rate_limit"] * self.length))
        self.origin = clock()
        self.window = 0
        self.used = 0
        self.per_window: list[int] = [0]

    def admit(self, cost: float, in_flight: int) -> Refusal | None:
        now = self.clock()
        window = int((now - self.origin) // self.length)
        if window != self.window:
            self.window, self.used = window, 0
            self.per_window.extend([0] * (window + 1 - len(self.per_window)))
        if self.used < self.budget:
            self.used += 1
            self.admitted += 1
            self.per_window[window] += 1
            return None
        self.refused += 1
        turn = self.origin + (window + 1) * self.length
        return Refusal("rate limit exceeded for this window", {"Retry-After": whole_seconds(turn - now)})

    def snapshot(self) -> dict[str, Any]:
        return {**super().snapshot(), "window_s": self.length, "budget": self.budget, "origin": self.origin,
                "per_window": list(self.per_window)}


class TokenLimiter(Limiter):
    """``tokens_per_minute``, refilled continuously, holding a tenth of a second's worth (a larger request
    goes through on a full bucket and leaves it in debt)."""

    by_tokens = True

    def __init__(self, options: Mapping[str, Any], clock: Clock = time.monotonic) -> None:
        super().__init__(options, clock)
        per_second = options["tokens_per_minute"] / 60.0
        if per_second <= 0:
            raise ValueError("the tpm profile needs tokens_per_minute > 0")
        self.bucket = TokenBucket(per_second, None, clock)
        self.tokens_admitted = 0.0

    def admit(self, cost: float, in_flight: int) -> Refusal | None:
        wait = self.bucket.take(cost)
        if not wait:
            self.admitted += 1
            self.tokens_admitted += cost
            return None
        self.refused += 1
        return Refusal("rate limit exceeded: tokens per minute", {"Retry-After": whole_seconds(wait)})

    def snapshot(self) -> dict[str, Any]:
        return {**super().snapshot(), "tokens_admitted": self.tokens_admitted,
                "tokens_per_second": self.bucket.rate}


class ConcurrencyLimiter(Limiter):
    """At most ``max_concurrent`` requests in flight; no rate cap."""

    def __init__(self, options: Mapping[str, Any], clock: Clock = time.monotonic) -> None:
        super().__init__(options, clock)
        self.limit = options["max_concurrent"]
        if self.limit <= 0:
            raise ValueError("the concurrency profile needs max_concurrent > 0")

    def admit(self, cost: float, in_flight: int) -> Refusal | None:
        if in_flight <= self.limit:  # ``in_flight`` counts this request
            self.admitted += 1
            return None
        self.refused += 1
        return Refusal(f"too many requests in flight (at most {self.limit})", {})


def build(options: Mapping[str, Any], clock: Clock = time.monotonic) -> Limiter | None:
    """The limiter the options ask for, or None when nothing is capped."""
    profile = options["limit_profile"]
    if profile == "concurrency":
        return ConcurrencyLimiter(options, clock)
    if profile == "tpm":
        return TokenLimiter(options, clock)
    if options["rate_limit"] <= 0:
        return None
    if profile == "window":
        return WindowLimiter(options, clock)
    return BucketLimiter(options, clock)
