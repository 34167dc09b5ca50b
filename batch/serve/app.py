"""A local model-serving endpoint that speaks the OpenAI and Databricks wire formats.

It exists so tests, benchmarks and the demo can drive real HTTP traffic with
controlled latency, rate caps and faults. Answers come from the simulator in
``simulate.py``. The hot path avoids logging and per-request allocation beyond
one JSON document so a single core serves thousands of requests per second.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import collections
import hmac
import itertools
import json
import os
import random
import secrets
import signal
import struct
import time
from typing import Any

from aiohttp import web

from . import limits
from . import simulate as sim

FAULT_KINDS = frozenset(
    "429 429-bare 500 502 503 504 drop stall malformed truncated unexpected "
    "dbx-limit dbx-unavailable dbx-bad-request "
    "quota html-502 body-400 body-429 body-500 body-503".split()  # body-NNN: that error inside a 200
)
QUOTA_MESSAGE = ("You exceeded your current quota, please check your plan and billing details. For more "
                 "information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.")
NGINX_502 = (b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway"
             b"</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")
DEFAULT_FAULTS = "500,502,503,504,429,drop,malformed,truncated"
TASKS = ("chat", "completions", "embeddings", "custom")
CUSTOM_KEYS = ("dataframe_records", "dataframe_split", "instances", "inputs")
SECRET_OPTIONS = ("token", "oauth_client_secret")
FIXED_OPTIONS = ("host", "port")
DBX_CODES = {
    400: "BAD_REQUEST", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
    404: "RESOURCE_DOES_NOT_EXIST", 409: "RESOURCE_CONFLICT", 429: "REQUEST_LIMIT_EXCEEDED",
    500: "INTERNAL_ERROR", 501: "NOT_IMPLEMENTED", 503: "TEMPORARILY_UNAVAILABLE",
}
OPENAI_TYPES = {
    400: ("invalid_request_error", "invalid_request"), 401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "permission_denied"), 404: ("not_found_error", "not_found"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}
STATE = web.AppKey("state", object)
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


# ---------------------------------------------------------------- options

def _optional_float(value: Any) -> float | None:
    return None if value in (None, "", "auto") else float(value)


def _retry_after(value: Any) -> str | float:
    if isinstance(value, str) and value.lower() in ("auto", "none"):
        return value.lower()
    seconds = float(value)
    if seconds < 0:
        raise ValueError("retry_after must be auto, none or a number of seconds >= 0")
    return seconds


def _secret(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


def _fault_list(value: Any) -> list[str]:
    kinds = value.split(",") if isinstance(value, str) else list(value)
    kinds = [str(k).strip() for k in kinds if str(k).strip()]
    unknown = [k for k in kinds if k not in FAULT_KINDS]
    if unknown:
        raise ValueError(f"unknown fault kinds {unknown}; known: {sorted(FAULT_KINDS)}")
    return kinds


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


OPTIONS: dict[str, tuple[Any, Any, str]] = {
    "host": (str, "127.0.0.1", "interface to listen on"),
    "port": (int, 0, "port; 0 picks a free one"),
    "latency_ms": (float, 0.0, "fixed latency added to every data-plane answer"),
    "latency_jitter_ms": (float, 0.0, "uniform random extra latency, 0..this"),
    "rate_limit": (float, 0.0, "requests per second cap; 0 means none"),
    "burst": (_optional_float, None, "token bucket size; default max(1, rate/10)"),
    "retry_after": (_retry_after, "auto", "auto, none or seconds for 429 Retry-After headers"),
    "token": (_secret, None, "bearer token data-plane requests must carry (or $BATCH_SERVE_TOKEN)"),
    "oauth_client_id": (_secret, None, "enables the OAuth client_credentials token endpoint"),
    "oauth_client_secret": (_secret, None, "OAuth client secret (or $BATCH_SERVE_OAUTH_CLIENT_SECRET)"),
    "oauth_ttl": (float, 3600.0, "lifetime of issued OAuth tokens, seconds"),
    "fault_rate": (float, 0.0, "share of data-plane requests that get a random fault"),
    "faults": (_fault_list, DEFAULT_FAULTS, "comma list of fault kinds to draw from"),
    "stall_seconds": (float, 30.0, "how long a stall fault waits before answering"),
    "max_prompt_chars": (int, 0, "longer prompts get a 400 context-length error; 0 = unlimited"),
    "embedding_dim": (int, 16, "embedding vector size"),
    "seed": (int, 0, "seed for fault and jitter draws"),
    "record": (_flag, False, "record per-prompt call counts and the last 200 bodies"),
    **limits.OPTIONS,
}


def default_options() -> dict[str, Any]:
    return {name: convert(default) for name, (convert, default, _) in OPTIONS.items()}


def apply_options(options: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """Validate every change before applying any, so a bad request changes nothing."""
    unknown = sorted(set(changes) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown options {unknown}")
    updated = dict(options)
    for name, value in changes.items():
        convert, default, _ = OPTIONS[name]
        try:
            updated[name] = convert(default if value is None else value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"bad value for {name}: {exc}") from None
    return updated


def public_options(options: dict[str, Any]) -> dict[str, Any]:
    shown = dict(options)
    for name in SECRET_OPTIONS:
        shown[name] = "***" if options[name] else None
    return shown


# ---------------------------------------------------------------- state

class Stats:
    """Plain counters; a snapshot is built only when asked for."""

    def __init__(self) -> None:
        self.requests = self.answered = self.inputs = self.inputs_received = 0
        self.in_flight = self.max_in_flight = self.rate_limited = self.dropped = 0
        self.auth_failures = self.oauth_tokens_issued = 0
        self.prompt_tokens = self.completion_tokens = 0
        self.by_status: collections.Counter = collections.Counter()
        self.by_task: collections.Counter = collections.Counter({t: 0 for t in TASKS})
        self.faults: collections.Counter = collections.Counter()
        self.per_second: list[int] = []
        self.started_at = time.time()
        self.origin = time.monotonic()

    def accept(self) -> None:
        second = int(time.monotonic() - self.origin)
        counts = self.per_second
        if second >= len(counts):
            counts.extend([0] * (second + 1 - len(counts)))
        counts[second] += 1

    def snapshot(self, in_flight: int) -> dict[str, Any]:
        return {
            "requests": self.requests, "answered": self.answered,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "by_task": dict(self.by_task), "inputs": self.inputs,
            "inputs_received": self.inputs_received, "in_flight": in_flight,
            "max_in_flight": self.max_in_flight, "rate_limited": self.rate_limited,
            "faults": dict(self.faults), "dropped": self.dropped,
            "auth_failures": self.auth_failures, "oauth_tokens_issued": self.oauth_tokens_issued,
            "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "per_second": list(self.per_second), "started_at": self.started_at,
            "elapsed_s": time.monotonic() - self.origin,
        }


class State:
    """Everything one server instance remembers between requests."""

    def __init__(self, options: dict[str, Any]):
        self.options = options
        self.issued: dict[str, float] = {}
        self.ids = itertools.count(1)
        self.in_flight = 0
        self.configure({})
        self.reset()

    def configure(self, changes: dict[str, Any]) -> None:
        fixed = [k for k in FIXED_OPTIONS if k in changes and changes[k] != self.options[k]]
        if fixed:
            raise ValueError(f"{fixed} cannot change while the server runs")
        self.options = apply_options(self.options, changes)
        opts = self.options
        if not changes or any(name in changes for name in limits.RATE_OPTIONS):
            self.limiter = limits.build(opts)
        self.auth_required = bool(opts["token"] or opts["oauth_client_id"])
        if not changes or "seed" in changes:
            self.rng = random.Random(opts["seed"])
            self.jitter = random.Random(opts["seed"] + 1)

    def reset(self) -> None:
        self.stats = Stats()
        self.stats.max_in_flight = self.in_flight
        self.flaky: dict[str, int] = {}
        self.calls: collections.Counter = collections.Counter()
        self.answers: collections.Counter = collections.Counter()
        self.bodies: collections.deque = collections.deque(maxlen=200)

    def authorized(self, header: str | None) -> bool:
        if not header or header[:7].lower() != "bearer ":
            return False
        given = header[7:].strip()
        token = self.options["token"]
        if token and hmac.compare_digest(given.encode(), token.encode()):
            return True
        expiry = self.issued.get(given)
        return expiry is not None and expiry > time.monotonic()

    def issue_token(self) -> str:
        now = time.monotonic()
        for stale in [t for t, expiry in self.issued.items() if expiry <= now]:
            del self.issued[stale]
        token = secrets.token_urlsafe(32)
        self.issued[token] = now + self.options["oauth_ttl"]
        self.stats.oauth_tokens_issued += 1
        return token

    def retry_headers(self, wait: float | None) -> dict[str, str]:
        bucket = getattr(self.limiter, "bucket", None)
        return limits.retry_headers(self.options["retry_after"], wait or (bucket.wait() if bucket else 0.0))

    def directive(self, texts: list[str]) -> tuple[str, Any] | None:
        """Per-prompt scripted behaviour, checked before any random fault."""
        for text in texts:
            if "[[" not in text:
                continue
            status = sim.failure_status(text)
            if status:
                return "fail", status
            always = sim.fault_directive(text)
            if always:
                return "fault", always
            flaky = sim.flaky_directive(text)
            if flaky:
                seen = self.flaky[text] = self.flaky.get(text, 0) + 1
                if seen <= flaky[0]:
                    return "fault", flaky[1]
        return None

    def random_fault(self) -> str | None:
        rate, kinds = self.options["fault_rate"], self.options["faults"]
        if rate <= 0 or not kinds or self.rng.random() >= rate:
            return None
        return self.rng.choice(kinds)

    async def delay(self) -> None:
        opts = self.options
        seconds = opts["latency_ms"]
        if opts["latency_jitter_ms"] > 0:
            seconds += self.jitter.uniform(0, opts["latency_jitter_ms"])
        if seconds > 0:
            await asyncio.sleep(seconds / 1000)


# ---------------------------------------------------------------- responses

def _json(st: State, status: int, payload: Any, headers: dict | None = None) -> web.Response:
    st.stats.by_status[status] += 1
    if status == 429:
        st.stats.rate_limited += 1
    return web.Response(body=_encode(payload).encode(), status=status,
                        content_type="application/json", headers=headers)


def error_payload(status: int, message: str, dbx: bool, code: str | None = None, kind: str | None = None) -> dict:
    if dbx:
        default = "TEMPORARILY_UNAVAILABLE" if status >= 500 else "BAD_REQUEST"
        return {"error_code": DBX_CODES.get(status, default), "message": message}
    default_kind, default_code = OPENAI_TYPES.get(status, ("server_error", "server_error") if status >= 500
                                                  else ("invalid_request_error", "invalid_request"))
    return {"error": {"message": message, "type": kind or default_kind, "param": None, "code": code or default_code}}


def _error(st: State, status: int, message: str, dbx: bool, code: str | None = None,
           headers: dict | None = None, kind: str | None = None) -> web.Response:
    return _json(st, status, error_payload(status, message, dbx, code, kind), headers)


def _raw(st: State, status: int, body: bytes) -> web.Response:
    st.stats.by_status[status] += 1
    return web.Response(body=body, status=status, content_type="application/json")


def _drop(st: State, request: web.Request) -> web.Response:
    """Abort the socket; the response aiohttp then fails to write is discarded."""
    st.stats.dropped += 1
    if request.transport is not None:
        request.transport.abort()
    return web.Response(status=204)


# ---------------------------------------------------------------- request parsing

class BadRequest(Exception):
    pass


class Job:
    """What one request asks for, independent of its wire format."""

    __slots__ = ("task", "body", "texts", "inputs", "records", "chars")

    def __init__(self, task: str, body: dict):
        self.task, self.body = task, body
        self.texts: list[str] = []
        self.records: list[dict] = []
        self.chars: list[int] = []
        self.inputs = 1
        getattr(self, "_" + task)(body)

    def _chat(self, body: dict) -> None:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise BadRequest("request body is missing 'messages' (a non-empty list of {role, content})")
        self.texts = [sim.chat_prompt(messages)]
        self.chars = [sum(len(sim.message_text(m.get("content"))) for m in messages)]

    def _responses(self, body: dict) -> None:
        """OpenAI's Responses API: ``input`` is the prompt text or a list of role/content items."""
        given = body.get("input")
        items = [{"role": "user", "content": given}] if isinstance(given, str) else given
        if not isinstance(items, list) or not items or not all(isinstance(m, dict) for m in items):
            raise BadRequest("request body is missing 'input' (text, or a non-empty list of {role, content})")
        self.texts = [sim.chat_prompt(items)]
        self.chars = [sum(len(sim.message_text(m.get("content"))) for m in items)]

    def _completions(self, body: dict) -> None:
        self.texts = _strings(body.get("prompt"), "prompt")
        self.chars, self.inputs = [len(t) for t in self.texts], len(self.texts)

    def _embeddings(self, body: dict) -> None:
        self.texts = _strings(body.get("input"), "input")
        self.chars, self.inputs = [len(t) for t in self.texts], len(self.texts)

    def _custom(self, body: dict) -> None:
        self.records = _records(body)
        self.inputs = len(self.records)
        self.texts = [v for r in self.records for v in r.values() if isinstance(v, str) and "[[" in v]


