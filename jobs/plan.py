"""What a run would ask, before anything is written: the input read and checked, each output's request and its
fingerprint, and the rows that are new, changed or failed (``plan_rows``)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.functions import pandas_udf

from batch._memo import value_digest
from batch._udf import request_values
from batch.errors import ConfigError

from . import tables
from .result import RunResult
from .spec import PLACEHOLDER, JobSpec, OutputSpec

__all__ = ["CATEGORIES", "Plan", "read_input", "check_input", "request_column", "fingerprint_column", "plan_rows",
           "first_line", "request_name", "fingerprint_name", "ask_name", "carried_name"]

# What a rerun finds for each key of the input: no answer yet, a changed request, a failed answer, or nothing to do.
CATEGORIES = ("new", "changed", "failed", "unchanged")


def read_input(spark: SparkSession, spec: JobSpec) -> DataFrame:
    source = spec.input
    try:
        if source.table:
            return spark.table(source.table)
        if source.query:
            return spark.sql(source.query)
        return spark.read.format(source.format).options(**source.options).load(source.path)
    except AnalysisException as exc:
        raise ConfigError(f"cannot read the input: {first_line(exc)}", source=spec.source,
                          line=spec.where("input")) from None


def first_line(exc: BaseException) -> str:
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


def check_input(df: DataFrame, spec: JobSpec) -> None:
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
            raise ConfigError(f"output '{output.name}': the request does not analyse: {first_line(exc)}",
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


# The staged rows' column names for one output: its request, fingerprint, whether it is asked, and what an
# earlier run left (``pv``: the value, ``ps``: the status).
def request_name(output: OutputSpec) -> str:
    return f"_req_{output.name}"


def fingerprint_name(output: OutputSpec) -> str:
    return f"_fp_{output.name}"


def ask_name(output: OutputSpec) -> str:
    return f"_ask_{output.name}"


def carried_name(output: OutputSpec, what: str) -> str:
    return f"_{what}_{output.name}"


def fingerprint_column(output: OutputSpec, request: Column) -> Column:
    """What would be sent for each row, hashed on the executors (hex SHA-256): the host memo's digest of the
    exact request body (model, input, modelParameters, responseFormat), with the endpoint entry's name and the
    result type as context. The URL is left out on purpose, so a moved endpoint does not re-ask everything."""
    query = output.query
    config = query.endpoint
    context = ("job row", config.name, query.result_type.simpleString(), str(query.cast_answers))
    of = value_digest(config, query.params, query.response_format, *context)  # made once, pickled with the UDF

    def digest(batch):  # a Series, or a DataFrame for a STRUCT request (no hints: pandas_udf reads them)
        return pd.Series([of(value).hex() for value in request_values(batch, query)], dtype=object)

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
    current = df.where(not_null).dropDuplicates(keys).select(*keys, *[request_column(o).alias(request_name(o))
                                                                       for o in spec.outputs])
    current = current.select("*", *[fingerprint_column(o, F.col(request_name(o))).alias(fingerprint_name(o))
                                    for o in spec.outputs])
    exists = tables.table_exists(spark, spec.results_table) and spec.mode != "append"
    if only_failed and not exists:
        raise ConfigError(f"--only-failed: the results table {spec.results_table} does not exist yet")
    if not exists:
        rows = current.select("*", *[F.lit(True).alias(ask_name(o)) for o in spec.outputs],
                              F.lit("new").alias("_category"))
    else:
        previous = spark.table(spec.results_table).select(
            *keys, F.lit(True).alias("_prev"),
            *[c for o in spec.outputs for c in (F.col(o.name).alias(carried_name(o, "pv")),
                                                F.col(tables.status_column(o.name)).alias(carried_name(o, "ps")))])
        joined = current.join(previous, keys, "left")
        failed = {o.name: F.coalesce(F.col(carried_name(o, "ps"))["error"].isNotNull(), F.lit(False))
                  for o in spec.outputs}
        changed = {o.name: F.coalesce(F.col(carried_name(o, "ps"))["fingerprint"] != F.col(fingerprint_name(o)),
                                      F.lit(False))
                   for o in spec.outputs}
        new = F.col("_prev").isNull()
        asks = [(failed[o.name] if only_failed else new | failed[o.name] | changed[o.name]).alias(ask_name(o))
                for o in spec.outputs]
        any_changed = _any(changed.values())
        category = (F.when(new, "new").when(any_changed, "changed").when(_any(failed.values()), "failed")
                    .otherwise("unchanged"))
        rows = joined.select(*[c for c in joined.columns if c != "_prev"], *asks, category.alias("_category"))
    if result is not None:
        found = {r["_category"]: r["count"] for r in rows.groupBy("_category").count().collect()}
        result.rows_by_category = {name: found.get(name, 0) for name in CATEGORIES}
    pending = rows.where(_any(F.col(ask_name(o)) for o in spec.outputs))
    if spec.limits.max_rows:
        pending = pending.limit(spec.limits.max_rows)
    return Plan(pending, exists)


def _any(conditions) -> Column:
    combined = F.lit(False)
    for condition in conditions:
        combined = combined | condition
    return combined
