"""The pandas UDF layer: Arrow batches in, every row of a batch in flight at once, typed columns out.

``make_udf`` is a factory in the manner of ``predict_batch_udf``: it closes over a
``QuerySpec`` (no secrets in it) and returns an iterator pandas UDF. In the worker,
each batch is handed to the process's event loop as soon as it arrives and the next
batch is read while the last one is still being answered, so the pipe never drains
between batches.

``ai_query`` and every task function share that answering (the host memo, the worker's
client, every row in flight); an ``Answering`` says only what differs: how a batch becomes
request values and how the rows' outcomes become the result. ``answer_series`` is the same
answering for one batch at a time, for the scalar UDFs of raw ``spark.sql``.

A pandas UDF cannot return a NULL top-level struct (it returns a DataFrame, one
struct per row), yet a NULL request must give a NULL result. So a STRUCT result
with failOnError travels as a one-element ARRAY (NULL for a NULL request) and the
caller takes its element ``[0]``: see ``wraps_result`` and ``Answering.result_column``.
"""

from __future__ import annotations

import collections
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from collections.abc import Callable, Iterable, Iterator

import pandas as pd
import pyarrow as pa
from pyspark.sql import Column
from pyspark.sql import types as T
from pyspark.sql.functions import pandas_udf

from pyspark.sql.pandas.types import to_arrow_type

from ._arguments import QuerySpec
from ._cluster import worker_share
from ._engine import ROW_RECORD, Memo, RowOutcome
from .errors import EndpointError, InvalidRequestTypeError, ParseCastError
from ._memo import MemoSettings, answer_remembered, settings_from_env
from ._runtime import worker_runtime

if TYPE_CHECKING:
    from pyspark.sql._typing import UserDefinedFunctionLike

__all__ = ["make_udf", "Answering", "one_column", "answer_series", "nondeterministic_udf", "output_type", "udf_type",
           "wraps_result", "METADATA_FIELDS", "rows_to_frame", "request_values", "pipelined", "raise_failures"]

_SQL_TYPES = {"int": T.IntegerType(), "bigint": T.LongType(), "double": T.DoubleType(), "string": T.StringType()}
# The per-row record (``_engine.ROW_RECORD``) as struct fields, then the error's kind.
METADATA_FIELDS = [T.StructField(name, _SQL_TYPES[kind], True) for name, kind in ROW_RECORD.items()] + [
    T.StructField("error_kind", T.StringType(), True)]

BATCHES_IN_FLIGHT = 2
_TEXT_KINDS = frozenset({"string", "empty"})


def output_type(spec: QuerySpec, with_metadata: bool = False) -> T.DataType:
    """The column type; with metadata (for the job runner) also per-row attempts, latency and tokens."""
    if not with_metadata:
        return spec.column_type
    return T.StructType([T.StructField("result", spec.result_type, True),
                         T.StructField("errorMessage", T.StringType(), True), *METADATA_FIELDS])


def wraps_result(spec: QuerySpec, with_metadata: bool = False) -> bool:
    return not with_metadata and spec.fail_on_error and isinstance(spec.result_type, T.StructType)


def udf_type(spec: QuerySpec, with_metadata: bool = False) -> T.DataType:
    """What the UDF itself returns: ``output_type``, or a one-element array of it (see the module docstring)."""
    if wraps_result(spec, with_metadata):
        return T.ArrayType(spec.result_type, True)
    return output_type(spec, with_metadata)


def request_values(batch: pd.Series | pd.DataFrame, spec: QuerySpec) -> list[Any]:
    """Plain Python values for the wire: text per row, or one record (dict) per row for custom models."""
    if isinstance(batch, pd.DataFrame):
        return _records(batch, spec)
    kind = pd.api.types.infer_dtype(batch, skipna=True) if len(batch) else "empty"
    if spec.request_is_struct:
        column = "STRING" if kind in _TEXT_KINDS else _column_type(batch, kind)
        raise InvalidRequestTypeError(f"custom model endpoint '{spec.endpoint.name}' takes a STRUCT request "
                                      "(named_struct(...) / F.struct(...)) whose fields are the model's inputs, "
                                      f"but the request column is {column}")
    if kind not in _TEXT_KINDS:
        column = _column_type(batch, kind)
        hint = ("decode it: decode(col, 'UTF-8'), or make_valid_utf8(CAST(col AS STRING)) when the bytes may not "
                "be UTF-8" if column == "BINARY" else "cast it: CAST(col AS STRING)")
        raise InvalidRequestTypeError(f"endpoint '{spec.endpoint.name}' ({spec.endpoint.task}) takes a STRING "
                                      f"request, but the request column is {column}: {hint}")
    return batch.tolist()


# What Arrow hands pandas for each Spark type; integers with NULLs arrive as float64.
_NUMPY_NAMES = {"int8": "TINYINT", "int16": "SMALLINT", "int32": "INT", "int64": "BIGINT", "float32": "FLOAT",
                "float64": "DOUBLE (or an integer column with NULLs)", "bool": "BOOLEAN"}
