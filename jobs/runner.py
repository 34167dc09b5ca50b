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
from dataclasses import dataclass, field
from collections.abc import Callable

from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

import pandas as pd
from pyspark.sql.functions import pandas_udf

from batch.errors import ConfigError
from batch._engine import ROW_RECORD
from batch._cluster import task_slots
from batch._functions import query_column
from batch._memo import body_digest
from batch._udf import request_values
from batch._wire import request_body

from . import tables
from .progress import Progress
from .report import write_report
from .spec import PLACEHOLDER, JobSpec, OutputSpec
from .usage import EndpointUsage, Price, chunk_totals, load_prices, summarize, usage_rows, write_usage

__all__ = ["RunResult", "run_job", "read_input", "request_column", "fingerprint_column", "plan_rows", "Plan",
           "CATEGORIES"]

# What a rerun finds for each key of the input: no answer yet, a changed request, a failed answer, or nothing to do.
CATEGORIES = ("new", "changed", "failed", "unchanged")


@dataclass
class RunResult:
    run_id: str
    status: str = "succeeded"
    rows_pending: int = 0
    rows_in: int = 0
    rows_failed: int = 0
    skipped_null_keys: int = 0
    rows_by_category: dict[str, int] = field(default_factory=dict)
    rows_removed: int = 0
    spend: float = 0.0
    estimate: object | None = None  # jobs.estimate.Estimate, when max_spend asked for one
    reasons: list[str] = field(default_factory=list)
    usage: list[EndpointUsage] = field(default_factory=list)
    started: dt.datetime = field(default_factory=lambda: dt.datetime.now())
    ended: dt.datetime | None = None
    report: str | None = None      # the run report's path (HTML, beside the usage table)

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"

    @property
    def stopped(self) -> bool:
        """Stopped cleanly at a chunk boundary by ``max_spend``: resumable, nothing half written."""
        return self.status == "stopped"


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


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def request_column(output: OutputSpec) -> Column:
    """The request for one output: a prompt template (``{column}`` placeholders, NULL if a column is NULL)
    or a SQL expression."""
    if output.prompt is None:
        if output.request is None:  # parse_spec requires exactly one of the two
            raise ConfigError(f"output '{output.name}' needs a prompt or a request")
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


def _req(output: OutputSpec) -> str:
    return f"_req_{output.name}"


def _fp(output: OutputSpec) -> str:
    return f"_fp_{output.name}"


def _ask(output: OutputSpec) -> str:
    return f"_ask_{output.name}"


def _carried(output: OutputSpec, what: str) -> str:
    return f"_{what}_{output.name}"


def fingerprint_column(output: OutputSpec, request: Column) -> Column:
    """What would be sent for each row, hashed on the executors (hex SHA-256): the host memo's digest of the
    exact request body (model, input, modelParameters, responseFormat), with the endpoint entry's name and the
    result type as context. The URL is left out on purpose, so a moved endpoint does not re-ask everything."""
    query = output.query
    config = query.endpoint
    params, response_format = query.params, query.response_format
    context = ("job row", config.name, query.result_type.simpleString(), str(query.cast_answers))

    def digest(batch):  # a Series, or a DataFrame for a STRUCT request (no hints: pandas_udf reads them)
        values = request_values(batch, query)
        return pd.Series([body_digest(request_body(config, [value], params, response_format), *context).hex()
                          for value in values], dtype=object)

    digest.__name__ = f"fingerprint_{output.name}"
    # PySpark's stubs list pandas_udf(f, returnType) only for a function with type hints; without them it is the
    # scalar UDF this is.
    return pandas_udf(digest, T.StringType())(request)  # type: ignore[call-overload]


@dataclass
class Plan:
    """The rows a run would answer, before anything is written: keys, each output's request, fingerprint and
    whether it is asked, and (``carried``) the earlier answer and status kept for the outputs not asked."""

    rows: DataFrame
    carried: bool


def plan_rows(spark: SparkSession, spec: JobSpec, df: DataFrame, only_failed: bool = False,
              result: RunResult | None = None) -> Plan:
    """Compare what would be sent now with what the results table recorded; ``result`` gets the counts."""
    keys = list(spec.keys)
    not_null = F.lit(True)
    for key in keys:
        not_null = not_null & F.col(key).isNotNull()
    if result is not None:
        result.skipped_null_keys = df.where(~not_null).count()
    current = df.where(not_null).dropDuplicates(keys).select(*keys, *[request_column(o).alias(_req(o))
                                                                       for o in spec.outputs])
    current = current.select("*", *[fingerprint_column(o, F.col(_req(o))).alias(_fp(o)) for o in spec.outputs])
    exists = tables.table_exists(spark, spec.results_table) and spec.mode != "append"
    if only_failed and not exists:
        raise ConfigError(f"--only-failed: the results table {spec.results_table} does not exist yet")
    if not exists:
        rows = current.select("*", *[F.lit(True).alias(_ask(o)) for o in spec.outputs],
                              F.lit("new").alias("_category"))
    else:
        previous = spark.table(spec.results_table).select(
            *keys, F.lit(True).alias("_prev"),
            *[c for o in spec.outputs for c in (F.col(o.name).alias(_carried(o, "pv")),
                                                F.col(tables.status_column(o.name)).alias(_carried(o, "ps")))])
        joined = current.join(previous, keys, "left")
        failed = {o.name: F.coalesce(F.col(_carried(o, "ps"))["error"].isNotNull(), F.lit(False))
                  for o in spec.outputs}
        changed = {o.name: F.coalesce(F.col(_carried(o, "ps"))["fingerprint"] != F.col(_fp(o)), F.lit(False))
                   for o in spec.outputs}
        new = F.col("_prev").isNull()
        asks = [(failed[o.name] if only_failed else new | failed[o.name] | changed[o.name]).alias(_ask(o))
                for o in spec.outputs]
        any_changed = _any(changed.values())
        category = (F.when(new, "new").when(any_changed, "changed").when(_any(failed.values()), "failed")
                    .otherwise("unchanged"))
        rows = joined.select(*[c for c in joined.columns if c != "_prev"], *asks, category.alias("_category"))
    if result is not None:
        found = {r["_category"]: r["count"] for r in rows.groupBy("_category").count().collect()}
        result.rows_by_category = {name: found.get(name, 0) for name in CATEGORIES}
    pending = rows.where(_any(F.col(_ask(o)) for o in spec.outputs))
    if spec.limits.max_rows:
        pending = pending.limit(spec.limits.max_rows)
    return Plan(pending, exists)


