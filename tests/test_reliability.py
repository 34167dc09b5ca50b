"""Faults and crashes through real Spark and real HTTP: every row answered correctly, none lost, none twice.

Faults come from ``batch.serve``: scripted per row (``[[flaky:N:KIND]]``, so every kind is seen in one
query) and at a set rate (``fault_rate`` / ``faults``). The endpoints here retry often with tiny backoff and
a one-second timeout, so a stall past the timeout costs a second and not a minute. 429s at a set rate are
survived, but they hold the learned pace at about half the best rate (``benchmarks/throughput.py faults``
measures what that costs), so the 5,000-row job draws from every other transient kind.

Crashes: Python workers killed mid-task are retried by Spark (the ``crashed_job`` fixture in conftest.py,
a job process with ``local[2,4]`` so that a task may fail up to four times); a job process killed mid-run
and resumed is ``test_jobs.py::test_resume_after_the_job_process_is_killed``. Speculative execution, which
Spark only runs on a host other than the one already running the task (never in local mode), runs on a
standalone cluster whose workers listen on different loopback addresses.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest
import yaml
from pyspark.sql import functions as F

from batch import ai_query
from batch.config import registry
from batch.serve import simulated_answer
from jobs.runner import run_job
from jobs.spec import parse_spec
from spark_cluster import LOOPBACK, StandaloneCluster, java_available, spark_env
from support import job_process

pytestmark = pytest.mark.spark

ROOT = Path(__file__).resolve().parents[1]
RATE_LIMITS = ["429", "429-bare", "dbx-limit"]
RETRYABLE = RATE_LIMITS + ["500", "502", "503", "504", "drop", "stall", "malformed", "truncated", "dbx-unavailable"]
# A 1 s timeout against stalls of 2 s; the in-flight cap is what one simulator process answers within that
# timeout on a busy 2-core machine (at the default 1,024 per worker, 5,000 rows at once time out and are paid twice).
PATIENT = dict(max_retries=10, initial_backoff=0.01, max_backoff=0.05, timeout=1.0, max_concurrency=256)
STALL_SECONDS = 2


@pytest.fixture(scope="module")
def patient(server):
    registry.add("rel-chat", api="openai", base_url=server.url + "/v1", task="chat", **PATIENT)
    registry.add("rel-dbx", api="databricks", host=server.url, task="chat", **PATIENT)


def answer(prompt):
    return simulated_answer(prompt)[0]


def settle(srv, timeout: float = 10.0) -> None:
    """Wait for stalled requests the client gave up on, so they cannot touch the next test's counters."""
    deadline = time.monotonic() + timeout
    while srv.stats()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)


# ---------------------------------------------------------------- each fault kind, scripted per row

def test_every_fault_kind_through_spark(spark, srv, patient):
    """Each row fails as its directive says (twice, then answers); the refused row is a row error."""
    srv.configure(stall_seconds=STALL_SECONDS)
    prompts = [f"matrix {kind} [[flaky:2:{kind}]]" for kind in RETRYABLE] + ["plain matrix row"]
    refused = "matrix [[flaky:1:dbx-bad-request]]"
    df = spark.createDataFrame([(p,) for p in prompts + [refused]], "p string").repartition(2)
    try:
        rows = {r.p: r.a for r in df.select("p", ai_query("rel-dbx", "p", failOnError=False).alias("a")).collect()}
        assert sorted(rows) == sorted(prompts + [refused])
        for prompt in prompts:
            assert rows[prompt].result == answer(prompt) and rows[prompt].errorMessage is None, rows[prompt]
        assert rows[refused].result is None
        assert "HTTP 400" in rows[refused].errorMessage and "BAD_REQUEST" in rows[refused].errorMessage
        stats = srv.stats()
        assert stats["faults"] == {**{kind: 2 for kind in RETRYABLE}, "dbx-bad-request": 1}
        assert stats["requests"] == 3 * len(RETRYABLE) + 1 + 1  # retried twice each; the refusal is not retried
        assert srv.prompts()["answered"] == {prompt: 1 for prompt in prompts}
    finally:
        settle(srv)


def test_rate_limit_faults_at_a_set_rate_through_spark(spark, srv, patient):
    srv.configure(fault_rate=0.2, faults="429,429-bare,dbx-limit", seed=5)
    prompts = [f"limited question {i}" for i in range(40)]
    df = spark.createDataFrame([(p,) for p in prompts], "p string").repartition(2)
    rows = df.select("p", ai_query("rel-chat", "p").alias("a")).collect()
    assert sorted(r.p for r in rows) == sorted(prompts) and all(r.a == answer(r.p) for r in rows)
    stats = srv.stats()
    assert stats["by_status"]["429"] == sum(stats["faults"].values()) > 0
    assert stats["answered"] == len(prompts)


