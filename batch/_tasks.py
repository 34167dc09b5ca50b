"""The task functions (``ai_classify``, ``ai_summarize``, ...) with Databricks' signatures, built on ``ai_query``.

Each is one ``ai_query`` call, checked when the column is built, whose request is a Spark
expression: the task's instruction joined to the content with ``concat``. A NULL content
makes a NULL prompt, so the result is NULL and no call is made. The endpoint comes from
configuration (``defaults: {chat: ..., embeddings: ...}`` in the registry, or the only
endpoint of that task) unless ``endpoint=`` names one.

For every function: a text argument given as ``str`` names a column (``ai_translate``'s ``to_lang``
is the exception: a ``str`` is the language code), a Column is used as it is. Building the
column raises ConfigError on the driver (``UnknownEndpointError``; an endpoint of another task;
too few or more than 500 labels, or labels that are not distinct non-empty strings; a
``max_words`` that is not a whole number >= 0; a blank ``to_lang``). When the query runs, a row that cannot be answered
after retries fails it with its ``EndpointError``, as ``ai_query`` does with ``failOnError => true``.

Classification asks for a JSON schema whose ``enum`` is the labels and keeps the label
(any other answer is NULL, as Databricks returns NULL when it cannot classify);
extraction asks for a DDL struct of one STRING field per label and parses into it.
``ai_similarity`` embeds both texts in the same requests and compares them in numpy.

Every task answers through ``ai_query``'s UDF factory (``batch._udf``); a task says only
what differs (its ``answering``, its arguments). This module knows no SQL but how a
prompt is written in it: ``batch._sql`` reads ``TASKS`` to call the tasks from
``batch.sql`` and raw ``spark.sql``.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from pyspark.sql import Column
from pyspark.sql import functions as F
from pyspark.sql import types as T

from ._arguments import QuerySpec, build_spec
from .config import EndpointConfig, get_endpoint, registry
from ._engine import RowOutcome
from .errors import ConfigError
from ._functions import query_column
from ._memo import MemoSettings
from ._udf import Answering, answer_series, one_column, raise_failures, request_values

__all__ = ["ai_analyze_sentiment", "ai_classify", "ai_extract", "ai_fix_grammar", "ai_gen", "ai_mask",
           "ai_similarity", "ai_summarize", "ai_translate", "PromptTask", "SimilarityTask", "Task", "TaskDef",
           "TASKS", "SENTIMENTS"]

SENTIMENTS = ("positive", "negative", "neutral", "mixed")
MAX_LABELS = 500


@dataclass(frozen=True)
class Arg:
    """Where a function argument goes in a prompt."""

    name: str


# ---------------------------------------------------------------- one call of a task

@dataclass(frozen=True)
class PromptTask:
    """An ``ai_query`` call whose request is ``parts`` joined: instruction text and the function's arguments."""

    name: str
    spec: QuerySpec
    parts: tuple[str | Arg, ...]

    @property
    def answering(self) -> Answering:
        return one_column(self.spec)

    def column(self, **args: Column) -> Column:
        prompt = F.concat(*(F.lit(p) if isinstance(p, str) else args[p.name] for p in self.parts))
        return query_column(self.spec, prompt, name=self.name)

    def sql_arguments(self, **args: str) -> list[str]:
        """The UDF's argument in SQL text: the prompt as a ``concat`` of literals and the given expressions."""
        pieces = [sql_string(p) if isinstance(p, str) else f"({args[p.name]})" for p in self.parts]
        return [f"concat({', '.join(pieces)})"]

    def render(self, **values: str) -> str:
        """The prompt one row sends, for documentation and for checking answers."""
        return "".join(p if isinstance(p, str) else str(values[p.name]) for p in self.parts)

    def series(self, remember: MemoSettings | None = None, **args: pd.Series) -> pd.Series:
        """Answers for raw ``spark.sql``, where the prompt is joined in pandas (whole columns at once)."""
        return answer_series(self.spec, _join(self.parts, args), remember=remember)


