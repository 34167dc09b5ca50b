"""The endpoint registry: YAML with defaults, where it is found, and errors that say file, endpoint, key and line."""

from __future__ import annotations

import pickle
import re
import textwrap

import pytest

from batch.config import REGISTRY_ENV, EndpointConfig, Registry
from batch.errors import ConfigError, UnknownEndpointError


@pytest.fixture(autouse=True)
def no_env(monkeypatch, tmp_path):
    """Each test sees only the files it writes: no registry variable, no conf/ of the checkout."""
    monkeypatch.delenv(REGISTRY_ENV, raising=False)
    monkeypatch.delenv("DATABRICKS_HOST", raising=False)
    monkeypatch.chdir(tmp_path)


def write(tmp_path, text: str, name: str = "endpoints.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


TWO_LINE = """
endpoints:
  my-chat:
    base_url: http://127.0.0.1:8000/v1
  dbx-embed:
    api: databricks
    host: adb-123.azuredatabricks.net
    task: embeddings
"""


def test_two_line_entries_work_with_defaults(tmp_path):
    registry = Registry(write(tmp_path, TWO_LINE))
    chat = registry.get("my-chat")
    assert (chat.api, chat.task, chat.model_name) == ("openai", "chat", "my-chat")
    assert chat.url() == "http://127.0.0.1:8000/v1/chat/completions"
    assert chat.max_concurrency == 1024 and chat.max_retries == 8 and chat.batch_size == 64
    assert chat.timeout == 120.0 and chat.requests_per_minute is None and chat.verify_tls is True
    assert chat.token_env is None and chat.headers == ()
    embed = registry.get("dbx-embed")
    assert embed.url() == "https://adb-123.azuredatabricks.net/serving-endpoints/dbx-embed/invocations"
    assert registry.names() == ["dbx-embed", "my-chat"]


def test_full_entry(tmp_path):
    path = write(tmp_path, """
    endpoints:
      llama:
        api: openai
        base_url: http://vllm:8000/v1/
        model: meta-llama/Llama-3.1-8B-Instruct
        task: completions
        token_env: VLLM_TOKEN
        max_concurrency: 32
        requests_per_minute: 1200
        tokens_per_minute: 200000
        timeout: 30
        connect_timeout: 2.5
        max_retries: 0
        initial_backoff: 0.1
        max_backoff: 5
        batch_size: 16
        verify_tls: false
        headers:
          X-Team: data
          X-Priority: 2
      scorer:
        api: databricks
        task: custom
        return_type: "STRUCT<label: STRING, score: DOUBLE>"
        client_id_env: SP_ID
        client_secret_env: SP_SECRET
    """)
    registry = Registry(path)
    llama = registry.get("llama")
    assert llama.url() == "http://vllm:8000/v1/completions"
    assert llama.model_name == "meta-llama/Llama-3.1-8B-Instruct"
    assert (llama.max_concurrency, llama.requests_per_minute, llama.tokens_per_minute) == (32, 1200, 200000)
    assert (llama.timeout, llama.connect_timeout, llama.max_retries, llama.batch_size) == (30, 2.5, 0, 16)
    assert llama.verify_tls is False and dict(llama.headers) == {"X-Team": "data", "X-Priority": "2"}
    scorer = registry.get("scorer")
    assert scorer.return_type == "STRUCT<label: STRING, score: DOUBLE>"
    with pytest.raises(ConfigError, match="DATABRICKS_HOST"):
        scorer.url()  # the host comes from the environment when not written down


def test_databricks_host_from_environment(tmp_path, monkeypatch):
    registry = Registry(write(tmp_path, "endpoints:\n  e:\n    api: databricks\n"))
    monkeypatch.setenv("DATABRICKS_HOST", "https://my-ws.cloud.databricks.com/")
    assert registry.get("e").url() == "https://my-ws.cloud.databricks.com/serving-endpoints/e/invocations"


def test_configs_hash_and_pickle_without_values(tmp_path):
    registry = Registry(write(tmp_path, TWO_LINE))
    chat = registry.get("my-chat")
    assert hash(chat) == hash(registry.get("my-chat"))
    assert pickle.loads(pickle.dumps(chat)) == chat
    assert {chat: 1}[chat.with_overrides()] == 1
    assert chat.with_overrides(max_concurrency=8).max_concurrency == 8


def test_registry_path_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(REGISTRY_ENV, str(write(tmp_path, TWO_LINE, "elsewhere.yaml")))
    registry = Registry()
    assert str(registry.path).endswith("elsewhere.yaml")
    assert registry.get("my-chat").task == "chat"


def test_registry_environment_file_must_exist(tmp_path, monkeypatch):
    monkeypatch.setenv(REGISTRY_ENV, str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match=r"file not found.*missing\.yaml"):
        Registry().get("my-chat")


def test_default_path_may_be_absent_but_is_read_when_present(tmp_path):
    registry = Registry()
    assert registry.names() == []
    (tmp_path / "conf").mkdir()
    write(tmp_path / "conf", TWO_LINE)
    assert Registry().get("my-chat").task == "chat"


def test_explicit_path_wins_over_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(REGISTRY_ENV, str(write(tmp_path, "endpoints:\n  from-env:\n    base_url: http://e\n",
                                               "env.yaml")))
    explicit = write(tmp_path, "endpoints:\n  from-code:\n    base_url: http://c\n", "code.yaml")
    assert Registry(explicit).names() == ["from-code"]
    registry = Registry()
    assert registry.names() == ["from-env"]
    registry.load(explicit)
    assert registry.names() == ["from-code"]
    with pytest.raises(ConfigError, match="file not found"):
        Registry(tmp_path / "nope.yaml").get("x")


def test_code_added_entries_win(tmp_path):
    registry = Registry(write(tmp_path, TWO_LINE))
    registry.add("my-chat", base_url="http://other:1/v1", task="completions", max_concurrency=4)
    assert registry.get("my-chat").task == "completions"
    assert registry.get("my-chat").url() == "http://other:1/v1/completions"
    registry.load()  # re-reading the file does not undo code
    assert registry.get("my-chat").max_concurrency == 4
    added = registry.add("copy", registry.get("dbx-embed"))
    assert added.name == "copy" and added.task == "embeddings"
    registry.add("mapped", {"base_url": "http://m/v1"}, task="embeddings")
    assert registry.get("mapped").task == "embeddings"
    assert registry.names() == ["copy", "dbx-embed", "mapped", "my-chat"]


def test_a_registry_with_its_own_file_keeps_the_code_entries_and_changes_neither_side(tmp_path):
    process = Registry(write(tmp_path, "endpoints:\n  base-only:\n    base_url: http://b/v1\n", "base.yaml"))
    process.add("from-code", base_url="http://c/v1")
    job = process.with_file(write(tmp_path, TWO_LINE, "job.yaml"))
    assert job.names() == ["dbx-embed", "from-code", "my-chat"]  # the job's file, and what code added
    job.add("job-only", base_url="http://j/v1")
    process.add("later", base_url="http://l/v1")
    assert "job-only" not in process.names() and "later" not in job.names()
    with pytest.raises(ConfigError, match="not found"):
        process.with_file(tmp_path / "missing.yaml")


def test_a_job_spec_naming_no_registry_file_says_where(tmp_path):
    from jobs.spec import parse_spec

    data = {"job": "j", "endpoints": "nope.yaml", "input": {"table": "t", "key": "id"},
            "outputs": {"a": {"endpoint": "my-chat", "prompt": "{x}"}}, "results": {"table": "r"},
            "usage": {"table": "u"}}
    with pytest.raises(ConfigError) as caught:
        parse_spec(data, "job.yaml", {("endpoints",): 7})
    assert "'endpoints' names nope.yaml, which is not a file" in str(caught.value)
    assert "job.yaml:7" in str(caught.value)


def test_code_entries_are_validated_too():
    registry = Registry()
    with pytest.raises(ConfigError, match=r"endpoint 'bad': unknown key 'concurrency'"):
        registry.add("bad", base_url="http://x", concurrency=3)
    with pytest.raises(ConfigError, match=r"endpoint 'bad': max_retries must be a whole number >= 0"):
        registry.add("bad", base_url="http://x", max_retries=-1)


def test_unknown_endpoint_lists_known_names(tmp_path):
    registry = Registry(write(tmp_path, TWO_LINE))
    registry.add("in-code", base_url="http://x/v1")
    with pytest.raises(UnknownEndpointError) as info:
        registry.get("my-caht")
    message = str(info.value)
    assert "unknown endpoint 'my-caht'" in message and "endpoints.yaml" in message
    assert "Known endpoints: dbx-embed, in-code, my-chat" in message
    assert REGISTRY_ENV in message
    for bad in ("", None, 3):
        with pytest.raises(UnknownEndpointError, match="literal, non-empty name"):
            registry.get(bad)
    with pytest.raises(UnknownEndpointError, match="Known endpoints: none"):
        Registry().get("anything")


def test_default_for(tmp_path):
    path = write(tmp_path, """
    endpoints:
      chat-a:
        base_url: http://a/v1
      chat-b:
        base_url: http://b/v1
      embed:
        base_url: http://e/v1
        task: embeddings
    defaults:
      chat: chat-b
    """)
    registry = Registry(path)
    assert registry.default_for("chat") == "chat-b"
    assert registry.default_for("embeddings") == "embed"  # the only one of its task
    with pytest.raises(UnknownEndpointError, match=r"no default completions endpoint.*defaults:"):
        registry.default_for("completions")
    registry.add("embed-2", base_url="http://e2/v1", task="embeddings")
    with pytest.raises(UnknownEndpointError, match="no default embeddings endpoint"):
        registry.default_for("embeddings")  # two candidates: ambiguous, say so


def test_empty_files(tmp_path):
    assert Registry(write(tmp_path, "")).names() == []
    assert Registry(write(tmp_path, "endpoints:\n", "e.yaml")).names() == []


# ---------------------------------------------------------------- errors that say where

def error_for(tmp_path, text: str) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        Registry(path).get("anything")
    return info.value


def assert_names(error: ConfigError, *, line: int, endpoint: str | None = None, key: str | None = None) -> None:
    message = str(error)
    assert "endpoints.yaml:" + str(line) in message, message
    assert error.line == line and error.source.endswith("endpoints.yaml")
    if endpoint:
        assert f"'{endpoint}'" in message or f".{endpoint}." in message, message
    if key:
        assert re.search(rf"key '([\w.-]*\.)?{re.escape(key)}'", message), message


@pytest.mark.parametrize("text,line,endpoint,key,needle", [
    ("""
    endpoints:
      my-chat:
        base_url: http://x/v1
        concurency: 8
    """, 4, "my-chat", "concurency", "unknown key 'concurency' (known keys: api, task"),
    ("""
    endpoints:
      first:
        base_url: http://x/v1
      my-chat:
        base_url: http://x/v1
        max_concurrency: ten
    """, 6, "my-chat", "max_concurrency", "max_concurrency must be a whole number >= 1, got 'ten'"),
    ("""
    endpoints:
      my-chat:
        base_url: http://x/v1
        timeout: -3
    """, 4, "my-chat", "timeout", "timeout must be a positive number, got -3"),
    ("""
    endpoints:
      my-chat:
        base_url: http://x/v1
        requests_per_minute: "1200"
    """, 4, "my-chat", "requests_per_minute", "positive number"),
    ("""
    endpoints:
      my-chat:
        base_url: http://x/v1
        max_retries: 2.5
    """, 4, "my-chat", "max_retries", "whole number >= 0"),
    ("""
    endpoints:
      my-chat:
        base_url: http://x/v1
        batch_size: true
    """, 4, "my-chat", "batch_size", "whole number"),
    ("""
    endpoints:
      my-chat:
        base_url: 8000
    """, 3, "my-chat", "base_url", "base_url must be text"),
    ("""
    endpoints:
      my-chat:
        base_url: http://x/v1
        verify_tls: maybe
    """, 4, "my-chat", "verify_tls", "verify_tls must be true or false"),
    ("""
    endpoints:
      my-chat:
        base_url: http://x/v1
        headers: [X-Team]
    """, 4, "my-chat", "headers", "headers must map header names to values"),
    ("""
    endpoints:
      my-chat:
        base_url: http://x/v1
        api: grpc
    """, 4, "my-chat", "api", "api must be one of openai, responses, databricks, got 'grpc'"),
    ("""
    endpoints:
      my-chat:
        base_url: http://x/v1

        task: translate
    """, 5, "my-chat", "task", "task must be one of chat, completions, embeddings, custom, got 'translate'"),
    ("""
    endpoints:
      my-chat:
        base_url: http://x/v1
        token_env: sk-live-abc.def
    """, 4, "my-chat", "token_env", "names an environment variable"),
    ("""
    endpoints:
      my-chat:
        api: openai
        task: chat
    """, 2, "my-chat", "base_url", "needs base_url"),
    ("""
    endpoints:
      scorer:
        base_url: http://x/v1
        task: custom
    """, 4, "scorer", "task", "speak the databricks format"),
    ("""
    endpoints:
      sp:
        api: databricks
        client_id_env: SP_ID
    """, 4, "sp", "client_id_env", "needs both client_id_env and client_secret_env"),
    ("""
    endpoints:
      my-chat: http://x/v1
    """, 2, "my-chat", None, "must be a mapping of keys"),
])
def test_entry_errors_name_file_endpoint_key_and_line(tmp_path, text, line, endpoint, key, needle):
    error = error_for(tmp_path, text)
    assert needle in str(error)
    assert f"endpoint '{endpoint}'" in str(error)
    assert_names(error, line=line, endpoint=endpoint, key=key)
    assert error.key == key


@pytest.mark.parametrize("text,line,endpoint,key,needle", [
    ("""
    endpoints:
      my-chat:
        base_url: http://x/v1
        task: [chat
      other:
        base_url: http://y/v1
    """, 5, "my-chat", "task", "malformed YAML"),
    ("""
    endpoints:
      my-chat:
        base_url: "http://x/v1
        task: chat
    """, 5, "my-chat", "base_url", "malformed YAML"),
    ("""
    endpoints:
      my-chat:
        base_url: http://x/v1
        task: chat: again
    """, 4, "my-chat", "task", "mapping values are not allowed here"),
    ("""
    endpoints:
      my-chat:
        base_url: http://x/v1
      \tmodel: m
    """, 4, "my-chat", "model", "cannot start any token"),
])
def test_malformed_yaml_names_file_line_and_key(tmp_path, text, line, endpoint, key, needle):
    error = error_for(tmp_path, text)
    assert needle in str(error)
    assert_names(error, line=line, endpoint=endpoint, key=key)


@pytest.mark.parametrize("text,line,needle", [
    ("- a\n- b\n", 1, "top-level 'endpoints:' key"),
    ("endpoint:\n  x: {}\n", 1, "top-level 'endpoints:' key"),
    ("endpoints:\n  x:\n    base_url: http://x\nextras: 1\n", 4, "unknown top-level key 'extras'"),
    ("endpoints:\n  - x\n", 1, "'endpoints' must map endpoint names to entries"),
    ("endpoints: {}\ndefaults: [chat]\n", 2, "'defaults' must map tasks to endpoint names"),
])
def test_file_shape_errors(tmp_path, text, line, needle):
    error = error_for(tmp_path, text)
    assert needle in str(error)
    assert_names(error, line=line)


def test_unreadable_file(tmp_path):
    path = tmp_path / "endpoints.yaml"
    path.write_bytes(b"endpoints:\n  \xff\xfe: 1\n")
    with pytest.raises(ConfigError, match=r"cannot read file.*endpoints\.yaml"):
        Registry(path).get("x")


def test_config_error_fields():
    error = ConfigError("bad thing", source="conf/x.yaml", key="timeout", line=7)
    assert str(error) == "bad thing (conf/x.yaml:7, key 'timeout')"
    assert (error.reason, error.source, error.key, error.line) == ("bad thing", "conf/x.yaml", "timeout", 7)
    assert str(ConfigError("plain")) == "plain"
    assert isinstance(error, ValueError)


def test_direct_construction_errors():
    with pytest.raises(ConfigError, match="needs base_url"):
        EndpointConfig(name="x")
    with pytest.raises(ConfigError, match="name must be text"):
        EndpointConfig(name=5, base_url="http://x")