def test_databricks_bad_request_is_a_row_error_not_retried(spark, srv, patient):
    srv.configure(fault_rate=0.4, faults="dbx-bad-request", seed=3)
    prompts = [f"refused question {i}" for i in range(24)]
    df = spark.createDataFrame([(p,) for p in prompts], "p string").coalesce(1)
    rows = df.select("p", ai_query("rel-dbx", "p", failOnError=False).alias("a")).collect()
    failed = [r for r in rows if r.a.errorMessage is not None]
    assert len(failed) == srv.stats()["faults"]["dbx-bad-request"] > 0
    for row in failed:
        assert row.a.result is None
        assert "HTTP 400" in row.a.errorMessage and "BAD_REQUEST: Simulated bad request" in row.a.errorMessage
    assert all(r.a.result == answer(r.p) for r in rows if r.a.errorMessage is None)
    assert srv.stats()["requests"] == len(prompts)


# ---------------------------------------------------------------- every kind at once, 5,000 rows

def test_a_5000_row_job_with_a_fifth_of_requests_faulted(spark, srv, patient):
    """Every transient kind but the 429s, which the next test shows the pace cannot take at this rate yet."""
    rows = 5000
    transient = [kind for kind in RETRYABLE if kind not in RATE_LIMITS]
    srv.configure(fault_rate=0.2, faults=",".join(transient), stall_seconds=STALL_SECONDS, seed=2024)
    spark.sql("DROP DATABASE IF EXISTS rel_big CASCADE")
    spark.sql("CREATE DATABASE rel_big")
    (spark.range(rows).select(F.col("id").cast("int").alias("id"),
                              F.concat(F.lit("faulty question "), F.col("id").cast("string")).alias("body"))
     .write.format("parquet").saveAsTable("rel_big.rows"))
    spec = parse_spec({"job": "faulty", "input": {"table": "rel_big.rows", "key": "id"},
                       "outputs": {"answer": {"endpoint": "rel-dbx", "request": "body"}},
                       "results": {"table": "rel_big.answers"}, "usage": {"table": "rel_big.usage"},
                       "limits": {"max_error_fraction": 0.0}, "commit_every": rows})
    try:
        result = run_job(spark, spec, prices={})
        assert result.ok and result.rows_in == rows and result.rows_failed == 0, result.reasons
        written = spark.table("rel_big.answers").select("id", "answer", "ok").collect()
        assert len(written) == rows and len({r.id for r in written}) == rows
        assert all(r.ok and r.answer == answer(f"faulty question {r.id}") for r in written)
        stats = srv.stats()
        assert set(stats["faults"]) == set(transient)
        assert sum(stats["faults"].values()) > 0.15 * stats["requests"]
        assert stats["answered"] == rows  # no row paid for twice
        usage = spark.table("rel_big.usage").collect()[0]
        assert usage["requests"] == rows and usage["rows_failed"] == 0
        assert usage["retries"] == stats["requests"] - rows  # every faulted attempt was seen and retried
        assert usage["rate_limited"] == 0
    finally:
        settle(srv)


# ---------------------------------------------------------------- a Python worker killed mid-task

def events(event_dir: Path, name: str) -> list[dict]:
    found = []
    for path in event_dir.rglob("events_*"):
        for line in path.read_text(errors="replace").splitlines():
            event = json.loads(line)
            if event.get("Event") == name:
                found.append(event)
    return found


def test_a_killed_python_worker_is_retried_and_writes_each_key_once(spark, crashed_job):
    """The job process of the ``crashed_job`` fixture lost its Python workers mid-chunk; Spark ran the tasks again."""
    job = crashed_job
    assert job["killed"], job["log"].read_text()[-3000:]
    assert job["returncode"] == 0, job["log"].read_text()[-3000:]
    failed = [e for e in events(job["events"], "SparkListenerTaskEnd") if e["Task End Reason"]["Reason"] != "Success"]
    assert failed, "no task failed: the kill missed every running task"
    final = spark.read.parquet(str(job["warehouse"] / "crash.db" / "answers")).collect()
    assert sorted(r.id for r in final) == list(range(job["rows"]))  # every key once
    for row in final:
        prompt = job["prompts"][row.id]
        if "[[fail:403]]" in prompt:
            assert not row.ok and "HTTP 403" in row.answer__status.error
        else:
            assert row.ok and row.answer == answer(prompt)
    again = {p for p, n in job["calls"].items() if n > 1 and "[[fail" not in p}
    assert len(again) <= job["chunk"]  # only rows of the chunk in flight were asked again
    assert len({r.run_chunk for r in final if job["prompts"][r.id] in again}) <= 1


# ---------------------------------------------------------------- speculative execution

