"""The results and usage tables: their columns, and the few table operations the runner needs.

Writes are appends of whole chunks, each committed by Spark as one job, so a crash
loses at most the chunk in flight and never leaves half a row. The one rewrite
(dropping failed rows before they are answered again) goes through a side table
and a rename, and ``recover`` finishes a rename that a crash interrupted.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

__all__ = ["STATUS_FIELDS", "USAGE_SCHEMA", "ensure_database", "table_exists", "append", "recover", "rewrite_without_failures",
           "status_column"]

# Per output column `<name>`, the results table has `<name>__status` with these fields.
STATUS_FIELDS = ["error", "error_kind", "attempts", "latency_ms", "prompt_tokens", "completion_tokens",
                 "total_tokens", "requests", "rate_limited"]

USAGE_SCHEMA = T.StructType([
    T.StructField("run_id", T.StringType(), False),
    T.StructField("job", T.StringType(), False),
    T.StructField("endpoint", T.StringType(), False),
    T.StructField("outputs", T.StringType(), False),
    T.StructField("started_at", T.TimestampType(), False),
    T.StructField("ended_at", T.TimestampType(), False),
    T.StructField("status", T.StringType(), False),
    T.StructField("rows_in", T.LongType(), False),
    T.StructField("rows_answered", T.LongType(), False),
    T.StructField("rows_failed", T.LongType(), False),
    T.StructField("failed_by_kind", T.MapType(T.StringType(), T.LongType()), True),
    T.StructField("requests", T.LongType(), False),
    T.StructField("retries", T.LongType(), False),
    T.StructField("rate_limited", T.LongType(), False),
    T.StructField("prompt_tokens", T.LongType(), False),
    T.StructField("completion_tokens", T.LongType(), False),
    T.StructField("total_tokens", T.LongType(), False),
    T.StructField("latency_p50_ms", T.DoubleType(), True),
    T.StructField("latency_p95_ms", T.DoubleType(), True),
    T.StructField("latency_p99_ms", T.DoubleType(), True),
    T.StructField("rows_per_second", T.DoubleType(), True),
    T.StructField("estimated_cost", T.DoubleType(), True),
])


def status_column(output: str) -> str:
    return f"{output}__status"


def ensure_database(spark: SparkSession, table: str) -> None:
    """Tables are created on first use, and so is the database they are named in."""
    parts = table.split(".")
    if len(parts) >= 2:
        spark.sql(f"CREATE DATABASE IF NOT EXISTS {'.'.join(parts[:-1])}")


def table_exists(spark: SparkSession, name: str) -> bool:
    return spark.catalog.tableExists(name)


def append(df: DataFrame, name: str, table_format: str) -> None:
    df.write.mode("append").format(table_format).saveAsTable(name)


def _side(name: str) -> str:
    return name + "__rewrite"


def recover(spark: SparkSession, name: str) -> None:
    """Finish or undo a rewrite that a crash interrupted: the side table is complete only if the original is gone."""
    side = _side(name)
    if not table_exists(spark, side):
        return
    if table_exists(spark, name):
        spark.sql(f"DROP TABLE {side}")
    else:
        spark.sql(f"ALTER TABLE {side} RENAME TO {name}")


def rewrite_without_failures(spark: SparkSession, name: str, table_format: str) -> int:
    """Drop the rows that failed, so that answering them again writes each key once. Returns how many."""
    failed = spark.table(name).where("NOT ok").count()
    if failed == 0:
        return 0
    side = _side(name)
    spark.table(name).where("ok").write.mode("overwrite").format(table_format).saveAsTable(side)
    spark.sql(f"DROP TABLE {name}")
    spark.sql(f"ALTER TABLE {side} RENAME TO {name}")
    return failed
