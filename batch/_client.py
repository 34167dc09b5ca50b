"""The endpoint client: one async retry loop around one request, under the endpoint's flow control.

One ``EndpointClient`` per endpoint per event loop. It owns the credentials, the
transport (one connection pool) and the ``FlowControl`` that every request of the
pool passes through, so a 429 slows the whole pool and not only the one request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from collections.abc import Awaitable, Callable, Mapping, Sequence

import httpx

from ._auth import credentials_for
from ._budget import per_second_budgets
from .config import EndpointConfig
from .errors import (EndpointError, InvalidResponseError, NoAnswerError, RateLimitError, TransportError,
                     status_error)
from ._flow.control import FlowControl
from ._flow.headers import budget_from
from ._retry import RetryPolicy, parse_retry_after, retry_delay, should_retry
from ._transport import make_transport, poster
from ._wire import (AnswerShapeError, ErrorInfo, NoAnswer, Usage, embedded_error, error_info, error_text, parse_answer,
                   request_body)

__all__ = ["EndpointClient", "CallResult", "ClientStats", "pace_key"]

log = logging.getLogger("batch._client")

# One encoder for every request: json.dumps with options builds a new encoder on each call.
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


@dataclass(slots=True)
class CallResult:
    """How one logical request ended, after all its attempts."""

    results: list[Any] | None
    error: EndpointError | None
    attempts: int
    rate_limited: int
    latency: float
    usage: Usage
    started_at: float | None = None  # epoch seconds of the first attempt's send


@dataclass(slots=True)
class ClientStats:
    requests: int = 0
    attempts: int = 0
    rate_limited: int = 0
    failed: int = 0
    usage: Usage = field(default_factory=Usage)

    def add(self, result: CallResult) -> None:
        self.requests += 1
        self.attempts += result.attempts
        self.rate_limited += result.rate_limited
        self.failed += result.error is not None
        self.usage.add(result.usage)


class EndpointClient:
    def __init__(self, config: EndpointConfig, *, transport: httpx.AsyncBaseTransport | None = None,
                 rate_share: float = 1.0, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 rand: Callable[[], float] = random.random, share_pace: bool = False) -> None:
        """``rate_share``: the fraction of the endpoint's per-minute budgets this client may use
        (``batch._budget.budget_share``).
        ``share_pace``: learn the endpoint's rate limit together with the other workers on this host."""
        self.config = config
        self.url = config.url()
        self.transport = transport or make_transport(verify=config.verify_tls)
        self.credentials = credentials_for(config, self.transport, clock=clock)
        self.policy = RetryPolicy(config.max_retries, config.initial_backoff, config.max_backoff)
        requests_per_second, tokens_per_second = per_second_budgets(config, rate_share)
        self.flow = FlowControl(max_concurrency=config.max_concurrency, requests_per_second=requests_per_second,
                                tokens_per_second=tokens_per_second, clock=clock, sleep=sleep,
                                share=pace_key(config) if share_pace else None)
        self.stats = ClientStats()
        self._clock, self._sleep, self._rand = clock, sleep, rand
        t = config.timeout
        self._post = poster(self.transport, self.url,
                            {"connect": config.connect_timeout, "read": t, "write": t, "pool": t})
        # Headers are merged once here, and again only when the credentials change, not on every request.
        self._headers = httpx.Headers({"Host": httpx.URL(self.url).netloc.decode("ascii"),
                                       "content-type": "application/json", "user-agent": "spark-ai-query"})
        self._headers.update(dict(config.headers))  # the entry's own headers replace ours, whatever their case
        self._auth: Mapping[str, str] | None = None
        self._request_headers: Any = None  # in the poster's form, made on the first attempt
        self._stated: str | None = None  # the last x-ratelimit-limit-requests seen, so it is read once

    async def call(self, inputs: Sequence[Any], params: Mapping[str, Any] | None = None,
                   response_format: Mapping[str, Any] | None = None) -> CallResult:
        body = _encode(request_body(self.config, inputs, params, response_format)).encode()
        limit = (params or {}).get("max_tokens") or (params or {}).get("max_completion_tokens")
        max_tokens = limit if isinstance(limit, int) and not isinstance(limit, bool) else None
        expect = _Expect(len(inputs), (response_format or {}).get("type") in _STRUCTURED, max_tokens)
        estimate = len(body) // 4 + (max_tokens or 0)
        started = self._clock()
        attempts = rate_limited = 0
        billed, started_at = Usage(), None  # every attempt's billed tokens count, not only the last one's
        while True:
            await self.flow.admit(estimate)
            attempts += 1
            sent, seq = self._clock(), self.flow.sent_total
            if started_at is None:
                started_at = time.time()
            try:
                results, usage, error = await self._attempt(body, expect)
            except BaseException:
                self.flow.done(None)
                raise
            limited = isinstance(error, RateLimitError)
            self.flow.done(self._clock() - sent if error is None or limited else None, rate_limited=limited,
                           token_error=usage.total_tokens - estimate if usage.total_tokens else 0, seq=seq)
            rate_limited += limited
            if usage.total_tokens or usage.prompt_tokens or usage.completion_tokens:
                billed.add(usage)
            if error is None or not should_retry(error, attempts - 1, self.policy):
                result = CallResult(results, error, attempts, rate_limited, self._clock() - started, billed,
                                    started_at)
                self.stats.add(result)
                return result
            delay = retry_delay(attempts - 1, self.policy, error.retry_after, self._rand())
            log.debug("retrying %s in %.3fs after attempt %d: %s", self.config.name, delay, attempts, error)
            if limited:  # this request waits what the server asked; the pool waits too only in a storm
                self.flow.refused_for(delay, stated=error.retry_after is not None)
            await self._sleep(delay)

    async def _attempt(self, body: bytes, expect: _Expect) -> tuple[list[Any] | None, Usage, EndpointError | None]:
        try:
            auth = await self.credentials.headers()
        except EndpointError as exc:  # the token endpoint failed: retried like any other attempt
            return None, Usage(), exc
        if auth is not self._auth:  # credentials hand back the same dict until the token changes
            headers = self._headers.copy()
            headers.update(auth)
            self._auth, self._request_headers = auth, self._post.prepare(headers)
        try:
            status, reply_headers, content = await self._post.send(self._request_headers, body)
        except httpx.TimeoutException:
            return None, Usage(), TransportError(self.config.name,
                                                 f"no answer within {self.config.timeout:g}s (timeout)")
        except httpx.HTTPError as exc:
            return None, Usage(), TransportError(self.config.name, f"connection failed: {exc}")
        stated = reply_headers.get("x-ratelimit-limit-requests")
        if stated is not None and stated != self._stated:  # the endpoint states its limit: read it when it changes
            self._stated = stated
            budget = budget_from(reply_headers)
            if budget is not None:
                self.flow.stated(budget)
        return _read_reply(self.config, status, reply_headers, content, expect)

    async def aclose(self) -> None:
        self.flow.close()
        await self.transport.aclose()

    def __repr__(self) -> str:
        return f"EndpointClient({self.config.name!r}, {self.flow!r})"


