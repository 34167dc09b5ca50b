"""The run report: one offline HTML page per run, beside the usage table, with the run's story in plots.

Nothing is counted on the side while the job runs: every row's status already holds when
its request was first sent (``started_at``), its latency, attempts, 429s, tokens and error
kind, so the report is a handful of small aggregations over the run's own rows once the
run ends (one narrow read). In flight over time is the overlap of the intervals
[started_at, started_at + latency] of the rows that carried a request, averaged over each
time bin exactly.
"""

from __future__ import annotations

import logging
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from . import page, svg
from .spec import JobSpec
from .tables import asked_here, status_column, table_exists

__all__ = ["ReportData", "gather", "render", "report_path", "write_report", "BINS"]

log = logging.getLogger("jobs.report")

BINS = 60                # time bins over the run
LATENCY_BINS = 24
LISTED = 20              # slowest and failed rows shown
MAX_ANSWERS = 200_000    # answers read for the plots; a larger run is read as a fixed sample of this size


@dataclass
class ReportData:
    seconds: float = 0.0                 # the run's length on the time axis
    edges: list[float] = field(default_factory=list)          # time bin edges, seconds since the run started
    answers: dict[str, list[float]] = field(default_factory=dict)   # endpoint -> answers ended per bin
    in_flight: dict[str, list[float]] = field(default_factory=dict)  # endpoint -> mean requests in flight per bin
    errors: dict[str, list[float]] = field(default_factory=dict)     # error kind -> failed answers per bin
    rate_limited: list[float] = field(default_factory=list)          # 429s per bin
    retries: list[float] = field(default_factory=list)               # retries per bin
    latency_edges: list[float] = field(default_factory=list)
    latency: dict[str, list[float]] = field(default_factory=dict)    # endpoint -> requests per latency bin
    slowest: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    fraction: float = 1.0                # of the run's answers read for the plots (counts are scaled back)
    gather_seconds: float = 0.0


def _long(rows: DataFrame, spec: JobSpec) -> DataFrame:
    """One row per (input row, output), with a printable key, the output's endpoint and its status fields,
    from a single scan of the results (the outputs exploded, not unioned)."""
    key = F.concat_ws(", ", *[F.concat(F.lit(f"{k}="), F.col(k).cast("string")) for k in spec.keys])
    fields = ("error", "error_kind", "attempts", "latency_ms", "started_at", "requests", "rate_limited")
    per_output = [F.struct(F.lit(o.name).alias("output"), F.lit(o.query.endpoint.name).alias("endpoint"),
                           asked_here(F.col(status_column(o.name))).alias("asked"),
                           *[F.col(status_column(o.name))[f].alias(f) for f in fields]) for o in spec.outputs]
    return (rows.select(key.alias("key"), F.explode(F.array(*per_output)).alias("a")).where("a.asked")
            .select("key", *[f"a.{f}" for f in ("output", "endpoint", *fields)]))


def gather(spark: SparkSession, spec: JobSpec, run_id: str, started: float, rows: int = 0) -> ReportData:
    """The plots' numbers for one run, ``started`` being the run's start in epoch seconds and ``rows`` how many
    rows it wrote.

    The run's rows are read once, narrow (a few numbers per answer), and binned here: one Spark job,
    cheaper than several aggregations on a local master. Past ``MAX_ANSWERS`` a fixed sample of the
    answers (by a hash of key and output) is read and its counts scaled, so a run of any size costs
    the same; the slowest and failed rows then come from two small queries of their own."""
    clock = time.perf_counter()
    data = ReportData()
    if not table_exists(spark, spec.results_table):
        return data
    long = _long(spark.table(spec.results_table).where(F.col("run_id") == run_id), spec)
    answers = rows * len(spec.outputs)
    data.fraction = min(1.0, MAX_ANSWERS / answers) if answers else 1.0
    read = long if data.fraction >= 1.0 else long.where(
        F.abs(F.xxhash64("key", "output")) % 1_000_000 < int(data.fraction * 1_000_000))
    records = [r.asDict() for r in read.collect()]
    _bin(records, data, started)
    if data.fraction >= 1.0:
        data.slowest = sorted((r for r in records if r["latency_ms"] is not None),
                              key=lambda r: -r["latency_ms"])[:LISTED]
        data.failed = sorted((r for r in records if r["error"] is not None),
                             key=lambda r: (r["key"], r["output"]))[:LISTED]
    else:
        data.slowest = [r.asDict() for r in long.where(F.col("latency_ms").isNotNull())
                        .orderBy(F.col("latency_ms").desc()).limit(LISTED).collect()]
        data.failed = [r.asDict() for r in long.where(F.col("error").isNotNull()).orderBy("key", "output")
                       .limit(LISTED).collect()]
    data.gather_seconds = time.perf_counter() - clock
    return data