def _strings(value: Any, key: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        return [v if isinstance(v, str) else _encode(v) for v in value]
    raise BadRequest(f"request body is missing '{key}' (a string or a non-empty list)")


def _records(body: dict) -> list[dict]:
    if "dataframe_split" in body:
        split = body["dataframe_split"]
        if not isinstance(split, dict) or not isinstance(split.get("data"), list):
            raise BadRequest("'dataframe_split' needs 'columns' and 'data'")
        columns = split.get("columns") or [str(i) for i in range(len(split["data"][0]) if split["data"] else 0)]
        return [dict(zip(columns, row)) for row in split["data"]]
    key = next(k for k in CUSTOM_KEYS if k in body)
    rows = body[key]
    if isinstance(rows, dict) and all(isinstance(v, list) for v in rows.values()):
        return [dict(zip(rows, values)) for values in zip(*rows.values())]
    if not isinstance(rows, list):
        raise BadRequest(f"'{key}' must be a list of records")
    return [r if isinstance(r, dict) else {"input": r} for r in rows]


def detect_task(body: dict) -> str | None:
    if "messages" in body:
        return "chat"
    if "prompt" in body:
        return "completions"
    if "input" in body:
        return "embeddings"
    if any(k in body for k in CUSTOM_KEYS):
        return "custom"
    return None


async def _read_body(request: web.Request) -> dict:
    raw = await request.read()
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


# ---------------------------------------------------------------- answers

def _max_tokens(body: dict) -> int | None:
    value = body.get("max_tokens", body.get("max_completion_tokens"))
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _n(body: dict) -> int:
    n = body.get("n")
    return n if isinstance(n, int) and 1 <= n <= 128 else 1


def _format(body: dict) -> dict | None:
    fmt = body.get("response_format")
    return fmt if isinstance(fmt, dict) else None


def answer_chat(job: Job, model: str, st: State) -> tuple[dict, int, int]:
    body = job.body
    prompt = job.texts[0]
    text, finish = sim.simulated_reply(prompt, _max_tokens(body), _format(body))
    n = _n(body)
    shape = sim.answer_shape(prompt)
    details = None
    if shape:
        message, finish, completion, details = sim.shaped_message(shape, prompt, text, finish, _format(body),
                                                                  _max_tokens(body))
        completion *= n
    else:
        message, completion = {"role": "assistant", "content": text}, sim.count_tokens(text) * n
    choices = [] if shape == "no-choices" else [{"index": i, "message": message, "finish_reason": finish}
                                                 for i in range(n)]
    prompt_tokens = sim.chat_prompt_tokens(body["messages"])
    usage = _usage(prompt_tokens, completion)
    if details:
        usage["completion_tokens_details"] = details
    return {"id": f"chatcmpl-{next(st.ids):x}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": choices, "usage": usage}, prompt_tokens, completion


def answer_responses(job: Job, model: str, st: State) -> tuple[dict, int, int]:
    """The chat answer for the same prompt (shapes included), as Responses API output items."""
    body, prompt = job.body, job.texts[0]
    text_options = body.get("text")
    given = text_options.get("format") if isinstance(text_options, dict) else None
    fmt = None
    if isinstance(given, dict):  # back to the Chat Completions form the simulator reads
        fmt = {"type": given.get("type"), "json_schema": {k: v for k, v in given.items() if k != "type"}}
    limit = body.get("max_output_tokens")
    limit = limit if isinstance(limit, int) and not isinstance(limit, bool) else None
    text, finish = sim.simulated_reply(prompt, limit, fmt)
    shape, details = sim.answer_shape(prompt), None
    if shape:
        message, finish, completion, details = sim.shaped_message(shape, prompt, text, finish, fmt, limit)
    else:
        message, completion = {"role": "assistant", "content": text}, sim.count_tokens(text)
    given_input = body["input"]
    items = [{"content": given_input}] if isinstance(given_input, str) else given_input
    prompt_tokens = sim.count_tokens(str(body.get("instructions") or "")) + sim.chat_prompt_tokens(items)
    output = [] if shape == "no-choices" else _output_items(message, next(st.ids))
    reason = {"length": "max_output_tokens", "content_filter": "content_filter"}.get(finish)
    usage = {"input_tokens": prompt_tokens, "input_tokens_details": {"cached_tokens": 0},
             "output_tokens": completion, "total_tokens": prompt_tokens + completion,
             "output_tokens_details": {"reasoning_tokens": (details or {}).get("reasoning_tokens", 0)}}
    return {"id": f"resp_{next(st.ids):x}", "object": "response", "created_at": int(time.time()),
            "status": "incomplete" if reason else "completed",
            "incomplete_details": {"reason": reason} if reason else None, "error": None, "model": model,
            "output": output, "usage": usage}, prompt_tokens, completion


def _output_items(message: dict, number: int) -> list[dict]:
    """A chat message as the Responses API's output: reasoning, function_call and message items."""
    items: list[dict] = []
    content = message.get("content")
    thinking = message.get("reasoning_content") or message.get("reasoning")
    if thinking or isinstance(content, list) and any(p.get("type") == "reasoning" for p in content):
        items.append({"type": "reasoning", "id": f"rs_{number:x}",
                      "summary": [{"type": "summary_text", "text": thinking or ""}]})
    for call in message.get("tool_calls") or []:
        items.append({"type": "function_call", "id": f"fc_{number:x}", "call_id": call["id"], "status": "completed",
                      "name": call["function"]["name"], "arguments": call["function"]["arguments"]})
    parts = [{"type": "output_text", "text": p["text"], "annotations": []} for p in content
             if p.get("type") == "text"] if isinstance(content, list) else \
        [{"type": "output_text", "text": content, "annotations": []}] if isinstance(content, str) and content else []
    if message.get("refusal"):
        parts.append({"type": "refusal", "refusal": message["refusal"]})
    if parts:
        items.append({"type": "message", "id": f"msg_{number:x}", "status": "completed", "role": "assistant",
                      "content": parts})
    return items


def answer_completions(job: Job, model: str, st: State) -> tuple[dict, int, int]:
    limit, n, choices, completion = _max_tokens(job.body), _n(job.body), [], 0
    for prompt in job.texts:
        text, finish = sim.simulated_answer(prompt, limit)
        completion += sim.count_tokens(text) * n
        choices.extend({"index": len(choices), "text": text, "finish_reason": finish, "logprobs": None}
                       for _ in range(n))
    prompt_tokens = sum(sim.count_tokens(t) for t in job.texts)
    return {"id": f"cmpl-{next(st.ids):x}", "object": "text_completion", "created": int(time.time()),
            "model": model, "choices": choices, "usage": _usage(prompt_tokens, completion)}, prompt_tokens, completion


def answer_embeddings(job: Job, model: str, st: State) -> tuple[dict, int, int]:
    dim = job.body.get("dimensions")
    dim = dim if isinstance(dim, int) and dim > 0 else st.options["embedding_dim"]
    as_base64 = job.body.get("encoding_format") == "base64"
    data = [{"object": "embedding", "index": i, "embedding": _vector(t, dim, as_base64)}
            for i, t in enumerate(job.texts)]
    tokens = sum(sim.count_tokens(t) for t in job.texts)
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}, tokens, 0