def _any(conditions) -> Column:
    combined = F.lit(False)
    for condition in conditions:
        combined = combined | condition
    return combined


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


def final_rows(spec: JobSpec, answered: DataFrame, carried: bool, run_id: str, chunk: int) -> DataFrame:
    """The results rows of a chunk from its staged rows and each output's metadata struct ``_m_<name>`` (what
    the UDF or a batch's output file gave): asked outputs take the new answer, the others keep the old one."""
    columns: list[str | Column] = list(spec.keys)
    oks = []
    for o in spec.outputs:
        m = F.col(f"_m_{o.name}")
        status = F.struct(m["errorMessage"].alias("error"), m["error_kind"].alias("error_kind"),
                          *[m[f].alias(f) for f in ROW_RECORD], F.col(_fp(o)).alias("fingerprint"),
                          F.lit(run_id).alias("asked_in"))
        value = m["result"]
        if carried:
            ask = F.col(_ask(o))
            status = F.when(ask, status).otherwise(F.col(_carried(o, "ps")))
            value = F.when(ask, value).otherwise(F.col(_carried(o, "pv")))
        columns += [value.alias(o.name), status.alias(tables.status_column(o.name))]
        oks.append(F.col(tables.status_column(o.name))["error"].isNull())
    ok = F.lit(True)
    for condition in oks:
        ok = ok & condition
    shaped = answered.select(*columns)
    return shaped.select("*", ok.alias("ok"), F.lit(run_id).alias("run_id"), F.lit(chunk).alias("run_chunk"),
                         F.current_timestamp().alias("answered_at"))


def _answer_chunk(spark: SparkSession, spec: JobSpec, staging: str, chunk: int, run_id: str, slots: int,
                  carried: bool) -> None:
    rows = spark.table(staging).where(F.col("_chunk") == chunk).repartition(slots)
    metas = [query_column(o.query, F.when(F.col(_ask(o)), F.col(_req(o))), with_metadata=True,
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
    _check_input(df, spec)
    if spec.mode == "overwrite" and not only_failed:
        spark.sql(f"DROP TABLE IF EXISTS {spec.results_table}")
    batch_mode = spec.execution.mode == "batch"
    if batch_mode:
        from . import batches
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
        result.reasons.append(f"{type(exc).__name__}: {_first_line(exc)}")
        raise
    finally:
        progress.finish()
        result.ended = ended = dt.datetime.now()
        _finish(spark, spec, result, prices, staging, ended)
        result.report = write_report(spark, spec, result)
    return result


def account_chunk(spark: SparkSession, spec: JobSpec, result: RunResult, prices: dict[str, Price], chunk: int,
                  rows: int, progress: Progress, on_chunk: Callable[[int], None] | None = None) -> bool:
    """Count a written chunk into the run; True when a limit says stop."""
    done = spark.table(spec.results_table).where((F.col("run_id") == result.run_id) &
                                                 (F.col("run_chunk") == chunk))
    failed, tokens, cost = chunk_totals(done, spec, prices)
    progress.advance(rows, failed, tokens)
    if on_chunk:
        on_chunk(chunk)
    result.rows_in += rows
    result.rows_failed += failed
    result.spend += cost
    reason = _limit_reached(spec, result)
    if reason:
        result.status, result.reasons = ("stopped" if "max_spend" in reason else "failed"), [reason]
        return True
    return False


def _spend_check(spark: SparkSession, spec: JobSpec, plan: Plan, prices: dict[str, Price],
                 result: RunResult) -> float | None:
    """With ``max_spend``: the estimate of what the rows to answer cost, before anything is asked. A run whose
    lowest estimate is already above the limit stops here; otherwise the estimate per row predicts the first
    chunk's spend. Returns that per-row figure (None when nothing is priced)."""
    limit = spec.limits.max_spend
    if limit is None:
        return None
    from .estimate import estimate_rows

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


def _limit_reached(spec: JobSpec, result: RunResult) -> str | None:
    limits = spec.limits
    if result.rows_in and result.rows_failed / result.rows_in > limits.max_error_fraction:
        return (f"error fraction {result.rows_failed / result.rows_in:.2%} is above max_error_fraction "
                f"{limits.max_error_fraction:.2%} ({result.rows_failed} of {result.rows_in} rows failed)")
    if limits.max_spend is not None and result.spend > limits.max_spend:
        return f"max_spend {limits.max_spend}: estimated spend ${result.spend:.4f} is above it (resumable)"
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