def _bin(records: list[dict[str, Any]], data: ReportData, started: float) -> None:
    """Per time bin and endpoint: answers ended, errors by kind, 429s and retries (counted when the answer
    ended), and the mean number of requests in flight (each request's interval spread over the bins it
    overlaps); per endpoint, requests by latency."""
    timed = [r for r in records if r["started_at"] is not None and r["latency_ms"] is not None]
    if not timed:
        return
    weight = 1.0 / data.fraction
    origin = min(started, min(r["started_at"] for r in timed))
    data.seconds = max(max(r["started_at"] + r["latency_ms"] / 1000.0 for r in timed) - origin, 1e-3)
    width = data.seconds / BINS
    data.edges = [i * width for i in range(BINS + 1)]
    endpoints = sorted({r["endpoint"] for r in timed})
    data.answers = {e: [0.0] * BINS for e in endpoints}
    data.in_flight = {e: [0.0] * BINS for e in endpoints}
    data.rate_limited, data.retries = [0.0] * BINS, [0.0] * BINS
    requests = [r for r in timed if r["requests"]]
    slowest = max((r["latency_ms"] for r in requests), default=0.0)
    data.latency_edges = svg.nice_ticks(0.0, slowest or 1.0, LATENCY_BINS)
    step = data.latency_edges[1] - data.latency_edges[0]
    latency_bins = len(data.latency_edges) - 1
    for r in timed:
        begin = r["started_at"] - origin
        end = begin + r["latency_ms"] / 1000.0
        last = min(int(end / width), BINS - 1)
        data.answers[r["endpoint"]][last] += weight / width
        if r["error"] is not None:
            data.errors.setdefault(r["error_kind"] or "error", [0.0] * BINS)[last] += weight
        data.rate_limited[last] += (r["rate_limited"] or 0) * weight
        if not r["requests"]:
            continue
        data.retries[last] += max((r["attempts"] or 0) - 1, 0) * weight
        flight = data.in_flight[r["endpoint"]]
        for b in range(min(int(begin / width), BINS - 1), last + 1):
            overlap = min(end, (b + 1) * width) - max(begin, b * width)
            flight[b] += max(overlap, 0.0) / width * weight
        data.latency.setdefault(r["endpoint"], [0.0] * latency_bins)[
            min(int(r["latency_ms"] / step), latency_bins - 1)] += weight


# ------------------------------------------------------------------ the page

class _TimeAxis(TypedDict):
    """The x axis the charts over the run's time share."""

    x_label: str
    x_format: svg.Format
    width: int


def _series(values: dict[str, list[float]], edges: list[float]) -> list[svg.Series[svg.Point]]:
    """Per-bin values as points at the bins' middles."""
    middles = [(a + b) / 2 for a, b in zip(edges, edges[1:])]
    return [svg.Series(name, list(zip(middles, v))) for name, v in sorted(values.items())]


