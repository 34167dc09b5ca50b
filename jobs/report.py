"""The run report: one offline HTML page per run, beside the usage table, with the run's story in plots.

Nothing is counted on the side while the job runs: every row's status already holds when
its request was first sent (``started_at``), its latency, attempts, 429s, tokens and error
kind, so the report is a handful of small aggregations over the run's own rows once the
run ends (one cached scan, collected as a few hundred numbers). In flight over time is
the overlap of the intervals [started_at, started_at + latency] of the rows that carried
a request, averaged over each time bin exactly (from the starts and ends inside it).
"""

from __future__ import annotations

import logging
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from . import page, svg
from .spec import JobSpec
from .tables import status_column, table_exists

__all__ = ["ReportData", "gather", "render", "report_path", "write_report", "BINS"]

log = logging.getLogger("jobs.report")

BINS = 60            # time bins over the run
LATENCY_BINS = 24
LISTED = 20          # slowest and failed rows shown


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
    gather_seconds: float = 0.0


def _long(rows: DataFrame, spec: JobSpec) -> DataFrame:
    """One row per (input row, output), with a printable key, the output's endpoint and its status fields."""
    key = F.concat_ws(", ", *[F.concat(F.lit(f"{k}="), F.col(k).cast("string")) for k in spec.keys])
    parts = []
    for output in spec.outputs:
        s = F.col(status_column(output.name))
        parts.append(rows.select(key.alias("key"), F.lit(output.name).alias("output"),
                                 F.lit(output.query.endpoint.name).alias("endpoint"),
                                 *[s[f].alias(f) for f in ("error", "error_kind", "attempts", "latency_ms",
                                                           "started_at", "requests", "rate_limited")]))
    long = parts[0]
    for part in parts[1:]:
        long = long.unionByName(part)
    return long


def gather(spark: SparkSession, spec: JobSpec, run_id: str, started: float) -> ReportData:
    """The plots' numbers for one run, ``started`` being the run's start in epoch seconds."""
    clock = time.perf_counter()
    data = ReportData()
    if not table_exists(spark, spec.results_table):
        return data
    long = _long(spark.table(spec.results_table).where(F.col("run_id") == run_id), spec).cache()
    try:
        _gather(long, data, started)
    finally:
        long.unpersist()
    data.gather_seconds = time.perf_counter() - clock
    return data


def _gather(long: DataFrame, data: ReportData, started: float) -> None:
    timed = long.where(F.col("started_at").isNotNull() & F.col("latency_ms").isNotNull())
    ended = F.col("started_at") + F.col("latency_ms") / 1000.0
    bounds = timed.agg(F.max(ended).alias("end"), F.min("started_at").alias("first"),
                       F.max(F.when(F.col("requests") > 0, F.col("latency_ms"))).alias("slowest")).first()
    if bounds["end"] is not None:
        origin = min(started, bounds["first"])
        data.seconds = max(bounds["end"] - origin, 1e-3)
        width = data.seconds / BINS
        data.edges = [i * width for i in range(BINS + 1)]
        _timeline(timed, data, origin, width, ended)
        if bounds["slowest"] is not None:
            _latency(timed, data, bounds["slowest"])
    listed = ["key", "output", "endpoint", "latency_ms", "attempts", "error_kind", "error"]
    data.slowest = [r.asDict() for r in long.where(F.col("latency_ms").isNotNull())
                    .orderBy(F.col("latency_ms").desc()).select(*listed).limit(LISTED).collect()]
    data.failed = [r.asDict() for r in long.where(F.col("error").isNotNull()).orderBy("key", "output")
                   .select(*listed).limit(LISTED).collect()]


