"""The pandas UDF layer: Arrow batches in, every row of a batch in flight at once, typed columns out.

``make_udf`` is a factory in the manner of ``predict_batch_udf``: it closes over a
``QuerySpec`` (no secrets in it) and returns an iterator pandas UDF. In the worker,
each batch is handed to the process's event loop as soon as it arrives and the next
batch is read while the last one is still being answered, so the pipe never drains
between batches.
"""

from __future__ import annotations

import collections
from typing import Any, Iterator

import pandas as pd
from pyspark.sql import types as T
from pyspark.sql.functions import pandas_udf

from .arguments import QuerySpec
from .engine import RowOutcome, answer_rows
from .errors import EndpointError, InvalidRequestTypeError
from .runtime import worker_runtime

__all__ = ["make_udf", "output_type", "METADATA_FIELDS", "rows_to_frame", "request_values"]

METADATA_FIELDS = [
    T.StructField("attempts", T.IntegerType(), False),
    T.StructField("latency_ms", T.DoubleType(), True),
    T.StructField("prompt_tokens", T.LongType(), False),
    T.StructField("completion_tokens", T.LongType(), False),
    T.StructField("total_tokens", T.LongType(), False),
    T.StructField("requests", T.IntegerType(), False),
    T.StructField("rate_limited", T.IntegerType(), False),
    T.StructField("error_kind", T.StringType(), True),
]

BATCHES_IN_FLIGHT = 2


def output_type(spec: QuerySpec, with_metadata: bool = False) -> T.DataType:
    """The column type; with metadata (for the job runner) also per-row attempts, latency and tokens."""
    if not with_metadata:
        return spec.column_type
    return T.StructType([T.StructField("result", spec.result_type, True),
                         T.StructField("errorMessage", T.StringType(), True), *METADATA_FIELDS])


def request_values(batch: pd.Series | pd.DataFrame, spec: QuerySpec) -> list[Any]:
    """Plain Python values for the wire: text per row, or one record (dict) per row for custom models."""
    if isinstance(batch, pd.DataFrame):
        if not spec.request_is_struct:
            raise InvalidRequestTypeError(f"endpoint '{spec.endpoint.name}' ({spec.endpoint.task}) takes a STRING "
                                          "request, got a STRUCT column")
        records = batch.astype(object).where(batch.notna(), None).to_dict("records")
        return [None if all(v is None for v in r.values()) else r for r in records]
    values = batch.tolist()
    if spec.request_is_struct:
        raise InvalidRequestTypeError(f"custom model endpoint '{spec.endpoint.name}' takes a STRUCT request "
                                      "(named_struct(...) / F.struct(...)) whose fields are the model's inputs")
    for value in values:
        if value is not None and not isinstance(value, str):
            raise InvalidRequestTypeError(f"endpoint '{spec.endpoint.name}' ({spec.endpoint.task}) takes a STRING "
                                          f"request, got {type(value).__name__} values: cast the column to string")
    return values


def _failure(outcomes: list[RowOutcome]) -> EndpointError:
    failed = [o.error for o in outcomes if o.error is not None]
    first = failed[0]
    detail = (f"{first.detail} ({len(failed)} of {len(outcomes)} rows in this batch failed; with "
              "failOnError => false each row gets its own errorMessage and the query goes on)")
    error = type(first)(first.endpoint, detail, status=first.status)
    error.error_class = first.error_class
    return error


def rows_to_frame(outcomes: list[RowOutcome], spec: QuerySpec, with_metadata: bool) -> pd.Series | pd.DataFrame:
    results = [o.value for o in outcomes]
    if spec.fail_on_error and not with_metadata:
        if any(o.error is not None for o in outcomes):
            raise _failure(outcomes)
        if isinstance(spec.result_type, T.StructType):
            names = spec.result_type.names
            return pd.DataFrame([[None] * len(names) if v is None else [v.get(n) for n in names] for v in results],
                                columns=names)
        return pd.Series(results, dtype=object)
    frame = {"result": results,
             "errorMessage": [o.error.describe() if o.error is not None else None for o in outcomes]}
    if with_metadata:
        for field in METADATA_FIELDS[:-1]:
            frame[field.name] = [getattr(o, field.name) for o in outcomes]
        frame["error_kind"] = [type(o.error).__name__ if o.error is not None else None for o in outcomes]
    return pd.DataFrame(frame)


def make_udf(spec: QuerySpec, *, with_metadata: bool = False, rate_share: float = 1.0, name: str = "ai_query"):
    """An iterator pandas UDF answering ``spec`` for one request column."""
    params, response_format = spec.params, spec.response_format

    def run(batches: Iterator[pd.Series]) -> Iterator[pd.Series]:
        runtime = worker_runtime()
        client = runtime.client(spec.endpoint, rate_share)
        convert = spec.converter()
        pending: collections.deque = collections.deque()
        try:
            for batch in batches:
                values = request_values(batch, spec)
                pending.append(runtime.submit(answer_rows(client, values, params=params,
                                                          response_format=response_format, convert=convert)))
                while pending and (len(pending) >= BATCHES_IN_FLIGHT or pending[0].done()):
                    yield rows_to_frame(pending.popleft().result(), spec, with_metadata)
            while pending:
                yield rows_to_frame(pending.popleft().result(), spec, with_metadata)
        finally:
            for future in pending:  # the task failed or its consumer stopped early: stop paying for answers
                future.cancel()

    run.__name__ = run.__qualname__ = name
    return pandas_udf(run, output_type(spec, with_metadata)).asNondeterministic()
