"""Endpoint configuration: typed, validated entries and the registry that names them.

A registry entry holds *names* of credential variables, never their values, so an
``EndpointConfig`` can travel inside a Spark plan or a pickled UDF without leaking
anything. Values are read where requests are sent (see ``batch._auth``).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Mapping

from ._yaml import Lines, line_of, load_yaml
from .errors import ConfigError, UnknownEndpointError

__all__ = ["EndpointConfig", "Registry", "registry", "get_endpoint", "add_endpoint",
           "DEFAULT_REGISTRY_PATH", "REGISTRY_ENV"]

REGISTRY_ENV = "BATCH_ENDPOINTS"
DEFAULT_REGISTRY_PATH = Path("conf") / "endpoints.yaml"

# openai: Chat Completions, Completions and Embeddings; responses: OpenAI's Responses API (chat only);
# databricks: the serving endpoints' invocations path.
APIS = ("openai", "responses", "databricks")
TASKS = ("chat", "completions", "embeddings", "custom")


@dataclass(frozen=True)
class EndpointConfig:
    """One model serving endpoint. A two-line entry (api + base_url or host) works; the rest has defaults.

    ``return_type`` is a custom model's known output type (DDL), so calls need not repeat it.
    ``max_concurrency`` bounds requests in flight per Python worker process; the in-flight limit
    grows to it (slow start, Little's law) while the learned rate decides how fast requests go
    (``batch._flow``, ``docs/flow-control.md``). 1,024 lets one worker keep 1,000 requests a second
    going at 1 s latency, and a 10 s reasoning model 100 a second. ``requests_per_minute`` /
    ``tokens_per_minute`` are the endpoint's whole budget: the UDF layer splits it between concurrently
    running tasks.

    Units: ``timeout`` (per request, 120 s), ``connect_timeout``, ``initial_backoff`` and
    ``max_backoff`` are seconds; ``max_retries`` counts retries after the first attempt; ``batch_size``
    is inputs per request for the tasks that take several (embeddings, custom models). ``token_env``,
    ``client_id_env``, ``client_secret_env`` and ``host_env`` name environment variables, never their
    values. Raises ConfigError naming the key when a value is wrong.
    """

    name: str
    api: str = "openai"
    task: str = "chat"
    base_url: str | None = None
    host: str | None = None
    host_env: str = "DATABRICKS_HOST"
    model: str | None = None
    token_env: str | None = None
    client_id_env: str | None = None
    client_secret_env: str | None = None
    max_concurrency: int = 1024
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    timeout: float = 120.0
    connect_timeout: float = 10.0
    max_retries: int = 8
    initial_backoff: float = 0.5
    max_backoff: float = 30.0
    batch_size: int = 64
    return_type: str | None = None
    verify_tls: bool = True
    headers: Mapping[str, str] | tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.headers, Mapping):  # kept as sorted pairs so configs hash as cache keys
            object.__setattr__(self, "headers", tuple(sorted((str(k), str(v)) for k, v in self.headers.items())))
        for name in ("name", "base_url", "host", "model", "return_type"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"{name} must be text, got {value!r}", key=name)
        if not isinstance(self.verify_tls, bool):
            raise ConfigError(f"verify_tls must be true or false, got {self.verify_tls!r}", key="verify_tls")
        if not (isinstance(self.headers, tuple) and all(
                isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(p, str) for p in pair)
                for pair in self.headers)):
            raise ConfigError(f"headers must map header names to values, got {self.headers!r}", key="headers")
        _check_choice("api", self.api, APIS)
        _check_choice("task", self.task, TASKS)
        if self.api in ("openai", "responses") and not self.base_url:
            raise ConfigError(f"an {self.api} endpoint needs base_url (e.g. http://127.0.0.1:8000/v1)", key="base_url")
        if self.api == "responses" and self.task != "chat":
            raise ConfigError(f"the Responses API answers chat only; for {self.task} use api: openai", key="task")
        if self.task == "custom" and self.api != "databricks":
            raise ConfigError("custom-model endpoints speak the databricks format: set api: databricks", key="task")
        for name in ("max_concurrency", "max_retries", "batch_size"):
            value = getattr(self, name)
            least = 0 if name == "max_retries" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"{name} must be a whole number >= {least}, got {value!r}", key=name)
        for name in ("timeout", "connect_timeout", "initial_backoff", "max_backoff",
                     "requests_per_minute", "tokens_per_minute"):
            value = getattr(self, name)
            if value is None and name.endswith("per_minute"):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"{name} must be a positive number, got {value!r}", key=name)
        for secretish in ("token_env", "client_id_env", "client_secret_env", "host_env"):
            value = getattr(self, secretish)
            if value is not None and (not isinstance(value, str) or not value.replace("_", "").isalnum()):
                raise ConfigError(f"{secretish} names an environment variable (like OPENAI_API_KEY), "
                                  "not a value", key=secretish)
        if bool(self.client_id_env) != bool(self.client_secret_env):
            raise ConfigError("OAuth needs both client_id_env and client_secret_env", key="client_id_env")

    @property
    def model_name(self) -> str:
        return self.model or self.name

    def resolved_host(self) -> str:
        """The workspace URL of a databricks endpoint: ``host``, else ``$<host_env>``. Raises ConfigError."""
        host = self.host or os.environ.get(self.host_env)
        if not host:
            raise ConfigError(f"databricks endpoint '{self.name}' needs host, or the variable {self.host_env} set",
                              key="host")
        return host if "://" in host else "https://" + host

    def url(self) -> str:
        """Where requests go: the seed's invocations path for databricks, the OpenAI paths otherwise."""
        if self.api == "databricks":
            return f"{self.resolved_host().rstrip('/')}/serving-endpoints/{self.model_name}/invocations"
        if self.api == "responses":
            return f"{self._base_url()}/responses"
        path = {"chat": "chat/completions", "completions": "completions", "embeddings": "embeddings"}[self.task]
        return f"{self._base_url()}/{path}"

    def _base_url(self) -> str:
        """base_url without a trailing slash; __post_init__ already requires it of every api but databricks."""
        if self.base_url is None:
            raise ConfigError(f"an {self.api} endpoint needs base_url (e.g. http://127.0.0.1:8000/v1)", key="base_url")
        return self.base_url.rstrip("/")

    def with_overrides(self, **changes: Any) -> EndpointConfig:
        """A copy with ``changes`` (field names as keys), checked as a new entry is: raises ConfigError."""
        return dataclasses.replace(self, **changes)


_FIELDS = {f.name: f for f in dataclasses.fields(EndpointConfig)}


def _check_choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}, got {value!r}", key=key)


