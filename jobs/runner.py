"""Run a job: read the input, answer what is new, failed or changed, chunk by chunk, and account for it.

Every answered row records a fingerprint of what was asked for each output (the endpoint
entry, the exact request body with its model and parameters, the result type). A rerun
compares the fingerprints of what it would send now with the recorded ones, and asks only
the outputs that are new, failed or changed; everything else is carried over as it was.
Resume after a crash is the special case where nothing changed: the keys of the lost
chunk are simply new. The rows to answer are frozen first into a staging table (keys,
requests, fingerprints and what is carried), split into chunks of ``commit_every`` rows;
each chunk is answered and appended as one Spark job, so a crash loses at most the chunk
in flight. ``limits.max_spend`` is checked against an estimate before the first request
and against what was spent before each chunk, so a run stops at a chunk boundary and
resumes where it stopped.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from batch._cluster import task_slots
from batch._functions import query_column

from . import batches, tables
from .chunks import account_chunk, final_rows
from .estimate import estimate_rows
from .plan import Plan, ask_name, check_input, first_line, plan_rows, read_input, request_name
from .progress import Progress
from .report import write_report
from .result import RunResult
from .spec import JobSpec
from .usage import Price, load_prices, summarize, usage_rows, write_usage

__all__ = ["run_job"]


def _stage(spark: SparkSession, spec: JobSpec, pending: DataFrame, staging: str) -> dict[int, int]:
    """Freeze the rows to answer, with their requests computed and a chunk number; returns rows per chunk.

    Chunks are exactly ``commit_every`` rows (the last one fewer), in an order that mixes the keys, so
    the rows a crash can make us ask again are bounded by that number."""
    order = Window.orderBy(F.xxhash64(*[F.col(k) for k in spec.keys]), *spec.keys)
    chunk = ((F.row_number().over(order) - 1) / F.lit(spec.commit_every)).cast("int")
    spark.sql(f"DROP TABLE IF EXISTS {staging}")
    pending.withColumn("_chunk", chunk).write.mode("overwrite").format("parquet").saveAsTable(staging)
    total = spark.table(staging).count()
    return {i: min(spec.commit_every, total - i * spec.commit_every) for i in range(-(-total // spec.commit_every))}


def _answer_chunk(spark: SparkSession, spec: JobSpec, staging: str, chunk: int, run_id: str, slots: int,
                  carried: bool) -> None:
    rows = spark.table(staging).where(F.col("_chunk") == chunk).repartition(slots)
    metas = [query_column(o.query, F.when(F.col(ask_name(o)), F.col(request_name(o))), with_metadata=True,
                          name=f"ai_query_{o.name}").alias(f"_m_{o.name}") for o in spec.outputs]
    answered = rows.select("*", *metas)
    tables.append(final_rows(spec, answered, carried, run_id, chunk), spec.results_table, spec.table_format)


def _prepare(spark: SparkSession, spec: JobSpec, staging: str, plan: Plan, result: RunResult,
             df: DataFrame) -> dict[int, int]:
    """Stage the rows to answer, then take their old rows (and, for ``sync``, the rows of keys gone from the
    input) out of the results table, so each key is written once."""
    counts = _stage(spark, spec, plan.rows, staging)
    if not plan.carried:
        return counts
    keys = list(spec.keys)
    keep = df.select(*keys) if spec.mode == "sync" else None
    if keep is not None:
        result.rows_removed = spark.table(spec.results_table).join(keep, keys, "left_anti").count()
    if sum(counts.values()) or result.rows_removed:
        tables.rewrite_without(spark, spec.results_table, spec.table_format, spark.table(staging), keys, keep)
    return counts


def run_job(spark: SparkSession, spec: JobSpec, *, only_failed: bool = False, run_id: str | None = None,
            progress: Progress | None = None, prices: dict[str, Price] | None = None,
            on_chunk: Callable[[int], None] | None = None) -> RunResult:
    result = RunResult(run_id or uuid.uuid4().hex[:12])
    prices = load_prices(spec.prices) if prices is None else prices
    progress = progress or Progress.quiet()
    staging = spec.results_table + "__pending"
    for table in (spec.results_table, spec.usage_table):
        tables.ensure_database(spark, table)
    tables.recover(spark, spec.results_table)
    df = read_input(spark, spec)
    check_input(df, spec)
    if spec.mode == "overwrite" and not only_failed:
        spark.sql(f"DROP TABLE IF EXISTS {spec.results_table}")
    batch_mode = spec.execution.mode == "batch"
    if batch_mode:
        batches.finish_open(spark, spec, result, prices)  # a killed run's batches: polled, not sent again
    plan = plan_rows(spark, spec, df, only_failed, result)
    per_row = _spend_check(spark, spec, plan, prices, result)
    if result.stopped:
        result.ended = dt.datetime.now()
        return result
    counts = _prepare(spark, spec, staging, plan, result, df)
    result.rows_pending = sum(counts.values())
    progress.start(result.rows_pending)
    slots = task_slots(spark)
    if not tables.table_exists(spark, spec.results_table):
        # Nothing to answer on a first run: the empty chunk still creates the table with every column,
        # so the queries scheduled after this job find it.
        _answer_chunk(spark, spec, staging, -1, result.run_id, slots, plan.carried)
    try:
        if batch_mode:
            batches.answer(spark, spec, staging, counts, result, plan.carried, progress, prices)
        else:
            for chunk in sorted(counts):
                reason = _spend_ahead(spec, result, per_row, counts[chunk])
                if reason:
                    result.status, result.reasons = "stopped", [reason]
                    break
                _answer_chunk(spark, spec, staging, chunk, result.run_id, slots, plan.carried)
                if account_chunk(spark, spec, result, prices, chunk, counts[chunk], progress, on_chunk):
                    break
    except BaseException as exc:
        result.status = "failed"
        result.reasons.append(f"{type(exc).__name__}: {first_line(exc)}")
        raise
    finally:
        progress.finish()
        result.ended = ended = dt.datetime.now()
        _finish(spark, spec, result, prices, staging, ended)
        result.report = write_report(spark, spec, result)
    return result


def _spend_check(spark: SparkSession, spec: JobSpec, plan: Plan, prices: dict[str, Price],
                 result: RunResult) -> float | None:
    """With ``max_spend``: the estimate of what the rows to answer cost, before anything is asked. A run whose
    lowest estimate is already above the limit stops here; otherwise the estimate per row predicts the first
    chunk's spend. Returns that per-row figure (None when nothing is priced)."""
    limit = spec.limits.max_spend
    if limit is None:
        return None
    estimate = estimate_rows(spark, spec, plan.rows, prices)
    result.estimate = estimate
    if estimate.cost_low is not None and estimate.cost_low > limit:
        result.status = "stopped"
        result.reasons = [f"max_spend {limit}: the estimate for the {estimate.rows:,} rows to answer is "
                          f"${estimate.cost_low:.4f} at least, so nothing was asked (raise max_spend, or answer "
                          "part of the table with --max-rows)"]
    point = estimate.cost_point if estimate.cost_point is not None else estimate.cost_high
    return point / estimate.rows if point is not None and estimate.rows else None


