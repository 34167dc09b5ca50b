"""Secrets: the bearer token never shows anywhere a person or a log collector could read it.

The endpoints here read their token from ``$AIQ_TEST_TOKEN`` (set by conftest before Spark starts, so
Python workers inherit it) and the server demands it. Jobs that succeed and jobs that fail, in this
process and in a job process of their own, are searched end to end: logs, stdout and stderr, exception
text, query plans, the Spark event log, and every column and every file of the results and usage tables.
TLS certificates are checked unless an entry turns it off, and ``conf/`` holds variable names, never values.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import ssl
from pathlib import Path

import aiohttp
import pytest

import batch
from batch import ai_query
from batch._client import EndpointClient
from batch.config import EndpointConfig
from jobs.runner import run_job
from jobs.spec import parse_spec
from support import tickets

ROOT = Path(__file__).resolve().parents[1]


def files_under(path: Path) -> list[Path]:
    return [p for p in Path(path).rglob("*") if p.is_file()]


def leaks(token: str, paths: list[Path]) -> list[str]:
    """Files holding the token as bytes: parquet, logs and metastore files alike."""
    needle = token.encode()
    return [str(p) for p in paths if needle in p.read_bytes()]


# ---------------------------------------------------------------- jobs in this process

def _table_text(spark, table: str) -> str:
    return "\n".join(str(row.asDict(recursive=True)) for row in spark.table(table).collect())


@pytest.mark.spark
def test_token_absent_from_logs_output_errors_plans_and_tables(spark, srv, more_endpoints, token, caplog, capsys):
    caplog.set_level(logging.INFO)
    for name in ("batch", "jobs"):
        caplog.set_level(logging.DEBUG, logger=name)
    srv.configure(token=token)
    bodies = ["a question", "retried [[flaky:2:503]]", "refused [[fail:400]]", "forbidden [[fail:403]]"]
    tickets(spark, "secret_jobs", bodies, "rows")

    def job(name: str, outputs: dict, max_error_fraction: float):
        return parse_spec({"job": name, "input": {"table": "secret_jobs.rows", "key": "id"}, "outputs": outputs,
                           "results": {"table": f"secret_jobs.{name}"}, "usage": {"table": "secret_jobs.usage"},
                           "limits": {"max_error_fraction": max_error_fraction}})
    succeeded = run_job(spark, job("good", {"answer": {"endpoint": "secure-chat", "request": "body"}}, 0.75),
                        prices={})
    # One output with the token, one without (every row refused with 401): the run fails on its error fraction.
    failed = run_job(spark, job("bad", {"answer": {"endpoint": "secure-chat", "request": "body"},
                                        "anonymous": {"endpoint": "chat", "request": "body"}}, 0.0), prices={})
    assert succeeded.ok and not failed.ok
    anonymous = spark.table("secret_jobs.bad").select("anonymous__status.error").collect()
    assert all("HTTP 401" in r.error for r in anonymous)
    df = spark.table("secret_jobs.rows").select(ai_query("secure-chat", "body", failOnError=False).alias("a"))
    df.explain(True)
    batch.sql(spark, "SELECT ai_query('secure-chat', body) AS a FROM secret_jobs.rows").explain("extended")
    with pytest.raises(Exception) as caught:
        spark.table("secret_jobs.rows").select(ai_query("secure-chat", "body")).collect()
    assert "AI_FUNCTION_HTTP_REQUEST_ERROR" in str(caught.value)
    out = capsys.readouterr()
    shown = {
        "logs": caplog.text, "stdout": out.out, "stderr": out.err, "error": str(caught.value),
        "reasons": " ".join(failed.reasons), "plans": out.out,
        "tables": "\n".join(_table_text(spark, f"secret_jobs.{t}") for t in ("good", "bad", "usage")),
    }
    assert "== Physical Plan ==" in shown["plans"] and "HTTP 401" in shown["tables"]
    assert [where for where, text in shown.items() if token in text] == []
    warehouse = Path(spark.conf.get("spark.sql.warehouse.dir").removeprefix("file:"))
    assert leaks(token, files_under(warehouse / "secret_jobs.db")) == []


# ---------------------------------------------------------------- a job process of its own

@pytest.mark.spark
def test_token_absent_from_a_job_process(crashed_job, token):
    """The ``crashed_job`` process ran with the token, lost its Python workers and had rows refused."""
    log = crashed_job["log"].read_text()
    assert crashed_job["returncode"] == 0 and "job crash run" in log
    event_files = files_under(crashed_job["events"])
    assert any("SparkListenerEnvironmentUpdate" in p.read_text(errors="replace") for p in event_files)
    searched = [crashed_job["log"], crashed_job["endpoints"], crashed_job["spec"], *event_files,
                *files_under(crashed_job["warehouse"])]
    assert len(searched) > 10
    assert leaks(token, searched) == []


# ---------------------------------------------------------------- TLS and conf/

def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _verifies(setting) -> bool:
    if isinstance(setting, ssl.SSLContext):
        return setting.verify_mode == ssl.CERT_REQUIRED and setting.check_hostname
    return setting is True or setting is None  # aiohttp's own default verifies


def test_tls_certificates_are_checked_unless_turned_off(monkeypatch):
    assert EndpointConfig(name="tls", base_url="https://example.invalid/v1").verify_tls is True
    built = []

    class Recording(aiohttp.TCPConnector):
        def __init__(self, *args, **kwargs):
            built.append(kwargs.get("ssl"))
            super().__init__(*args, **kwargs)
    monkeypatch.setattr(aiohttp, "TCPConnector", Recording)
    port = _closed_port()
    for verify in (True, False):
        client = EndpointClient(EndpointConfig(name="tls", base_url=f"https://127.0.0.1:{port}/v1", verify_tls=verify,
                                               max_retries=0, connect_timeout=2.0))

        async def call(client=client):
            try:
                return await client.call(["hello"])
            finally:
                await client.aclose()
        assert "connect" in str(asyncio.run(call()).error)  # nothing listens: the pool was built all the same
    assert len(built) == 2, "the transport no longer builds an aiohttp connector: check verification there"
    assert _verifies(built[0]) and not _verifies(built[1])


SECRET_VALUES = re.compile(r"sk-[A-Za-z0-9_-]{16,}|dapi[0-9a-f]{16,}|Bearer\s+[A-Za-z0-9._~+/-]{8,}|"
                           r"ghp_[A-Za-z0-9]{20,}|AKIA[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY-----")
SECRET_KEY = re.compile(r"[\w-]*(token|secret|password|passwd|api[_-]?key|access[_-]?key|credentials?)", re.I)
KEY_LINE = re.compile(r"^\s*#?\s*-?\s*[\"']?([\w-]+)[\"']?\s*[:=]\s*(.*?)\s*$")


def test_conf_holds_no_credentials(token):
    files = [p for p in files_under(ROOT / "conf") if p.suffix in (".yaml", ".yml", ".json", ".csv", ".txt", ".toml",
                                                                   ".ini", ".cfg", ".env", "")]
    assert files
    found = []
    for path in files:
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            where = f"{path.relative_to(ROOT)}:{number}"
            if SECRET_VALUES.search(line) or token in line:
                found.append(where)
            match = KEY_LINE.match(line)
            if match and SECRET_KEY.fullmatch(match.group(1)) and match.group(2) not in ("", "null", "~", "''", '""'):
                found.append(f"{where} ({match.group(1)} holds a value; name a variable with {match.group(1)}_env)")
    assert found == []