def _endpoint_from_mapping(name: str, entry: Any, *, source: str = "<code>", lines: Lines | None = None,
                           prefix: tuple[str, ...] = ()) -> EndpointConfig:
    """Build an entry from plain data, turning every problem into an error that names file, endpoint, key, line."""
    lines = lines or {}
    where = dict(source=source)
    if not isinstance(entry, Mapping):
        raise ConfigError(f"endpoint '{name}' must be a mapping of keys", line=line_of(lines, *prefix, name), **where)
    for key in entry:
        if key not in _FIELDS or key == "name":
            known = ", ".join(k for k in _FIELDS if k != "name")
            raise ConfigError(f"endpoint '{name}': unknown key '{key}' (known keys: {known})", key=str(key),
                              line=line_of(lines, *prefix, name, str(key)), **where)
    try:
        return EndpointConfig(name=name, **dict(entry))
    except ConfigError as exc:
        raise ConfigError(f"endpoint '{name}': {exc.reason}", key=exc.key,
                          line=line_of(lines, *prefix, name, exc.key or ""), **where) from None
    except TypeError as exc:
        raise ConfigError(f"endpoint '{name}': {exc}", line=line_of(lines, *prefix, name), **where) from None


class Registry:
    """Endpoint names to configs: a YAML file plus entries added in code (code wins)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self._lock = threading.Lock()
        self._explicit_path = Path(path) if path else None
        self._file_entries: dict[str, EndpointConfig] | None = None
        self._code_entries: dict[str, EndpointConfig] = {}
        self.defaults: dict[str, str] = {}

    @property
    def path(self) -> Path:
        if self._explicit_path:
            return self._explicit_path
        env = os.environ.get(REGISTRY_ENV)
        return Path(env) if env else DEFAULT_REGISTRY_PATH

    def load(self, path: str | Path | None = None) -> Registry:
        """(Re)read the file; an explicit path or ``$BATCH_ENDPOINTS`` must exist, the default may not."""
        with self._lock:
            if path:
                self._explicit_path = Path(path)
            self._file_entries = self._read()
        return self

    def _read(self) -> dict[str, EndpointConfig]:
        path = self.path
        must_exist = self._explicit_path is not None or REGISTRY_ENV in os.environ
        if not path.exists() and not must_exist:
            return {}
        data, lines = load_yaml(path)
        source = str(path)
        if data is None:
            return {}
        if not isinstance(data, Mapping) or "endpoints" not in data:
            raise ConfigError("an endpoint registry is a mapping with a top-level 'endpoints:' key",
                              source=source, line=1)
        extra = set(data) - {"endpoints", "defaults"}
        if extra:
            key = sorted(map(str, extra))[0]
            raise ConfigError(f"unknown top-level key '{key}' (known: endpoints, defaults)", source=source,
                              key=key, line=line_of(lines, key))
        endpoints = data["endpoints"] or {}
        if not isinstance(endpoints, Mapping):
            raise ConfigError("'endpoints' must map endpoint names to entries", source=source,
                              line=line_of(lines, "endpoints"))
        defaults = data.get("defaults") or {}
        if not isinstance(defaults, Mapping):
            raise ConfigError("'defaults' must map tasks to endpoint names", source=source,
                              line=line_of(lines, "defaults"))
        self.defaults = {str(k): str(v) for k, v in defaults.items()}
        return {str(name): _endpoint_from_mapping(str(name), entry, source=source, lines=lines, prefix=("endpoints",))
                for name, entry in endpoints.items()}

    def with_file(self, path: str | Path) -> Registry:
        """A registry reading ``path`` (which must exist), with a copy of the entries added in code so far, which
        still win: how a job's ``endpoints:`` key or ``--endpoints`` picks its file without changing this one.

        Raises ConfigError when the file is missing or malformed."""
        other = Registry(path)
        with self._lock:
            other._code_entries = dict(self._code_entries)
        return other.load()

    def add(self, name: str, config: EndpointConfig | Mapping[str, Any] | None = None, **keys: Any) -> EndpointConfig:
        """Add or replace an entry from code: ``registry.add("my-chat", base_url=..., task="chat")``."""
        if isinstance(config, EndpointConfig):
            entry = config if config.name == name else config.with_overrides(name=name)
        else:
            entry = _endpoint_from_mapping(name, {**(config or {}), **keys})
        with self._lock:
            self._code_entries[name] = entry
        return entry

    def names(self) -> list[str]:
        """Every endpoint name, from the file and from code, sorted."""
        return sorted(set(self._entries()) | set(self._code_entries))

    def _entries(self) -> dict[str, EndpointConfig]:
        if self._file_entries is None:
            self.load()
        return self._file_entries or {}

    def get(self, name: str) -> EndpointConfig:
        """The entry named ``name`` (code wins over the file). Raises UnknownEndpointError listing the known ones."""
        if not isinstance(name, str) or not name:
            raise UnknownEndpointError(f"the endpoint must be a literal, non-empty name, got {name!r}")
        if name in self._code_entries:
            return self._code_entries[name]
        entries = self._entries()
        if name in entries:
            return entries[name]
        known = ", ".join(self.names()) or "none"
        raise UnknownEndpointError(
            f"unknown endpoint '{name}': not in the registry {self.path} (set ${REGISTRY_ENV} or add it in "
            f"code with batch.add_endpoint). Known endpoints: {known}")

    def default_for(self, task: str) -> str:
        """The endpoint task functions (ai_summarize, ...) use: ``defaults:`` in the file, else one of that task."""
        self._entries()
        if task in self.defaults:
            return self.defaults[task]
        candidates = [n for n in self.names() if self.get(n).task == task]
        if len(candidates) == 1:
            return candidates[0]
        raise UnknownEndpointError(
            f"no default {task} endpoint: add 'defaults: {{{task}: <name>}}' to {self.path} or pass endpoint=")


registry = Registry()


def get_endpoint(name: str) -> EndpointConfig:
    """The endpoint config named ``name`` in the process-wide registry (entries added in code, then the
    file at ``$BATCH_ENDPOINTS`` or ``conf/endpoints.yaml``). Raises UnknownEndpointError naming the known ones."""
    return registry.get(name)


def add_endpoint(name: str, config: EndpointConfig | Mapping[str, Any] | None = None, **keys: Any) -> EndpointConfig:
    """Add or replace ``name`` in the process-wide registry from code; it wins over the registry file.

    ``config`` is an ``EndpointConfig`` or a mapping of its keys, ``keys`` more of them
    (``add_endpoint("my-chat", base_url="http://127.0.0.1:8000/v1", task="chat")``). Returns the config.
    Raises ConfigError naming the key when a value is wrong."""
    return registry.add(name, config, **keys)