def answer_custom(job: Job, model: str, st: State) -> tuple[dict, int, int]:
    return {"predictions": [sim.simulated_prediction(r) for r in job.records]}, 0, 0


ANSWERS = {"chat": answer_chat, "responses": answer_responses, "completions": answer_completions,
           "embeddings": answer_embeddings, "custom": answer_custom}


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _vector(text: str, dim: int, as_base64: bool) -> Any:
    vector = sim.simulated_embedding(text, dim)
    if not as_base64:
        return vector
    return base64.b64encode(struct.pack(f"<{dim}f", *vector)).decode()


# ---------------------------------------------------------------- faults

async def inject(kind: str, st: State, request: web.Request, dbx: bool) -> web.StreamResponse | None:
    """The response a fault produces; None lets the normal answer through (stall, truncated)."""
    st.stats.faults[kind] += 1
    if kind == "stall":
        await asyncio.sleep(st.options["stall_seconds"])
        return None
    if kind == "truncated":
        return None
    if kind == "drop":
        return _drop(st, request)
    if kind == "malformed":
        return _raw(st, 200, b"<html><body>simulated malformed answer</body></html>")
    if kind == "unexpected":
        return _json(st, 200, {"result": "surprise"})
    if kind.startswith("dbx-"):
        return _dbx_fault(kind, st)
    if kind == "429-bare":
        return _error(st, 429, "simulated fault 429", dbx)
    if kind == "quota":
        return _error(st, 429, QUOTA_MESSAGE, False, code="insufficient_quota", kind="insufficient_quota")
    if kind == "html-502":
        st.stats.by_status[502] += 1
        return web.Response(body=NGINX_502, status=502, content_type="text/html")
    if kind.startswith("body-"):
        return _json(st, 200, _error_in_body(int(kind[5:]), dbx))
    headers = st.retry_headers(None) if kind == "429" else None
    return _error(st, int(kind), f"simulated fault {kind}", dbx, headers=headers)


