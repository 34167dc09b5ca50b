"""Usage: what a run asked, what it got, and what it cost, one row per run and endpoint.

Computed from the rows the run wrote, not from counters kept on the side: the
per-row status already carries attempts, tokens (spread over the rows of a packed
request) and request counts (on the first row of each request), so the sums are
exact on one machine, on a cluster and through Spark Connect alike.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from collections.abc import Mapping

from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import functions as F

from batch._wire import Usage
from batch._yaml import line_of, load_yaml
from batch.errors import ConfigError

from .spec import JobSpec
from .tables import STATUS_FIELDS, TOKEN_FIELDS, USAGE_SCHEMA, asked_here, status_column

__all__ = ["Price", "price_for", "chunk_totals", "load_prices", "summarize", "usage_rows", "EndpointUsage"]

DEFAULT_PRICES = Path("conf") / "prices.yaml"


@dataclass(frozen=True)
class Price:
    """US dollars per million tokens. Cached prompt tokens and reasoning tokens are parts of the prompt and
    completion counts: they are priced at their own rate where one is given, else at the plain one, and
    never counted twice. Batch-priced rows (``execution: batch``) use the batch rates, half the plain ones
    unless given (OpenAI's Batch API is half price)."""

    input: float = 0.0
    cached_input: float | None = None
    output: float = 0.0
    reasoning: float | None = None
    batch_input: float | None = None
    batch_output: float | None = None

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0, reasoning_tokens: int = 0,
             batch: bool = False) -> float:
        plain_in = self.input if not batch else (self.batch_input if self.batch_input is not None
                                                  else self.input * BATCH_DISCOUNT)
        plain_out = self.output if not batch else (self.batch_output if self.batch_output is not None
                                                    else self.output * BATCH_DISCOUNT)
        scale_in = plain_in / self.input if self.input else 1.0
        scale_out = plain_out / self.output if self.output else 1.0
        cached_rate = plain_in if self.cached_input is None else self.cached_input * scale_in
        reasoning_rate = plain_out if self.reasoning is None else self.reasoning * scale_out
        cached = min(cached_tokens, prompt_tokens)
        reasoning = min(reasoning_tokens, completion_tokens)
        return ((prompt_tokens - cached) * plain_in + cached * cached_rate
                + (completion_tokens - reasoning) * plain_out + reasoning * reasoning_rate) / 1e6


BATCH_DISCOUNT = 0.5
_PRICE_KEYS = {f.name for f in fields(Price)}


def price_for(prices: Mapping[str, Price], config: Any) -> Price | None:
    """An endpoint's price: by its entry name, else by its model name."""
    return prices.get(config.name) or prices.get(config.model_name)


def load_prices(path: str | Path | None = None) -> dict[str, Price]:
    """Endpoint name (or model name) to price; a missing default file means no prices, not an error."""
    path = Path(path) if path else DEFAULT_PRICES
    if not path.exists():
        if path != DEFAULT_PRICES:
            raise ConfigError("price table not found", source=str(path))
        return {}
    data, lines = load_yaml(path)
    table = (data or {}).get("prices") if isinstance(data, Mapping) else None
    if not isinstance(table, Mapping):
        raise ConfigError("a price table is a mapping with a top-level 'prices:' key", source=str(path), line=1)
    prices = {}
    for name, entry in table.items():
        if not isinstance(entry, Mapping) or not entry or set(entry) - _PRICE_KEYS:
            unknown = sorted(set(entry) - _PRICE_KEYS) if isinstance(entry, Mapping) else []
            raise ConfigError(f"price '{name}' needs input and/or output (USD per 1M tokens)"
                              + (f"; unknown keys {unknown} (known: {', '.join(sorted(_PRICE_KEYS))})" if unknown
                                 else ""), source=str(path), line=line_of(lines, "prices", str(name)))
        try:
            prices[str(name)] = Price(**{k: float(v) for k, v in entry.items()})
        except (TypeError, ValueError):
            raise ConfigError(f"price '{name}': every rate must be a number", source=str(path),
                              line=line_of(lines, "prices", str(name))) from None
    return prices


@dataclass(kw_only=True)
class EndpointUsage(Usage):
    """One endpoint's share of a run: its rows, requests and billed tokens (the ``Usage`` fields, summed over
    the rows the run asked itself), latency percentiles in milliseconds and the estimated cost in US dollars."""

    endpoint: str
    outputs: list[str]
    rows_in: int = 0
    rows_answered: int = 0
    rows_failed: int = 0
    failed_by_kind: dict[str, int] | None = None
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    latency_p99_ms: float | None = None
    estimated_cost: float | None = None
    execution: str = "sync"  # "batch": answered through the provider's Batch API, priced at its rates


def _long_form(results: DataFrame, spec: JobSpec) -> DataFrame:
    """One row per (input row, output) the run asked itself: the endpoint and that output's status."""
    parts = []
    for output in spec.outputs:
        s = F.col(status_column(output.name))
        parts.append(results.where(asked_here(s)).select(F.lit(output.query.endpoint.name).alias("endpoint"),
                                                         F.col(output.name).isNotNull().alias("has_value"),
                                                         *[s[f].alias(f) for f in STATUS_FIELDS]))
    long = parts[0]
    for part in parts[1:]:
        long = long.unionByName(part)
    return long


