"""Run a job: read the input, answer what is not answered yet, chunk by chunk, and account for it.

The rows to answer are frozen first into a staging table (keys plus each output's
request, already computed), split into chunks of ``commit_every`` rows. Each chunk
is answered and appended to the results table as one Spark job, so a crash loses
at most the chunk in flight, and ``resume`` (the default) starts from the keys that
have no successful answer yet: nothing is written twice, nothing answered is paid
for again.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from typing import Callable

from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from batch.errors import ConfigError
from batch.functions import query_column, task_slots

from . import tables
from .progress import Progress
from .report import write_report
from .spec import PLACEHOLDER, JobSpec, OutputSpec
from .usage import EndpointUsage, Price, chunk_totals, load_prices, summarize, usage_rows, write_usage

__all__ = ["RunResult", "run_job", "read_input", "request_column"]


@dataclass
class RunResult:
    run_id: str
    status: str = "succeeded"
    rows_pending: int = 0
    rows_in: int = 0
    rows_failed: int = 0
    skipped_null_keys: int = 0
    spend: float = 0.0
    reasons: list[str] = field(default_factory=list)
    usage: list[EndpointUsage] = field(default_factory=list)
    started: dt.datetime = field(default_factory=lambda: dt.datetime.now())
    ended: dt.datetime | None = None
    report: str | None = None      # the run report's path (HTML, beside the usage table)

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"


def read_input(spark: SparkSession, spec: JobSpec) -> DataFrame:
    source = spec.input
    try:
        if source.table:
            return spark.table(source.table)
        if source.query:
            return spark.sql(source.query)
        return spark.read.format(source.format).options(**source.options).load(source.path)
    except AnalysisException as exc:
        raise ConfigError(f"cannot read the input: {_first_line(exc)}", source=spec.source,
                          line=spec.where("input")) from None


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def request_column(output: OutputSpec) -> Column:
    """The request for one output: a prompt template (``{column}`` placeholders, NULL if a column is NULL)
    or a SQL expression."""
    if output.prompt is None:
        return F.expr(output.request)
    parts: list[Column] = []
    last = 0
    text = output.prompt
    for m in PLACEHOLDER.finditer(text):
        literal = text[last:m.start()] + ("{" if m.group(0) == "{{" else "}" if m.group(0) == "}}" else "")
        if literal:
            parts.append(F.lit(literal))
        if m.group(1) is not None:
            parts.append(F.col(m.group(1).strip()).cast("string"))
        last = m.end()
    if text[last:]:
        parts.append(F.lit(text[last:]))
    return F.concat(*parts) if len(parts) != 1 else parts[0]


def _check_input(df: DataFrame, spec: JobSpec) -> None:
    """Every column the spec names exists and every request has the type its endpoint takes."""
    columns = set(df.columns)
    for key in spec.keys:
        if key not in columns:
            raise ConfigError(f"key column '{key}' is not in the input (columns: {', '.join(df.columns)})",
                              source=spec.source, line=spec.where("input", "key"))
    for output in spec.outputs:
        for column in output.template_columns():
            if column not in columns:
                raise ConfigError(f"output '{output.name}': the prompt uses {{{column}}}, which is not an input "
                                  f"column (columns: {', '.join(df.columns)})", source=spec.source,
                                  line=spec.where("outputs", output.name, "prompt"))
        try:
            data_type = df.select(request_column(output).alias("r")).schema["r"].dataType
        except AnalysisException as exc:
            raise ConfigError(f"output '{output.name}': the request does not analyse: {_first_line(exc)}",
                              source=spec.source, line=spec.where("outputs", output.name, "request")) from None
        wants_struct = output.query.request_is_struct
        if wants_struct != isinstance(data_type, T.StructType) or (not wants_struct and
                                                                   not isinstance(data_type, T.StringType)):
            want = "a STRUCT of the model's inputs" if wants_struct else "STRING"
            hint = (" (decode it: decode(col, 'UTF-8'), or make_valid_utf8(CAST(col AS STRING)))"
                    if isinstance(data_type, T.BinaryType) else "")
            raise ConfigError(f"output '{output.name}': endpoint '{output.query.endpoint.name}' takes {want}, but "
                              f"the request is {data_type.simpleString().upper()}{hint}", source=spec.source,
                              line=output.line)


def _stage(spark: SparkSession, spec: JobSpec, pending: DataFrame, staging: str) -> dict[int, int]:
    """Freeze the rows to answer, with their requests computed and a chunk number; returns rows per chunk.

    Chunks are exactly ``commit_every`` rows (the last one fewer), in an order that mixes the keys, so
    the rows a crash can make us ask again are bounded by that number."""
    keyed = pending.select(*spec.keys, *[request_column(o).alias(f"_req_{o.name}") for o in spec.outputs])
    order = Window.orderBy(F.xxhash64(*[F.col(k) for k in spec.keys]), *spec.keys)
    chunk = ((F.row_number().over(order) - 1) / F.lit(spec.commit_every)).cast("int")
    spark.sql(f"DROP TABLE IF EXISTS {staging}")
    keyed.withColumn("_chunk", chunk).write.mode("overwrite").format("parquet").saveAsTable(staging)
    total = spark.table(staging).count()
    return {i: min(spec.commit_every, total - i * spec.commit_every) for i in range(-(-total // spec.commit_every))}


def _answer_chunk(spark: SparkSession, spec: JobSpec, staging: str, chunk: int, run_id: str, slots: int) -> None:
    rows = spark.table(staging).where(F.col("_chunk") == chunk).repartition(slots)
    metas = [query_column(o.query, F.col(f"_req_{o.name}"), with_metadata=True, name=f"ai_query_{o.name}")
             .alias(f"_m_{o.name}") for o in spec.outputs]
    answered = rows.select(*spec.keys, *metas)
    columns = list(spec.keys)
    for o in spec.outputs:
        m = F.col(f"_m_{o.name}")
        columns.append(m["result"].alias(o.name))
        columns.append(F.struct(m["errorMessage"].alias("error"),
                                *[m[f].alias(f) for f in tables.STATUS_FIELDS[1:]]).alias(tables.status_column(o.name)))
    ok = F.lit(True)
    for o in spec.outputs:
        ok = ok & F.col(f"_m_{o.name}.errorMessage").isNull()
    final = answered.select(*columns, ok.alias("ok"), F.lit(run_id).alias("run_id"),
                            F.lit(chunk).alias("run_chunk"), F.current_timestamp().alias("answered_at"))
    tables.append(final, spec.results_table, spec.table_format)


def _pending(spark: SparkSession, spec: JobSpec, df: DataFrame, only_failed: bool, result: RunResult) -> DataFrame:
    keys = list(spec.keys)
    not_null = F.lit(True)
    for key in keys:
        not_null = not_null & F.col(key).isNotNull()
    result.skipped_null_keys = df.where(~not_null).count()
    df = df.where(not_null).dropDuplicates(keys)
    exists = tables.table_exists(spark, spec.results_table)
    if only_failed:
        if not exists:
            raise ConfigError(f"--only-failed: the results table {spec.results_table} does not exist yet")
        failed = spark.table(spec.results_table).where("NOT ok").select(*keys)
        df = df.join(failed, keys, "left_semi")
    elif exists and spec.mode == "resume":
        done = spark.table(spec.results_table).where("ok").select(*keys)
        df = df.join(done, keys, "left_anti")
    if spec.limits.max_rows:
        df = df.limit(spec.limits.max_rows)
    return df


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
    _check_input(df, spec)
    if spec.mode == "overwrite" and not only_failed:
        spark.sql(f"DROP TABLE IF EXISTS {spec.results_table}")
    counts = _stage(spark, spec, _pending(spark, spec, df, only_failed, result), staging)
    if tables.table_exists(spark, spec.results_table) and spec.mode != "append":
        tables.rewrite_without_failures(spark, spec.results_table, spec.table_format)
    result.rows_pending = sum(counts.values())
    progress.start(result.rows_pending)
    slots = task_slots(spark)
    if not tables.table_exists(spark, spec.results_table):
        # Nothing to answer on a first run: the empty chunk still creates the table with every column,
        # so the queries scheduled after this job find it.
        _answer_chunk(spark, spec, staging, -1, result.run_id, slots)
    try:
        for chunk in sorted(counts):
            _answer_chunk(spark, spec, staging, chunk, result.run_id, slots)
            done = spark.table(spec.results_table).where((F.col("run_id") == result.run_id) &
                                                         (F.col("run_chunk") == chunk))
            failed, tokens, cost = chunk_totals(done, spec, prices)
            progress.advance(counts[chunk], failed, tokens)
            if on_chunk:
                on_chunk(chunk)
            result.rows_in += counts[chunk]
            result.rows_failed += failed
            result.spend += cost
            reason = _limit_reached(spec, result)
            if reason:
                result.status, result.reasons = "failed", [reason]
                break
    except BaseException as exc:
        result.status = "failed"
        result.reasons.append(f"{type(exc).__name__}: {_first_line(exc)}")
        raise
    finally:
        progress.finish()
        result.ended = dt.datetime.now()
        _finish(spark, spec, result, prices, staging)
        result.report = write_report(spark, spec, result)
    return result


def _limit_reached(spec: JobSpec, result: RunResult) -> str | None:
    limits = spec.limits
    if result.rows_in and result.rows_failed / result.rows_in > limits.max_error_fraction:
        return (f"error fraction {result.rows_failed / result.rows_in:.2%} is above max_error_fraction "
                f"{limits.max_error_fraction:.2%} ({result.rows_failed} of {result.rows_in} rows failed)")
    if limits.max_spend is not None and result.spend > limits.max_spend:
        return f"estimated spend {result.spend:.4f} is above max_spend {limits.max_spend}"
    return None


def _finish(spark: SparkSession, spec: JobSpec, result: RunResult, prices: dict[str, Price], staging: str) -> None:
    """Write the usage rows for everything this run answered, then drop the staging table."""
    if result.rows_in and tables.table_exists(spark, spec.results_table):
        rows = spark.table(spec.results_table).where(F.col("run_id") == result.run_id)
        result.usage = summarize(rows, spec, prices)
        write_usage(spark, usage_rows(result.usage, run_id=result.run_id, job=spec.name, started=result.started,
                                      ended=result.ended, status=result.status),
                    spec.usage_table, spec.table_format)
    elif not tables.table_exists(spark, spec.usage_table):
        write_usage(spark, [], spec.usage_table, spec.table_format)  # created empty: nothing was asked
    if result.status == "succeeded":
        spark.sql(f"DROP TABLE IF EXISTS {staging}")
