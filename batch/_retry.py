"""Pure retry decisions: which failures to try again and how long to wait.

No I/O and no clock of their own, so they are tested as tables. The one retry loop
that uses them lives in ``batch._client``; nothing under it retries on its own. Reading
``Retry-After`` lives with the other limit headers in ``batch._flow.headers``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .errors import EndpointError
from ._flow.headers import MAX_RETRY_AFTER, parse_retry_after

__all__ = ["RetryPolicy", "MAX_RETRY_AFTER", "parse_retry_after", "retry_delay", "should_retry"]


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 8
    initial_backoff: float = 0.5
    max_backoff: float = 30.0


def should_retry(error: EndpointError, attempt: int, policy: RetryPolicy) -> bool:
    """``attempt`` counts from 0 for the first try."""
    return error.retryable and attempt < policy.max_retries


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
