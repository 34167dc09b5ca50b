"""``execution: batch`` through real Spark and real HTTP against batch.serve's Files and Batches endpoints."""

from __future__ import annotations

import json
import os
import signal
import time

import httpx
import pytest
import yaml

from batch.config import registry
from batch.serve import simulated_answer
from jobs.runner import run_job
from jobs.spec import parse_spec
from jobs.usage import Price
from support import FAST, job_process, tickets



def _batches(srv, **changes) -> dict:
    if changes:
        return httpx.post(srv.url + "/_admin/batches", json=changes).json()
    return httpx.get(srv.url + "/_admin/batches").json()


@pytest.fixture
def batch_srv(srv):
    registry.add("bm-chat", api="openai", base_url=srv.url + "/v1", task="chat", **FAST)
    registry.add("bm-embed", api="openai", base_url=srv.url + "/v1", task="embeddings", batch_size=8, **FAST)
    _batches(srv, delay_s=0, reset=True)
    return srv


def _spec(db: str, execution=None, **changes) -> dict:
    spec = {"job": "batch-job", "input": {"table": f"{db}.tickets", "key": "id"},
            "outputs": {"answer": {"endpoint": "bm-chat", "prompt": "Reply to: {body}",
                                   "modelParameters": {"max_tokens": 12}},
                        "vec": {"endpoint": "bm-embed", "request": "body"}},
            "results": {"table": f"{db}.answers"}, "usage": {"table": f"{db}.usage"},
            "limits": {"max_error_fraction": 0.5}, "commit_every": 80}
    if execution is not None:
        spec["execution"] = execution
    spec.update(changes)
    return spec


def _comparable(spark, table: str) -> list[tuple]:
    """Everything but what differs by nature between two runs (run ids, times, latency)."""
    out = []
    for row in spark.table(table).orderBy("id").collect():
        status = {k: v for k, v in row["answer__status"].asDict().items()
                  if k not in ("latency_ms", "started_at", "asked_in")}
        out.append((row["id"], row["answer"], [round(x, 5) for x in row["vec"] or []], row["ok"],
                    tuple(sorted(status.items()))))
    return out


@pytest.mark.spark
def test_batch_mode_writes_what_sync_mode_writes(spark, batch_srv):
    srv = batch_srv
    bodies = [f"batch ticket {i} about shipping" for i in range(150)]
    bodies += [f"[[fail:400]] refused ticket {i}" for i in range(3)]
    tickets(spark, "bm_sync", bodies)
    tickets(spark, "bm_batch", bodies)
    prices = {"bm-chat": Price(input=1.0, output=2.0)}
    sync = run_job(spark, parse_spec(_spec("bm_sync")), prices=prices)
    assert sync.ok and sync.rows_failed == 3
    before = srv.stats()["requests"]
    spec = parse_spec(_spec("bm_batch", {"mode": "batch", "poll_seconds": 0.05, "max_requests_per_file": 40}))
    result = run_job(spark, spec, prices=prices)
    assert result.ok, result.reasons
    assert srv.stats()["requests"] == before  # nothing went the synchronous way
    stats = _batches(srv)
    assert stats["requests_submitted"] == 2 * len(bodies)  # every row once per output
    assert stats["batches_created"] >= 2 * 2 * 2  # 153 rows in 2 chunks, each output's split at 40
    assert _comparable(spark, "bm_batch.answers") == _comparable(spark, "bm_sync.answers")
    failed = spark.table("bm_batch.answers").where("NOT ok").collect()
    assert sorted(r["id"] for r in failed) == [150, 151, 152]
    assert all("HTTP 400" in r["answer__status"]["error"] for r in failed)
    usage = {r["endpoint"]: r for r in spark.table("bm_batch.usage").collect()}
    chat = usage["bm-chat"]
    assert chat["execution"] == "batch" and chat["rows_failed"] == 3
    assert (chat["prompt_tokens"], chat["completion_tokens"]) == (stats["prompt_tokens"] - usage["bm-embed"]
                                                                   ["prompt_tokens"], stats["completion_tokens"])
    sync_chat = {r["endpoint"]: r for r in spark.table("bm_sync.usage").collect()}["bm-chat"]
    assert chat["estimated_cost"] == pytest.approx(sync_chat["estimated_cost"] / 2)  # the batch rate: half
    rerun = run_job(spark, spec, prices=prices)  # nothing new, nothing failed but the three refused rows
    assert rerun.rows_by_category == {"new": 0, "changed": 0, "failed": 3, "unchanged": 150}
    assert _batches(srv)["requests_submitted"] == 2 * len(bodies) + 2 * 3  # both outputs of those rows failed