@dataclass(frozen=True)
class SimilarityTask:
    """Both texts of a batch go out as one list, so a text in either column is embedded once."""

    name: str
    spec: QuerySpec

    @property
    def answering(self) -> Answering:
        return Answering(functools.partial(_pair_requests, spec=self.spec), cosines, T.FloatType())

    def column(self, expr1: Column, expr2: Column) -> Column:
        return query_column(self.spec, expr1, expr2, name=self.name, answering=self.answering)

    def sql_arguments(self, expr1: str, expr2: str) -> list[str]:
        return [expr1, expr2]

    def series(self, expr1: pd.Series, expr2: pd.Series, remember: MemoSettings | None = None) -> pd.Series:
        return answer_series(self.spec, (expr1, expr2), self.answering, remember)


Task = PromptTask | SimilarityTask


def sql_string(text: str) -> str:
    """A Spark SQL string literal (backslash escapes, Spark's default) for any text."""
    escaped = text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\r", "\\r")
    return f"'{escaped}'"


def _join(parts: Sequence[str | Arg], args: dict[str, pd.Series]) -> pd.Series:
    size = len(next(iter(args.values())))
    text = pd.Series([""] * size, dtype=object)
    missing = pd.Series(False, index=text.index)
    for part in parts:
        if isinstance(part, str):
            text = text + part
            continue
        values = args[part.name].reset_index(drop=True)
        missing |= values.isna()
        text = text + values.fillna("").astype(str)
    return text.where(~missing, None)


# ---------------------------------------------------------------- similarity in the worker

def _pair_requests(pair: tuple[pd.Series, pd.Series], spec: QuerySpec) -> list[Any]:
    return request_values(pair[0], spec) + request_values(pair[1], spec)


def cosines(outcomes: list[RowOutcome]) -> pd.Series:
    """Cosine similarity of row i of the first half with row i of the second; NULL where a text is NULL."""
    raise_failures(outcomes)
    count = len(outcomes) // 2
    left, right = outcomes[:count], outcomes[count:]
    both = [i for i in range(count) if left[i].value is not None and right[i].value is not None]
    result = np.full(count, np.nan, dtype=np.float32)
    if both:
        a = np.stack([left[i].value for i in both]).astype(np.float64)
        b = np.stack([right[i].value for i in both]).astype(np.float64)
        norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            result[both] = np.einsum("ij,ij->i", a, b) / norms
    return pd.Series(result)


# ---------------------------------------------------------------- building calls

def _endpoint(endpoint: str | EndpointConfig | None, task: str, also: tuple[str, ...] = ()) -> EndpointConfig:
    """The named endpoint, else the configured default for ``task``; ``also``: other tasks that can serve."""
    if isinstance(endpoint, EndpointConfig):
        config = endpoint
    else:
        config = get_endpoint(endpoint if endpoint is not None else registry.default_for(task))
    if config.task != task and config.task not in also:
        kinds = " or ".join((task, *also))
        raise ConfigError(f"this function needs a {kinds} endpoint; '{config.name}' is {config.task}")
    return config


def _text_spec(endpoint: Any) -> QuerySpec:
    """Free-text tasks need no structured output, so a completions endpoint serves as well as a chat one."""
    return build_spec(_endpoint(endpoint, "chat", ("completions",)))


def _labels(labels: Any, function: str, minimum: int) -> tuple[str, ...]:
    if hasattr(labels, "tolist"):
        labels = labels.tolist()
    if isinstance(labels, str) or not isinstance(labels, (list, tuple)):
        raise ConfigError(f"{function}: labels must be an array of strings such as array('a', 'b'), got {labels!r}")
    if not minimum <= len(labels) <= MAX_LABELS:
        raise ConfigError(f"{function}: needs {minimum} to {MAX_LABELS} labels, got {len(labels)}")
    if any(not isinstance(label, str) or not label.strip() for label in labels):
        raise ConfigError(f"{function}: every label must be a non-empty string, got {list(labels)!r}")
    if len(set(labels)) != len(labels):
        raise ConfigError(f"{function}: labels must be distinct, got {list(labels)!r}")
    return tuple(labels)


def _text_task(name: str, instruction: Sequence[str | Arg], endpoint: Any, spec: QuerySpec | None = None,
               content: str = "content") -> PromptTask:
    spec = spec or _text_spec(endpoint)
    return PromptTask(name, spec, (*instruction, "\n\nText: ", Arg(content)))