def chunk_totals(rows: DataFrame, spec: JobSpec, prices: Mapping[str, Price]) -> tuple[int, int, float]:
    """Failed rows, tokens and estimated spend of some rows, in one cheap aggregation (for limits and progress)."""
    sums = [F.sum(F.when(~F.col("ok"), 1).otherwise(0))]
    for output in spec.outputs:
        s = F.col(status_column(output.name))
        sums += [F.sum(F.when(asked_here(s), s[name])) for name in TOKEN_FIELDS]
    totals = rows.agg(*sums).first()
    assert totals is not None  # an aggregate without grouping has one row
    values = [v or 0 for v in totals]
    failed, tokens, spend = values[0], 0, 0.0
    width = len(TOKEN_FIELDS)
    for i, output in enumerate(spec.outputs):
        counts = dict(zip(TOKEN_FIELDS, values[1 + width * i: 1 + width * (i + 1)]))
        tokens += counts["total_tokens"]
        spend += _cost(price_for(prices, output.query.endpoint), counts, spec) or 0.0
    return failed, tokens, spend


def _cost(price: Price | None, tokens: Mapping[str, int], spec: JobSpec) -> float | None:
    if price is None:
        return None
    return price.cost(tokens["prompt_tokens"], tokens["completion_tokens"], tokens["cached_tokens"],
                      tokens["reasoning_tokens"], batch=spec.execution.mode == "batch")


def summarize(results: DataFrame, spec: JobSpec, prices: Mapping[str, Price]) -> list[EndpointUsage]:
    """Aggregate one run's rows per endpoint (a single Spark job)."""
    long = _long_form(results, spec)
    failed = F.col("error").isNotNull()
    first = F.col("requests") > 0
    agg = long.groupBy("endpoint").agg(
        F.count(F.lit(1)).alias("rows_in"),
        # asked, or answered from the host memo (no attempt of its own, but a value)
        F.sum(F.when(~failed & ((F.col("attempts") > 0) | F.col("has_value")), 1).otherwise(0)).alias("rows_answered"),
        F.sum(F.when(failed, 1).otherwise(0)).alias("rows_failed"),
        F.collect_list(F.when(failed, F.col("error_kind"))).alias("kinds"),
        F.sum("requests").alias("requests"),
        F.sum(F.when(first, F.col("attempts")).otherwise(0)).alias("attempts"),
        F.sum("rate_limited").alias("rate_limited"),
        *[F.sum(name).alias(name) for name in TOKEN_FIELDS],
        F.percentile_approx(F.when(first, F.col("latency_ms")), [0.5, 0.95, 0.99], 10000).alias("latency"),
    ).collect()
    outputs_by_endpoint: dict[str, list[str]] = {}
    for output in spec.outputs:
        outputs_by_endpoint.setdefault(output.query.endpoint.name, []).append(output.name)
    usages = []
    for row in agg:
        kinds: dict[str, int] = {}
        for kind in row["kinds"]:
            kinds[kind] = kinds.get(kind, 0) + 1
        endpoint = row["endpoint"]
        config = next(o.query.endpoint for o in spec.outputs if o.query.endpoint.name == endpoint)
        latency = row["latency"] or [None, None, None]
        tokens = {name: row[name] or 0 for name in TOKEN_FIELDS}
        p50, p95, p99 = [None if v is None else float(v) for v in latency]
        usages.append(EndpointUsage(
            endpoint=endpoint, outputs=outputs_by_endpoint[endpoint], rows_in=row["rows_in"],
            rows_answered=row["rows_answered"], rows_failed=row["rows_failed"], failed_by_kind=kinds,
            requests=row["requests"] or 0, retries=(row["attempts"] or 0) - (row["requests"] or 0),
            rate_limited=row["rate_limited"] or 0, **tokens, latency_p50_ms=p50, latency_p95_ms=p95, latency_p99_ms=p99,
            estimated_cost=_cost(price_for(prices, config), tokens, spec), execution=spec.execution.mode))
    return usages


def usage_rows(usages: list[EndpointUsage], *, run_id: str, job: str, started: dt.datetime, ended: dt.datetime,
               status: str) -> list[Row]:
    seconds = max((ended - started).total_seconds(), 1e-9)
    rows = []
    for u in usages:
        values: dict[str, Any] = dict(
            run_id=run_id, job=job, endpoint=u.endpoint, outputs=",".join(u.outputs), started_at=started,
            ended_at=ended, status=status, rows_in=u.rows_in, rows_answered=u.rows_answered,
            rows_failed=u.rows_failed, failed_by_kind=u.failed_by_kind or {}, requests=u.requests,
            retries=u.retries, rate_limited=u.rate_limited, **{name: getattr(u, name) for name in TOKEN_FIELDS},
            latency_p50_ms=u.latency_p50_ms,
            latency_p95_ms=u.latency_p95_ms, latency_p99_ms=u.latency_p99_ms,
            rows_per_second=u.rows_in / seconds, estimated_cost=u.estimated_cost, execution=u.execution)
        rows.append(Row(**{f.name: values[f.name] for f in USAGE_SCHEMA.fields}))
    return rows


def write_usage(spark: SparkSession, rows: list[Row], table: str, table_format: str) -> None:
    """No rows still creates the table (empty, with its schema), for the queries that read it."""
    if rows or not spark.catalog.tableExists(table):
        spark.createDataFrame(rows, USAGE_SCHEMA).write.mode("append").format(table_format).saveAsTable(table)
