"""Pure retry decisions: which failures to try again and how long to wait.

No I/O and no clock of their own, so they are tested as tables. The one retry loop
that uses them lives in ``batch.client``; nothing under it retries on its own.
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass
from typing import Mapping

from .errors import EndpointError

__all__ = ["RetryPolicy", "parse_retry_after", "retry_delay", "should_retry"]

MAX_RETRY_AFTER = 300.0


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 8
    initial_backoff: float = 0.5
    max_backoff: float = 30.0


def should_retry(error: EndpointError, attempt: int, policy: RetryPolicy) -> bool:
    """``attempt`` counts from 0 for the first try."""
    return error.retryable and attempt < policy.max_retries


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


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Header names are case-insensitive; a plain dict from a caller may not know that."""
    value = headers.get(name)
    if value is None:
        for key, candidate in headers.items():
            if key.lower() == name:
                return candidate
    return value


def retry_delay(attempt: int, policy: RetryPolicy, retry_after: float | None = None,
                rand: float | None = None) -> float:
    """Delay before retry number ``attempt + 1``.

    The server's hint wins when given (with up to 10% added jitter so that a crowd of
    clients does not come back in the same millisecond); otherwise capped exponential
    backoff with "equal jitter": between half and all of ``initial * 2**attempt``.
    """
    r = random.random() if rand is None else rand
    if retry_after is not None:
        return retry_after * (1.0 + 0.1 * r)
    base = min(policy.max_backoff, policy.initial_backoff * (2.0 ** min(attempt, 32)))
    return base * (0.5 + 0.5 * r)