def gen_task(endpoint: Any = None) -> PromptTask:
    return PromptTask("ai_gen", _text_spec(endpoint), (Arg("prompt"),))


def fix_grammar_task(endpoint: Any = None) -> PromptTask:
    return _text_task("ai_fix_grammar", ("Correct the grammar and spelling of the following text. Answer with "
                                         "the corrected text only.",), endpoint)


def summarize_task(max_words: Any = 50, endpoint: Any = None) -> PromptTask:
    if isinstance(max_words, bool) or not isinstance(max_words, int) or max_words < 0:
        raise ConfigError(f"ai_summarize: max_words must be a non-negative integer (0: no limit), got {max_words!r}")
    limit = f" in at most {max_words} words" if max_words else ""
    return _text_task("ai_summarize", (f"Summarize the following text{limit}. Answer with the summary only.",),
                      endpoint)


def translate_task(to_lang: Any = None, endpoint: Any = None) -> PromptTask:
    """``to_lang`` a language code (checked now), or None: taken from the ``to_lang`` column row by row."""
    if to_lang is not None and (not isinstance(to_lang, str) or not to_lang.strip()):
        raise ConfigError(f"ai_translate: to_lang must be a language code such as 'fr', got {to_lang!r}")
    language = to_lang.strip() if to_lang is not None else Arg("to_lang")
    return _text_task("ai_translate", ("Translate the following text to the language ", language,
                                       ". Answer with the translation only."), endpoint)


def mask_task(labels: Any, endpoint: Any = None) -> PromptTask:
    kinds = ", ".join(_labels(labels, "ai_mask", 1))
    return _text_task("ai_mask", (f"Replace every piece of the following text that is one of these kinds of "
                                  f"information with [MASKED]: {kinds}. Answer with the masked text only.",),
                      endpoint)


def classify_task(labels: Any, endpoint: Any = None, *, name: str = "ai_classify",
                  question: str = "Classify the following text as exactly one of these labels") -> PromptTask:
    labels = _labels(labels, name, 2)
    schema = {"type": "object", "properties": {"label": {"type": "string", "enum": list(labels)}},
              "required": ["label"], "additionalProperties": False}
    response_format = {"type": "json_schema", "json_schema": {"name": "label", "schema": schema, "strict": True}}
    spec = build_spec(_endpoint(endpoint, "chat"), returnType="STRUCT<label: STRING>",
                      responseFormat=response_format)
    spec = dataclasses.replace(spec, result_type=T.StringType(), answer_field="label", choices=labels)
    return _text_task(name, (f"{question}: {', '.join(labels)}.",), endpoint, spec)


def sentiment_task(endpoint: Any = None) -> PromptTask:
    return classify_task(SENTIMENTS, endpoint, name="ai_analyze_sentiment",
                         question="What is the sentiment of the following text? Answer with one of")


def extract_task(labels: Any, endpoint: Any = None) -> PromptTask:
    labels = _labels(labels, "ai_extract", 1)
    ddl = "STRUCT<" + ", ".join("`" + label.replace("`", "``") + "`: STRING" for label in labels) + ">"
    spec = build_spec(_endpoint(endpoint, "chat"), returnType=ddl, responseFormat=ddl)
    return _text_task("ai_extract", (f"Extract these fields from the following text: {', '.join(labels)}. "
                                     "Give each as it appears in the text.",), endpoint, spec)


def similarity_task(endpoint: Any = None) -> SimilarityTask:
    return SimilarityTask("ai_similarity", build_spec(_endpoint(endpoint, "embeddings")))


# ---------------------------------------------------------------- the table of tasks

@dataclass(frozen=True)
class TaskDef:
    """How SQL reaches a task: its arguments in Databricks' order and which of them are constants.

    ``flexible`` arguments are constants when written as literals and columns otherwise;
    ``raw_type`` is the fixed type that lets raw ``spark.sql`` call the task (None: batch.sql only).
    """

    build: Callable[..., Task]
    order: tuple[str, ...]
    constants: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    flexible: tuple[str, ...] = ()
    kind: str = "chat"
    raw_type: T.DataType | None = T.StringType()