def _error_in_body(status: int, dbx: bool) -> dict:
    """An error sent as a 200, as routers do: OpenRouter and LiteLLM put the status in ``error.code``."""
    message = f"simulated error {status}"
    if dbx:
        return {"error_code": DBX_CODES.get(status, "INTERNAL_ERROR"), "message": message}
    return {"error": {"message": message, "code": status}}


def _dbx_fault(kind: str, st: State) -> web.Response:
    status, code, message = {
        "dbx-limit": (429, "REQUEST_LIMIT_EXCEEDED", "Exceeded workspace rate limit"),
        "dbx-unavailable": (503, "TEMPORARILY_UNAVAILABLE", "The service is temporarily unavailable"),
        "dbx-bad-request": (400, "BAD_REQUEST", "Simulated bad request"),
    }[kind]
    return _json(st, status, {"error_code": code, "message": message})


# ---------------------------------------------------------------- data plane

def data_handler(task: str | None, dbx: bool):
    async def handler(request: web.Request) -> web.StreamResponse:
        st: State = request.app[STATE]
        stats = st.stats
        stats.requests += 1
        st.in_flight += 1
        if st.in_flight > stats.max_in_flight:
            stats.max_in_flight = st.in_flight
        try:
            return await _serve(request, st, task, dbx)
        finally:
            st.in_flight -= 1
    return handler


