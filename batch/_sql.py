"""``ai_query`` from SQL: a registered function for raw ``spark.sql``, and ``batch.sql`` for exact types.

A registered Python UDF has one return type, fixed when it is registered. So:

* ``register(spark)`` makes ``ai_query`` callable from any ``spark.sql`` text. It
  returns STRING, which is exactly right for chat and completions; a call that needs
  another type (embeddings, ``returnType``, ``failOnError => false``) fails with a
  message pointing to ``batch.sql``. Such a function sees its arguments only when the
  query runs, so its mistakes surface then, in the first task. The task functions with a
  fixed type are registered too (all but ``ai_extract``, whose type follows its labels).
* ``batch.sql(spark, query)`` runs the same SQL text with every ``ai_query(...)`` call
  typed: each call's constant arguments are read from the text, checked on the driver
  (so mistakes fail before any task runs), and the call is replaced by a typed UDF
  registered for it.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any
from collections.abc import Callable

import pandas as pd
from pyspark import TaskContext
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T
from pyspark.sql.functions import pandas_udf

from ._arguments import QuerySpec, build_spec
from .config import get_endpoint, registry
from .errors import ConfigError
from ._functions import SLOTS_CONF, rate_share, task_slots
from ._memo import MemoSettings, answer_remembered, settings_from_env
from ._runtime import worker_runtime
from ._udf import make_udf, request_values, result_sql, rows_to_frame

__all__ = ["register", "sql", "rewrite", "literal", "bind_arguments", "typed_call", "register_spec",
           "udf_name", "first", "freeze", "answer_series", "pin_task_slots", "worker_share", "HANDLERS"]

ARGUMENTS = ("endpoint", "request", "returnType", "failOnError", "modelParameters", "responseFormat")


# ---------------------------------------------------------------- raw spark.sql

def register(spark: SparkSession, name: str = "ai_query") -> None:
    """Register ``ai_query`` (STRING result) and the task functions for plain ``spark.sql``.

    Endpoints added in code so far travel along; the registered function cannot see later ones.
    """
    entries = {n: registry.get(n) for n in registry.names()}
    specs = _SpecCache(entries)
    remember = settings_from_env()  # one scope for every query through this registration

    def ai_query(endpoint: pd.Series, request: pd.Series, returnType: pd.Series = None,
                 failOnError: pd.Series = None, modelParameters: pd.DataFrame = None,
                 responseFormat: pd.Series = None) -> pd.Series:
        spec = specs.get(first(endpoint), first(returnType), first(failOnError),
                         None if modelParameters is None else modelParameters.iloc[0].to_dict(),
                         first(responseFormat))
        return answer_series(spec, request_values(request, spec), remember=remember)

    pin_task_slots(spark)
    spark.udf.register(name, pandas_udf(ai_query, T.StringType()).asNondeterministic())
    from ._tasks import register_tasks  # the task functions build on this module
    register_tasks(spark)


def first(series: pd.Series | None) -> Any:
    """A call's constant argument: the same in every row, so the first row tells."""
    if series is None or len(series) == 0:
        return None
    value = series.iloc[0]
    return value.tolist() if hasattr(value, "tolist") else value  # numpy scalars and arrays to Python


def pin_task_slots(spark: SparkSession) -> None:
    """Record the task slot count in the session conf, unless it is set already.

    A function registered for raw ``spark.sql`` meets its endpoint only inside a task, where no
    session can say how many tasks share a budget. Spark hands every task the session's ``spark.*``
    settings as local properties, so the count pinned here is what ``worker_share`` reads there.
    """
    try:
        if spark.conf.get(SLOTS_CONF, None) is None:
            spark.conf.set(SLOTS_CONF, str(task_slots(spark)))
    except Exception:  # a server that refuses the setting leaves each task the whole budget, as before
        pass


def worker_share(config: Any) -> float:
    """Inside a task: this task's part of the endpoint's per-minute budgets (see ``pin_task_slots``)."""
    if not (config.requests_per_minute or config.tokens_per_minute):
        return 1.0
    context = TaskContext.get()
    value = context.getLocalProperty(SLOTS_CONF) if context is not None else None
    return 1.0 / int(value) if value and value.isdigit() and int(value) > 0 else 1.0