TASKS: dict[str, TaskDef] = {
    "ai_analyze_sentiment": TaskDef(sentiment_task, ("content",)),
    "ai_classify": TaskDef(classify_task, ("content", "labels"), ("labels",)),
    "ai_extract": TaskDef(extract_task, ("content", "labels"), ("labels",), raw_type=None),
    "ai_fix_grammar": TaskDef(fix_grammar_task, ("content",)),
    "ai_gen": TaskDef(gen_task, ("prompt",)),
    "ai_mask": TaskDef(mask_task, ("content", "labels"), ("labels",)),
    "ai_similarity": TaskDef(similarity_task, ("expr1", "expr2"), kind="embeddings", raw_type=T.FloatType()),
    "ai_summarize": TaskDef(summarize_task, ("content", "max_words"), ("max_words",), ("max_words",)),
    "ai_translate": TaskDef(translate_task, ("content", "to_lang"), flexible=("to_lang",)),
}


# ---------------------------------------------------------------- notebook functions

def _apply(task: Task, **args: Column | str) -> Column:
    columns = {k: F.col(v) if isinstance(v, str) else v for k, v in args.items()}
    names = [v for v in args.values() if isinstance(v, str)]
    label = f"{task.name}({', '.join(names)})" if len(names) == len(args) else task.name
    return task.column(**columns).alias(label)


def ai_analyze_sentiment(content: Column | str, *, endpoint: str | None = None) -> Column:
    """STRING: positive, negative, neutral or mixed (NULL when the model gives none of them). Errors: see the
    module docstring, as for every task function."""
    return _apply(sentiment_task(endpoint), content=content)


def ai_classify(content: Column | str, labels: Sequence[str], *, endpoint: str | None = None) -> Column:
    """STRING: one of ``labels`` (2 to 500 distinct strings) per row, NULL when the model gives none of them."""
    return _apply(classify_task(labels, endpoint), content=content)


def ai_extract(content: Column | str, labels: Sequence[str], *, endpoint: str | None = None) -> Column:
    """STRUCT with one STRING field per label (each a field name), each the value found in the text."""
    return _apply(extract_task(labels, endpoint), content=content)


def ai_fix_grammar(content: Column | str, *, endpoint: str | None = None) -> Column:
    """STRING: the text with its grammar and spelling corrected (NULL for a NULL text)."""
    return _apply(fix_grammar_task(endpoint), content=content)


def ai_gen(prompt: Column | str, *, endpoint: str | None = None) -> Column:
    """STRING: the model's answer to each prompt, sent as it is (NULL for a NULL prompt)."""
    return _apply(gen_task(endpoint), prompt=prompt)


def ai_mask(content: Column | str, labels: Sequence[str], *, endpoint: str | None = None) -> Column:
    """STRING: the text with each piece of the kinds named in ``labels`` replaced by ``[MASKED]``."""
    return _apply(mask_task(labels, endpoint), content=content)


def ai_similarity(expr1: Column | str, expr2: Column | str, *, endpoint: str | None = None) -> Column:
    """FLOAT in [-1, 1]: the cosine similarity of the two texts' embeddings, from an embeddings endpoint
    (relative: compare scores from one endpoint). NULL when either text is NULL."""
    return _apply(similarity_task(endpoint), expr1=expr1, expr2=expr2)


def ai_summarize(content: Column | str, max_words: int = 50, *, endpoint: str | None = None) -> Column:
    """STRING: a summary of at most ``max_words`` words (a target, not a cut; 0 means no limit)."""
    return _apply(summarize_task(max_words, endpoint), content=content)


def ai_translate(content: Column | str, to_lang: str | Column, *, endpoint: str | None = None) -> Column:
    """STRING: the text translated into ``to_lang``, a language code such as 'fr' (a ``str`` here is the
    code itself, not a column name), or a Column of them."""
    if isinstance(to_lang, Column):
        return _apply(translate_task(None, endpoint), content=content, to_lang=to_lang)
    return _apply(translate_task(to_lang, endpoint), content=content)
