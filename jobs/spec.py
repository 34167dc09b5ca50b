"""Job specs: one YAML file per scheduled job, checked whole before Spark starts.

Every problem is reported with the file and the line it was written on, and every
``ai_query`` argument is checked with the same code the DataFrame API uses, so a job
that validates will not fail later for a typo.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Mapping

from batch._yaml import Lines, line_of, load_yaml
from batch._arguments import QuerySpec, build_spec
from batch.config import Registry, registry
from batch.errors import (ConfigError, InvalidModelParametersError, UnknownEndpointError,
                          UnsupportedResponseFormatError)

__all__ = ["JobSpec", "InputSpec", "OutputSpec", "Limits", "Execution", "load_spec", "parse_spec", "MODES", "FORMATS"]

# resume: answer what is new, failed or changed; sync: that, and remove the answers of keys gone from the input
MODES = ("resume", "sync", "append", "overwrite")
FORMATS = ("parquet", "delta", "iceberg", "orc")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*){0,2}$")
# A prompt template: {column} placeholders, {{ and }} for literal braces.
PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")


def _lone_brace(template: str) -> str | None:
    """A brace that is neither doubled nor part of a placeholder, which would be sent as written."""
    rest = PLACEHOLDER.sub("", template)
    return next((ch for ch in rest if ch in "{}"), None)


@dataclass(frozen=True)
class InputSpec:
    table: str | None = None
    query: str | None = None
    path: str | None = None
    format: str = "parquet"
    options: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class OutputSpec:
    name: str
    query: QuerySpec
    prompt: str | None = None      # a template over input columns: "Summarize: {body}"
    request: str | None = None     # or a SQL expression
    line: int | None = None

    def template_columns(self) -> list[str]:
        if self.prompt is None:
            return []
        return [m.group(1).strip() for m in PLACEHOLDER.finditer(self.prompt) if m.group(1) is not None]


@dataclass(frozen=True)
class Limits:
    max_error_fraction: float = 0.0
    max_rows: int | None = None
    max_spend: float | None = None


@dataclass(frozen=True)
class Execution:
    """How requests reach the endpoint: ``sync`` (one HTTP call per request, from the executors) or ``batch``
    (the provider's Batch API: JSONL files of requests, answered within ``completion_window`` at batch prices).
    The file limits are OpenAI's: 50,000 requests and 200 MB per input file."""

    mode: str = "sync"
    poll_seconds: float = 30.0
    completion_window: str = "24h"
    max_requests_per_file: int = 50_000
    max_bytes_per_file: int = 200 * 1024 * 1024


EXECUTION_MODES = ("sync", "batch")
BATCH_APIS = ("openai", "responses")
BATCH_TASKS = ("chat", "completions", "embeddings")


@dataclass(frozen=True)
class JobSpec:
    name: str
    source: str
    input: InputSpec
    keys: tuple[str, ...]
    outputs: tuple[OutputSpec, ...]
    results_table: str
    usage_table: str
    mode: str = "resume"
    table_format: str = "parquet"
    limits: Limits = Limits()
    execution: Execution = Execution()
    commit_every: int = 5000
    spark_conf: Mapping[str, str] = field(default_factory=dict)
    master: str = "local[*]"
    warehouse: str = "spark-warehouse"
    prices: str | None = None
    lines: Lines = field(default_factory=dict, repr=False, compare=False)

    def where(self, *path: str) -> int | None:
        return line_of(self.lines, *path)


# "preview" holds the variants ``python -m jobs preview`` compares (checked by jobs.preview); a run ignores it.
_TOP = {"job", "input", "outputs", "results", "usage", "limits", "spark", "commit_every", "prices", "endpoints",
        "execution", "preview"}
_EXECUTION = {"mode", "poll_seconds", "completion_window", "max_requests_per_file", "max_bytes_per_file"}
_INPUT = {"table", "query", "path", "format", "options", "key"}
_OUTPUT = {"endpoint", "prompt", "request", "returnType", "failOnError", "modelParameters", "responseFormat"}
_RESULTS = {"table", "mode", "format"}
_LIMITS = {"max_error_fraction", "max_rows", "max_spend"}
_SPARK = {"master", "warehouse", "conf"}


class _Checker:
    def __init__(self, source: str, lines: Lines, endpoints: Registry = registry) -> None:
        self.source, self.lines, self.endpoints = source, lines, endpoints

    def error(self, message: str, *path: str) -> ConfigError:
        return ConfigError(message, source=self.source, line=line_of(self.lines, *path))

    def mapping(self, value: Any, allowed: set[str], *path: str, required: tuple[str, ...] = ()) -> Mapping:
        where = ".".join(path) or "the top level"
        if not isinstance(value, Mapping):
            raise self.error(f"'{where}' must be a mapping of keys", *path)
        for key in value:
            if key not in allowed:
                raise self.error(f"unknown key '{key}' in '{where}' (known: {', '.join(sorted(allowed))})",
                                 *path, str(key))
        for key in required:
            if key not in value:
                raise self.error(f"'{where}' needs '{key}'", *path)
        return value

    def text(self, value: Any, *path: str, pattern: re.Pattern | None = None) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.error(f"'{'.'.join(path)}' must be a non-empty string, got {value!r}", *path)
        if pattern is not None and not pattern.match(value):
            raise self.error(f"'{'.'.join(path)}' is not a valid name: {value!r}", *path)
        return value

    def number(self, value: Any, *path: str, integer: bool = False, low: float = 0, high: float | None = None):
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or value < low or (high is not None and
                                                                                         value > high):
            bound = f">= {low}" + (f" and <= {high}" if high is not None else "")
            kind = "a whole number" if integer else "a number"
            raise self.error(f"'{'.'.join(path)}' must be {kind} {bound}, got {value!r}", *path)
        return value


def load_spec(path: str | Path, endpoints: Registry = registry) -> JobSpec:
    """Read and check a job file (``conf/jobs/*.yaml``); ``endpoints`` resolves its endpoint names unless the
    file names its own registry with ``endpoints:``. Raises ConfigError naming the file, key and line."""
    data, lines = load_yaml(path)
    return parse_spec(data, str(path), lines, endpoints)


def parse_spec(data: Any, source: str = "<job>", lines: Lines | None = None,
               endpoints: Registry = registry) -> JobSpec:
    """``load_spec`` for a job already read into a mapping; ``lines`` maps key paths to line numbers."""
    top = _Checker(source, lines or {}).mapping(data, _TOP, required=("job", "input", "outputs", "results", "usage"))
    c = _Checker(source, lines or {}, job_endpoints(top, source, lines or {}, endpoints))
    name = c.text(top["job"], "job")
    inp = c.mapping(top["input"], _INPUT, "input", required=("key",))
    sources = [k for k in ("table", "query", "path") if k in inp]
    if len(sources) != 1:
        raise c.error("'input' needs exactly one of table, query, path", "input")
    key_values = inp["key"] if isinstance(inp["key"], list) else [inp["key"]]
    if not key_values:
        raise c.error("'input.key' needs at least one column", "input", "key")
    keys = tuple(c.text(k, "input", "key", pattern=_NAME) for k in key_values)
    options = inp.get("options") or {}
    if not isinstance(options, Mapping):
        raise c.error("'input.options' must be a mapping", "input", "options")
    input_spec = InputSpec(table=inp.get("table") and c.text(inp["table"], "input", "table", pattern=_TABLE),
                           query=inp.get("query") and c.text(inp["query"], "input", "query"),
                           path=inp.get("path") and c.text(inp["path"], "input", "path"),
                           format=c.text(inp.get("format", "parquet"), "input", "format"),
                           options={str(k): str(v) for k, v in options.items()})
    outputs = _outputs(c, top["outputs"], keys)
    results = c.mapping(top["results"], _RESULTS, "results", required=("table",))
    mode = results.get("mode", "resume")
    if mode not in MODES:
        raise c.error(f"'results.mode' must be one of {', '.join(MODES)}, got {mode!r}", "results", "mode")
    table_format = results.get("format", "parquet")
    if table_format not in FORMATS:
        raise c.error(f"'results.format' must be one of {', '.join(FORMATS)}, got {table_format!r}",
                      "results", "format")
    usage = c.mapping(top["usage"], {"table"}, "usage", required=("table",))
    limits_raw = c.mapping(top.get("limits") or {}, _LIMITS, "limits")
    limits = Limits(
        max_error_fraction=c.number(limits_raw.get("max_error_fraction", 0.0), "limits", "max_error_fraction",
                                    high=1.0),
        max_rows=None if limits_raw.get("max_rows") is None else c.number(limits_raw["max_rows"], "limits",
                                                                          "max_rows", integer=True, low=1),
        max_spend=None if limits_raw.get("max_spend") is None else c.number(limits_raw["max_spend"], "limits",
                                                                            "max_spend"))
    execution = _execution(c, top.get("execution"), outputs)
    spark = c.mapping(top.get("spark") or {}, _SPARK, "spark")
    conf = spark.get("conf") or {}
    if not isinstance(conf, Mapping):
        raise c.error("'spark.conf' must be a mapping of Spark settings", "spark", "conf")
    return JobSpec(
        name=name, source=source, input=input_spec, keys=keys, outputs=outputs,
        results_table=c.text(results["table"], "results", "table", pattern=_TABLE),
        usage_table=c.text(usage["table"], "usage", "table", pattern=_TABLE), mode=mode,
        table_format=table_format, limits=limits, execution=execution,
        commit_every=c.number(top.get("commit_every", 5000), "commit_every", integer=True, low=1),
        spark_conf={str(k): str(v) for k, v in conf.items()},
        master=c.text(spark.get("master", "local[*]"), "spark", "master"),
        warehouse=c.text(spark.get("warehouse", "spark-warehouse"), "spark", "warehouse"),
        prices=top.get("prices") and c.text(top["prices"], "prices"), lines=lines or {})


def _execution(c: _Checker, raw: Any, outputs: tuple[OutputSpec, ...]) -> Execution:
    """``execution: batch`` or a mapping with ``mode`` and the batch settings."""
    if raw is None:
        return Execution()
    entry = {"mode": raw} if isinstance(raw, str) else c.mapping(raw, _EXECUTION, "execution")
    mode = entry.get("mode", "sync")
    if mode not in EXECUTION_MODES:
        raise c.error(f"'execution' must be one of {', '.join(EXECUTION_MODES)}, got {mode!r}", "execution")
    defaults = Execution()
    execution = Execution(
        mode=mode,
        poll_seconds=c.number(entry.get("poll_seconds", defaults.poll_seconds), "execution", "poll_seconds"),
        completion_window=c.text(entry.get("completion_window", defaults.completion_window), "execution",
                                 "completion_window"),
        max_requests_per_file=c.number(entry.get("max_requests_per_file", defaults.max_requests_per_file),
                                       "execution", "max_requests_per_file", integer=True, low=1, high=50_000),
        max_bytes_per_file=c.number(entry.get("max_bytes_per_file", defaults.max_bytes_per_file), "execution",
                                    "max_bytes_per_file", integer=True, low=1024, high=200 * 1024 * 1024))
    if mode == "batch":
        for output in outputs:
            config = output.query.endpoint
            if config.api not in BATCH_APIS or config.task not in BATCH_TASKS:
                raise c.error(f"execution: batch needs OpenAI-compatible endpoints that offer the Batch API (api "
                              f"openai or responses, task chat, completions or embeddings); output '{output.name}' "
                              f"uses '{config.name}' (api {config.api}, task {config.task})", "execution")
    return execution


def job_endpoints(top: Mapping, source: str, lines: Lines, endpoints: Registry = registry) -> Registry:
    """The registry a job's endpoint names resolve in: the file its ``endpoints:`` key names, else ``endpoints``."""
    if "endpoints" not in top:
        return endpoints
    checker = _Checker(source, lines)
    path = Path(checker.text(top["endpoints"], "endpoints"))
    if not path.is_file():
        raise checker.error(f"'endpoints' names {path}, which is not a file (the path is read from the current "
                            "directory)", "endpoints")
    return endpoints.with_file(path)


def _culprit(exc: ConfigError, entry: Mapping) -> str:
    """The output key an argument error is about, so the message points at its line."""
    by_type = {InvalidModelParametersError: "modelParameters", UnsupportedResponseFormatError: "responseFormat",
               UnknownEndpointError: "endpoint"}
    for kind, key in by_type.items():
        if isinstance(exc, kind):
            return key
    return next((k for k in ("failOnError", "returnType") if k in entry and k in exc.reason), "endpoint")


def _outputs(c: _Checker, raw: Any, keys: tuple[str, ...]) -> tuple[OutputSpec, ...]:
    if not isinstance(raw, Mapping) or not raw:
        raise c.error("'outputs' must map output column names to their ai_query arguments", "outputs")
    outputs = []
    for name, entry in raw.items():
        name = c.text(name, "outputs", str(name), pattern=_NAME)
        if name in keys:
            raise c.error(f"output '{name}' has the name of a key column", "outputs", name)
        entry = c.mapping(entry, _OUTPUT, "outputs", name, required=("endpoint",))
        if ("prompt" in entry) == ("request" in entry):
            raise c.error(f"output '{name}' needs exactly one of prompt (a template such as 'Summarize: {{body}}') "
                          "or request (a SQL expression)", "outputs", name)
        try:
            query = build_spec(entry["endpoint"], endpoints=c.endpoints, returnType=entry.get("returnType"),
                               failOnError=entry.get("failOnError", False),
                               modelParameters=entry.get("modelParameters"),
                               responseFormat=entry.get("responseFormat"))
        except ConfigError as exc:
            raise c.error(f"output '{name}': {exc.reason}", "outputs", name, _culprit(exc, entry)) from None
        output = OutputSpec(name, query, prompt=entry.get("prompt"), request=entry.get("request"),
                            line=line_of(c.lines, "outputs", name))
        lone = _lone_brace(output.prompt) if output.prompt is not None else None
        bad = [f"'{{{column}}}' in the prompt is not a column name" for column in output.template_columns()
               if not _NAME.match(column)] + ([f"the prompt has a lone '{lone}'"] if lone else [])
        if bad:
            raise c.error(f"output '{name}': {bad[0]}; a literal "
                          "brace is written twice, as in Python's str.format: '{{' gives '{' and '}}' gives '}' "
                          "(for example 'Reply as JSON like {{\"label\": \"x\"}} for: {body}')",
                          "outputs", name, "prompt")
        outputs.append(output)
    return tuple(outputs)
