"""Shared fixtures: one real local Spark session, one real ``batch.serve`` process, endpoints pointing at it."""

from __future__ import annotations

import os
import secrets
import shutil

import pytest

from batch.config import registry
from batch.serve import ServerProcess
import jvm_archive
from support import FAST, QUICK_JVM, job_process, restore

JAVA = shutil.which("java") is not None

# Python workers inherit the JVM's environment, fixed when the JVM starts: the bearer token
# that token-protected endpoints read must be in place before any Spark session exists.
TOKEN_ENV = "AIQ_TEST_TOKEN"
os.environ.setdefault(TOKEN_ENV, "aiq-test-" + secrets.token_hex(12))

# Every JVM of the suite (this process's session, job processes, clusters, the Connect server) runs small
# jobs on few cores, where the quick compiler alone and a serial collector cost less CPU (tests/test_spend.py
# and tests/test_bad_input.py took 147 CPU seconds with them, 207 without); and a driver starts from the
# class-data archive `make test` builds once per machine, where there is one (tests/jvm_archive.py).
if "JDK_JAVA_OPTIONS" not in os.environ:
    os.environ["JDK_JAVA_OPTIONS"] = QUICK_JVM + (jvm_archive.options(jvm_archive.archive()) if JAVA else "")


# Fixtures that start a JVM in this process or in a job process: a test that uses one is a Spark test.
SPARK_FIXTURES = {"spark", "crashed_job"}


def pytest_collection_modifyitems(config, items):
    """A test that uses a Spark fixture must say so (``-m "not spark"`` must not start a JVM)."""
    unmarked = [item.nodeid for item in items if SPARK_FIXTURES & set(getattr(item, "fixturenames", ()))
                and not any(item.iter_markers("spark"))]
    if unmarked:
        raise pytest.UsageError("these tests start Spark but carry no spark mark:\n  "
                                + "\n  ".join(unmarked))


@pytest.fixture(scope="session")
def server():
    with ServerProcess(record=True) as srv:
        yield srv


@pytest.fixture
def srv(server):
    """The shared server, every option back as it started (seed included) and counters zeroed, for one test."""
    restore(server)
    return server


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    if not JAVA:
        pytest.skip("java is not installed: Spark tests need a JDK (17 or 21)")
    from batch._session import local_session
    session = local_session("local[2]", tmp_path_factory.mktemp("warehouse"), app_name="tests")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def endpoints(server):
    """One endpoint per api and task, all served by the shared server."""
    url = server.url
    entries = {
        "chat": dict(api="openai", base_url=url + "/v1", task="chat"),
        "completions": dict(api="openai", base_url=url + "/v1", task="completions"),
        "embed": dict(api="openai", base_url=url + "/v1", task="embeddings", batch_size=8),
        "dbx-chat": dict(api="databricks", host=url, task="chat"),
        "dbx-completions": dict(api="databricks", host=url, task="completions"),
        "dbx-embed": dict(api="databricks", host=url, task="embeddings", batch_size=8),
        "dbx-custom": dict(api="databricks", host=url, task="custom", return_type="DOUBLE", batch_size=4),
    }
    for name, entry in entries.items():
        registry.add(name, **entry, **FAST)
    return entries


@pytest.fixture(scope="session")
def token():
    """The bearer token the ``secure-chat`` endpoint sends (from ``$AIQ_TEST_TOKEN``)."""
    return os.environ[TOKEN_ENV]


@pytest.fixture(scope="session")
def more_endpoints(endpoints, server):
    """Endpoints with unusual settings: a token, many retries, a short timeout."""
    url = server.url + "/v1"
    entries = {
        "secure-chat": dict(api="openai", base_url=url, task="chat", token_env=TOKEN_ENV, **FAST),
        "patient-chat": dict(api="openai", base_url=url, task="chat", **{**FAST, "max_retries": 10}),
        "hasty-chat": dict(api="openai", base_url=url, task="chat", **{**FAST, "timeout": 0.3, "max_retries": 1}),
    }
    for name, entry in entries.items():
        registry.add(name, **entry)
    return {**endpoints, **entries}