_INFERRED_NAMES = {"bytes": "BINARY", "boolean": "BOOLEAN", "integer": "an integer type", "floating": "DOUBLE",
                   "decimal": "DECIMAL", "date": "DATE", "datetime": "TIMESTAMP", "datetime64": "TIMESTAMP",
                   "timedelta": "INTERVAL", "timedelta64": "INTERVAL"}


def _column_type(batch: pd.Series, kind: str) -> str:
    """The Spark type a batch came from, as near as its pandas form tells: the message names what users wrote."""
    if batch.dtype.kind == "M":
        return "TIMESTAMP"
    named = _NUMPY_NAMES.get(str(batch.dtype)) or _INFERRED_NAMES.get(kind)
    return named or f"not text ({kind} values: an ARRAY, a MAP or mixed types)"


def readable(batches: Iterable[Any], spec: QuerySpec) -> Iterator[Any]:
    """The input batches, with Arrow's refusal of bytes that are not UTF-8 (a BINARY cast to STRING keeps them)
    turned into an error that says what to do: otherwise it names no column and no fix."""
    iterator = iter(batches)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except pa.ArrowException as exc:
            if "Wrapping" not in str(exc):
                raise
            raise InvalidRequestTypeError(
                f"endpoint '{spec.endpoint.name}': the request column holds bytes that are not valid UTF-8 (a "
                "BINARY cast to STRING keeps them as they are); clean it with make_valid_utf8(col) or "
                "decode(col, 'UTF-8'), or find the rows with NOT is_valid_utf8(col)") from None
        yield batch


def _records(batch: pd.DataFrame, spec: QuerySpec) -> list[Any]:
    """A struct whose fields are all NULL is a NULL request: Arrow hands both to pandas the same way."""
    if not spec.request_is_struct:
        raise InvalidRequestTypeError(f"endpoint '{spec.endpoint.name}' ({spec.endpoint.task}) takes a STRING "
                                      "request, but the request column is a STRUCT")
    empty = batch.isna().all(axis=1).tolist()
    records = batch.astype(object).where(batch.notna(), None).to_dict("records")
    return [None if blank else record for blank, record in zip(empty, records)]


def _failure(outcomes: list[RowOutcome]) -> EndpointError:
    failed = [o.error for o in outcomes if o.error is not None]
    first = failed[0]
    detail = (f"{first.detail} ({len(failed)} of {len(outcomes)} rows in this batch failed; with "
              "failOnError => false each row gets its own errorMessage and the query goes on)")
    error = type(first)(first.endpoint, detail, status=first.status)
    error.error_class = first.error_class
    return error


def raise_failures(outcomes: list[RowOutcome]) -> None:
    if any(o.error is not None for o in outcomes):
        raise _failure(outcomes)


_ARROW_ERRORS = (pa.ArrowException, ValueError, TypeError, OverflowError, ArithmeticError)


def arrow_type(data_type: T.DataType) -> pa.DataType:
    return to_arrow_type(data_type, timezone="UTC")


def keep_storable(outcomes: list[RowOutcome], spec: QuerySpec) -> None:
    """Make every answered value one Arrow can store, or that row's error.

    The casts aim to give only storable values, but an answer that slips through (a lone surrogate
    from a JSON escape, a NULL map key) would otherwise fail the whole batch inside PySpark, after
    this code has returned, with failOnError => false too. One Arrow conversion of the batch costs
    little; only when it fails is each row tried alone, to find the ones at fault.
    """
    kind = arrow_type(spec.result_type)
    try:
        pa.array([o.value for o in outcomes], type=kind, from_pandas=True)
        return
    except _ARROW_ERRORS:
        pass
    for outcome in outcomes:
        if outcome.value is None:
            continue
        try:
            pa.array([outcome.value], type=kind, from_pandas=True)
            continue
        except _ARROW_ERRORS as exc:
            problem = exc
        repaired = _valid_text(outcome.value)
        if repaired is not None:
            outcome.value = repaired
            continue
        outcome.value, outcome.answered = None, False
        outcome.error = ParseCastError(spec.endpoint.name, f"the answer cannot be stored as "
                                       f"{spec.result_type.simpleString()}: {problem}")


def _valid_text(value: Any) -> str | None:
    """Text with lone surrogates (JSON can escape half an emoji) made valid, as a cut UTF-8 body is: U+FFFD."""
    if not isinstance(value, str):
        return None
    return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def rows_to_frame(outcomes: list[RowOutcome], spec: QuerySpec, with_metadata: bool) -> pd.Series | pd.DataFrame:
    keep_storable(outcomes, spec)
    results = [o.value for o in outcomes]
    if spec.fail_on_error and not with_metadata:
        raise_failures(outcomes)
        if wraps_result(spec):
            return pd.Series([None if v is None else [v] for v in results], dtype=object)
        return pd.Series(results, dtype=object)
    frame = {"result": results,
             "errorMessage": [o.error.describe() if o.error is not None else None for o in outcomes]}
    if with_metadata:
        for name in ROW_RECORD:
            frame[name] = [getattr(o, name) for o in outcomes]
        frame["error_kind"] = [type(o.error).__name__ if o.error is not None else None for o in outcomes]
    return pd.DataFrame(frame)


