"""From a batch of row values to endpoint calls and back: one outcome per row, in row order.

NULL rows make no call; identical rows share one call (nothing is paid for twice);
embeddings and custom-model rows are packed many to a request. When a packed request
is refused outright (say one over-long text), its rows are retried one by one so the
bad row fails alone and the others are answered.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from .client import CallResult, EndpointClient
from .errors import EndpointError, HTTPRequestError
from .wire import MULTI_INPUT_TASKS

__all__ = ["RowOutcome", "answer_rows"]


@dataclass(slots=True)
class RowOutcome:
    """What happened to one row. Request-level counts sit on the first row a request served, and its
    tokens are spread over its rows, so that summing any column over rows gives the true total."""

    value: Any = None
    error: EndpointError | None = None
    attempts: int = 0
    latency_ms: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    requests: int = 0
    rate_limited: int = 0
    answered: bool = False


def _key(value: Any) -> Any:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


async def answer_rows(client: EndpointClient, values: Sequence[Any], *,
                      params: Mapping[str, Any] | None = None,
                      response_format: Mapping[str, Any] | None = None,
                      convert: Callable[[Any], Any] | None = None) -> list[RowOutcome]:
    """``convert`` turns an answer into the row's value; an ``EndpointError`` from it fails that row only."""
    groups: dict[Any, list[int]] = {}
    uniques: list[Any] = []
    for index, value in enumerate(values):
        if value is None:
            continue
        key = _key(value)
        rows = groups.get(key)
        if rows is None:
            groups[key] = rows = []
            uniques.append(value)
        rows.append(index)
    outcomes = [RowOutcome() for _ in values]
    size = client.config.batch_size if client.config.task in MULTI_INPUT_TASKS else 1
    chunks = [uniques[i:i + size] for i in range(0, len(uniques), size)]
    results = await asyncio.gather(*(_call_chunk(client, chunk, params, response_format) for chunk in chunks))
    for chunk, pieces in zip(chunks, results):
        for value, (result, share, first) in zip(chunk, pieces):
            fill = _outcome(result, share, first, convert)
            rows = groups[_key(value)]
            outcomes[rows[0]] = fill
            for duplicate in rows[1:]:  # answered by the same call: same value, no cost of its own
                outcomes[duplicate] = RowOutcome(fill.value, fill.error, fill.attempts, fill.latency_ms,
                                                 answered=fill.answered)
    return outcomes


async def _call_chunk(client: EndpointClient, chunk: list[Any], params: Mapping[str, Any] | None,
                      response_format: Mapping[str, Any] | None) -> list[tuple[CallResult, int, bool]]:
    """Per input: its call, its position in that call, whether it is the call's first input."""
    result = await client.call(chunk, params, response_format)
    refused = isinstance(result.error, HTTPRequestError) and not result.error.retryable
    if len(chunk) > 1 and refused:
        singles = await asyncio.gather(*(client.call([value], params, response_format) for value in chunk))
        first = [(single, 0, True) for single in singles]
        first[0] = (_merged(result, singles[0]), 0, True)
        return first
    return [(result, position, position == 0) for position in range(len(chunk))]


def _merged(refused: CallResult, single: CallResult) -> CallResult:
    """The refused packed call still counts as a request; book it on the first row."""
    return CallResult(single.results, single.error, single.attempts + refused.attempts,
                      single.rate_limited + refused.rate_limited, single.latency + refused.latency, single.usage)


def _spread(total: int, parts: int, position: int) -> int:
    base, extra = divmod(total, parts)
    return base + (1 if position < extra else 0)


def _outcome(result: CallResult, position: int, first: bool,
             convert: Callable[[Any], Any] | None) -> RowOutcome:
    parts = len(result.results) if result.results is not None else 1
    usage = result.usage
    outcome = RowOutcome(
        attempts=result.attempts, latency_ms=result.latency * 1000.0,
        prompt_tokens=_spread(usage.prompt_tokens, parts, position),
        completion_tokens=_spread(usage.completion_tokens, parts, position),
        total_tokens=_spread(usage.total_tokens, parts, position),
        requests=1 if first else 0, rate_limited=result.rate_limited if first else 0)
    if result.error is not None:
        outcome.error = result.error
        return outcome
    value = result.results[position]
    try:
        outcome.value = convert(value) if convert is not None else value
        outcome.answered = True
    except EndpointError as exc:
        outcome.error = exc
    return outcome
