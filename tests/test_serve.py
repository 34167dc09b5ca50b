"""The local endpoint over real HTTP: wire formats, usage, faults, rate cap, auth and the simulator."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from batch.serve import ServerProcess, simulate as sim
from batch.serve.simulate import simulated_answer, simulated_embedding, simulated_json, simulated_prediction

import support
from support import poll

DEFAULTS = dict(
    latency_ms=0, latency_jitter_ms=0, rate_limit=0, burst=None, retry_after="auto", token=None,
    oauth_client_id=None, oauth_client_secret=None, oauth_ttl=3600, fault_rate=0.0,
    faults="500,502,503,504,429,drop,malformed,truncated", stall_seconds=30, max_prompt_chars=0,
    embedding_dim=16, seed=0, record=True,
)
OPENAI_PATHS = {
    "chat": "/v1/chat/completions", "completions": "/v1/completions", "embeddings": "/v1/embeddings",
}
BODIES = {
    "chat": {"model": "m", "messages": [{"role": "user", "content": "hello there"}]},
    "completions": {"model": "m", "prompt": "hello there"},
    "embeddings": {"model": "m", "input": "hello there"},
}


@pytest.fixture(scope="module")
def srv():
    with ServerProcess(record=True) as server:
        yield server


@pytest.fixture(autouse=True)
def fresh(srv):
    support.restore(srv, **DEFAULTS)


@pytest.fixture(scope="module")
def http(srv):
    with httpx.Client(base_url=srv.url, timeout=10) as client:
        yield client


def chat(text, **extra):
    return {"model": "m", "messages": [{"role": "user", "content": text}], **extra}


# ---------------------------------------------------------------- wire formats

def test_chat_answer_and_usage(http):
    messages = [{"role": "system", "content": "be brief please"}, {"role": "user", "content": "hello there"}]
    answer = http.post("/v1/chat/completions", json={"model": "m", "messages": messages, "top_k": 3}).json()
    text, finish = simulated_answer("hello there")
    assert answer["object"] == "chat.completion" and answer["model"] == "m" and answer["id"]
    assert answer["choices"] == [{"index": 0, "message": {"role": "assistant", "content": text},
                                  "finish_reason": finish}]
    assert answer["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}


def test_chat_uses_last_user_message_and_n(http):
    messages = [{"role": "user", "content": "first"}, {"role": "assistant", "content": "x"},
                {"role": "user", "content": [{"type": "text", "text": "second turn"}]}]
    answer = http.post("/v1/chat/completions", json={"messages": messages, "n": 3}).json()
    assert [c["index"] for c in answer["choices"]] == [0, 1, 2]
    assert {c["message"]["content"] for c in answer["choices"]} == {"[simulated] second turn"}
    assert answer["usage"]["completion_tokens"] == 9


def test_max_tokens_gives_length(http):
    answer = http.post("/v1/chat/completions", json=chat("one two three four", max_tokens=2)).json()
    assert answer["choices"][0]["message"]["content"] == "[simulated] one"
    assert answer["choices"][0]["finish_reason"] == "length"
    assert simulated_answer("one two three four", 2) == ("[simulated] one", "length")


def test_completions_list(http):
    answer = http.post("/v1/completions", json={"model": "m", "prompt": ["a b", "c"], "max_tokens": 9}).json()
    assert answer["object"] == "text_completion"
    assert [(c["index"], c["text"], c["finish_reason"]) for c in answer["choices"]] == [
        (0, "[simulated] a b", "stop"), (1, "[simulated] c", "stop")]
    assert answer["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}


def test_embeddings(srv, http):
    answer = http.post("/v1/embeddings", json={"model": "e", "input": ["a b", "c"]}).json()
    assert answer["object"] == "list" and answer["model"] == "e"
    assert answer["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    for i, (item, text) in enumerate(zip(answer["data"], ["a b", "c"])):
        assert item["object"] == "embedding" and item["index"] == i
        assert item["embedding"] == pytest.approx(simulated_embedding(text, 16))
        assert math.fsum(v * v for v in item["embedding"]) == pytest.approx(1.0)
    srv.configure(embedding_dim=8)
    answer = http.post("/v1/embeddings", json={"input": "c", "encoding_format": "base64"}).json()
    packed = base64.b64decode(answer["data"][0]["embedding"])
    assert list(struct.unpack("<8f", packed)) == pytest.approx(simulated_embedding("c", 8), abs=1e-6)


@pytest.mark.parametrize("task", sorted(OPENAI_PATHS))
def test_databricks_openai_compatible_paths(http, task):
    path = OPENAI_PATHS[task].replace("/v1", "/serving-endpoints")
    answer = http.post(path, json=BODIES[task]).json()
    direct = http.post(OPENAI_PATHS[task], json=BODIES[task]).json()
    assert answer["object"] == direct["object"] and answer["usage"] == direct["usage"]


@pytest.mark.parametrize("task,kind", [("chat", "chat.completion"), ("completions", "text_completion"),
                                       ("embeddings", "list")])
def test_invocations_route_by_body(http, task, kind):
    response = http.post("/serving-endpoints/my-ep/invocations", json=BODIES[task])
    answer = response.json()
    assert answer["object"] == kind and answer["model"] == "my-ep"
    assert response.headers["served-model-name"] == "my-ep"
    assert answer["usage"]["prompt_tokens"] == 2


@pytest.mark.parametrize("body", [
    {"dataframe_records": [{"a": 1, "b": "xyz"}, {"a": 2.5, "b": None}]},
    {"dataframe_split": {"columns": ["a", "b"], "data": [[1, "xyz"], [2.5, None]]}},
    {"instances": [{"a": 1, "b": "xyz"}, {"a": 2.5, "b": None}]},
    {"inputs": [{"a": 1, "b": "xyz"}, {"a": 2.5, "b": None}]},
    {"inputs": {"a": [1, 2.5], "b": ["xyz", None]}},
])
def test_custom_model(srv, http, body):
    answer = http.post("/serving-endpoints/model/invocations", json=body).json()
    assert answer == {"predictions": [4.0, 2.5]}
    assert answer["predictions"][0] == simulated_prediction({"a": 1, "b": "xyz"})
    stats = srv.stats()
    assert stats["by_task"]["custom"] == 1 and stats["inputs"] == 2 and stats["total_tokens"] == 0


def test_models_route(http):
    models = http.get("/v1/models").json()
    assert models["object"] == "list" and all(m["object"] == "model" for m in models["data"])


@pytest.mark.parametrize("path,content,needle", [
    ("/v1/chat/completions", b"{not json", "not valid JSON"),
    ("/v1/chat/completions", b'{"model": "m"}', "messages"),
    ("/v1/completions", b'{"model": "m"}', "prompt"),
    ("/v1/embeddings", b'{"input": []}', "input"),
])
def test_bad_request_openai(http, path, content, needle):
    response = http.post(path, content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert needle in error["message"] and error["type"] == "invalid_request_error"


def test_bad_request_databricks(http):
    response = http.post("/serving-endpoints/ep/invocations", json={"something": 1})
    assert response.status_code == 400
    assert response.json()["error_code"] == "BAD_REQUEST"
    assert "messages" in response.json()["message"]


# ---------------------------------------------------------------- stats and recording

def test_usage_sums_match_stats(srv, http):
    reported = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    bodies = [("/v1/chat/completions", chat(f"row {i} " * i)) for i in range(1, 6)]
    bodies += [("/v1/completions", {"prompt": ["x y", "z"], "max_tokens": 2}),
               ("/v1/embeddings", {"input": ["p q r", "s"]}),
               ("/serving-endpoints/ep/invocations", {"prompt": "dbx prompt"})]
    for path, body in bodies:
        usage = http.post(path, json=body).json()["usage"]
        for key in reported:
            reported[key] += usage.get(key, 0)
    stats = srv.stats()
    assert {k: stats[k] for k in reported} == reported
    assert stats["requests"] == stats["answered"] == len(bodies) == stats["by_status"]["200"]
    assert stats["by_task"] == {"chat": 5, "completions": 2, "embeddings": 1, "custom": 0}
    assert stats["inputs"] == 5 + 3 + 2
    assert sum(stats["per_second"]) == len(bodies)
    assert stats["in_flight"] == 0 and stats["max_in_flight"] >= 1
    assert stats["elapsed_s"] >= 0 and stats["started_at"] > 0


def test_prompts_and_bodies_recorded(srv, http):
    http.post("/v1/chat/completions", json=chat("remember me"), headers={"Authorization": "Bearer zzz"})
    http.post("/v1/embeddings", json={"input": ["e1", "e2"]})
    prompts = srv.prompts()
    assert prompts["calls"] == {"remember me": 1, "e1": 1, "e2": 1} == prompts["answered"]
    bodies = srv.bodies()
    assert bodies[0] == chat("remember me") and "zzz" not in json.dumps(bodies)
    for i in range(205):
        http.post("/v1/completions", json={"prompt": f"p{i}"})
    assert len(srv.bodies()) == 200 and srv.bodies()[-1] == {"prompt": "p204"}


def test_recording_off_and_reset(srv, http):
    srv.configure(record=False)
    http.post("/v1/completions", json={"prompt": "unrecorded"})
    assert srv.prompts() == {"calls": {}, "answered": {}} and srv.bodies() == []
    assert srv.stats()["requests"] == 1
    srv.reset()
    stats = srv.stats()
    assert stats["requests"] == 0 and stats["by_status"] == {} and stats["per_second"] == []


def test_config_validation(srv, http):
    assert http.post("/_admin/config", json={"nope": 1}).status_code == 400
    assert http.post("/_admin/config", json={"faults": "500,boom"}).status_code == 400
    assert http.post("/_admin/config", json={"port": 1}).status_code == 400
    options = srv.configure(faults=["503", "drop"], retry_after="2.5")
    assert options["faults"] == ["503", "drop"] and options["retry_after"] == 2.5
    assert options["port"] == srv.port


# ---------------------------------------------------------------- faults

def _status_sequence(http, count):
    return [http.post("/v1/completions", json={"prompt": "s"}).status_code for _ in range(count)]


def test_fault_rate_is_seeded(srv, http):
    srv.configure(fault_rate=0.5, faults="500,503", seed=7)
    first = _status_sequence(http, 30)
    srv.configure(seed=7)
    assert _status_sequence(http, 30) == first
    assert {200, 500, 503} >= set(first) and 200 in first and set(first) - {200}
    stats = srv.stats()
    assert sum(stats["faults"].values()) == 2 * sum(s != 200 for s in first)


@pytest.mark.parametrize("path,dbx", [("/v1/chat/completions", False), ("/serving-endpoints/ep/invocations", True)])
@pytest.mark.parametrize("kind", ["500", "502", "503", "504"])
def test_status_faults_use_path_format(srv, http, kind, path, dbx):
    srv.configure(fault_rate=1.0, faults=kind)
    response = http.post(path, json=chat("x"))
    assert response.status_code == int(kind)
    body = response.json()
    if dbx:
        assert body["error_code"] in ("INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE") and body["message"]
    else:
        assert body["error"]["message"] and body["error"]["type"] == "server_error"
    assert srv.stats()["faults"] == {kind: 1}


def test_fault_drop(srv, http):
    srv.configure(fault_rate=1.0, faults="drop")
    with pytest.raises(httpx.TransportError):
        http.post("/v1/chat/completions", json=chat("x"))
    stats = srv.stats()
    assert stats["dropped"] == 1 and stats["by_status"] == {} and stats["answered"] == 0


@pytest.mark.parametrize("kind", ["malformed", "truncated"])
def test_fault_invalid_json(srv, http, kind):
    srv.configure(fault_rate=1.0, faults=kind)
    response = http.post("/v1/chat/completions", json=chat("x"))
    assert response.status_code == 200
    assert int(response.headers["content-length"]) == len(response.content)
    with pytest.raises(ValueError):
        json.loads(response.content)
    stats = srv.stats()
    assert stats["answered"] == 0 and stats["total_tokens"] == 0 and stats["by_status"] == {"200": 1}


def test_fault_truncated_is_half_an_answer(srv, http):
    srv.configure(fault_rate=1.0, faults="truncated")
    cut = http.post("/v1/completions", json={"prompt": "x"}).content
    srv.configure(fault_rate=0.0)
    whole = http.post("/v1/completions", json={"prompt": "x"}).content
    assert len(cut) == len(whole) // 2 and cut.startswith(b'{"id":"cmpl-')


def test_fault_unexpected(srv, http):
    srv.configure(fault_rate=1.0, faults="unexpected")
    assert http.post("/v1/embeddings", json={"input": "x"}).json() == {"result": "surprise"}


@pytest.mark.parametrize("kind,status,code", [("dbx-limit", 429, "REQUEST_LIMIT_EXCEEDED"),
                                              ("dbx-unavailable", 503, "TEMPORARILY_UNAVAILABLE"),
                                              ("dbx-bad-request", 400, "BAD_REQUEST")])
def test_databricks_faults(srv, http, kind, status, code):
    srv.configure(fault_rate=1.0, faults=kind)
    response = http.post("/v1/chat/completions", json=chat("x"))
    assert response.status_code == status and response.json()["error_code"] == code


def test_fault_429_headers(srv, http):
    srv.configure(fault_rate=1.0, faults="429")
    response = http.post("/v1/chat/completions", json=chat("x"))
    assert response.status_code == 429 and response.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(response.headers["Retry-After"]) >= 1 and float(response.headers["retry-after-ms"]) > 0
    srv.configure(faults="429-bare")
    response = http.post("/serving-endpoints/ep/invocations", json=chat("x"))
    assert response.status_code == 429 and response.json()["error_code"] == "REQUEST_LIMIT_EXCEEDED"
    assert "Retry-After" not in response.headers and "retry-after-ms" not in response.headers
    assert srv.stats()["rate_limited"] == 2


def test_stall(srv, http):
    srv.configure(fault_rate=1.0, faults="stall", stall_seconds=0.05)
    assert http.post("/v1/completions", json={"prompt": "late"}).json()["choices"][0]["text"] == "[simulated] late"
    srv.configure(stall_seconds=30)
    with pytest.raises(httpx.TimeoutException):
        http.post("/v1/completions", json={"prompt": "later"}, timeout=0.3)
    assert poll(lambda: srv.stats()["in_flight"] == 0)
    assert srv.stats()["faults"] == {"stall": 2}


def test_latency_overlaps_requests(srv):
    srv.configure(latency_ms=150, latency_jitter_ms=20)

    async def burst():
        async with httpx.AsyncClient(base_url=srv.url, timeout=10) as client:
            return await asyncio.gather(*(client.post("/v1/completions", json={"prompt": str(i)})
                                          for i in range(8)))

    responses = asyncio.run(burst())
    assert all(r.status_code == 200 for r in responses)
    assert srv.stats()["max_in_flight"] > 1


# ---------------------------------------------------------------- rate cap

def _until_limited(http, limit=200):
    seen = []
    for _ in range(limit):
        response = http.post("/v1/embeddings", json={"input": "r"})
        seen.append(response)
        if response.status_code == 429:
            return seen
    raise AssertionError("the rate cap never answered 429")


def test_rate_cap_auto_retry_after(srv, http):
    srv.configure(rate_limit=1, burst=1)
    seen = _until_limited(http)
    limited = seen[-1]
    wait_ms = float(limited.headers["retry-after-ms"])
    assert 0 < wait_ms <= 1000
    assert limited.headers["Retry-After"] == str(max(1, math.ceil(wait_ms / 1000)))
    assert limited.json()["error"]["type"] == "rate_limit_error"
    stats = srv.stats()
    assert stats["rate_limited"] == 1 and sum(stats["per_second"]) == len(seen) - 1


def test_rate_cap_fixed_and_no_retry_after(srv, http):
    srv.configure(rate_limit=1, burst=1, retry_after=3)
    limited = _until_limited(http)[-1]
    assert limited.headers["Retry-After"] == "3" and float(limited.headers["retry-after-ms"]) == 3000
    srv.configure(retry_after="none")
    limited = _until_limited(http)[-1]
    assert "Retry-After" not in limited.headers and "retry-after-ms" not in limited.headers


def test_rate_cap_databricks_format(srv, http):
    srv.configure(rate_limit=1, burst=1)
    for _ in range(200):
        response = http.post("/serving-endpoints/ep/invocations", json={"input": "x"})
        if response.status_code == 429:
            break
    assert response.status_code == 429 and response.json()["error_code"] == "REQUEST_LIMIT_EXCEEDED"


# ---------------------------------------------------------------- auth

SECRET = "tok-9f3a7c1e-never-shown"


def test_bearer_token(srv, http):
    shown = srv.configure(token=SECRET)
    assert shown["token"] == "***" and SECRET not in json.dumps(shown)
    assert http.post("/v1/chat/completions", json=chat("x")).status_code == 401
    wrong = http.post("/serving-endpoints/ep/invocations", json=chat("x"), headers={"Authorization": "Bearer no"})
    assert wrong.status_code == 401 and wrong.json()["error_code"] == "UNAUTHENTICATED"
    ok = http.post("/v1/chat/completions", json=chat("x"), headers={"Authorization": f"Bearer {SECRET}"})
    assert ok.status_code == 200
    assert srv.stats()["auth_failures"] == 2
    assert SECRET not in http.get("/_admin/config").text and SECRET not in srv.output()


def test_token_from_startup_never_shown():
    with ServerProcess(token=SECRET) as server:
        assert server.configure()["token"] == "***"
        headers = {"Authorization": f"Bearer {SECRET}"}
        assert httpx.post(server.url + "/v1/completions", json={"prompt": "x"}).status_code == 401
        assert httpx.post(server.url + "/v1/completions", json={"prompt": "x"}, headers=headers).status_code == 200
    assert server.returncode == 0
    assert SECRET not in server.output() and server.output().startswith("batch.serve listening on http://127.0.0.1:")


def test_oauth_issue_use_and_expiry(srv, http):
    srv.configure(oauth_client_id="client-1", oauth_client_secret="secret-1", oauth_ttl=1)
    meta = http.get("/oidc/.well-known/oauth-authorization-server").json()
    assert meta["token_endpoint"] == srv.url + "/oidc/v1/token" and meta["authorization_endpoint"]
    bad = http.post("/oidc/v1/token", data={"grant_type": "client_credentials"}, auth=("client-1", "wrong"))
    assert bad.status_code == 401
    by_form = http.post("/oidc/v1/token", data={"grant_type": "client_credentials", "client_id": "client-1",
                                                "client_secret": "secret-1"})
    issued = http.post("/oidc/v1/token", data={"grant_type": "client_credentials"}, auth=("client-1", "secret-1"))
    assert by_form.status_code == issued.status_code == 200
    token = issued.json()
    assert token["token_type"] == "Bearer" and token["expires_in"] == 1
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    assert http.post("/v1/completions", json={"prompt": "x"}).status_code == 401
    assert http.post("/v1/completions", json={"prompt": "x"}, headers=headers).status_code == 200
    assert poll(lambda: http.post("/v1/completions", json={"prompt": "x"}, headers=headers).status_code == 401)
    stats = srv.stats()
    assert stats["oauth_tokens_issued"] == 2 and stats["auth_failures"] >= 3
    assert "secret-1" not in json.dumps(srv.configure())


# ---------------------------------------------------------------- prompt directives and limits

@pytest.mark.parametrize("status", [400, 429, 500, 503])
def test_fail_directive(http, status):
    prompt = f"row [[fail:{status}]]"
    response = http.post("/v1/chat/completions", json=chat(prompt))
    assert response.status_code == status
    assert f"simulated failure {status}" in response.json()["error"]["message"]
    response = http.post("/serving-endpoints/ep/invocations", json={"prompt": prompt})
    assert response.status_code == status and f"simulated failure {status}" in response.json()["message"]


def test_flaky_directive(srv, http):
    prompt = "row 1 [[flaky:2:503]]"
    statuses = [http.post("/v1/chat/completions", json=chat(prompt)).status_code for _ in range(3)]
    assert statuses == [503, 503, 200]
    other = http.post("/v1/chat/completions", json=chat("row 2 [[flaky:2:503]]"))
    assert other.status_code == 503
    prompts = srv.prompts()
    assert prompts["calls"][prompt] == 3 and prompts["answered"] == {prompt: 1}


def test_flaky_drop_then_success(http):
    prompt = "row [[flaky:1:drop]]"
    with pytest.raises(httpx.TransportError):
        http.post("/v1/completions", json={"prompt": prompt})
    assert http.post("/v1/completions", json={"prompt": prompt}).status_code == 200


def test_flaky_directive_for_custom_records(http):
    body = {"dataframe_records": [{"a": 1, "note": "[[flaky:1:500]]"}]}
    statuses = [http.post("/serving-endpoints/m/invocations", json=body).status_code for _ in range(2)]
    assert statuses == [500, 200]


SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "r", "schema": {
    "type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]}}}


@pytest.mark.parametrize("fmt", [SCHEMA_FORMAT, {"type": "json_object"}])
def test_json_directives(http, fmt):
    def content(prompt):
        answer = http.post("/v1/chat/completions", json=chat(prompt, response_format=fmt)).json()
        return answer["choices"][0]["message"]["content"]

    assert json.loads(content("plain")) == json.loads(simulated_json("plain", fmt))
    assert json.loads(content("row [[nonconforming]]")) == {"unexpected": True}
    with pytest.raises(ValueError):
        json.loads(content("row [[badjson]]"))


def test_max_prompt_chars(srv, http):
    srv.configure(max_prompt_chars=10)
    assert http.post("/v1/completions", json={"prompt": "short"}).status_code == 200
    long = http.post("/v1/completions", json={"prompt": ["ok", "this is far too long"]})
    assert long.status_code == 400 and long.json()["error"]["code"] == "context_length_exceeded"
    dbx = http.post("/serving-endpoints/ep/invocations", json=chat("x" * 11))
    assert dbx.status_code == 400 and dbx.json()["error_code"] == "BAD_REQUEST"


# ---------------------------------------------------------------- simulator

def test_count_tokens():
    assert [sim.count_tokens(t) for t in ["", "   ", "a", "a  b\tc\n"]] == [0, 1, 1, 3]


def test_embedding_is_stable():
    assert simulated_embedding("hello", 4) == pytest.approx(
        [0.4369591593929094, -0.16933187457153479, -0.8813352811910324, 0.06034510257391065])
    assert simulated_embedding("hello", 40)[:4] != simulated_embedding("hellp", 40)[:4]
    assert math.fsum(v * v for v in simulated_embedding("x", 1000)) == pytest.approx(1.0)


def test_prediction():
    assert simulated_prediction({"a": 1, "b": 2.5, "c": "four", "d": None, "e": [1]}) == 7.5


SCHEMAS = [
    {"type": "object", "properties": {
        "name": {"type": "string"}, "age": {"type": "integer", "minimum": 18, "maximum": 20},
        "score": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "ok": {"type": "boolean"}, "color": {"enum": ["red", "green", "blue"]},
        "when": {"type": "string", "format": "date"}, "id": {"type": "string", "format": "uuid"},
        "nick": {"anyOf": [{"type": "null"}, {"type": "string", "maxLength": 5}]},
        "maybe": {"type": ["null", "integer"]}, "pad": {"type": "string", "minLength": 40},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 3},
        "one": {"type": "array", "items": {"type": "integer"}, "maxItems": 1},
        "fixed": {"const": "v1"},
    }, "required": ["name", "age"], "additionalProperties": False},
    {"$defs": {"Item": {"type": "object", "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"}},
                        "required": ["sku", "qty"]}},
     "type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/Item"}},
                                      "main": {"$ref": "#/$defs/Item"}}},
    {"type": "object", "properties": {"value": {"type": "integer"},
                                      "children": {"type": "array", "items": {"$ref": "#"}}},
     "required": ["value", "children"]},
    {"allOf": [{"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
               {"properties": {"b": {"type": "number"}}}]},
    {"type": "array", "items": {"oneOf": [{"type": "object", "properties": {"k": {"type": "boolean"}}}]}},
]


def _resolve(schema, root):
    while "$ref" in schema:
        target = root
        for part in schema["$ref"].lstrip("#").strip("/").split("/"):
            target = target[part] if part else target
        schema = target
    return schema


TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _is_type(value, kind):
    if kind in ("integer", "number"):
        wanted = int if kind == "integer" else (int, float)
        return isinstance(value, wanted) and not isinstance(value, bool)
    return isinstance(value, TYPES[kind])


def conforms(value, schema, root):
    schema = _resolve(schema, root)
    if "const" in schema:
        return value == schema["const"]
    if "enum" in schema:
        return value in schema["enum"]
    if "anyOf" in schema or "oneOf" in schema:
        return any(conforms(value, s, root) for s in schema.get("anyOf", schema.get("oneOf")))
    if "allOf" in schema and not all(conforms(value, s, root) for s in schema["allOf"]):
        return False
    kinds = schema.get("type")
    kinds = [kinds] if isinstance(kinds, str) else kinds
    if kinds and not any(_is_type(value, k) for k in kinds):
        return False
    return _conforms_inside(value, schema, root)


def _conforms_inside(value, schema, root):
    if isinstance(value, dict):
        props = schema.get("properties", {})
        if not set(schema.get("required", [])) <= set(value):
            return False
        if schema.get("additionalProperties") is False and set(value) - set(props):
            return False
        return all(conforms(v, props[k], root) for k, v in value.items() if k in props)
    if isinstance(value, list):
        if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", 10**9):
            return False
        return all(conforms(v, schema.get("items", {}), root) for v in value)
    if isinstance(value, str):
        return schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", 10**9)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (schema.get("minimum", -math.inf) <= value <= schema.get("maximum", math.inf)
                and schema.get("exclusiveMinimum", -math.inf) < value < schema.get("exclusiveMaximum", math.inf))
    return True


@pytest.mark.parametrize("index", range(len(SCHEMAS)))
def test_json_schema_conformance(index):
    schema = SCHEMAS[index]
    fmt = {"type": "json_schema", "json_schema": {"name": "t", "schema": schema}}
    for prompt in ["alpha", "a much longer prompt about something", ""]:
        text = simulated_json(prompt, fmt)
        assert text == simulated_json(prompt, fmt)
        assert conforms(json.loads(text), schema, schema), text


def test_json_schema_covers_every_property_and_varies():
    schema = SCHEMAS[0]
    fmt = {"type": "json_schema", "json_schema": {"schema": schema}}
    docs = [json.loads(simulated_json(p, fmt)) for p in ("one", "two")]
    assert set(docs[0]) == set(schema["properties"]) and docs[0] != docs[1]
    assert not conforms({"unexpected": True}, schema, schema)
    assert json.loads(simulated_json("q", {"type": "json_object"})) == {"answer": "[simulated] q"}
    assert simulated_json("q", {"type": "text"}) == "[simulated] q"


def test_simulator_is_stable_across_processes():
    code = ("import json; from batch.serve.simulate import *; print(json.dumps([simulated_embedding('z', 8), "
            f"simulated_json('z', {{'type': 'json_schema', 'json_schema': {{'schema': {SCHEMAS[1]!r}}}}})]))")
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": root}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    fmt = {"type": "json_schema", "json_schema": {"schema": SCHEMAS[1]}}
    assert json.loads(out) == [simulated_embedding("z", 8), simulated_json("z", fmt)]


# ---------------------------------------------------------------- answers in the shapes real endpoints send

def message_of(http, prompt, **extra):
    answer = http.post("/v1/chat/completions", json=chat(prompt, **extra)).json()
    return answer, (answer["choices"][0] if answer["choices"] else None)


def test_shape_tool_call(http):
    answer, first = message_of(http, "weather [[shape:tool-call]]")
    assert first["finish_reason"] == "tool_calls" and first["message"]["content"] is None
    (call,) = first["message"]["tool_calls"]
    assert call["type"] == "function" and call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert call["id"].startswith("call_")


def test_shape_refusal(http):
    _, first = message_of(http, "nope [[shape:refusal]]")
    assert first["message"] == {"role": "assistant", "content": None, "refusal": sim.REFUSAL}
    assert first["finish_reason"] == "stop"


def test_shape_cut_json_and_text(http):
    fmt = {"type": "json_schema", "json_schema": {"name": "r", "schema": {
        "type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]}}}
    prompt = "cut me [[shape:cut]]"
    answer, first = message_of(http, prompt, response_format=fmt, max_tokens=20)
    assert first["finish_reason"] == "length" and answer["usage"]["completion_tokens"] == 20
    assert first["message"]["content"] == '{"label": "lab' == simulated_json(prompt, fmt)[:14]
    _, first = message_of(http, "one two three four [[shape:cut]]")
    assert first["message"]["content"] == "[simulated] one two" and first["finish_reason"] == "length"


def test_shape_reasoning_spends_the_budget(http):
    answer, first = message_of(http, "hmm [[shape:reasoning]]", max_tokens=40)
    assert first["message"] == {"role": "assistant", "content": "", "reasoning_content": sim.REASONING}
    assert first["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == 40
    assert answer["usage"]["completion_tokens_details"] == {"reasoning_tokens": 40}
    answer, first = message_of(http, "hmm [[shape:thinking]]")
    assert first["message"] == {"role": "assistant", "content": None, "reasoning": sim.REASONING}
    assert answer["usage"]["completion_tokens"] == sim.DEFAULT_MAX_TOKENS and "completion_tokens_details" not in \
        answer["usage"]


def test_shape_parts_filtered_no_usage_no_choices(http):
    prompt = "in parts [[shape:parts]]"
    _, first = message_of(http, prompt)
    parts = first["message"]["content"]
    assert parts[0]["type"] == "reasoning" and "".join(p["text"] for p in parts[1:]) == simulated_answer(prompt)[0]
    _, first = message_of(http, "bad [[shape:filtered]]")
    assert first["message"]["content"] is None and first["finish_reason"] == "content_filter"
    answer, first = message_of(http, "quiet [[shape:no-usage]]")
    assert "usage" not in answer and first["message"]["content"] == simulated_answer("quiet [[shape:no-usage]]")[0]
    answer, first = message_of(http, "none [[shape:no-choices]]")
    assert answer["choices"] == [] and first is None


def test_shape_badutf8_cuts_a_character(http):
    prompt = "caf [[shape:badutf8]]"
    raw = http.post("/v1/chat/completions", json=chat(prompt)).content
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    text = json.loads(raw.decode("utf-8", "replace"))["choices"][0]["message"]["content"]
    assert text == simulated_answer(prompt)[0] + " caf\ufffd"


@pytest.mark.parametrize("path,dbx", [("/v1/chat/completions", False), ("/serving-endpoints/m/invocations", True)])
def test_fault_errors_inside_a_200(http, path, dbx):
    reply = http.post(path, json=chat("x [[fault:body-429]]"))
    assert reply.status_code == 200
    expected = ({"error_code": "REQUEST_LIMIT_EXCEEDED", "message": "simulated error 429"} if dbx
                else {"error": {"message": "simulated error 429", "code": 429}})
    assert reply.json() == expected
    assert http.post(path, json=chat("x [[fault:body-418]]")).status_code == 200


def test_fault_quota_and_html_502(srv, http):
    reply = http.post("/v1/chat/completions", json=chat("x [[fault:quota]]"))
    assert reply.status_code == 429 and "retry-after" not in reply.headers
    error = reply.json()["error"]
    assert (error["type"], error["code"]) == ("insufficient_quota", "insufficient_quota")
    assert error["message"].startswith("You exceeded your current quota")
    reply = http.post("/v1/chat/completions", json=chat("x [[fault:html-502]]"))
    assert reply.status_code == 502 and reply.headers["content-type"].startswith("text/html")
    assert b"<title>502 Bad Gateway</title>" in reply.content
    assert srv.stats()["by_status"]["502"] == 1


def test_fault_directive_applies_to_every_call(http):
    for _ in range(3):
        assert http.post("/v1/chat/completions", json=chat("always [[fault:503]]")).status_code == 503
