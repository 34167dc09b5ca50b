"""The results and usage tables: their columns, and the few table operations the runner needs.

Writes are appends of whole chunks, each committed by Spark as one job, so a crash
loses at most the chunk in flight and never leaves half a row. The one rewrite
(dropping failed rows before they are answered again) goes through a side table
and a rename, and ``recover`` finishes a rename that a crash interrupted.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from batch._engine import ROW_RECORD

__all__ = ["STATUS_FIELDS", "asked_here", "TOKEN_FIELDS", "USAGE_SCHEMA", "ensure_database", "table_exists", "append",
           "recover", "rewrite_without", "status_column"]

# Per output column `<name>`, the results table has `<name>__status` with these fields: the error, its kind,
# then the per-row record as ``batch._engine.ROW_RECORD`` defines it.
# ``fingerprint`` is what was asked (see ``jobs.plan.fingerprint_column``), so a rerun knows what changed.
# ``asked_in``: the run that asked the output. A run that keeps an earlier answer (resume, incremental) carries
# its status as it was, so that answer's cost stays with the run that paid for it: see ``asked_here``.
STATUS_FIELDS = ["error", "error_kind", *ROW_RECORD, "fingerprint", "asked_in"]
# The token counts of the record, summed by the usage table under the same names.
TOKEN_FIELDS = [name for name in ROW_RECORD if name.endswith("_tokens")]


def asked_here(status: Column) -> Column:
    """True where the row's run asked this output itself (not an answer it carried over from an earlier run)."""
    return status["asked_in"] == F.col("run_id")

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
    T.StructField("reasoning_tokens", T.LongType(), False),
    T.StructField("cached_tokens", T.LongType(), False),
    T.StructField("latency_p50_ms", T.DoubleType(), True),
    T.StructField("latency_p95_ms", T.DoubleType(), True),
    T.StructField("latency_p99_ms", T.DoubleType(), True),
    T.StructField("rows_per_second", T.DoubleType(), True),
    T.StructField("estimated_cost", T.DoubleType(), True),
    T.StructField("execution", T.StringType(), False),
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
    """Undo what a crash left behind before anything is appended again.

    A rewrite interrupted before its rename is finished (the side table is complete only
    if the original is gone). Task output of a killed job, still under the table's
    ``_temporary`` directory, is deleted: Hadoop's committer would otherwise publish it
    with the next append, next to the answers the resumed run writes for the same keys.
    """
    side = _side(name)
    if table_exists(spark, side):
        if table_exists(spark, name):
            spark.sql(f"DROP TABLE {side}")
        else:
            spark.sql(f"ALTER TABLE {side} RENAME TO {name}")
    if table_exists(spark, name):
        _clear_uncommitted(spark, name)


def _clear_uncommitted(spark: SparkSession, name: str) -> None:
    jvm = getattr(spark, "_jvm", None)
    if jvm is None:  # Spark Connect: no JVM here; the server's committer cleans up on the next job
        return
    rows = spark.sql(f"DESCRIBE TABLE EXTENDED {name}").where("col_name = 'Location'").collect()
    if not rows:
        return
    path = jvm.org.apache.hadoop.fs.Path(rows[0]["data_type"].rstrip("/") + "/_temporary")
    fs = path.getFileSystem(spark._jsc.hadoopConfiguration())
    if fs.exists(path):
        fs.delete(path, True)


def rewrite_without(spark: SparkSession, name: str, table_format: str, drop_keys: DataFrame,
                    keys: list[str], keep_keys: DataFrame | None = None) -> None:
    """Drop the rows whose key is in ``drop_keys`` (they are about to be answered again, so each key is written
    once) and, with ``keep_keys``, every row whose key is not there (``sync``: keys gone from the input)."""
    kept = spark.table(name).join(drop_keys.select(*keys), keys, "left_anti")
    if keep_keys is not None:
        kept = kept.join(keep_keys.select(*keys), keys, "left_semi")
    side = _side(name)
    kept.write.mode("overwrite").format(table_format).saveAsTable(side)
    spark.sql(f"DROP TABLE {name}")
    spark.sql(f"ALTER TABLE {side} RENAME TO {name}")
