"""``execution: batch``: the provider's Batch API (OpenAI's, half price) as a way to answer a job's chunks.

Each chunk of staged rows becomes a *group*: its rows are kept in a table of their own
(``<results>__bg_<group>``) and, per output, the executors write the requests as JSONL
(``custom_id`` = the output and the row key), split at the provider's limits (50,000
requests and 200 MB a file), upload each file and create its batch, tagged with
metadata naming the group, output and part. Only the ids come back to the driver, which
records them in ``<results>__batches`` before it polls. When every batch of a group has
ended, the executors read the output and error files, each line through the same reader
as a synchronous answer (so a refusal, a cut JSON answer or an HTTP error line is a row
error with its billed tokens), and the group is written to the results table as one
chunk. A killed job finds its open groups in the state table and polls them again; a
group whose ids never reached the table is found by its metadata in the provider's
batch list, so nothing is submitted twice.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any
from collections.abc import Callable, Iterator
from urllib.parse import urlparse

import httpx
import numpy as np
import pyarrow as pa
from pyspark import TaskContext
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from batch._auth import BearerToken
from batch._client import CallResult, _Expect, _read_reply
from batch.config import EndpointConfig
from batch._engine import _outcome
from batch.errors import ConfigError, InvalidResponseError
from batch._udf import arrow_type, output_type, rows_to_frame
from batch._wire import Usage, request_body

from . import tables
from .chunks import account_chunk, final_rows
from .spec import JobSpec, OutputSpec

__all__ = ["answer", "finish_open", "BatchApi", "STATE_SCHEMA"]

TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
STATE_SCHEMA = T.StructType([
    T.StructField("group_id", T.StringType(), False),
    T.StructField("event", T.StringType(), False),       # staged | submitted | written
    T.StructField("chunk", T.IntegerType(), True),
    T.StructField("output", T.StringType(), True),
    T.StructField("part", T.StringType(), True),
    T.StructField("batch_id", T.StringType(), True),
    T.StructField("input_file_id", T.StringType(), True),
    T.StructField("requests", T.LongType(), True),
    T.StructField("bytes", T.LongType(), True),
    T.StructField("run_id", T.StringType(), True),
    T.StructField("at", T.DoubleType(), True),
])
_SUBMITTED = T.StructType([f for f in STATE_SCHEMA.fields if f.name in
                           ("output", "part", "batch_id", "input_file_id", "requests", "bytes")])


class BatchApi:
    """The Files and Batches calls, with the endpoint's own credentials (read where they are used)."""

    def __init__(self, config: EndpointConfig) -> None:
        headers = dict(config.headers)
        if config.token_env:
            headers.update(asyncio.run(BearerToken(config.token_env, config.name).headers()))
        if config.base_url is None:  # every api the Batch API takes (BATCH_APIS) requires base_url
            raise ConfigError(f"endpoint '{config.name}' needs base_url for the Batch API", key="base_url")
        self.base = config.base_url.rstrip("/")
        self.http = httpx.Client(headers=headers, timeout=max(config.timeout, 60.0), verify=config.verify_tls)
        self.name = config.name

    def _checked(self, reply: httpx.Response, what: str) -> Any:
        if reply.status_code != 200:
            raise InvalidResponseError(self.name, f"{what}: HTTP {reply.status_code}: {reply.text[:500]}",
                                       status=reply.status_code, retryable=False)
        return reply

    def upload(self, content: bytes, filename: str) -> str:
        reply = self.http.post(self.base + "/files", data={"purpose": "batch"},
                               files={"file": (filename, content, "application/jsonl")})
        return self._checked(reply, "uploading a batch input file").json()["id"]

    def create(self, file_id: str, endpoint: str, window: str, metadata: dict[str, str]) -> str:
        reply = self.http.post(self.base + "/batches", json={"input_file_id": file_id, "endpoint": endpoint,
                                                             "completion_window": window, "metadata": metadata})
        return self._checked(reply, "creating a batch").json()["id"]

    def get(self, batch_id: str) -> dict[str, Any]:
        return self._checked(self.http.get(f"{self.base}/batches/{batch_id}"), f"polling batch {batch_id}").json()

    def content(self, file_id: str) -> bytes:
        return self._checked(self.http.get(f"{self.base}/files/{file_id}/content"), f"reading file {file_id}").content

    def find(self, group: str, output: str) -> list[dict[str, Any]]:
        """Batches created for a group's output whose ids never reached the state table (a kill in between)."""
        found, after = [], None
        while True:
            params = {"limit": 100, **({"after": after} if after else {})}
            page = self._checked(self.http.get(self.base + "/batches", params=params), "listing batches").json()
            for item in page.get("data") or []:
                meta = item.get("metadata") or {}
                if meta.get("aiq_group") == group and meta.get("aiq_output") == output:
                    found.append(item)
            if not page.get("has_more") or not page.get("data"):
                return found
            after = page["data"][-1]["id"]


