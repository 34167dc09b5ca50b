"""Inside a task, for the functions ``register(spark)`` puts into raw ``spark.sql``.

Such a function has one return type, fixed when it is registered, and meets its arguments
only as the columns of each Arrow batch. So its constant arguments (the endpoint, returnType,
labels, ...) are read from a batch's first row and the call is resolved there, once per
distinct set of constants, and kept for the task's later batches. ``register`` builds these
objects on the driver, so the endpoint entries they hold are those known then, and travel to
the executors inside them.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from pyspark.sql import types as T

from ._arguments import QuerySpec, build_spec
from .config import EndpointConfig, get_endpoint, registry
from .errors import ConfigError
from ._memo import settings_from_env
from ._tasks import TASKS, Task
from ._udf import answer_series

__all__ = ["RawQuery", "RawTasks", "first", "freeze"]


def first(series: pd.Series | None) -> Any:
    """A call's constant argument: the same in every row, so the first row tells (as a plain Python value)."""
    if series is None or len(series) == 0:
        return None
    value = series.iloc[0]
    return value.tolist() if hasattr(value, "tolist") else value  # numpy scalars and arrays to Python


def freeze(value: Any) -> Any:
    """A hashable stand-in for constant arguments (dicts, lists, numpy values), to key caches by."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, dict):
        return tuple(sorted((str(k), freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


class RawQuery:
    """``ai_query`` calls for raw ``spark.sql``: one checked ``QuerySpec`` per distinct set of constant arguments,
    so each batch after the first costs a lookup."""

    def __init__(self, entries: dict[str, EndpointConfig]) -> None:
        self.entries = entries
        self.cache: dict[Any, QuerySpec] = {}
        self.remember = settings_from_env()  # one memo scope for every query through this registration

    def answer(self, request: pd.Series | pd.DataFrame, endpoint: pd.Series, return_type: pd.Series | None,
               fail: pd.Series | None, params: pd.DataFrame | None, response_format: pd.Series | None) -> pd.Series:
        """One batch of ``ai_query(endpoint, request, ...)``: a STRING per row.

        Raises ``ConfigError`` for a call whose arguments are wrong or whose type is not STRING (which
        needs ``batch.sql``), and the row's ``EndpointError`` for a row that cannot be answered.
        """
        spec = self._spec(first(endpoint), first(return_type), first(fail),
                          None if params is None else params.iloc[0].to_dict(), first(response_format))
        return answer_series(spec, request, remember=self.remember)

    def _spec(self, endpoint: Any, return_type: Any, fail: Any, params: Any, response_format: Any) -> QuerySpec:
        key = (endpoint, return_type, fail, freeze(params), response_format)
        if key not in self.cache:
            config = self.entries.get(endpoint) or get_endpoint(endpoint)
            spec = build_spec(config, returnType=return_type, failOnError=True if fail is None else fail,
                              modelParameters=params, responseFormat=response_format)
            if spec.column_type != T.StringType():
                raise ConfigError(f"this ai_query call returns {spec.column_type.simpleString()}, but a function "
                                  "registered for raw spark.sql returns STRING: run the query with "
                                  "batch.sql(spark, query), which types every call")
            self.cache[key] = spec
        return self.cache[key]


class RawTasks:
    """Task calls for raw ``spark.sql``: endpoints resolved on the driver, one call per distinct constants."""

    def __init__(self) -> None:
        self.remember = settings_from_env()  # one memo scope for every raw task call of this registration
        self.endpoints: dict[str, EndpointConfig | ConfigError] = {}
        for kind in ("chat", "embeddings"):
            try:
                self.endpoints[kind] = get_endpoint(registry.default_for(kind))
            except ConfigError as exc:  # raised in the task that calls a function needing this kind
                self.endpoints[kind] = exc
        self.calls: dict[Any, Task] = {}

    def answer(self, name: str, **args: pd.Series | None) -> pd.Series:
        """One batch of the task function ``name`` (a key of ``TASKS``), one result per row.

        ``args``: the function's arguments by name, None for an optional one not given. Raises
        ``ConfigError`` when no endpoint serves the task or its constants are wrong, and the row's
        ``EndpointError`` for a row that cannot be answered.
        """
        definition = TASKS[name]
        constants = {k: first(args.pop(k)) for k in definition.constants if args.get(k) is not None}
        key = (name, freeze(constants))
        if key not in self.calls:
            endpoint = self.endpoints[definition.kind]
            if isinstance(endpoint, ConfigError):
                raise endpoint
            self.calls[key] = definition.build(endpoint=endpoint, **constants)
        return self.calls[key].series(remember=self.remember, **{k: v for k, v in args.items() if v is not None})
