"""``ai_query`` from SQL: a registered function for raw ``spark.sql``, and ``batch.sql`` for exact types.

A registered Python UDF has one return type, fixed when it is registered. So:

* ``register(spark)`` makes ``ai_query`` callable from any ``spark.sql`` text. It
  returns STRING, which is exactly right for chat and completions; a call that needs
  another type (embeddings, ``returnType``, ``failOnError => false``) fails with a
  message pointing to ``batch.sql``. Such a function sees its arguments only when the
  query runs, so its mistakes surface then, in the first task (``batch._rawsql``). The
  task functions with a fixed type are registered too (all but ``ai_extract``, whose
  type follows its labels).
* ``batch.sql(spark, query)`` runs the same SQL text with every ``ai_query(...)`` call
  typed: each call's constant arguments are read from the text (``batch._sqltext``),
  checked on the driver (so mistakes fail before any task runs), and the call is
  replaced by a typed UDF registered for it. The task functions are rewritten the same
  way, from their table in ``batch._tasks``: ``HANDLERS`` is built here, once.
"""

from __future__ import annotations

import hashlib
from typing import Any
from collections.abc import Callable, Sequence

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from ._arguments import QuerySpec, build_spec
from ._cluster import pin_task_slots, rate_share
from .config import registry
from .errors import ConfigError
from ._rawsql import RawQuery, RawTasks
from ._sqltext import bind_arguments, calls, literal, split_args
from ._tasks import TASKS, TaskDef
from ._udf import Answering, make_udf, nondeterministic_udf, one_column

__all__ = ["register", "sql", "rewrite", "typed_call", "register_spec", "udf_name", "HANDLERS", "ARGUMENTS"]

ARGUMENTS = ("endpoint", "request", "returnType", "failOnError", "modelParameters", "responseFormat")


# ---------------------------------------------------------------- raw spark.sql

def register(spark: SparkSession, name: str = "ai_query") -> None:
    """Register ``ai_query`` (STRING result) under ``name`` and the task functions for plain ``spark.sql``.

    Endpoints added in code so far travel along; the registered function cannot see later ones. A
    call's mistakes raise ``ConfigError`` in the first task that runs it, a failed row its
    ``EndpointError``. Also records the session's task slot count in ``spark.aiquery.taskSlots`` (unless set), so
    that each task spends its share of an endpoint's per-minute budget (``docs/cluster.md``).
    """
    raw = RawQuery({n: registry.get(n) for n in registry.names()})

    def ai_query(endpoint: pd.Series, request: pd.Series, returnType: pd.Series = None,
                 failOnError: pd.Series = None, modelParameters: pd.DataFrame = None,
                 responseFormat: pd.Series = None) -> pd.Series:
        return raw.answer(request, endpoint, returnType, failOnError, modelParameters, responseFormat)

    pin_task_slots(spark)
    spark.udf.register(name, nondeterministic_udf(ai_query, T.StringType()))
    _register_tasks(spark)


def _register_tasks(spark: SparkSession) -> None:
    """Every task whose result type is fixed (all but ai_extract); pandas reads each one's arguments from its
    signature, hence one function per task."""
    raw = RawTasks()

    def ai_analyze_sentiment(content: pd.Series) -> pd.Series:
        return raw.answer("ai_analyze_sentiment", content=content)

    def ai_classify(content: pd.Series, labels: pd.Series) -> pd.Series:
        return raw.answer("ai_classify", content=content, labels=labels)

    def ai_fix_grammar(content: pd.Series) -> pd.Series:
        return raw.answer("ai_fix_grammar", content=content)

    def ai_gen(prompt: pd.Series) -> pd.Series:
        return raw.answer("ai_gen", prompt=prompt)

    def ai_mask(content: pd.Series, labels: pd.Series) -> pd.Series:
        return raw.answer("ai_mask", content=content, labels=labels)

    def ai_similarity(expr1: pd.Series, expr2: pd.Series) -> pd.Series:
        return raw.answer("ai_similarity", expr1=expr1, expr2=expr2)

    def ai_summarize(content: pd.Series, max_words: pd.Series = None) -> pd.Series:
        return raw.answer("ai_summarize", content=content, max_words=max_words)

    def ai_translate(content: pd.Series, to_lang: pd.Series) -> pd.Series:
        return raw.answer("ai_translate", content=content, to_lang=to_lang)

    for function in (ai_analyze_sentiment, ai_classify, ai_fix_grammar, ai_gen, ai_mask, ai_similarity,
                     ai_summarize, ai_translate):
        raw_type = TASKS[function.__name__].raw_type
        assert raw_type is not None  # only ai_extract has none, and it is not in this list
        spark.udf.register(function.__name__, nondeterministic_udf(function, raw_type))


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
    return typed_call(spark, spec, [rewrite_inner(bound["request"])])