async def _serve(request: web.Request, st: State, task: str | None, dbx: bool) -> web.StreamResponse:
    if st.auth_required and not st.authorized(request.headers.get("Authorization")):
        st.stats.auth_failures += 1
        return _error(st, 401, "missing or invalid bearer token", dbx)
    limiter = st.limiter
    if limiter is not None and not limiter.by_tokens:
        refused = limiter.admit(1.0, st.in_flight)
        if refused:
            return _error(st, 429, refused.message, dbx, headers=refused.headers)
    try:
        job = await _job(request, task)
    except BadRequest as exc:
        return _error(st, 400, str(exc), dbx)
    if limiter is not None and limiter.by_tokens:
        refused = limiter.admit(limits.request_cost(job.body, sum(map(sim.count_tokens, job.texts))), st.in_flight)
        if refused:
            return _error(st, 429, refused.message, dbx, headers=refused.headers)
    st.stats.accept()
    model = request.match_info.get("name") or job.body.get("model") or "simulated"
    response = await _respond(request, st, job, str(model), dbx)
    extra = limiter.headers() if limiter is not None and response.status == 200 else None
    if extra and not response.prepared:
        response.headers.update(extra)
    return response


async def _job(request: web.Request, task: str | None) -> Job:
    body = await _read_body(request)
    task = task or detect_task(body)
    if task is None:
        raise BadRequest("request body needs one of messages, prompt, input, "
                         "dataframe_records, dataframe_split, instances or inputs")
    return Job(task, body)