def test_batch_mode_is_refused_for_endpoints_without_the_batch_api(batch_srv):
    registry.add("bm-dbx", api="databricks", host=batch_srv.url, task="chat", **FAST)
    from batch.errors import ConfigError
    with pytest.raises(ConfigError, match=r"execution: batch needs OpenAI-compatible endpoints .* output 'answer' "
                                          r"uses 'bm-dbx' \(api databricks"):
        parse_spec(_spec("bm_x", "batch", outputs={"answer": {"endpoint": "bm-dbx", "request": "body"}}))
    with pytest.raises(ConfigError, match="max_requests_per_file' must be a whole number >= 1 and <= 50000"):
        parse_spec(_spec("bm_x", {"mode": "batch", "max_requests_per_file": 60000}))
    execution = parse_spec(_spec("bm_x", "batch")).execution  # OpenAI's Batch API: 50,000 requests, 200 MB a file
    assert (execution.max_requests_per_file, execution.max_bytes_per_file) == (50_000, 200 * 1024 * 1024)


# ------------------------------------------------- four batch files, killed between submission and completion

@pytest.mark.spark
def test_a_killed_batch_job_resumes_polling_and_submits_nothing_twice(spark, srv, tmp_path):
    rows = 4_000  # two chunks, each more requests than one batch file may hold (max_requests_per_file below)
    _batches(srv, delay_s=3600, reset=True)  # the first process can only submit and wait
    data = tmp_path / "rows.json"
    data.write_text("".join(json.dumps({"id": i, "body": f"q{i}"}) + "\n" for i in range(rows)))
    endpoints = tmp_path / "endpoints.yaml"
    endpoints.write_text(yaml.safe_dump({"endpoints": {"big-chat": {"api": "openai", "base_url": srv.url + "/v1"}}}))
    warehouse = tmp_path / "warehouse"
    spec_path = tmp_path / "big.yaml"
    spec_path.write_text(yaml.safe_dump({
        "job": "big", "input": {"path": str(data), "format": "json", "key": "id"},
        "outputs": {"answer": {"endpoint": "big-chat", "request": "body", "modelParameters": {"max_tokens": 4}}},
        "results": {"table": "big.answers"}, "usage": {"table": "big.usage"},
        "execution": {"mode": "batch", "poll_seconds": 0.2, "max_requests_per_file": 1_500}, "commit_every": 2_000,
        "spark": {"master": "local[2]", "warehouse": str(warehouse)}}))
    (warehouse / "big.db").mkdir(parents=True)
    first = job_process(spec_path, endpoints, tmp_path / "first.log")
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and first.poll() is None and _batches(srv)["requests_submitted"] < rows:
            time.sleep(0.2)
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert _batches(srv)["requests_submitted"] == rows
        time.sleep(1.0)  # the state table is written right after the last batch is created
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    stats = _batches(srv)
    assert stats["batches_created"] == 4 and stats["batches_completed"] == 0  # 2 chunks of 2,000 in 2 files each
    _batches(srv, delay_s=0)
    second = job_process(spec_path, endpoints, tmp_path / "second.log")
    assert second.wait(timeout=400) == 0, (tmp_path / "second.log").read_text()[-3000:]
    stats = _batches(srv)
    assert stats["requests_submitted"] == rows and stats["batches_created"] == 4  # nothing submitted twice
    answers = spark.read.parquet(str(warehouse / "big.db" / "answers"))
    assert answers.count() == rows and answers.select("id").distinct().count() == rows
    sample = {r["id"]: r["answer"] for r in answers.where(f"id < 5 OR id = {rows - 1}").collect()}
    assert sample == {i: simulated_answer(f"q{i}", 4)[0] for i in (0, 1, 2, 3, 4, rows - 1)}
    assert answers.where("NOT ok").count() == 0