def pipelined(batches: Iterable[Any], start: Callable[[Any], Any], finish: Callable[[Any], Any]) -> Iterator[Any]:
    """``start`` each batch at once (a future), ``finish`` them in order, never more than a few ahead."""
    pending: collections.deque = collections.deque()
    try:
        for batch in batches:
            pending.append(start(batch))
            while pending and (len(pending) >= BATCHES_IN_FLIGHT or pending[0].done()):
                yield finish(pending.popleft().result())
        while pending:
            yield finish(pending.popleft().result())
    finally:
        for future in pending:  # the task failed or its consumer stopped early: stop paying for answers
            future.cancel()


@dataclass(frozen=True)
class Answering:
    """What one kind of UDF does around the answering that every kind shares.

    ``requests`` turns one Arrow batch (a Series; a DataFrame for a STRUCT column; a tuple of those
    when the UDF takes several columns) into the values to ask; ``results`` turns their ``RowOutcome`` s,
    in the same order, into the batch's result (a Series or DataFrame with one row per input row) of
    ``return_type``. ``wrapped``: the UDF returns a one-element array whose
    element is the result (see the module docstring). Its callables are pickled to the executors.
    """

    requests: Callable[[Any], list[Any]]
    results: Callable[[list[RowOutcome]], pd.Series | pd.DataFrame]
    return_type: T.DataType
    wrapped: bool = False

    def result_column(self, column: Column) -> Column:
        """The result from a call of the UDF: its element ``[0]`` when ``wrapped``."""
        return column[0] if self.wrapped else column

    def result_sql(self, call: str) -> str:
        """``result_column`` for SQL text: ``call`` is the UDF's call as written in the query."""
        return f"{call}[0]" if self.wrapped else call


def one_column(spec: QuerySpec, with_metadata: bool = False) -> Answering:
    """``ai_query``'s answering: one request column in, ``output_type(spec, with_metadata)`` per row out."""
    return Answering(functools.partial(request_values, spec=spec),
                     functools.partial(rows_to_frame, spec=spec, with_metadata=with_metadata),
                     udf_type(spec, with_metadata), wraps_result(spec, with_metadata))


def nondeterministic_udf(function: Callable[..., Any], return_type: T.DataType) -> UserDefinedFunctionLike:
    """``function`` as a pandas UDF that Spark may not re-run or fold away, since every call costs requests.

    The kind of UDF (scalar or iterator) follows ``function``'s type hints, as ``pandas_udf`` reads them.
    """
    factory: Any = pandas_udf  # its stubs list return types by class; one chosen at run time matches none
    return factory(function, return_type).asNondeterministic()


def make_udf(spec: QuerySpec, *, with_metadata: bool = False, rate_share: float = 1.0, name: str = "ai_query",
             answering: Answering | None = None) -> UserDefinedFunctionLike:
    """An iterator pandas UDF answering ``spec``: by default ``one_column(spec, with_metadata)``.

    ``rate_share``: the fraction (0, 1] of the endpoint's per-minute budgets each task may spend
    (``batch._cluster.rate_share``); ``name``: the UDF's name in plans and errors. Apply
    ``answering.result_column`` to its call. In the task it raises what ``answering.results`` raises:
    with ``one_column``, a failed row's ``EndpointError`` when ``spec.fail_on_error`` and no metadata.
    """
    answering = answering or one_column(spec, with_metadata)
    params, response_format = spec.params, spec.response_format
    remember = settings_from_env()  # read here, on the driver: see MemoSettings

    # Spark hands an iterator UDF of several columns tuples of Series: the hints only choose the kind of UDF.
    def run(batches: Iterator[pd.Series]) -> Iterator[pd.Series]:
        runtime = worker_runtime()
        client = runtime.client(spec.endpoint, rate_share)
        convert = spec.converter()
        memo = Memo()

        def start(batch: Any) -> Any:
            return runtime.submit(answer_remembered(remember, client, answering.requests(batch), params=params,
                                                    response_format=response_format, convert=convert, memo=memo))

        yield from pipelined(readable(batches, spec), start, answering.results)

    run.__name__ = run.__qualname__ = name
    return nondeterministic_udf(run, answering.return_type)


def answer_series(spec: QuerySpec, batch: Any, answering: Answering | None = None,
                  remember: MemoSettings | None = None) -> pd.Series | pd.DataFrame:
    """One batch answered before returning: the body of a scalar UDF registered for raw ``spark.sql``.

    ``batch`` as ``answering.requests`` takes it (default ``one_column(spec)``); the task's budget
    share is ``worker_share``. ``remember``: the host memo's settings, read on the driver (None: no
    memo, each batch asks afresh). Raises what the answering raises for failed rows.
    """
    answering = answering or one_column(spec)
    values = answering.requests(batch)
    runtime = worker_runtime()
    client = runtime.client(spec.endpoint, worker_share(spec.endpoint))
    outcomes = runtime.run(answer_remembered(remember, client, values, params=spec.params,
                                             response_format=spec.response_format, convert=spec.converter()))
    return answering.results(outcomes)