async def _respond(request: web.Request, st: State, job: Job, model: str, dbx: bool) -> web.StreamResponse:
    st.stats.by_task[job.task] += 1
    st.stats.inputs_received += job.inputs
    if st.options["record"]:
        _record(st, job)
    limit = st.options["max_prompt_chars"]
    if limit and job.chars and max(job.chars) > limit:
        return _error(st, 400, f"prompt of {max(job.chars)} characters exceeds the maximum context "
                      f"length of {limit} characters", dbx, code="context_length_exceeded")
    await st.delay()
    scripted = st.directive(job.texts) if job.texts else None
    if scripted and scripted[0] == "fail":
        return _error(st, scripted[1], f"simulated failure {scripted[1]}", dbx)
    fault = scripted[1] if scripted else st.random_fault()
    if fault:
        early = await _fault_response(fault, st, request, dbx)
        if early is not None:
            return early
    return _deliver(st, job, model, dbx, truncated=fault == "truncated")


async def _fault_response(kind: str, st: State, request: web.Request, dbx: bool) -> web.StreamResponse | None:
    if kind in FAULT_KINDS or kind.isdigit() or kind[:5] == "body-" and kind[5:].isdigit():
        return await inject(kind, st, request, dbx)
    return _error(st, 400, f"unknown fault kind {kind!r} in a flaky directive", dbx)