@pytest.fixture
def task_defaults(endpoints, monkeypatch):
    """Which endpoints the task functions use when none is named."""
    registry.names()  # load the registry file first: loading replaces the defaults
    monkeypatch.setitem(registry.defaults, "chat", "chat")
    monkeypatch.setitem(registry.defaults, "embeddings", "embed")
    return dict(registry.defaults)


# ---------------------------------------------------------------- one job process, crashed mid-chunk

def _pyspark_workers(session: int) -> list[int]:
    """PySpark's forked Python workers in a process session: daemon processes (``pyspark.daemon``, or
    ``batch._daemon`` that runs it) whose parent is one too."""
    def stat(pid: str) -> list[str]:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()
        except OSError:
            return []

    def is_daemon(pid: str) -> bool:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                command = f.read()
                return b"pyspark.daemon" in command or b"batch._daemon" in command
        except OSError:
            return False
    daemons = {pid for pid in os.listdir("/proc") if pid.isdigit() and (stat(pid) or [0] * 4)[3] == str(session)
               and is_daemon(pid)}
    return [int(pid) for pid in daemons if (stat(pid) or [0, 0])[1] in daemons]


@pytest.fixture(scope="session")
def crashed_job(server, token, tmp_path_factory):
    """A job process (``python -m jobs run``, master ``local[2,4]`` so a task may fail four times) whose Python
    workers are SIGKILLed while the second of two chunks is in flight.

    Run once for the crash test (tests/test_reliability.py) and the secrets test (tests/test_secrets.py): its
    endpoint needs the bearer token, four rows are refused by the endpoint (row errors, the run still succeeds),
    and its event log is written uncompressed so both can read it.
    """
    import json
    import signal
    import time

    import yaml

    if not JAVA:
        pytest.skip("java is not installed: Spark tests need a JDK (17 or 21)")
    work = tmp_path_factory.mktemp("crashed-job")
    rows, chunk = 40, 20
    prompts = [f"worker crash prompt {i}" + (" [[fail:403]]" if i % 10 == 7 else "") for i in range(rows)]
    (work / "rows.json").write_text("".join(json.dumps({"id": i, "body": p}) + "\n" for i, p in enumerate(prompts)))
    endpoints = work / "endpoints.yaml"
    endpoints.write_text(yaml.safe_dump({"endpoints": {"crash-chat": {
        "api": "openai", "base_url": server.url + "/v1", "token_env": TOKEN_ENV, "max_concurrency": 2,
        "max_retries": 3, "initial_backoff": 0.01}}}))
    events, warehouse = work / "events", work / "warehouse"
    events.mkdir()
    spec = work / "crash.yaml"
    spec.write_text(yaml.safe_dump({
        "job": "crash", "input": {"path": str(work / "rows.json"), "format": "json", "key": "id"},
        "outputs": {"answer": {"endpoint": "crash-chat", "request": "body"}},
        "results": {"table": "crash.answers"}, "usage": {"table": "crash.usage"}, "commit_every": chunk,
        "limits": {"max_error_fraction": 0.5},
        "spark": {"master": "local[2,4]", "warehouse": str(warehouse), "conf": {
            "spark.eventLog.enabled": "true", "spark.eventLog.dir": str(events), "spark.eventLog.compress": "false"}}}))
    restore(server, latency_ms=200, token=token)
    log = work / "job.log"
    job = job_process(spec, endpoints, log)
    killed: list[int] = []
    try:
        deadline = time.monotonic() + 180
        while not killed and time.monotonic() < deadline and job.poll() is None:
            stats = server.stats()
            if stats["answered"] >= chunk + 5 and stats["in_flight"] > 0:  # inside the second chunk
                for pid in _pyspark_workers(job.pid):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.05)
        returncode = job.wait(timeout=300)
        calls = server.prompts()["calls"]
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait(timeout=30)
        restore(server)
    return dict(returncode=returncode, killed=killed, log=log, events=events, warehouse=warehouse, rows=rows,
                chunk=chunk, prompts=prompts, calls=calls, endpoints=endpoints, spec=spec)