def _task_call(name: str, definition: TaskDef) -> Handler:
    def handle(spark: SparkSession, args: list[str], rewrite_inner: Callable[[str], str]) -> str:
        bound = bind_arguments(name, args, definition.order + ("endpoint",))
        missing = [a for a in definition.order if a not in bound and a not in definition.optional]
        if missing:
            raise ConfigError(f"{name}: missing argument '{missing[0]}'")
        constants, columns = _sort_arguments(name, definition, bound, rewrite_inner)
        task = definition.build(**constants)
        return typed_call(spark, task.spec, task.sql_arguments(**columns), task.name, task.answering)
    return handle


def _sort_arguments(name: str, definition: TaskDef, bound: dict[str, str],
                    rewrite_inner: Callable[[str], str]) -> tuple[dict[str, Any], dict[str, str]]:
    constants: dict[str, Any] = {}
    columns: dict[str, str] = {}
    for key, text in bound.items():
        if key == "endpoint" or key in definition.constants:
            constants[key] = literal(text, f"{name} argument '{key}'")
            continue
        if key in definition.flexible:
            try:
                value = literal(text, key)
            except ConfigError:  # not a literal: a column expression, answered row by row
                value = None
            if value is not None:
                constants[key] = value
                continue
        columns[key] = rewrite_inner(text)
    return constants, columns


def typed_call(spark: SparkSession, spec: QuerySpec, arguments: Sequence[str], prefix: str = "ai_query",
               answering: Answering | None = None) -> str:
    """SQL text calling the typed UDF registered for ``spec`` (``register_spec``) on ``arguments``.

    ``arguments``: SQL expressions, one per column the UDF takes (one for ``one_column``, the default).
    The text gives the call's result, unwrapped (``Answering.result_sql``).
    """
    answering = answering or one_column(spec)
    name = register_spec(spark, spec, prefix, answering)
    return answering.result_sql(f"{name}({', '.join(arguments)})")


def udf_name(spec: QuerySpec, prefix: str) -> str:
    """Stable per resolved call, so rewriting the same query twice registers nothing new."""
    return f"{prefix}_{hashlib.sha1(repr(spec).encode()).hexdigest()[:12]}"


def register_spec(spark: SparkSession, spec: QuerySpec, prefix: str = "ai_query",
                  answering: Answering | None = None) -> str:
    """Register the UDF answering ``spec`` (``make_udf``) and return its name, ``udf_name(spec, prefix)``.

    Each task's budget share is ``rate_share`` of ``spark``, worked out now.
    """
    name = udf_name(spec, prefix)
    spark.udf.register(name, make_udf(spec, rate_share=rate_share(spec.endpoint, spark), name=prefix,
                                      answering=answering))
    return name


HANDLERS: dict[str, Handler] = {"ai_query": _ai_query_call,
                                **{name: _task_call(name, definition) for name, definition in TASKS.items()}}


def rewrite(spark: SparkSession, query: str) -> str:
    """The query text with every call of a function in ``HANDLERS`` replaced by its typed, registered UDF.

    Registers one UDF per distinct call in ``spark``. Raises ``ConfigError`` for SQL text that cannot
    be read (an unterminated string, unbalanced parentheses) and for a call whose arguments are wrong.
    """
    out, last = [], 0
    for start, end, name, inner in calls(query, set(HANDLERS)):
        out.append(query[last:start])
        out.append(HANDLERS[name](spark, split_args(inner), lambda text: rewrite(spark, text)))
        last = end
    out.append(query[last:])
    return "".join(out)


def sql(spark: SparkSession, query: str, *args: Any, **kwargs: Any) -> DataFrame:
    """``spark.sql(rewrite(spark, query), *args, **kwargs)``: every AI function call given its exact type.

    Mistakes in a call (an unknown endpoint, a bad modelParameters, a non-constant argument that must
    be constant) raise ``ConfigError`` here, on the driver, before any task runs.
    """
    return spark.sql(rewrite(spark, query), *args, **kwargs)
