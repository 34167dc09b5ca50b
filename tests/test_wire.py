"""Wire formats as plain data: the bodies we send and how answers and errors are read."""

from __future__ import annotations

import json

import pytest

from batch.config import EndpointConfig
from batch.wire import AnswerShapeError, Usage, error_text, parse_answer, request_body

BASE = "http://127.0.0.1:9/v1"


def openai(task: str, **keys) -> EndpointConfig:
    return EndpointConfig(name="ep-" + task, api="openai", base_url=BASE, task=task, **keys)


def dbx(task: str, **keys) -> EndpointConfig:
    return EndpointConfig(name="dbx-" + task, api="databricks", host="https://example.cloud", task=task, **keys)


# ---------------------------------------------------------------- request bodies

@pytest.mark.parametrize("make,model", [(openai, {"model": "ep-chat"}), (dbx, {})])
def test_chat_body(make, model):
    body = request_body(make("chat"), ["What is Spark?"], {"max_tokens": 64, "temperature": 0.2})
    assert body == {**model, "messages": [{"role": "user", "content": "What is Spark?"}],
                    "max_tokens": 64, "temperature": 0.2}


def test_openai_model_field_follows_config():
    assert request_body(openai("chat", model="gpt-x"), ["hi"])["model"] == "gpt-x"


@pytest.mark.parametrize("make,model", [(openai, {"model": "ep-completions"}), (dbx, {})])
def test_completions_body(make, model):
    assert request_body(make("completions"), ["Once upon"], {"stop": ["\n"]}) == {
        **model, "prompt": "Once upon", "stop": ["\n"]}


@pytest.mark.parametrize("make,model", [(openai, {"model": "ep-embeddings"}), (dbx, {})])
def test_embeddings_body_carries_many_inputs(make, model):
    assert request_body(make("embeddings"), ("a", "b", "c")) == {**model, "input": ["a", "b", "c"]}


def test_custom_body_is_dataframe_records():
    records = [{"x": 1, "y": "a"}, {"x": 2, "y": None}]
    body = request_body(dbx("custom"), records)
    assert body == {"dataframe_records": records}
    assert "model" not in body


def test_response_format_and_params_pass_through():
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}, "strict": True}}
    body = request_body(openai("chat"), ["p"], {"top_k": 5, "extra_key": [1]}, fmt)
    assert body["response_format"] == fmt and body["response_format"] is not fmt
    assert body["top_k"] == 5 and body["extra_key"] == [1]
    assert request_body(dbx("chat"), ["p"], None, {"type": "json_object"})["response_format"] == {
        "type": "json_object"}
    assert "response_format" not in request_body(dbx("chat"), ["p"])


def test_bodies_are_json():
    for config in (openai("chat"), dbx("completions"), dbx("embeddings")):
        json.dumps(request_body(config, ["ünïcode ✓"], {"n": 1}))


# ---------------------------------------------------------------- answers

def chat_answer(content, **extra):
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": "stop"}], **extra}


@pytest.mark.parametrize("make", [openai, dbx])
def test_parse_chat_and_completions(make):
    assert parse_answer(make("chat"), chat_answer("hello"), 1) == ["hello"]
    answer = {"choices": [{"text": "first"}, {"text": "second"}]}
    assert parse_answer(make("completions"), answer, 1) == ["first"]


def test_parse_chat_empty_string_is_an_answer():
    assert parse_answer(openai("chat"), chat_answer(""), 1) == [""]


@pytest.mark.parametrize("make", [openai, dbx])
def test_parse_embeddings_in_input_order(make):
    answer = {"data": [{"index": 2, "embedding": [0.2]}, {"index": 0, "embedding": [0.0]},
                       {"index": 1, "embedding": [0.1]}]}
    assert parse_answer(make("embeddings"), answer, 3) == [[0.0], [0.1], [0.2]]
    no_index = {"data": [{"embedding": [1.0]}, {"embedding": [2.0]}]}
    assert parse_answer(make("embeddings"), no_index, 2) == [[1.0], [2.0]]


def test_parse_custom_predictions():
    config = dbx("custom")
    assert parse_answer(config, {"predictions": [1.5, 2.5]}, 2) == [1.5, 2.5]
    assert parse_answer(config, {"predictions": [{"a": 1}, {"a": 2}]}, 2) == [{"a": 1}, {"a": 2}]
    columns = {"predictions": {"label": ["x", "y"], "score": [0.1, 0.9]}}
    assert parse_answer(config, columns, 2) == [{"label": "x", "score": 0.1}, {"label": "y", "score": 0.9}]


