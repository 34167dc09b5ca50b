"""A chunk of answered rows: shaped into results rows, then counted into the run, where a limit may stop it.
Sync mode (``jobs.runner``) and batch mode (``jobs.batches``) both end each chunk here."""

from __future__ import annotations

from collections.abc import Callable

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from batch._engine import ROW_RECORD

from . import tables
from .plan import ask_name, carried_name, fingerprint_name
from .progress import Progress
from .result import RunResult
from .spec import JobSpec
from .usage import Price, chunk_totals

__all__ = ["final_rows", "account_chunk"]


def final_rows(spec: JobSpec, answered: DataFrame, carried: bool, run_id: str, chunk: int) -> DataFrame:
    """The results rows of a chunk from its staged rows and each output's metadata struct ``_m_<name>`` (what
    the UDF or a batch's output file gave): asked outputs take the new answer, the others keep the old one."""
    columns: list[str | Column] = list(spec.keys)
    oks = []
    for o in spec.outputs:
        m = F.col(f"_m_{o.name}")
        status = F.struct(m["errorMessage"].alias("error"), m["error_kind"].alias("error_kind"),
                          *[m[f].alias(f) for f in ROW_RECORD], F.col(fingerprint_name(o)).alias("fingerprint"),
                          F.lit(run_id).alias("asked_in"))
        value = m["result"]
        if carried:
            ask = F.col(ask_name(o))
            status = F.when(ask, status).otherwise(F.col(carried_name(o, "ps")))
            value = F.when(ask, value).otherwise(F.col(carried_name(o, "pv")))
        columns += [value.alias(o.name), status.alias(tables.status_column(o.name))]
        oks.append(F.col(tables.status_column(o.name))["error"].isNull())
    ok = F.lit(True)
    for condition in oks:
        ok = ok & condition
    shaped = answered.select(*columns)
    return shaped.select("*", ok.alias("ok"), F.lit(run_id).alias("run_id"), F.lit(chunk).alias("run_chunk"),
                         F.current_timestamp().alias("answered_at"))


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


def _limit_reached(spec: JobSpec, result: RunResult) -> str | None:
    limits = spec.limits
    if result.rows_in and result.rows_failed / result.rows_in > limits.max_error_fraction:
        return (f"error fraction {result.rows_failed / result.rows_in:.2%} is above max_error_fraction "
                f"{limits.max_error_fraction:.2%} ({result.rows_failed} of {result.rows_in} rows failed)")
    if limits.max_spend is not None and result.spend > limits.max_spend:
        return f"max_spend {limits.max_spend}: estimated spend ${result.spend:.4f} is above it (resumable)"
    return None