def _endpoint_path(config: EndpointConfig) -> str:
    return urlparse(config.url()).path


def _state_table(spec: JobSpec) -> str:
    return spec.results_table + "__batches"


def _rows_table(spec: JobSpec, group: str) -> str:
    return f"{spec.results_table}__bg_{group}"


def _log(spark: SparkSession, spec: JobSpec, events: list[dict[str, Any]]) -> None:
    rows = [{f.name: e.get(f.name) for f in STATE_SCHEMA.fields} for e in events]
    spark.createDataFrame(rows, STATE_SCHEMA).write.mode("append").format(spec.table_format).saveAsTable(
        _state_table(spec))


# ---------------------------------------------------------------- on the executors

def _submitter(spec: JobSpec, output: OutputSpec, group: str, skip_parts: frozenset[str]) -> Callable:
    """The task that turns one partition of a group's rows into batch files and batches; yields their ids."""
    query, config = output.query, output.query.endpoint
    params, response_format = query.params, query.response_format
    keys, window, limits = list(spec.keys), spec.execution.completion_window, spec.execution
    path = _endpoint_path(config)
    request = f"_req_{output.name}"

    def submit(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        partition = _partition_id()
        if any(part.split(".")[0] == str(partition) for part in skip_parts):
            return
        api = BatchApi(config)
        lines: list[bytes] = []
        size, number, made = 0, 0, []

        def flush() -> None:
            nonlocal lines, size, number
            part = f"{partition}.{number}"
            content = b"".join(lines)
            file_id = api.upload(content, f"{group}-{output.name}-{part}.jsonl")
            batch_id = api.create(file_id, path, window, {"aiq_group": group, "aiq_output": output.name,
                                                          "aiq_part": part})
            made.append({"output": output.name, "part": part, "batch_id": batch_id, "input_file_id": file_id,
                         "requests": len(lines), "bytes": len(content)})
            lines, size, number = [], 0, number + 1

        for batch in batches:
            for row in batch.to_pylist():
                value = row[request]
                if value is None:
                    continue
                custom_id = json.dumps([output.name, *[row[k] for k in keys]], separators=(",", ":"))
                body = request_body(config, [value], params, response_format)
                line = (json.dumps({"custom_id": custom_id, "method": "POST", "url": path, "body": body},
                                   ensure_ascii=False, separators=(",", ":")) + "\n").encode()
                full = len(lines) >= limits.max_requests_per_file or size + len(line) > limits.max_bytes_per_file
                if lines and full:
                    flush()
                lines.append(line)
                size += len(line)
        if lines:
            flush()
        if made:
            yield pa.RecordBatch.from_pylist(made, schema=_arrow_schema(_SUBMITTED))

    return submit


def _arrow_schema(schema: T.StructType) -> pa.Schema:
    return pa.schema([pa.field(f.name, arrow_type(f.dataType), f.nullable) for f in schema.fields])


def _partition_id() -> int:
    """The partition of the Spark task running now: there is a TaskContext in every task."""
    context = TaskContext.get()
    if context is None:
        raise RuntimeError("a batch file is written inside a Spark task, and none is running")
    return context.partitionId()


def _reader(spec: JobSpec, output: OutputSpec, key_schema: T.StructType) -> Callable:
    """The task that reads finished batches' output and error files into per-row metadata, as the UDF gives it;
    a request of the input file with no line in either file (a batch that expired or failed) is a row error."""
    query, config = output.query, output.query.endpoint
    params = query.params or {}
    limit = params.get("max_tokens") or params.get("max_completion_tokens")
    expect = _Expect(1, (query.response_format or {}).get("type") in ("json_object", "json_schema"),
                     limit if isinstance(limit, int) else None)
    schema = T.StructType([*key_schema.fields, T.StructField(f"_m_{output.name}", output_type(query, True))])
    arrow_schema = _arrow_schema(schema)
    keys = [f.name for f in key_schema.fields]

    def read(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        api = BatchApi(config)
        convert = query.converter()
        for batch in batches:
            for item in batch.to_pylist():
                answered: dict[str, CallResult] = {}
                started = float(item["started_at"]) if item["started_at"] is not None else None
                for file_id in (item["output_file_id"], item["error_file_id"]):
                    if file_id:
                        for raw in api.content(file_id).splitlines():
                            if raw.strip():
                                line = json.loads(raw)
                                answered[line.get("custom_id")] = _line_result(config, line, expect, started)
                asked = [json.loads(raw)["custom_id"] for raw in api.content(item["input_file_id"]).splitlines()
                         if raw.strip()]
                ended = f"the batch ended '{item['status']}' without an answer for this row"
                results = [answered.get(cid) or CallResult(None, InvalidResponseError(config.name, ended,
                                                                                      retryable=False),
                                                           1, 0, 0.0, Usage(), started) for cid in asked]
                outcomes = [_outcome(config.name, r, 0, True, 1, convert) for r in results]
                for outcome in outcomes:
                    outcome.latency_ms = None  # a batch's turnaround is not a request's latency
                frame = rows_to_frame(outcomes, query, True)
                records = frame.to_dict("records")
                rows = []
                for cid, record in zip(asked, records):
                    key = json.loads(cid)[1:]
                    rows.append({**dict(zip(keys, key)), f"_m_{output.name}": _plain(record)})
                yield pa.RecordBatch.from_pylist(rows, schema=arrow_schema)

    return read


def _plain(record: dict[str, Any]) -> dict[str, Any]:
    """pandas gives NaN for a missing float and numpy numbers: Arrow wants None and Python numbers."""
    clean = {}
    for name, value in record.items():
        if isinstance(value, np.ndarray):
            value = value.tolist()
        elif isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, float) and value != value:
            value = None
        clean[name] = value
    return clean


def _line_result(config: EndpointConfig, line: dict[str, Any], expect: _Expect,
                 started: float | None) -> CallResult:
    """One output or error line, read as the synchronous answer with that status and body would be."""
    response = line.get("response")
    if isinstance(response, dict) and isinstance(response.get("status_code"), int):
        body = json.dumps(response.get("body")).encode()
        results, usage, error = _read_reply(config, response["status_code"], {}, body, expect)
        return CallResult(results, error, 1, 0, 0.0, usage, started)
    problem = line.get("error") or {}
    message = f"{problem.get('code')}: {problem.get('message')}" if problem else "a batch line with no response"
    return CallResult(None, InvalidResponseError(config.name, f"the batch refused this request ({message})",
                                                 retryable=False), 1, 0, 0.0, Usage(), started)


# ---------------------------------------------------------------- on the driver

@dataclass
class _Group:
    group_id: str
    chunk: int
    rows: int
    batches: list[dict[str, Any]]


def _submit_group(spark: SparkSession, spec: JobSpec, group: str, rows: DataFrame,
                  known: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Submit every output's requests of a group, except the parts already known to exist."""
    made = []
    for output in spec.outputs:
        asked = rows.where(F.col(f"_ask_{output.name}") & F.col(f"_req_{output.name}").isNotNull())
        count = asked.count()
        if not count:
            continue
        have = [k for k in known if k["output"] == output.name]
        if not have:
            have = [{"output": output.name, "part": (b.get("metadata") or {}).get("aiq_part"), "batch_id": b["id"],
                     "input_file_id": b["input_file_id"], "requests": (b.get("request_counts") or {}).get("total"),
                     "bytes": None} for b in BatchApi(output.query.endpoint).find(group, output.name)]
            made += have
        parts = -(-count // spec.execution.max_requests_per_file)
        skip = frozenset(h["part"] for h in have if h["part"])
        if skip and len({p.split(".")[0] for p in skip}) >= parts:
            continue
        selected = asked.select(*spec.keys, f"_req_{output.name}").repartition(parts, *spec.keys)
        submitted = selected.mapInArrow(_submitter(spec, output, group, skip), _SUBMITTED).collect()
        made += [r.asDict() for r in submitted]
    return made


def _open_groups(spark: SparkSession, spec: JobSpec) -> list[_Group]:
    if not tables.table_exists(spark, _state_table(spec)):
        return []
    events = spark.table(_state_table(spec)).collect()
    written = {e["group_id"] for e in events if e["event"] == "written"}
    groups: dict[str, _Group] = {}
    for e in events:
        if e["event"] == "staged" and e["group_id"] not in written:
            groups[e["group_id"]] = _Group(e["group_id"], e["chunk"], e["requests"] or 0, [])
    for e in events:
        if e["event"] == "submitted" and e["group_id"] in groups:
            groups[e["group_id"]].batches.append(e.asDict())
    return sorted(groups.values(), key=lambda g: g.group_id)


def _wait(spec: JobSpec, groups: list[_Group], sleep: Callable[[float], None]) -> Iterator[tuple[_Group, list]]:
    """Poll every open batch until each group's batches have all ended; yield each group as it finishes."""
    apis = {o.name: BatchApi(o.query.endpoint) for o in spec.outputs}
    waiting = list(groups)
    while waiting:
        still = []
        for group in waiting:
            states = [apis[b["output"]].get(b["batch_id"]) for b in group.batches]
            if all(s["status"] in TERMINAL for s in states):
                yield group, states
            else:
                still.append(group)
        waiting = still
        if waiting:
            sleep(spec.execution.poll_seconds)


def _write_group(spark: SparkSession, spec: JobSpec, group: _Group, states: list[dict[str, Any]],
                 run_id: str) -> None:
    rows = spark.table(_rows_table(spec, group.group_id))
    carried = any(c.startswith("_ps_") for c in rows.columns)
    key_schema = T.StructType([rows.schema[k] for k in spec.keys])
    answered = rows
    for output in spec.outputs:
        mine = [(b, s) for b, s in zip(group.batches, states) if b["output"] == output.name]
        if not mine:
            answered = answered.withColumn(f"_m_{output.name}", F.lit(None).cast(output_type(output.query, True)))
            continue
        files = spark.createDataFrame(
            [(s.get("output_file_id"), s.get("error_file_id"), b["input_file_id"], s["status"],
              float(s.get("in_progress_at") or s.get("created_at") or 0) or None) for b, s in mine],
            "output_file_id string, error_file_id string, input_file_id string, status string, started_at double")
        fetched = files.repartition(len(mine)).mapInArrow(
            _reader(spec, output, key_schema), T.StructType([*key_schema.fields, T.StructField(
                f"_m_{output.name}", output_type(output.query, True))]))
        answered = answered.join(fetched, list(spec.keys), "left")
    tables.append(final_rows(spec, answered, carried, run_id, group.chunk), spec.results_table, spec.table_format)
    _log(spark, spec, [{"group_id": group.group_id, "event": "written", "chunk": group.chunk, "run_id": run_id,
                        "at": time.time()}])
    spark.sql(f"DROP TABLE IF EXISTS {_rows_table(spec, group.group_id)}")


def _settle(spark: SparkSession, spec: JobSpec, groups: list[_Group], result: Any, prices: Any, progress: Any,
            sleep: Callable[[float], None]) -> None:
    for group, states in _wait(spec, groups, sleep):
        _write_group(spark, spec, group, states, result.run_id)
        if account_chunk(spark, spec, result, prices, group.chunk, group.rows, progress):
            break


def finish_open(spark: SparkSession, spec: JobSpec, result: Any, prices: Any,
                sleep: Callable[[float], None] = time.sleep) -> None:
    """Before planning: the groups an earlier run submitted and did not write, polled (and their missing parts
    submitted, found first by metadata) and written, so their keys are answered and not asked again."""
    from .progress import Progress

    groups = _open_groups(spark, spec)
    for group in groups:
        rows = spark.table(_rows_table(spec, group.group_id))
        made = _submit_group(spark, spec, group.group_id, rows, group.batches)
        fresh = [m for m in made if m["batch_id"] not in {b["batch_id"] for b in group.batches}]
        if fresh:
            _log(spark, spec, [{**m, "group_id": group.group_id, "event": "submitted", "chunk": group.chunk,
                                "run_id": result.run_id, "at": time.time()} for m in fresh])
            group.batches += fresh
    if groups:
        _settle(spark, spec, groups, result, prices, Progress.quiet(), sleep)


def answer(spark: SparkSession, spec: JobSpec, staging: str, counts: dict[int, int], result: Any, carried: bool,
           progress: Any, prices: Any, sleep: Callable[[float], None] = time.sleep) -> None:
    """Submit every staged chunk as a group (rows kept, then ids recorded), then poll and write each group."""
    groups = []
    per_row = None
    if result.estimate is not None and result.estimate.rows:
        point = result.estimate.cost_point if result.estimate.cost_point is not None else result.estimate.cost_high
        per_row = point / result.estimate.rows if point is not None else None
    submitted_rows = 0
    for chunk in sorted(counts):
        limit = spec.limits.max_spend
        if limit is not None and per_row is not None and (submitted_rows + counts[chunk]) * per_row > limit:
            result.status = "stopped"
            result.reasons = [f"max_spend {limit}: submitting chunk {chunk} would bring the estimated spend to "
                              f"about ${(submitted_rows + counts[chunk]) * per_row:.4f}, so it was not submitted "
                              "(resumable)"]
            break
        group = f"{result.run_id}_{chunk}"
        rows_table = _rows_table(spec, group)
        spark.table(staging).where(F.col("_chunk") == chunk).drop("_chunk", "_category").write.mode(
            "overwrite").format("parquet").saveAsTable(rows_table)
        _log(spark, spec, [{"group_id": group, "event": "staged", "chunk": chunk, "requests": counts[chunk],
                            "run_id": result.run_id, "at": time.time()}])
        made = _submit_group(spark, spec, group, spark.table(rows_table), [])
        _log(spark, spec, [{**m, "group_id": group, "event": "submitted", "chunk": chunk, "run_id": result.run_id,
                            "at": time.time()} for m in made] or [])
        groups.append(_Group(group, chunk, counts[chunk], made))
        submitted_rows += counts[chunk]
    _settle(spark, spec, groups, result, prices, progress, sleep)
