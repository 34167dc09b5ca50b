"""From a batch of row values to endpoint calls and back: one outcome per row, in row order.

NULL rows make no call, and blank ones (empty or whitespace only) fail without one;
identical rows share one call, within a batch and (through a
``Memo``) across the batches of a task, so nothing is paid for twice;
embeddings and custom-model rows are packed many to a request. When a packed request
is refused outright (say one over-long text), its rows are retried one by one so the
bad row fails alone and the others are answered.
"""

from __future__ import annotations

import asyncio
import collections
import json
from dataclasses import dataclass
from typing import Any, Protocol
from collections.abc import Callable, Mapping, Sequence

from ._client import CallResult
from .config import EndpointConfig
from .errors import EmptyRequestError, EndpointError, HTTPRequestError, ParseCastError, QuotaExceededError
from ._wire import Usage, inputs_per_request

__all__ = ["RowOutcome", "ROW_RECORD", "answer_rows", "Memo", "MEMO_ENTRIES"]

MEMO_ENTRIES = 10_000

# The per-row record, by name, with its Spark SQL type: the UDF's metadata struct, the results table's status
# struct and the usage aggregation are all built from this one mapping, so a field added here reaches them all.
# ``reasoning_tokens`` and ``cached_tokens`` are subsets of completion and prompt tokens, never added to them.
ROW_RECORD: dict[str, str] = {
    "attempts": "int", "latency_ms": "double", "started_at": "double", "prompt_tokens": "bigint",
    "completion_tokens": "bigint", "total_tokens": "bigint", "reasoning_tokens": "bigint", "cached_tokens": "bigint",
    "requests": "int", "rate_limited": "int",
}


@dataclass(slots=True, kw_only=True)
class RowOutcome(Usage):
    """What happened to one row, and its part of the billed tokens (the ``Usage`` fields). Request-level
    counts sit on the first row a request served, and its tokens are spread over its rows, so that
    summing any column over rows gives the true total."""

    value: Any = None
    error: EndpointError | None = None
    attempts: int = 0
    latency_ms: float | None = None
    started_at: float | None = None  # epoch seconds: when the row's request was first sent
    requests: int = 0
    rate_limited: int = 0
    answered: bool = False


def _key(value: Any) -> Any:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


class Memo:
    """What one task already asked, so a value repeated in a later Arrow batch is not paid for twice.

    Bounded, oldest forgotten first, because a task may see millions of distinct values (and
    embeddings are large). A value whose call failed fails again without a new call, as its
    duplicates in one batch do. Only the event loop touches it, so it needs no lock.
    """

    def __init__(self, limit: int = MEMO_ENTRIES) -> None:
        self.limit = limit
        self._entries: collections.OrderedDict[Any, asyncio.Future] = collections.OrderedDict()

    def get(self, key: Any) -> asyncio.Future | None:
        future = self._entries.get(key)
        if future is not None:
            self._entries.move_to_end(key)
        return future

    def put(self, key: Any, future: asyncio.Future) -> None:
        self._entries[key] = future
        if len(self._entries) > self.limit:
            self._entries.popitem(last=False)


def _group(values: Sequence[Any]) -> tuple[dict[Any, list[int]], list[tuple[Any, Any]]]:
    """Row indexes per distinct value, and the distinct (key, value) pairs in first-seen order."""
    groups: dict[Any, list[int]] = {}
    uniques: list[tuple[Any, Any]] = []
    for index, value in enumerate(values):
        if value is None:
            continue
        key = _key(value)
        rows = groups.get(key)
        if rows is None:
            groups[key] = rows = []
            uniques.append((key, value))
        rows.append(index)
    return groups, uniques


def _fill(outcomes: list[RowOutcome], rows: list[int], fill: RowOutcome, paid: bool) -> None:
    """The first row carries the cost of the call when this batch paid for it; the others are free copies."""
    if paid and len(rows) == 1:  # the common case: no copy to make
        outcomes[rows[0]] = fill
        return
    copy = RowOutcome(value=fill.value, error=fill.error, attempts=fill.attempts, latency_ms=fill.latency_ms,
                      started_at=fill.started_at, answered=fill.answered)
    outcomes[rows[0]] = fill if paid else copy
    for duplicate in rows[1:]:
        outcomes[duplicate] = copy


class Caller(Protocol):
    """What ``answer_rows`` calls: an ``EndpointClient``, or one wrapped around it (the host memo's)."""

    config: EndpointConfig

    async def call(self, inputs: Sequence[Any], params: Mapping[str, Any] | None = None,
                   response_format: Mapping[str, Any] | None = None) -> CallResult: ...


async def answer_rows(client: Caller, values: Sequence[Any], *,
                      params: Mapping[str, Any] | None = None,
                      response_format: Mapping[str, Any] | None = None,
                      convert: Callable[[Any], Any] | None = None, memo: Memo | None = None) -> list[RowOutcome]:
    """``convert`` turns an answer into the row's value; an ``EndpointError`` from it fails that row only."""
    groups, uniques = _group(values)
    outcomes: list[Any] = [None] * len(values)
    uniques = _refuse_blank(client.config.name, uniques, groups, outcomes)
    earlier = {key: memo.get(key) for key, _ in uniques} if memo is not None else {}
    fresh = [(key, value) for key, value in uniques if earlier.get(key) is None]
    promises = _promise(memo, fresh)
    try:
        await _ask(client, fresh, groups, outcomes, promises, params, response_format, convert)
    finally:
        for promise in promises.values():
            if not promise.done():  # cancelled half way: nobody may wait for it forever
                promise.cancel()
    for key, future in earlier.items():
        if future is not None:
            _fill(outcomes, groups[key], await future, paid=False)
    return [RowOutcome() if outcome is None else outcome for outcome in outcomes]  # a NULL row asks nothing