def answer_series(spec: QuerySpec, values: list[Any], share: float | None = None,
                  remember: MemoSettings | None = None) -> pd.Series:
    """``remember``: the host memo's settings, from the driver (None: no memo, each batch asks afresh)."""
    runtime = worker_runtime()
    client = runtime.client(spec.endpoint, worker_share(spec.endpoint) if share is None else share)
    outcomes = runtime.run(answer_remembered(remember, client, values, params=spec.params,
                                             response_format=spec.response_format, convert=spec.converter()))
    return rows_to_frame(outcomes, spec, with_metadata=False)


class _SpecCache:
    """One checked ``QuerySpec`` per distinct set of constant arguments, so each batch costs a lookup."""

    def __init__(self, entries: dict[str, Any]) -> None:
        self.entries, self.cache = entries, {}

    def get(self, endpoint: Any, return_type: Any, fail: Any, params: Any, response_format: Any) -> QuerySpec:
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


def freeze(value: Any) -> Any:
    """A hashable stand-in for constant arguments (dicts, lists, numpy values), to key caches by."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, dict):
        return tuple(sorted((str(k), freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


# ---------------------------------------------------------------- SQL text scanning

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _skip(text: str, i: int) -> int:
    """Index after a quoted string, backquoted name or comment starting at ``i``; ``i`` if none starts there."""
    c = text[i]
    if c in "'\"`":
        j = i + 1
        while j < len(text):
            if text[j] == "\\" and c != "`":
                j += 2
                continue
            if text[j] == c:
                if j + 1 < len(text) and text[j + 1] == c:  # doubled quote
                    j += 2
                    continue
                return j + 1
            j += 1
        raise ConfigError(f"unterminated {c} in SQL text at position {i}")
    if text.startswith("--", i):
        end = text.find("\n", i)
        return len(text) if end < 0 else end + 1
    if text.startswith("/*", i):
        end = text.find("*/", i + 2)
        if end < 0:
            raise ConfigError(f"unterminated comment in SQL text at position {i}")
        return end + 2
    return i


def _closing(text: str, open_index: int) -> int:
    depth, i = 0, open_index
    while i < len(text):
        j = _skip(text, i)
        if j != i:
            i = j
            continue
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise ConfigError(f"unbalanced parenthesis in SQL text at position {open_index}")


def _split_args(text: str) -> list[str]:
    args, depth, start, i = [], 0, 0, 0
    while i < len(text):
        j = _skip(text, i)
        if j != i:
            i = j
            continue
        if text[i] in "([":
            depth += 1
        elif text[i] in ")]":
            depth -= 1
        elif text[i] == "," and depth == 0:
            args.append(text[start:i])
            start = i + 1
        i += 1
    tail = text[start:]
    if tail.strip() or args:
        args.append(tail)
    return [a.strip() for a in args]


def _calls(text: str, names: set[str]):
    """Yield (start, end, name, inner text) for each top-level call of one of ``names``."""
    i = 0
    while i < len(text):
        j = _skip(text, i)
        if j != i:
            i = j
            continue
        m = _IDENT.match(text, i)
        if not m:
            i += 1
            continue
        word, after = m.group(0), m.end()
        k = after
        while k < len(text) and text[k].isspace():
            k += 1
        before = text[:i].rstrip()
        if word.lower() in names and k < len(text) and text[k] == "(" and not before.endswith("."):
            close = _closing(text, k)
            yield i, close + 1, word.lower(), text[k + 1:close]
            i = close + 1
        else:
            i = after


# ---------------------------------------------------------------- constant arguments

_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?[dDfFlL]?$")


def literal(text: str, what: str) -> Any:
    """The value of a constant SQL expression: strings, numbers, booleans, NULL, named_struct/array/map of those."""
    t = text.strip()
    if not t:
        raise ConfigError(f"{what} is empty")
    if t[0] in "'\"" and _skip(t, 0) == len(t):
        body = t[1:-1]
        return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)),
                      body.replace(t[0] * 2, t[0]))
    lower = t.lower()
    if lower in ("true", "false"):
        return lower == "true"
    if lower == "null":
        return None
    if _NUMBER.match(t):
        core = t.rstrip("dDfFlL")
        return float(core) if any(c in core for c in ".eE") else int(core)
    m = re.match(r"^(named_struct|array|map|struct)\s*\(", t, re.IGNORECASE)
    if m and _closing(t, m.end() - 1) == len(t) - 1:
        items = [literal(a, what) for a in _split_args(t[m.end():-1])]
        kind = m.group(1).lower()
        if kind == "array":
            return items
        if kind == "struct":
            return {f"col{i + 1}": v for i, v in enumerate(items)}
        if len(items) % 2:
            raise ConfigError(f"{what}: {kind} needs key, value pairs")
        return {str(items[i]): items[i + 1] for i in range(0, len(items), 2)}
    raise ConfigError(f"{what} must be a constant (a literal or named_struct of literals), got `{t}`")


def bind_arguments(function: str, args: list[str], names: tuple[str, ...]) -> dict[str, str]:
    """Positional and ``name => value`` arguments, by parameter name, with a clear error for mistakes."""
    bound: dict[str, str] = {}
    lower = {n.lower(): n for n in names}
    named = False
    for position, arg in enumerate(args):
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)\s*=>\s*(.*)$", arg, re.DOTALL)
        if m:
            key = lower.get(m.group(1).lower())
            if key is None:
                raise ConfigError(f"{function}: unknown argument '{m.group(1)}' (arguments: {', '.join(names)})")
            value, named = m.group(2), True
        else:
            if named:  # as Spark itself rules
                raise ConfigError(f"{function}: a positional argument cannot follow a named one")
            if position >= len(names):
                raise ConfigError(f"{function}: too many arguments (at most {len(names)})")
            key, value = names[position], arg
        if key in bound:
            raise ConfigError(f"{function}: argument '{key}' given twice")
        bound[key] = value
    return bound


# ---------------------------------------------------------------- batch.sql

Handler = Callable[[SparkSession, list[str], Callable[[str], str]], str]


def _ai_query_call(spark: SparkSession, args: list[str], rewrite_inner: Callable[[str], str]) -> str:
    bound = bind_arguments("ai_query", args, ARGUMENTS)
    for required in ("endpoint", "request"):
        if required not in bound:
            raise ConfigError(f"ai_query: missing argument '{required}'")
    constants = {k: literal(v, f"ai_query argument '{k}'") for k, v in bound.items() if k != "request"}
    spec = build_spec(constants.pop("endpoint"), returnType=constants.get("returnType"),
                      failOnError=True if constants.get("failOnError") is None else constants["failOnError"],
                      modelParameters=constants.get("modelParameters"), responseFormat=constants.get("responseFormat"))
    return typed_call(spark, spec, rewrite_inner(bound["request"]))


def typed_call(spark: SparkSession, spec: QuerySpec, request_sql: str, prefix: str = "ai_query") -> str:
    """SQL text calling the typed UDF registered for ``spec`` on ``request_sql``."""
    name = register_spec(spark, spec, prefix)
    return result_sql(spec, f"{name}({request_sql})")


def udf_name(spec: QuerySpec, prefix: str) -> str:
    """Stable per resolved call, so rewriting the same query twice registers nothing new."""
    return f"{prefix}_{hashlib.sha1(repr(spec).encode()).hexdigest()[:12]}"


def register_spec(spark: SparkSession, spec: QuerySpec, prefix: str = "ai_query") -> str:
    """Register the typed UDF for one resolved call under a stable name derived from the call."""
    name = udf_name(spec, prefix)
    spark.udf.register(name, make_udf(spec, rate_share=rate_share(spec.endpoint, spark), name=prefix))
    return name


HANDLERS: dict[str, Handler] = {"ai_query": _ai_query_call}


def rewrite(spark: SparkSession, query: str) -> str:
    """The query text with every known AI function call replaced by its typed, registered UDF."""
    out, last = [], 0
    for start, end, name, inner in _calls(query, set(HANDLERS)):
        out.append(query[last:start])
        out.append(HANDLERS[name](spark, _split_args(inner), lambda text: rewrite(spark, text)))
        last = end
    out.append(query[last:])
    return "".join(out)


def sql(spark: SparkSession, query: str, *args: Any, **kwargs: Any) -> DataFrame:
    """``spark.sql`` with every ``ai_query`` call given its exact type (see the module docstring)."""
    return spark.sql(rewrite(spark, query), *args, **kwargs)