def pace_key(config: EndpointConfig) -> str:
    """What names an endpoint's pace on a host: the entry and the URL it calls."""
    return f"{config.name} {config.url()}"


class _Expect(NamedTuple):
    """What a request asked for, as reading its answer needs it."""

    inputs: int
    structured: bool = False
    max_tokens: int | None = None


_STRUCTURED = frozenset({"json_object", "json_schema"})


def _read_reply(config: EndpointConfig, status: int, headers: Mapping[str, str], content: bytes,
                expect: _Expect) -> tuple[list[Any] | None, Usage, EndpointError | None]:
    """The per-input results and usage of an answer, or the error it stands for."""
    if status != 200:
        info = error_info(content)
        return None, Usage(), status_error(config.name, status, info.text, parse_retry_after(headers, time.time()),
                                           info.kind)
    try:
        answer = json.loads(content)
        return parse_answer(config, answer, expect.inputs, structured=expect.structured,
                            max_tokens=expect.max_tokens), Usage.from_body(answer), None
    except (ValueError, RecursionError):
        return _read_unusual(config, headers, content, expect)


def _read_unusual(config: EndpointConfig, headers: Mapping[str, str], content: bytes,
                  expect: _Expect) -> tuple[list[Any] | None, Usage, EndpointError | None]:
    """A 200 that is not the common answer, read again with care (only here, so the common answer pays nothing):
    bytes that are not UTF-8 (a cut multi-byte character) are replaced, an error carried inside the body is
    judged by its own code, and an answer without text says why. Tokens the endpoint billed still count."""
    name = config.name
    try:
        answer = json.loads(content.decode("utf-8", "replace"))
    except RecursionError:
        return None, Usage(), InvalidResponseError(name, "unexpected answer (JSON nested too deeply to read)",
                                                   status=200, retryable=False)
    except ValueError:
        # A cut or garbled body is a transport accident worth retrying.
        what = error_text(content, 200)
        what = (f"not JSON but {what}" if what.startswith("an HTML page")
                else f"not JSON: {content[:200].decode('utf-8', 'replace')!r}")
        return None, Usage(), InvalidResponseError(name, f"unexpected answer ({what})", status=200)
    usage = Usage.from_body(answer) if isinstance(answer, Mapping) else Usage()
    inside = embedded_error(answer)
    if inside is not None:
        return None, usage, _error_inside(name, inside, headers)
    try:
        return parse_answer(config, answer, expect.inputs, structured=expect.structured,
                            max_tokens=expect.max_tokens), usage, None
    except NoAnswer as exc:
        return None, usage, NoAnswerError(name, str(exc), status=200)
    except AnswerShapeError as exc:
        # A well-formed body of the wrong shape will come back the same, so it is reported at once.
        snippet = content[:200].decode("utf-8", "replace")
        return None, usage, InvalidResponseError(name, f"unexpected answer ({exc}): {snippet!r}", status=200,
                                                 retryable=False)


def _error_inside(name: str, info: ErrorInfo, headers: Mapping[str, str]) -> EndpointError:
    """An error sent as a 200: the code inside decides, as if it had been the status (a 429 is retried and
    slows the pool, a 4xx fails the row, a 5xx is retried); one naming no status fails the row."""
    text = f"{info.text} (an error sent inside an HTTP 200 answer)"
    if info.status is None:
        return InvalidResponseError(name, f"the answer is an error: {text}", status=200, retryable=False)
    return status_error(name, info.status, text, parse_retry_after(headers, time.time()), info.kind)
