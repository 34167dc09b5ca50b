"""OpenAI's Responses API (``api: responses``): the request body, the answer's shapes, and ai_query through Spark.

The bodies follow OpenAI's API reference for ``POST /v1/responses``: ``input``, ``instructions``,
``max_output_tokens``, ``text.format`` for structured output; the answer's text in
``output[].content[]`` parts of type ``output_text``, ``usage.input_tokens`` / ``output_tokens``.
"""

from __future__ import annotations

import json

import openai
import pytest

import batch
from batch import ai_query
from batch.config import EndpointConfig, registry
from batch.errors import ConfigError, InvalidModelParametersError
from batch.serve.simulate import REFUSAL, simulated_answer, simulated_json
from batch._wire import NoAnswer, Usage, parse_answer, request_body
import support

CONFIG = EndpointConfig("resp", api="responses", base_url="http://127.0.0.1:1/v1", model="gpt-test")
TRIAGE = {"type": "json_schema", "json_schema": {"name": "triage", "strict": True, "schema": {
    "type": "object", "additionalProperties": False, "required": ["label"],
    "properties": {"label": {"type": "string", "enum": ["billing", "shipping"]}}}}}
FAST = {**support.FAST, "max_retries": 2}


def message(*parts: dict) -> dict:
    return {"type": "message", "role": "assistant", "status": "completed", "content": list(parts)}


def text(value: str) -> dict:
    return {"type": "output_text", "text": value, "annotations": []}


def test_request_body_uses_the_responses_names():
    assert CONFIG.url() == "http://127.0.0.1:1/v1/responses"
    assert request_body(CONFIG, ["Hi"], {"max_tokens": 9, "temperature": 0.5}, TRIAGE) == {
        "model": "gpt-test", "input": "Hi", "max_output_tokens": 9, "temperature": 0.5,
        "text": {"format": {"type": "json_schema", "name": "triage", "strict": True,
                            "schema": TRIAGE["json_schema"]["schema"]}}}
    assert request_body(CONFIG, ["Hi"], None, {"type": "json_object"}) == {
        "model": "gpt-test", "input": "Hi", "text": {"format": {"type": "json_object"}}}


@pytest.mark.parametrize("body,expected", [
    ({"status": "completed", "output": [message(text("Hello"))]}, "Hello"),
    ({"status": "completed", "output": [{"type": "reasoning", "summary": []}, message(text("He"), text("llo"))]},
     "Hello"),
    ({"status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"},
      "output": [message(text("cut her"))]}, "cut her"),  # plain text cut at the limit the user set stays the value
])
def test_answer_text(body, expected):
    assert parse_answer(CONFIG, body, 1) == [expected]


@pytest.mark.parametrize("body,words", [
    ({"status": "completed", "output": [message({"type": "refusal", "refusal": "I can't do that."})]},
     "the model refused to answer: I can't do that."),
    ({"status": "completed", "output": [{"type": "function_call", "name": "lookup", "arguments": "{}"}]},
     "tool call (lookup)"),
    ({"status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"},
      "output": [message(text('{"label": "bil'))]}, "cut at the output-token limit (max_tokens=5"),
    ({"status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"},
      "output": [{"type": "reasoning", "summary": []}], "usage": {"output_tokens_details": {"reasoning_tokens": 5}}},
     "on reasoning (5 reasoning tokens)"),
    ({"status": "incomplete", "incomplete_details": {"reason": "content_filter"}, "output": []}, "content filter"),
])
def test_answers_without_text_say_why(body, words):
    with pytest.raises(NoAnswer, match=None) as caught:
        parse_answer(CONFIG, body, 1, structured=True, max_tokens=5)
    assert words in str(caught.value)


def test_usage_reads_input_and_output_tokens():
    usage = Usage.from_body({"usage": {"input_tokens": 7, "output_tokens": 3, "total_tokens": 10}})
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (7, 3, 10)


def test_the_flavour_is_checked_when_the_entry_is_made():
    with pytest.raises(ConfigError, match="answers chat only"):
        EndpointConfig("e", api="responses", base_url="http://x/v1", task="embeddings")
    with pytest.raises(ConfigError, match="needs base_url"):
        EndpointConfig("e", api="responses")
    with pytest.raises(InvalidModelParametersError, match="'n' is not a Responses API parameter"):
        batch._arguments.check_model_parameters(CONFIG, {"n": 2})


def test_the_openai_client_reads_the_servers_responses(srv):
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused")
    answer = client.responses.create(model="m", input="Say hi", instructions="Be brief", max_output_tokens=50)
    assert answer.status == "completed" and answer.output_text == simulated_answer("Say hi")[0]
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (4, 3)
    cut = client.responses.create(model="m", input="one two three four", max_output_tokens=2)
    assert cut.status == "incomplete" and cut.incomplete_details.reason == "max_output_tokens"
    assert cut.output_text == simulated_answer("one two three four", 2)[0]


@pytest.fixture
def responses_endpoint(srv):
    registry.add("responses-chat", api="responses", base_url=srv.url + "/v1", model="gpt-sim", **FAST)
    return srv


@pytest.mark.spark
def test_ai_query_through_spark(spark, responses_endpoint):
    prompts = ["What is Spark?", "Classify: refund my invoice", None]
    df = spark.createDataFrame([(p,) for p in prompts], "prompt string").coalesce(1)
    rows = df.select(
        "prompt",
        ai_query("responses-chat", "prompt", modelParameters={"max_tokens": 40}).alias("plain"),
        ai_query("responses-chat", "prompt", failOnError=False, responseFormat=TRIAGE,
                 returnType="STRUCT<label: STRING>").alias("typed"),
    ).collect()
    by_prompt = {r["prompt"]: r for r in rows}
    assert by_prompt[None]["plain"] is None
    assert by_prompt[None]["typed"].asDict() == {"result": None, "errorMessage": None}
    for prompt in prompts[:2]:
        assert by_prompt[prompt]["plain"] == simulated_answer(prompt, 40)[0]
        expected = json.loads(simulated_json(prompt, TRIAGE))
        assert by_prompt[prompt]["typed"]["result"].asDict() == expected
    refused = spark.createDataFrame([("[[shape:refusal]] please",)], "prompt string").select(
        ai_query("responses-chat", "prompt", failOnError=False).alias("out")).first()["out"]
    assert refused["result"] is None and refused["errorMessage"].endswith(f"the model refused to answer: {REFUSAL}")
    bodies = [b for b in responses_endpoint.bodies() if b.get("model") == "gpt-sim"]
    assert bodies and all("input" in b and "messages" not in b for b in bodies)
    assert next(b for b in bodies if "max_output_tokens" in b)["max_output_tokens"] == 40
    typed_sql = batch.sql(spark, "SELECT ai_query('responses-chat', 'Name a colour', failOnError => false) AS out")
    assert typed_sql.first()["out"]["result"] == simulated_answer("Name a colour")[0]