class SpreadCluster(StandaloneCluster):
    """A standalone cluster whose workers listen on 127.0.0.2, 127.0.0.3, ...: Spark starts a speculative copy
    only on a host other than the one already running the task, so one address for all would never speculate
    (nor does local mode, at all)."""

    def start(self) -> SpreadCluster:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = spark_env(self.workdir, {"SPARK_DAEMON_MEMORY": "256m"})
        try:
            self._launch("master", ["org.apache.spark.deploy.master.Master", "--host", LOOPBACK,
                                    "--port", str(self.port), "--webui-port", str(self.ui_port)], env)
            for i in range(self.workers):  # workers keep trying the master until it is up
                host, work = f"127.0.0.{i + 2}", self.workdir / f"worker-{i}"
                work.mkdir(exist_ok=True)
                self._launch(f"worker-{i}", [
                    "org.apache.spark.deploy.worker.Worker", "--host", host, "--cores", str(self.cores),
                    "--memory", self.memory, "--work-dir", str(work), "--webui-port", "0", self.master_url],
                    {**env, "SPARK_LOCAL_IP": host})
            self._wait(lambda s: s.get("aliveworkers", 0) >= self.workers, f"{self.workers} workers")
        except BaseException:
            self.stop()
            raise
        return self


def _loopback_aliases() -> bool:
    try:
        with socket.socket() as sock:
            sock.bind(("127.0.0.3", 0))
        return True
    except OSError:
        return False


SPECULATE = {"spark.speculation": "true", "spark.speculation.multiplier": "1.1", "spark.speculation.quantile": "0.1",
             "spark.speculation.minTaskRuntime": "100ms", "spark.speculation.interval": "50ms",
             "spark.speculation.efficiency.enabled": "false",
             "spark.locality.wait": "0"}  # else both tasks of a stage may queue for one executor, one after the other


@pytest.mark.cluster
def test_speculation_writes_each_key_once(spark, srv, tmp_path):
    if not java_available() or not _loopback_aliases():
        pytest.skip("needs a JDK and loopback addresses beyond 127.0.0.1 (Linux has all of 127.0.0.0/8)")
    rows, chunk = 24, 12
    srv.configure(latency_ms=20, latency_jitter_ms=200, stall_seconds=3)
    # The first row of each chunk stalls past the timeout once, so its task runs long and gets a copy.
    bodies = [f"speculative prompt {i}" + (" [[flaky:1:stall]]" if i % chunk == 0 else "") for i in range(rows)]
    data, endpoints, event_dir = tmp_path / "rows.json", tmp_path / "endpoints.yaml", tmp_path / "events"
    data.write_text("".join(json.dumps({"id": i, "body": b}) + "\n" for i, b in enumerate(bodies)))
    endpoints.write_text(yaml.safe_dump({"endpoints": {"spec-chat": {
        "api": "openai", "base_url": srv.url + "/v1", "max_concurrency": 4, "timeout": 2.0, "max_retries": 3,
        "initial_backoff": 0.01}}}))
    event_dir.mkdir()
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "job": "spec", "input": {"path": str(data), "format": "json", "key": "id"},
        "outputs": {"answer": {"endpoint": "spec-chat", "request": "body"}},
        "results": {"table": "spec.answers"}, "usage": {"table": "spec.usage"}, "commit_every": chunk,
        "limits": {"max_error_fraction": 0.0},
        "spark": {"warehouse": str(tmp_path / "warehouse"), "conf": {
            **SPECULATE, "spark.executor.memory": "512m", "spark.executor.cores": "1",
            "spark.sql.catalogImplementation": "in-memory",  # tables in the warehouse, no metastore to start
            "spark.eventLog.enabled": "true", "spark.eventLog.dir": str(event_dir),
            "spark.eventLog.compress": "false"}}}))
    log = tmp_path / "job.log"
    with SpreadCluster(tmp_path / "cluster", workers=2, cores=1, memory="600m") as cluster:
        job = job_process(spec, endpoints, log, "--master", cluster.master_url)
        try:
            assert job.wait(timeout=300) == 0, log.read_text()[-3000:] + cluster.logs()
        finally:
            if job.poll() is None:
                os.killpg(job.pid, signal.SIGKILL)
                job.wait(timeout=30)
    final = spark.read.parquet(str(tmp_path / "warehouse" / "spec.db" / "answers")).collect()
    assert sorted(r.id for r in final) == list(range(rows))  # every key once
    assert all(r.ok and r.answer == answer(bodies[r.id]) for r in final)
    starts = [e for e in events(event_dir, "SparkListenerTaskStart") if e["Task Info"]["Speculative"]]
    assert starts, "no speculative attempt started: the test proved nothing"
    # A copy of a chunk's task finds what the original already paid for in the host answer memo: only rows
    # still in flight when the copy reached them (at most max_concurrency per copy) can be asked twice.
    again = sum(n - 1 for p, n in srv.prompts()["calls"].items() if "[[" not in p)
    assert again <= 4 * len(starts), log.read_text()[-2000:]