def render(spec: JobSpec, result: Any, data: ReportData) -> str:
    usage = list(result.usage)
    seconds = ((result.ended - result.started).total_seconds() if result.ended else data.seconds) or 0.0
    cost = sum(u.estimated_cost or 0.0 for u in usage)
    priced = any(u.estimated_cost is not None for u in usage)
    tokens = sum(u.total_tokens for u in usage)
    cards = [("status", result.status), ("rows written", f"{result.rows_in:,}"),
             ("rows failed", f"{result.rows_failed:,}"), ("time", svg.fmt_seconds(seconds)),
             ("rows/s", f"{result.rows_in / seconds:,.1f}" if seconds else "-"),
             ("tokens", f"{tokens:,}"), ("est. cost", page.money(cost) if priced else "no price")]
    time_label = "seconds since the run started"
    kw = _TimeAxis(x_label=time_label, x_format=svg.fmt_seconds, width=560)
    endpoints = [u.endpoint for u in usage]
    charts = [
        svg.line_chart(_series(data.answers, data.edges), title="Answers per second", y_label="answers/s",
                       fill=True, **kw),
        svg.line_chart(_series(data.in_flight, data.edges), title="Requests in flight", y_label="requests",
                       fill=True, **kw),
        svg.range_bars(data.latency_edges, [svg.Series(e, v) for e, v in sorted(data.latency.items())],
                       title="Latency per request", x_label="latency (ms)", y_label="requests", stacked=False,
                       width=560),
        svg.range_bars(data.edges, [svg.Series(k, v) for k, v in sorted(data.errors.items())],
                       title="Errors by kind over time", y_label="failed answers", empty="no errors",
                       legend=True, **kw),
        svg.range_bars(data.edges, [svg.Series("429 responses", data.rate_limited, svg.PALETTE[3]),
                                    svg.Series("retries", data.retries, svg.PALETTE[1])],
                       title="429s and retries over time", y_label="count", stacked=False,
                       empty="no 429s and no retries", **kw),
        svg.bar_chart(endpoints, [svg.Series("prompt", [u.prompt_tokens for u in usage]),
                                  svg.Series("completion", [u.completion_tokens for u in usage])],
                      title="Tokens by endpoint", y_label="tokens", width=560),
        svg.bar_chart(endpoints, [svg.Series("cost", [u.estimated_cost or 0.0 for u in usage], svg.PALETTE[2])],
                      title="Estimated cost by endpoint (USD)", y_label="US dollars", y_format=_dollars, width=560,
                      empty="no prices for these endpoints"),
    ]
    body = ['<div class="cards">' + "".join(f'<div class="card"><span>{page.text(k)}</span><b>{page.text(v)}</b>'
                                            "</div>" for k, v in cards) + "</div>"]
    if result.reasons:
        body.append("".join(f'<p class="error">{page.text(r)}</p>' for r in result.reasons))
    body.append(f'<div class="charts">{"".join(charts)}</div><h2>By endpoint</h2>')
    body.append(page.table(
        ["endpoint", "outputs", "rows", "answered", "failed", "requests", "retries", "429s", "prompt tokens",
         "completion tokens", "p50 ms", "p95 ms", "p99 ms", "est. cost"],
        [[page.text(u.endpoint), page.text(", ".join(u.outputs)), *[f"{v:,}" for v in (
            u.rows_in, u.rows_answered, u.rows_failed, u.requests, u.retries, u.rate_limited, u.prompt_tokens,
            u.completion_tokens)], *[_ms(v) for v in (u.latency_p50_ms, u.latency_p95_ms, u.latency_p99_ms)],
          page.money(u.estimated_cost)] for u in usage], numeric=range(2, 14)))
    body.append(f"<h2>Slowest answers</h2>{_rows_table(data.slowest)}")
    failed_note = f" (the first {len(data.failed)} of {result.rows_failed:,} rows)" if result.rows_failed > len(
        data.failed) else ""
    body.append(f"<h2>Failed answers{failed_note}</h2>" + (_rows_table(data.failed) if data.failed else
                                                            '<p class="note">none</p>'))
    body.append(f'<p class="note">Gathered from the run\'s rows in {spec.results_table} in '
                f"{data.gather_seconds:.2f} s after the run; time bins of {svg.fmt_seconds(data.seconds / BINS)}"
                + (f"; plots from a fixed sample of {data.fraction:.1%} of the answers, counts scaled"
                   if data.fraction < 1 else "") + ".</p>" if data.edges else "")
    subtitle = (f"run {page.text(result.run_id)} · {page.text(spec.source)} · results {page.text(spec.results_table)}"
                f" · usage {page.text(spec.usage_table)}")
    return page.document(f"Run report: {spec.name}", subtitle, "".join(body))


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _dollars(value: float) -> str:
    return f"${value:.2g}" if value < 1 else f"${value:,.2f}"


def _rows_table(rows: list[dict[str, Any]]) -> str:
    return page.table(["key", "output", "endpoint", "latency ms", "attempts", "error"],
                      [[page.text(r["key"]), page.text(r["output"]), page.text(r["endpoint"]), _ms(r["latency_ms"]),
                        f"{r['attempts'] or 0}",
                        (f'<span class="error"><span class="kind">{page.text(r["error_kind"] or "error")}</span>: '
                         f'{page.show_value(r["error"], 400)}</span>') if r["error"] else ""] for r in rows],
                      numeric=(3, 4))


# ------------------------------------------------------------------ where it goes

def report_path(spark: SparkSession, spec: JobSpec, run_id: str) -> Path:
    """``<usage table folder>_reports/<run id>.html`` when the usage table is on a local file system,
    else ``reports/<usage table>/<run id>.html`` under the working directory."""
    folder = Path("reports") / spec.usage_table
    try:
        found = spark.sql(f"DESCRIBE TABLE EXTENDED {spec.usage_table}").where("col_name = 'Location'").collect()
    except Exception:  # noqa: BLE001 - no table, or a catalog that does not say: the fallback folder
        found = []
    if found:
        location = found[0]["data_type"].rstrip("/")
        if location.startswith("file:"):
            location = urllib.parse.unquote(urllib.parse.urlparse(location).path)
        if location.startswith("/"):
            folder = Path(location + "_reports")
    return folder / f"{run_id}.html"


def write_report(spark: SparkSession, spec: JobSpec, result: Any) -> str | None:
    """Called at the end of every run; a report that cannot be written is logged, never fails the run."""
    try:
        data = gather(spark, spec, result.run_id, result.started.timestamp(), result.rows_in)
        return str(page.write_page(report_path(spark, spec, result.run_id), render(spec, result, data)))
    except Exception as exc:  # noqa: BLE001
        log.warning("run report not written: %s", exc)
        return None