def _timeline(timed: DataFrame, data: ReportData, origin: float, width: float, ended) -> None:
    """Per time bin and endpoint: answers ended, errors by kind, 429s and retries (counted when the row
    ended), and the mean number of requests in flight."""
    def binned(at):
        return F.least(F.floor((at - F.lit(origin)) / F.lit(width)), F.lit(BINS - 1)).cast("int")

    is_request = F.col("requests") > 0
    starts = timed.where(is_request).select(
        binned(F.col("started_at")).alias("bin"), "endpoint", F.lit(None).cast("string").alias("kind"),
        F.lit(1).alias("starts"), (F.lit(origin) - F.col("started_at")).alias("start_offset"),
        F.lit(0).alias("ends"), F.lit(0.0).alias("end_offset"), F.lit(0).alias("answers"),
        F.lit(0).alias("rate_limited"), F.lit(0).alias("retries"))
    ends = timed.select(
        binned(ended).alias("bin"), "endpoint",
        F.when(F.col("error").isNotNull(), F.coalesce("error_kind", F.lit("error"))).alias("kind"),
        F.lit(0).alias("starts"), F.lit(0.0).alias("start_offset"), F.when(is_request, 1).otherwise(0).alias("ends"),
        F.when(is_request, F.lit(origin) - ended).otherwise(0.0).alias("end_offset"), F.lit(1).alias("answers"),
        F.coalesce("rate_limited", F.lit(0)).alias("rate_limited"),
        F.when(is_request, F.greatest(F.col("attempts") - 1, F.lit(0))).otherwise(0).alias("retries"))
    cells = starts.unionByName(ends).groupBy("bin", "endpoint", "kind").agg(
        *[F.sum(c).alias(c) for c in ("starts", "start_offset", "ends", "end_offset", "answers", "rate_limited",
                                      "retries")]).collect()
    endpoints = sorted({c["endpoint"] for c in cells})
    data.answers = {e: [0.0] * BINS for e in endpoints}
    data.rate_limited, data.retries = [0.0] * BINS, [0.0] * BINS
    # Time inside each bin, in flight: sum over starts in the bin of (bin end - start), minus the same for ends,
    # plus the whole bin for every request that started before it and had not ended.
    inside = {e: [0.0] * BINS for e in endpoints}
    started = {e: [0] * BINS for e in endpoints}
    for c in cells:
        b, e = c["bin"], c["endpoint"]
        bin_end = origin + (b + 1) * width
        data.answers[e][b] += c["answers"] / width
        inside[e][b] += c["starts"] * bin_end + c["start_offset"] - origin * c["starts"] \
            - (c["ends"] * bin_end + c["end_offset"] - origin * c["ends"])
        started[e][b] += c["starts"] - c["ends"]
        data.rate_limited[b] += c["rate_limited"]
        data.retries[b] += c["retries"]
        if c["kind"] is not None:
            data.errors.setdefault(c["kind"], [0.0] * BINS)[b] += c["answers"]
    for e in endpoints:
        open_before, series = 0, []
        for b in range(BINS):
            series.append(max(open_before + inside[e][b] / width, 0.0))
            open_before += started[e][b]
        data.in_flight[e] = series


def _latency(timed: DataFrame, data: ReportData, slowest: float) -> None:
    edges = svg.nice_ticks(0.0, slowest, LATENCY_BINS)
    step = edges[1] - edges[0]
    data.latency_edges = edges
    counts = timed.where(F.col("requests") > 0).groupBy(
        "endpoint", F.least(F.floor(F.col("latency_ms") / step), F.lit(len(edges) - 2)).cast("int").alias("bin")
    ).count().collect()
    for c in counts:
        data.latency.setdefault(c["endpoint"], [0.0] * (len(edges) - 1))[c["bin"]] += c["count"]


# ------------------------------------------------------------------ the page

def _series(values: dict[str, list[float]], edges: list[float]) -> list[svg.Series]:
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
    kw = dict(x_label=time_label, x_format=svg.fmt_seconds, width=560)
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
                       title="Errors by kind over time", y_label="failed answers", empty="no errors", **kw),
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
                f".</p>" if data.edges else "")
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
        data = gather(spark, spec, result.run_id, result.started.timestamp())
        return str(page.write_page(report_path(spark, spec, result.run_id), render(spec, result, data)))
    except Exception as exc:  # noqa: BLE001
        log.warning("run report not written: %s", exc)
        return None
