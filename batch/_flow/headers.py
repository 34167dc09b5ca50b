"""Reading what an endpoint says about its limits: ``Retry-After`` and the ``x-ratelimit-*`` headers.

* ``retry-after-ms`` (Azure OpenAI, OpenAI): milliseconds, the precise wait.
* ``Retry-After`` (RFC 9110): whole seconds or an HTTP date; gateways, LiteLLM and Anthropic send it,
  rounded up, so ``Retry-After: 1`` often means "a few milliseconds".
* ``x-ratelimit-limit-requests`` / ``-tokens`` (OpenAI, Azure OpenAI, LiteLLM): the per-minute limit;
  ``x-ratelimit-remaining-*``: what is left; ``x-ratelimit-reset-*``: the time until the budget is
  whole again, as a duration such as ``20ms``, ``1s``, ``1.5s`` or ``6m0s`` (plain seconds are read too).

Pure functions over a mapping of headers, tested as tables.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from typing import NamedTuple
from collections.abc import Mapping

__all__ = ["MAX_RETRY_AFTER", "parse_retry_after", "parse_duration", "Budget", "budget_from"]

#: A longer wait than this is refused as absurd (the caller backs off on its own instead).
MAX_RETRY_AFTER = 300.0

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait as the server asked: ``retry-after-ms``, then ``Retry-After`` in seconds or as an HTTP date.

    ``now`` is the wall clock (``time.time()``) used for HTTP dates. Absurd or unparseable values give None,
    so the caller falls back to its own backoff.
    """
    ms = _header(headers, "retry-after-ms")
    if ms is not None:
        try:
            value = float(ms) / 1000.0
        except ValueError:
            value = None
        if value is not None and 0 <= value <= MAX_RETRY_AFTER:
            return value
    raw = _header(headers, "retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        value = float(raw)
    except ValueError:
        parsed = email.utils.parsedate_tz(raw)
        if parsed is None:
            return None
        # a date already past means "now"; a negative number of seconds is no delay at all
        value = max(0.0, email.utils.mktime_tz(parsed) - (time.time() if now is None else now))
    if not 0.0 <= value <= MAX_RETRY_AFTER:  # negative, NaN, or longer than any batch job should sit idle
        return None
    return value


def parse_duration(text: str | None) -> float | None:
    """``20ms``, ``1s``, ``1.5s``, ``6m0s``, ``1h2m3s`` or plain seconds, in seconds; None when unreadable."""
    if text is None:
        return None
    text = text.strip()
    try:
        value = float(text)
        return value if math.isfinite(value) and value >= 0 else None
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(number) * _UNITS[unit] for number, unit in parts)


class Budget(NamedTuple):
    """What ``x-ratelimit-*`` headers said: per-minute limits, what is left, seconds until whole again."""

    limit_requests: float | None = None
    remaining_requests: float | None = None
    reset_requests: float | None = None
    limit_tokens: float | None = None
    remaining_tokens: float | None = None
    reset_tokens: float | None = None


def budget_from(headers: Mapping[str, str]) -> Budget | None:
    """The ``x-ratelimit-*`` figures of an answer, or None when it has none (negative values count as none:
    Azure sends -1 where it does not know)."""
    limit = _number(_header(headers, "x-ratelimit-limit-requests"))
    remaining = _number(_header(headers, "x-ratelimit-remaining-requests"))
    if limit is None and remaining is None:
        return None
    return Budget(limit, remaining, parse_duration(_header(headers, "x-ratelimit-reset-requests")),
                  _number(_header(headers, "x-ratelimit-limit-tokens")),
                  _number(_header(headers, "x-ratelimit-remaining-tokens")),
                  parse_duration(_header(headers, "x-ratelimit-reset-tokens")))


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Header names are case-insensitive; a plain dict from a caller may not know that."""
    value = headers.get(name)
    if value is None:
        for key, candidate in headers.items():
            if key.lower() == name:
                return candidate
    return value