def _spend_ahead(spec: JobSpec, result: RunResult, per_row: float | None, rows: int) -> str | None:
    """Would the next chunk take the spend past ``max_spend``? Judged by what rows cost so far in this run
    (or, before the first chunk, by the estimate), so the run stops before the chunk, not after it."""
    limit = spec.limits.max_spend
    if limit is None:
        return None
    rate = result.spend / result.rows_in if result.rows_in else per_row
    if rate is None:
        return None
    projected = result.spend + rate * rows
    if projected > limit:
        return (f"max_spend {limit}: spent ${result.spend:.4f} on {result.rows_in:,} rows; the next chunk of "
                f"{rows:,} rows would bring it to about ${projected:.4f}, so the run stopped before it (resumable: "
                "run again with a higher max_spend to answer the rest)")
    return None


def _finish(spark: SparkSession, spec: JobSpec, result: RunResult, prices: dict[str, Price], staging: str,
            ended: dt.datetime) -> None:
    """Write the usage rows for everything this run answered, then drop the staging table; ``ended`` is when
    the run ended (``result.ended``)."""
    if result.rows_in and tables.table_exists(spark, spec.results_table):
        rows = spark.table(spec.results_table).where(F.col("run_id") == result.run_id)
        result.usage = summarize(rows, spec, prices)
        write_usage(spark, usage_rows(result.usage, run_id=result.run_id, job=spec.name, started=result.started,
                                      ended=ended, status=result.status),
                    spec.usage_table, spec.table_format)
    elif not tables.table_exists(spark, spec.usage_table):
        write_usage(spark, [], spec.usage_table, spec.table_format)  # created empty: nothing was asked
    if result.status == "succeeded":
        spark.sql(f"DROP TABLE IF EXISTS {staging}")