@pytest.mark.parametrize("task,answer,count,needle", [
    ("chat", [], 1, "JSON object"),
    ("chat", "text", 1, "JSON object"),
    ("chat", None, 1, "JSON object"),
    ("chat", {}, 1, "choices"),
    ("chat", {"choices": []}, 1, "choices"),
    ("chat", {"choices": "x"}, 1, "choices"),
    ("chat", {"choices": ["x"]}, 1, "choices"),
    ("chat", {"choices": [{}]}, 1, "message.content"),
    ("chat", {"choices": [{"message": None}]}, 1, "message.content"),
    ("chat", {"choices": [{"message": "just text"}]}, 1, "message.content"),
    ("chat", {"choices": [{"message": ["a"]}]}, 1, "message.content"),
    ("chat", chat_answer(None), 1, "message.content"),
    ("chat", chat_answer(42), 1, "message.content"),
    ("completions", {"choices": [{"message": {"content": "x"}}]}, 1, "text"),
    ("completions", {"result": "surprise"}, 1, "choices"),
    ("embeddings", {"data": [{"embedding": [1.0]}]}, 2, "expected 2 embeddings"),
    ("embeddings", {"data": {"embedding": [1.0]}}, 1, "embeddings"),
    ("embeddings", {}, 1, "embeddings"),
    ("embeddings", {"data": [{"vector": [1.0]}]}, 1, "embedding"),
    ("embeddings", {"data": ["x"]}, 1, "embedding"),
    ("embeddings", {"data": [{"index": 0, "embedding": [1]}, {"index": 0, "embedding": [2]}]}, 2, "bad index"),
    ("embeddings", {"data": [{"index": 5, "embedding": [1]}]}, 1, "bad index"),
    ("embeddings", {"data": [{"index": -1, "embedding": [1]}]}, 1, "bad index"),
    ("embeddings", {"data": [{"index": "0", "embedding": [1]}]}, 1, "bad index"),
    ("embeddings", {"data": [{"index": True, "embedding": [1]}, {"index": 0, "embedding": [2]}]}, 2, "bad index"),
    ("custom", {"predictions": [1.0]}, 2, "expected 2 values"),
    ("custom", {"result": [1.0, 2.0]}, 2, "predictions"),
    ("custom", {"predictions": {"a": [1, 2], "b": [1]}}, 2, "predictions"),
    ("custom", {"predictions": {"a": [1, 2], "b": 3}}, 2, "predictions"),
    ("custom", {"predictions": "1,2"}, 2, "predictions"),
])
def test_wrong_shapes(task, answer, count, needle):
    config = dbx(task) if task == "custom" else openai(task)
    with pytest.raises(AnswerShapeError, match=needle):
        parse_answer(config, answer, count)


def test_answer_shape_error_is_a_value_error():
    assert issubclass(AnswerShapeError, ValueError)


@pytest.mark.parametrize("body,expected", [
    ({"usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}, (3, 4, 7)),
    ({"usage": {"prompt_tokens": 3, "completion_tokens": 4}}, (3, 4, 7)),
    ({"usage": {"prompt_tokens": 5, "total_tokens": 5}}, (5, 0, 5)),
    ({"usage": {"prompt_tokens": "3", "completion_tokens": None, "total_tokens": 2.5}}, (0, 0, 0)),
    ({"usage": {"prompt_tokens": True, "completion_tokens": 2}}, (0, 2, 2)),
    ({"usage": None}, (0, 0, 0)),
    ({"usage": [1, 2]}, (0, 0, 0)),
    ({}, (0, 0, 0)),
])
def test_usage_from_body(body, expected):
    usage = Usage.from_body(body)
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == expected


# ---------------------------------------------------------------- error bodies

def as_bytes(value) -> bytes:
    return json.dumps(value).encode()


@pytest.mark.parametrize("content,expected", [
    # OpenAI
    (as_bytes({"error": {"message": "This model's maximum context length is 8192 tokens",
                         "type": "invalid_request_error", "param": None, "code": "context_length_exceeded"}}),
     "context_length_exceeded: This model's maximum context length is 8192 tokens"),
    (as_bytes({"error": {"message": "Rate limit reached", "type": "rate_limit_error", "code": None}}),
     "rate_limit_error: Rate limit reached"),
    (as_bytes({"error": {"message": "plain"}}), "plain"),
    (as_bytes({"error": "model not found"}), "model not found"),
    # OAuth token endpoints
    (as_bytes({"error": "invalid_client", "error_description": "client authentication failed"}),
     "invalid_client: client authentication failed"),
    # Databricks
    (as_bytes({"error_code": "REQUEST_LIMIT_EXCEEDED", "message": "Exceeded workspace rate limit"}),
     "REQUEST_LIMIT_EXCEEDED: Exceeded workspace rate limit"),
    (as_bytes({"error_code": "BAD_REQUEST"}), "BAD_REQUEST"),
    (as_bytes({"message": "only a message"}), "only a message"),
    # anything else is shown as it came
    (b"<html><body>502 Bad Gateway</body></html>", "an HTML page: 502 Bad Gateway"),
    (b"  upstream connect error  \n", "upstream connect error"),
    (b"", "(empty body)"),
    (b"\xff\xfe not utf-8", "\ufffd\ufffd not utf-8"),
    (as_bytes({"detail": "Not Found"}), '{"detail": "Not Found"}'),
    (as_bytes(["a", "b"]), '["a", "b"]'),
    (as_bytes({"error": {"message": ""}}), '{"error": {"message": ""}}'),
])
def test_error_text(content, expected):
    assert error_text(content) == expected


def test_error_text_is_bounded():
    long_html = b"x" * 5000
    text = error_text(long_html, limit=100)
    assert text == "x" * 100 + "..."
    long_json = as_bytes({"detail": "y" * 5000})
    assert len(error_text(long_json, limit=100)) == 103