def _deliver(st: State, job: Job, model: str, dbx: bool, truncated: bool) -> web.Response:
    payload, prompt_tokens, completion_tokens = ANSWERS[job.task](job, model, st)
    shape = sim.answer_shape(job.texts[0]) if job.texts else None
    if shape == "no-usage":
        payload.pop("usage", None)
    body = _encode(payload).encode()
    if shape == "badutf8":  # the last byte of the tail's "é" cut off, as a server cutting tokens mid-character does
        head, tail, rest = body.rpartition(sim.BADUTF8_TAIL.encode())
        body = head + tail[:-1] + rest
    if truncated:
        return _raw(st, 200, body[: len(body) // 2])
    stats = st.stats
    stats.answered += 1
    stats.inputs += job.inputs
    stats.prompt_tokens += prompt_tokens
    stats.completion_tokens += completion_tokens
    stats.by_status[200] += 1
    if st.options["record"] and job.task != "custom":
        st.answers.update(job.texts)
    headers = {"served-model-name": model} if dbx else None
    return web.Response(body=body, content_type="application/json", headers=headers)


def _record(st: State, job: Job) -> None:
    st.bodies.append(job.body)
    if job.task != "custom":
        st.calls.update(job.texts)


async def list_models(request: web.Request) -> web.Response:
    models = ["simulated-chat", "simulated-completions", "simulated-embeddings"]
    data = [{"id": m, "object": "model", "created": 0, "owned_by": "batch.serve"} for m in models]
    return web.json_response({"object": "list", "data": data})


# ---------------------------------------------------------------- OAuth and discovery

def _base_url(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


async def oauth_metadata(request: web.Request) -> web.Response:
    base = _base_url(request) + "/oidc"
    return web.json_response({"issuer": base, "authorization_endpoint": base + "/v1/authorize",
                              "token_endpoint": base + "/v1/token",
                              "grant_types_supported": ["client_credentials"]})


async def host_metadata(request: web.Request) -> web.Response:
    return web.json_response({"oidc_endpoint": _base_url(request) + "/oidc"})


def _client_credentials(request: web.Request, form: Any) -> tuple[str, str]:
    header = request.headers.get("Authorization", "")
    if header[:6].lower() == "basic ":
        try:
            cid, _, secret = base64.b64decode(header[6:].strip()).decode().partition(":")
            return cid, secret
        except (binascii.Error, UnicodeDecodeError):
            return "", ""
    return str(form.get("client_id", "")), str(form.get("client_secret", ""))


async def oauth_token(request: web.Request) -> web.Response:
    st: State = request.app[STATE]
    opts = st.options
    if not opts["oauth_client_id"]:
        return web.json_response({"error": "invalid_request",
                                  "error_description": "OAuth is not enabled on this server"}, status=404)
    form = await request.post()
    if form.get("grant_type") != "client_credentials":
        return web.json_response({"error": "unsupported_grant_type"}, status=400)
    cid, secret = _client_credentials(request, form)
    if not (_same(cid, opts["oauth_client_id"]) and _same(secret, opts["oauth_client_secret"] or "")):
        st.stats.auth_failures += 1
        return web.json_response({"error": "invalid_client",
                                  "error_description": "client authentication failed"}, status=401)
    ttl = opts["oauth_ttl"]
    return web.json_response({"access_token": st.issue_token(), "token_type": "Bearer",
                              "expires_in": int(ttl) if float(ttl).is_integer() else ttl,
                              "scope": form.get("scope", "all-apis")})


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


# ---------------------------------------------------------------- admin

async def admin_stats(request: web.Request) -> web.Response:
    st: State = request.app[STATE]
    return web.json_response({**st.stats.snapshot(st.in_flight),
                              "limit": st.limiter.snapshot() if st.limiter else None})


async def admin_prompts(request: web.Request) -> web.Response:
    st: State = request.app[STATE]
    return web.json_response({"calls": dict(st.calls), "answered": dict(st.answers)})


async def admin_bodies(request: web.Request) -> web.Response:
    return web.json_response(list(request.app[STATE].bodies))


async def admin_config(request: web.Request) -> web.Response:
    st: State = request.app[STATE]
    if request.method == "POST":
        try:
            changes = await request.json()
            if not isinstance(changes, dict):
                raise ValueError("config must be a JSON object")
            st.configure(changes)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
    return web.json_response(public_options(st.options))


async def admin_reset(request: web.Request) -> web.Response:
    request.app[STATE].reset()
    return web.json_response({"reset": True})


# ---------------------------------------------------------------- application and CLI

def build_app(options: dict[str, Any]) -> web.Application:
    app = web.Application(client_max_size=256 * 1024 * 1024)
    app[STATE] = State(options)
    post = app.router.add_post
    for prefix in ("/v1", "/serving-endpoints"):
        post(prefix + "/chat/completions", data_handler("chat", False))
        post(prefix + "/completions", data_handler("completions", False))
        post(prefix + "/embeddings", data_handler("embeddings", False))
    post("/v1/responses", data_handler("responses", False))
    post("/serving-endpoints/{name}/invocations", data_handler(None, True))
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/oidc/.well-known/oauth-authorization-server", oauth_metadata)
    app.router.add_get("/.well-known/databricks-config", host_metadata)
    post("/oidc/v1/token", oauth_token)
    app.router.add_get("/_admin/stats", admin_stats)
    app.router.add_get("/_admin/prompts", admin_prompts)
    app.router.add_get("/_admin/bodies", admin_bodies)
    app.router.add_route("*", "/_admin/config", admin_config)
    post("/_admin/reset", admin_reset)
    from .batches import add_routes as add_batch_routes  # Files and Batches (OpenAI Batch API)
    add_batch_routes(app)
    return app


def parse_args(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m batch.serve", description=__doc__.splitlines()[0])
    for name, (_, default, help_text) in OPTIONS.items():
        flag = "--" + name.replace("_", "-")
        if name == "record":
            parser.add_argument(flag, action="store_true", help=help_text)
        else:
            parser.add_argument(flag, default=default, help=f"{help_text} (default: {default})")
    args = vars(parser.parse_args(argv))
    args["token"] = args["token"] or os.environ.get("BATCH_SERVE_TOKEN")
    args["oauth_client_secret"] = args["oauth_client_secret"] or os.environ.get("BATCH_SERVE_OAUTH_CLIENT_SECRET")
    try:
        return apply_options(default_options(), args)
    except ValueError as exc:
        parser.error(str(exc))
        raise


async def serve(options: dict[str, Any]) -> None:
    runner = web.AppRunner(build_app(options), access_log=None, handler_cancellation=True,
                           shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, options["host"], options["port"], backlog=2048)
    await site.start()
    host, port = runner.addresses[0][:2]
    runner.app[STATE].options["port"] = port
    shown = f"[{host}]" if ":" in host else host
    print(f"batch.serve listening on http://{shown}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    try:
        asyncio.run(serve(options))
    except KeyboardInterrupt:
        pass
    return 0