def _blank(value: Any) -> bool:
    return isinstance(value, str) and (not value or value.isspace())


def _refuse_blank(endpoint: str, uniques: list[tuple[Any, Any]], groups: dict[Any, list[int]],
                  outcomes: list[RowOutcome]) -> list[tuple[Any, Any]]:
    """A blank prompt would be paid for and answer nothing (embedding APIs refuse it outright), so its rows
    fail where they stand and the rest of the batch is asked as usual."""
    if not any(_blank(value) for _, value in uniques):
        return uniques
    kept = []
    for key, value in uniques:
        if not _blank(value):
            kept.append((key, value))
            continue
        what = "empty" if not value else "only whitespace"
        error = EmptyRequestError(endpoint, f"the request is {what}, so it was not sent (a NULL request gives a "
                                  "NULL answer; filter such rows out or make them NULL)")
        for index in groups[key]:
            outcomes[index] = RowOutcome(error=error)
    return kept


def _sendable(value: Any) -> Any:
    """Text UTF-8 can carry. Lone surrogates (Python code can make them; Arrow never does) would fail the JSON
    encoding of the whole request, so they become U+FFFD, and split surrogate pairs are joined."""
    if isinstance(value, str):
        if value.isascii():
            return value
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:
            return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, dict):
        return {k: _sendable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_sendable(v) for v in value]
    return value


def _promise(memo: Memo | None, fresh: list[tuple[Any, Any]]) -> dict[Any, asyncio.Future]:
    if memo is None:
        return {}
    loop = asyncio.get_running_loop()
    promises = {key: loop.create_future() for key, _ in fresh}
    for key, promise in promises.items():
        memo.put(key, promise)
    return promises


async def _ask(client: Caller, fresh: list[tuple[Any, Any]], groups: dict[Any, list[int]],
               outcomes: list[RowOutcome], promises: dict[Any, asyncio.Future],
               params: Mapping[str, Any] | None, response_format: Mapping[str, Any] | None,
               convert: Callable[[Any], Any] | None) -> None:
    size = inputs_per_request(client.config)
    chunks = [fresh[i:i + size] for i in range(0, len(fresh), size)]
    results = await asyncio.gather(*(_call_chunk(client, [_sendable(value) for _, value in chunk], params,
                                                 response_format)
                                     for chunk in chunks))
    for chunk, pieces in zip(chunks, results):
        for (key, _), (result, share, first, parts) in zip(chunk, pieces):
            fill = _outcome(client.config.name, result, share, first, parts, convert)
            _fill(outcomes, groups[key], fill, paid=True)
            if key in promises:
                promises[key].set_result(fill)


async def _call_chunk(client: Caller, chunk: list[Any], params: Mapping[str, Any] | None,
                      response_format: Mapping[str, Any] | None) -> list[tuple[CallResult, int, bool, int]]:
    """Per input: its call, its position in that call, whether it is the call's first input, the call's inputs."""
    result = await client.call(chunk, params, response_format)
    # A refusal of the account (no quota left) is not about one row: asking row by row would only repeat it.
    refused = (isinstance(result.error, HTTPRequestError) and not result.error.retryable
               and not isinstance(result.error, QuotaExceededError))
    if len(chunk) > 1 and refused:
        singles = await asyncio.gather(*(client.call([value], params, response_format) for value in chunk))
        first = [(single, 0, True, 1) for single in singles]
        first[0] = (_merged(result, singles[0]), 0, True, 1)
        return first
    return [(result, position, position == 0, len(chunk)) for position in range(len(chunk))]


def _merged(refused: CallResult, single: CallResult) -> CallResult:
    """The refused packed call still counts as a request; book it on the first row."""
    return CallResult(single.results, single.error, single.attempts + refused.attempts,
                      single.rate_limited + refused.rate_limited, single.latency + refused.latency,
                      _billed(refused.usage, single.usage), refused.started_at)


def _billed(*usages: Usage) -> Usage:
    total = Usage()
    for usage in usages:
        total.add(usage)
    return total


def _spread(total: int, parts: int, position: int) -> int:
    base, extra = divmod(total, parts)
    return base + (1 if position < extra else 0)


def _outcome(endpoint: str, result: CallResult, position: int, first: bool, parts: int,
             convert: Callable[[Any], Any] | None) -> RowOutcome:
    """``parts``: the inputs the call carried, so its tokens are spread over them even when it failed (an
    endpoint may bill an answer it gave in a shape that could not be used)."""
    usage = result.usage
    outcome = RowOutcome(
        attempts=result.attempts, latency_ms=result.latency * 1000.0, started_at=result.started_at,
        prompt_tokens=_spread(usage.prompt_tokens, parts, position),
        completion_tokens=_spread(usage.completion_tokens, parts, position),
        total_tokens=_spread(usage.total_tokens, parts, position),
        reasoning_tokens=_spread(usage.reasoning_tokens, parts, position) if usage.reasoning_tokens else 0,
        cached_tokens=_spread(usage.cached_tokens, parts, position) if usage.cached_tokens else 0,
        requests=1 if first else 0, rate_limited=result.rate_limited if first else 0)
    if result.error is not None:
        outcome.error = result.error
        return outcome
    value = result.results[position] if result.results is not None else None
    try:
        outcome.value = convert(value) if convert is not None else value
        outcome.answered = True
    except EndpointError as exc:
        outcome.error = exc
    except Exception as exc:  # noqa: BLE001 - no answer, whatever its shape, may fail more than its own row
        outcome.error = ParseCastError(endpoint, f"the answer could not be converted to the result "
                                       f"type ({type(exc).__name__}: {exc})")
    return outcome
