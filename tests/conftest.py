"""Shared fixtures: one real local Spark session, one real ``batch.serve`` process, endpoints pointing at it."""

from __future__ import annotations

import os
import secrets
import shutil

import pytest

from batch.config import registry
from batch.serve import ServerProcess

JAVA = shutil.which("java") is not None

# Python workers inherit the JVM's environment, fixed when the JVM starts: the bearer token
# that token-protected endpoints read must be in place before any Spark session exists.
TOKEN_ENV = "AIQ_TEST_TOKEN"
os.environ.setdefault(TOKEN_ENV, "aiq-test-" + secrets.token_hex(12))


@pytest.fixture(scope="session")
def server():
    with ServerProcess(record=True) as srv:
        yield srv


@pytest.fixture
def srv(server):
    """The shared server, reset to defaults and zeroed for one test."""
    server.configure(latency_ms=0, latency_jitter_ms=0, rate_limit=0, fault_rate=0.0, token=None,
                     max_prompt_chars=0, retry_after="auto", faults="500,502,503,504,429,drop,malformed,truncated",
                     stall_seconds=30, embedding_dim=16)
    server.reset()
    return server


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    if not JAVA:
        pytest.skip("java is not installed: Spark tests need a JDK (17 or 21)")
    from batch.session import local_session
    session = local_session("local[2]", tmp_path_factory.mktemp("warehouse"), app_name="tests")
    yield session
    session.stop()


FAST = dict(max_retries=4, initial_backoff=0.01, max_backoff=0.05, timeout=10.0)


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
