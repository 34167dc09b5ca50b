"""Wire formats as plain data: the bodies we send and how answers and errors are read."""

from __future__ import annotations

import base64
import json
import struct

import pytest

from batch.config import EndpointConfig
from batch._wire import (AnswerShapeError, ErrorInfo, NoAnswer, Usage, embedded_error, error_info, error_text,
                        parse_answer, request_body)

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
    # Plain JSON data: what a JSON round trip gives back is the same body (a tuple, a set, bytes or a
    # non-finite float would not survive it), with the prompt's text and the parameters intact.
    for config in (openai("chat"), dbx("completions"), dbx("embeddings")):
        body = request_body(config, ["ünïcode ✓"], {"n": 1})
        text = json.dumps(body, ensure_ascii=False, allow_nan=False)
        assert json.loads(text) == body and body["n"] == 1
        assert "ünïcode ✓" in text


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
    ({"usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 0}}, (3, 4, 7)),
    ({"usage": {"prompt_tokens": 3, "completion_tokens": True, "total_tokens": 7}}, (3, 0, 7)),
    ({"usage": {"prompt_tokens": 0, "input_tokens": 4, "total_tokens": 4}}, (4, 0, 4)),
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


# ---------------------------------------------------------------- answers without text, and other shapes

def choice(message, finish="stop", **extra):
    return {"choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}], **extra}


LIMIT_64 = "max_tokens=64 from modelParameters"
DEFAULT_LIMIT = "the endpoint's default, as modelParameters set no max_tokens"


def no_answer(answer, **keys) -> str:
    with pytest.raises(NoAnswer) as caught:
        parse_answer(openai("chat"), answer, 1, **keys)
    return str(caught.value)


def tool_call(name):
    return {"id": "call_1", "type": "function", "function": {"name": name, "arguments": "{}"}}


@pytest.mark.parametrize("message,finish,names", [
    ({"content": None, "tool_calls": [tool_call("get_weather")]}, "tool_calls", "get_weather"),
    ({"content": "", "tool_calls": [tool_call("a"), tool_call("b")]}, "tool_calls", "a, b"),
    ({"content": "Let me look that up.", "tool_calls": [tool_call("search")]}, "tool_calls", "search"),
    ({"content": None, "tool_calls": [{"type": "function"}]}, "tool_calls", "unnamed"),
    ({"content": None, "function_call": {"name": "legacy", "arguments": "{}"}}, "function_call", "legacy"),
])
def test_a_tool_call_names_its_functions(message, finish, names):
    assert no_answer(choice(message, finish)) == (
        f"the model answered with a tool call ({names}) instead of text (finish_reason {finish!r}); ai_query "
        "runs no tools, so ask for a text answer")


def test_a_refusal_carries_its_sentence():
    sentence = "I'm sorry, I cannot assist with that request because it asks for personal data. " * 30
    assert no_answer(choice({"content": None, "refusal": sentence})) == "the model refused to answer: " + sentence


def test_a_structured_answer_cut_at_the_limit_says_which_limit():
    cut = choice({"content": '{"category": "billi'}, "length")
    assert no_answer(cut, structured=True, max_tokens=64) == (
        f"the answer was cut at the output-token limit ({LIMIT_64}) before the requested JSON was complete "
        "(finish_reason 'length'); raise max_tokens. Partial answer: '{\"category\": \"billi'")
    assert f"({DEFAULT_LIMIT})" in no_answer(cut, structured=True)
    assert parse_answer(openai("chat"), cut, 1, max_tokens=64) == ['{"category": "billi']  # plain text stays
    long = choice({"content": "x" * 5000}, "length")
    assert no_answer(long, structured=True).endswith("Partial answer: '" + "x" * 1000 + "...'")


def test_no_text_is_no_answer_whatever_is_around_it():
    """A newline or two left by a reasoning model at the limit, or typed parts none of which is text."""
    spent = choice({"content": "  \n "}, "length")
    spent["usage"] = {"completion_tokens_details": {"reasoning_tokens": 7}}
    assert "on reasoning (7 reasoning tokens) and gave no answer" in no_answer(spent)
    with pytest.raises(AnswerShapeError, match="missing or not text"):
        parse_answer(openai("chat"), choice({"content": [{"type": "image_url", "image_url": {"url": "x"}}]}), 1)
    assert parse_answer(openai("chat"), choice({"content": "\n\n"}), 1) == ["\n\n"]  # ended on its own: the value


def test_a_whole_structured_answer_that_says_length_is_the_answer():
    """llama-server's grammar may close the JSON and still report "length" (seen with SmolLM2 at 40 tokens)."""
    whole = choice({"content": '{\n  "category": "shipping",\n  "urgency": "medium"\n}'}, "length")
    assert parse_answer(openai("chat"), whole, 1, structured=True, max_tokens=40) == [
        '{\n  "category": "shipping",\n  "urgency": "medium"\n}']


@pytest.mark.parametrize("message,usage,spent", [
    ({"content": "", "reasoning_content": "thinking..."}, {"completion_tokens_details": {"reasoning_tokens": 64}},
     " (64 reasoning tokens)"),
    ({"content": None, "reasoning": "thinking..."}, None, ""),
    ({"content": "", "reasoning_content": "thinking..."}, {"completion_tokens_details": None}, ""),
    ({"content": ""}, {"completion_tokens": 64, "completion_tokens_details": {"reasoning_tokens": 64}},
     " (64 reasoning tokens)"),  # OpenAI o-series: no reasoning text at all, only its tokens
    ({"content": [{"type": "reasoning", "summary": [{"type": "summary_text", "text": "hmm"}]}]}, None, ""),
])
def test_reasoning_that_spent_the_budget_is_no_answer(message, usage, spent):
    answer = choice(message, "length", **({"usage": usage} if usage else {}))
    assert no_answer(answer, max_tokens=64) == (
        f"the model spent the whole output-token limit ({LIMIT_64}) on reasoning{spent} and gave no answer "
        "(finish_reason 'length'); raise max_tokens or lower the reasoning effort")


def test_an_empty_answer_at_the_limit_without_reasoning_is_no_answer():
    assert no_answer(choice({"content": ""}, "length")) == (
        f"the answer is empty: the output-token limit ({DEFAULT_LIMIT}) was reached before any text "
        "(finish_reason 'length'); raise max_tokens")


def test_a_filtered_answer_is_no_answer():
    assert no_answer(choice({"content": None}, "content_filter")) == (
        "the endpoint's content filter withheld the answer (finish_reason 'content_filter')")
    assert no_answer(choice({"content": "Once upon"}, "content_filter")).endswith("; partial answer: 'Once upon'")


@pytest.mark.parametrize("message,finish,expected", [
    ({"content": [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "world"}]}, "stop", "Hello, world"),
    ({"content": [{"type": "reasoning", "summary": []}, {"type": "text", "text": "42"}]}, "stop", "42"),
    ({"content": [{"type": "output_text", "text": "ok"}, {"type": "image_url", "image_url": {}}]}, "stop", "ok"),
    ({"content": [{"text": "untyped"}]}, "stop", "untyped"),
    ({"content": "reasoned", "reasoning_content": "first I thought"}, "stop", "reasoned"),
    ({"content": "", "refusal": None}, "stop", ""),
    ({"content": "ends without a reason"}, None, "ends without a reason"),  # llama.cpp, older servers
    ({"content": "done"}, "eos", "done"),
    ({"content": "cut short"}, "length", "cut short"),
    ({"content": "text beside unused calls", "tool_calls": []}, "stop", "text beside unused calls"),
])
def test_chat_answers_in_other_shapes(message, finish, expected):
    assert parse_answer(openai("chat"), choice(message, finish), 1) == [expected]


@pytest.mark.parametrize("answer,needle", [
    ({"choices": []}, "empty 'choices' list"),
    (choice({"content": [1, 2]}), "message.content"),
    (choice({"content": [{"type": "text", "text": "x"}, "y"]}), "message.content"),
    (choice({"content": {"text": "x"}}), "message.content"),
])
def test_other_chat_shapes_that_are_not_answers(answer, needle):
    with pytest.raises(AnswerShapeError, match=needle):
        parse_answer(openai("chat"), answer, 1)


def b64(values) -> str:
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


@pytest.mark.parametrize("make", [openai, dbx])
def test_base64_embeddings_are_little_endian_float32(make):
    answer = {"data": [{"index": 1, "embedding": b64([0.5, -2.0])}, {"index": 0, "embedding": [0.25, 1.0]}]}
    assert parse_answer(make("embeddings"), answer, 2) == [[0.25, 1.0], [0.5, -2.0]]
    assert parse_answer(make("embeddings"), {"data": [{"embedding": ""}]}, 1) == [[]]


@pytest.mark.parametrize("embedding,needle", [
    ("not base64!", "text but not base64"),
    (base64.b64encode(b"abcde").decode(), "decodes to 5 bytes, not float32 values"),
    (None, "no 'embedding' list"),
    ({"values": [1.0]}, "no 'embedding' list"),
])
def test_bad_base64_embeddings(embedding, needle):
    with pytest.raises(AnswerShapeError, match=needle):
        parse_answer(openai("embeddings"), {"data": [{"embedding": embedding}]}, 1)


@pytest.mark.parametrize("content,expected", [
    (as_bytes({"error": {"message": "Rate limit exceeded", "code": 429}}),
     ErrorInfo("Rate limit exceeded", None, 429)),
    (as_bytes({"error": {"message": "Upstream down", "code": "502", "type": "upstream_error"}}),
     ErrorInfo("upstream_error: Upstream down", "upstream_error", 502)),
    (as_bytes({"error": {"message": "You exceeded your current quota", "type": "insufficient_quota",
                         "code": "insufficient_quota"}}),
     ErrorInfo("insufficient_quota: You exceeded your current quota", "insufficient_quota", 429)),
    (as_bytes({"error": {"message": "quota", "type": "insufficient_quota", "code": "rate_limit_exceeded"}}),
     ErrorInfo("rate_limit_exceeded: quota", "insufficient_quota", 429)),
    (as_bytes({"error": {"message": "slow down", "type": "rate_limit_error", "code": [1]}}),
     ErrorInfo("rate_limit_error: slow down", "rate_limit_error", 429)),
    (as_bytes({"error_code": "REQUEST_LIMIT_EXCEEDED", "message": "Exceeded workspace rate limit"}),
     ErrorInfo("REQUEST_LIMIT_EXCEEDED: Exceeded workspace rate limit", "REQUEST_LIMIT_EXCEEDED", 429)),
    (as_bytes({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "try later"}),
     ErrorInfo("TEMPORARILY_UNAVAILABLE: try later", "TEMPORARILY_UNAVAILABLE", 503)),
    (as_bytes({"error_code": "SOMETHING_NEW", "message": "hm"}), ErrorInfo("SOMETHING_NEW: hm", "SOMETHING_NEW")),
    (as_bytes({"error": {"message": "odd", "code": 200}}), ErrorInfo("odd")),
    (b"<!DOCTYPE html><html><head><title>Access &amp; denied</title><style>p{}</style></head></html>",
     ErrorInfo("an HTML page: Access & denied")),
    (b"<html><body><script>var x = 1;</script><h1>Service\n Unavailable</h1></body></html>",
     ErrorInfo("an HTML page: Service Unavailable")),
    (b"<html></html>", ErrorInfo("an HTML page")),
    (b"<not html>", ErrorInfo("<not html>")),
    (b"[" * 100_000, ErrorInfo("[" * 1000 + "...")),
])
def test_error_info(content, expected):
    assert error_info(content) == expected


@pytest.mark.parametrize("body,expected", [
    ({"error": {"message": "Rate limit", "code": 429}}, ErrorInfo("Rate limit", None, 429)),
    ({"error_code": "BAD_REQUEST", "message": "no"}, ErrorInfo("BAD_REQUEST: no", "BAD_REQUEST", 400)),
    ({"error": "model not loaded"}, ErrorInfo("model not loaded", "model not loaded")),
    ({"choices": [], "error": {"message": "partial", "code": 500}}, None),  # an answer beside it: not an error
    ({"data": [], "error": {"message": "x"}}, None),
    ({"error": None, "object": "chat.completion"}, None),
    ({"detail": "Not Found"}, None),
    (["error"], None),
])
def test_embedded_error(body, expected):
    assert embedded_error(body) == expected
