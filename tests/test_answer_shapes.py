"""Answers in the shapes real endpoints send, through Spark and real HTTP to ``batch.serve``.

Each prompt carries a directive (``[[shape:NAME]]``, ``[[fault:KIND]]``, ``[[flaky:N:KIND]]``) that makes the
server answer in one shape; every shape must become a value or that row's error, with a message that says why,
and none may fail a ``failOnError => false`` query.
"""

from __future__ import annotations

import asyncio
import struct
import threading

import aiohttp
import pytest
from aiohttp import web

from batch import ai_query
from batch._arguments import normalize_response_format
from batch.config import registry
from batch.errors import InvalidModelParametersError
from batch.serve import simulate as sim
from batch.serve.simulate import simulated_answer, simulated_embedding, simulated_json

pytestmark = pytest.mark.spark

DDL = "STRUCT<category: STRING, urgency: STRING>"
INVALID = "[AI_FUNCTION_INVALID_HTTP_RESPONSE] endpoint '{}' HTTP 200: "
REFUSED = "[AI_FUNCTION_HTTP_REQUEST_ERROR] endpoint '{}' HTTP {}: "


def frame(spark, prompts):
    """One partition, so every row is in one task and one Arrow batch."""
    return spark.createDataFrame([(i, p) for i, p in enumerate(prompts)], "id int, p string").coalesce(1)


def outcomes(spark, prompts, endpoint="chat", **arguments):
    """(result, errorMessage) per prompt, in prompt order (one partition keeps it; a sort would sample the input
    in a job of its own, and so ask twice), with failOnError => false."""
    df = frame(spark, prompts).select("id", ai_query(endpoint, "p", failOnError=False, **arguments).alias("a"))
    return [(row["a"]["result"], row["a"]["errorMessage"]) for row in df.collect()]


def text(prompt, max_tokens=None):
    return simulated_answer(prompt, max_tokens)[0]


def calls(srv, prompt):
    return srv.prompts()["calls"].get(prompt, 0)


def schema_format():
    return normalize_response_format(registry.get("chat"), DDL)


# ---------------------------------------------------------------- 1, 2: no text: a tool call, a refusal

@pytest.mark.parametrize("name", ["chat", "dbx-chat"])
def test_tool_call_is_a_row_error_naming_the_function(spark, srv, endpoints, name):
    prompt = "what is the weather in Paris [[shape:tool-call]]"
    assert outcomes(spark, [prompt], name) == [(None, INVALID.format(name) + (
        "the model answered with a tool call (get_weather) instead of text (finish_reason 'tool_calls'); "
        "ai_query runs no tools, so ask for a text answer"))]
    assert calls(srv, prompt) == 1  # the same request would answer the same: not retried


def test_tool_call_fails_a_failing_query_with_its_reason(spark, srv, endpoints):
    df = frame(spark, ["weather please [[shape:tool-call]]"]).select(ai_query("chat", "p").alias("a"))
    with pytest.raises(Exception) as caught:
        df.collect()
    assert "the model answered with a tool call (get_weather) instead of text" in str(caught.value)


def test_refusal_is_a_row_error_with_the_sentence_in_full(spark, srv, endpoints):
    prompt = "classify this [[shape:refusal]]"
    assert outcomes(spark, [prompt], responseFormat=DDL) == [
        (None, INVALID.format("chat") + "the model refused to answer: " + sim.REFUSAL)]


# ---------------------------------------------------------------- 3, 4: the output-token limit

@pytest.mark.parametrize("return_type", [None, DDL])
@pytest.mark.parametrize("max_tokens", [None, 12])
def test_structured_answer_cut_at_the_limit_is_a_row_error(spark, srv, endpoints, return_type, max_tokens):
    prompt = "triage: the printer is on fire [[shape:cut]]"
    params = {"max_tokens": max_tokens} if max_tokens else None
    partial = sim.cut_answer(simulated_json(prompt, schema_format()), schema_format(), max_tokens)
    assert partial.startswith('{"category": "cat') and not partial.endswith('"')  # cut inside a string
    limit = (f"max_tokens={max_tokens} from modelParameters" if max_tokens
             else "the endpoint's default, as modelParameters set no max_tokens")
    got = outcomes(spark, [prompt], responseFormat=DDL, returnType=return_type, modelParameters=params)
    assert got == [(None, INVALID.format("chat") + (
        f"the answer was cut at the output-token limit ({limit}) before the requested JSON was complete "
        f"(finish_reason 'length'); raise max_tokens. Partial answer: {partial!r}"))]


def test_plain_text_cut_at_max_tokens_stays_the_value(spark, srv, endpoints):
    prompt = "count: one two three four five six [[shape:cut]]"
    assert outcomes(spark, [prompt], modelParameters={"max_tokens": 3}) == [
        (" ".join(text(prompt).split()[:3]), None)]


@pytest.mark.parametrize("name", ["chat", "dbx-chat"])
def test_reasoning_that_spent_the_budget_is_a_row_error_with_its_tokens(spark, srv, endpoints, name):
    deepseek, ollama = "think hard [[shape:reasoning]]", "think harder [[shape:thinking]]"
    assert outcomes(spark, [deepseek, ollama], name, modelParameters={"max_tokens": 64}) == [
        (None, INVALID.format(name) + "the model spent the whole output-token limit (max_tokens=64 from "
         "modelParameters) on reasoning (64 reasoning tokens) and gave no answer (finish_reason 'length'); raise "
         "max_tokens or lower the reasoning effort"),
        (None, INVALID.format(name) + "the model spent the whole output-token limit (max_tokens=64 from "
         "modelParameters) on reasoning and gave no answer (finish_reason 'length'); raise max_tokens or lower "
         "the reasoning effort")]


# ---------------------------------------------------------------- 5: base64 embeddings

@pytest.mark.parametrize("name", ["embed", "dbx-embed"])
def test_base64_embeddings_are_decoded(spark, srv, endpoints, name):
    prompts = [f"embed me {i}" for i in range(10)]  # batch_size 8: two requests
    df = frame(spark, prompts).select("id", ai_query(name, "p", modelParameters={"encoding_format": "base64"})
                                      .alias("v"))
    vectors = [row["v"] for row in df.collect()]
    as_float32 = [list(struct.unpack("<16f", struct.pack("<16f", *simulated_embedding(p, 16)))) for p in prompts]
    assert vectors == as_float32
    assert [b.get("encoding_format") for b in srv.bodies()] == ["base64", "base64"]


def test_float_embeddings_still_read_and_other_encodings_refused(spark, srv, endpoints):
    df = frame(spark, ["plain"]).select(ai_query("embed", "p", modelParameters={"encoding_format": "float"})
                                        .alias("v"))
    assert df.collect()[0]["v"] == pytest.approx(simulated_embedding("plain", 16), abs=1e-6)
    with pytest.raises(InvalidModelParametersError, match="'encoding_format' must be 'float' or 'base64'"):
        ai_query("embed", "p", modelParameters={"encoding_format": "int8"})


# ---------------------------------------------------------------- 6, 7: status carried in a body

@pytest.mark.parametrize("name", ["chat", "dbx-chat"])
def test_an_error_inside_a_200_is_judged_by_its_code(spark, srv, endpoints, name):
    limited, busy, refused = "a [[flaky:2:body-429]]", "b [[flaky:2:body-503]]", "c [[fault:body-400]]"
    words = "BAD_REQUEST: simulated error 400" if name == "dbx-chat" else "simulated error 400"
    assert outcomes(spark, [limited, busy, refused], name) == [
        (text(limited), None), (text(busy), None),
        (None, REFUSED.format(name, 400) + words + " (an error sent inside an HTTP 200 answer)")]
    assert [calls(srv, p) for p in (limited, busy, refused)] == [3, 3, 1]


def test_insufficient_quota_fails_fast_with_its_message(spark, srv, endpoints):
    prompt = "no credit left [[fault:quota]]"
    assert outcomes(spark, [prompt]) == [(None, REFUSED.format("chat", 429) + (
        "insufficient_quota: You exceeded your current quota, please check your plan and billing details. For "
        "more information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/"
        "api-errors. (the account has no quota left, so the request is not retried: add credit or raise the "
        "quota, then run again)"))]
    assert calls(srv, prompt) == 1


def test_an_html_page_from_a_proxy_reads_as_its_title(spark, srv, endpoints):
    prompt = "through nginx [[fault:html-502]]"
    assert outcomes(spark, [prompt]) == [(None, REFUSED.format("chat", 502) + "an HTML page: 502 Bad Gateway")]
    assert calls(srv, prompt) == 5  # a 502 is retried: FAST allows 4 retries


# ---------------------------------------------------------------- 9: encoding

@pytest.mark.parametrize("name", ["chat", "dbx-chat"])
def test_a_cut_multibyte_character_is_replaced(spark, srv, endpoints, name):
    prompt = "say cafe [[shape:badutf8]]"
    assert outcomes(spark, [prompt], name) == [(text(prompt) + " caf\ufffd", None)]
    assert calls(srv, prompt) == 1


# ---------------------------------------------------------------- neighbours, and one query with every shape

def test_every_shape_in_one_query_is_only_its_rows_error(spark, srv, endpoints):
    good = ["plain answer", "typed parts [[shape:parts]]", "no usage [[shape:no-usage]]"]
    bad = {
        "tool [[shape:tool-call]]": "the model answered with a tool call (get_weather)",
        "refuse [[shape:refusal]]": "the model refused to answer: " + sim.REFUSAL,
        "think [[shape:reasoning]]": "on reasoning (256 reasoning tokens) and gave no answer",
        "filter [[shape:filtered]]": "the endpoint's content filter withheld the answer (finish_reason "
                                     "'content_filter')",
        "nothing [[shape:no-choices]]": "the answer has an empty 'choices' list",
        "wrong [[fault:unexpected]]": "unexpected answer (no 'choices' in the answer)",
        "quota [[fault:quota]]": "insufficient_quota: You exceeded your current quota",
        "teapot [[fault:body-418]]": "simulated error 418 (an error sent inside an HTTP 200 answer)",
    }
    got = outcomes(spark, good + list(bad))
    assert got[:3] == [(text(p), None) for p in good]
    for (result, error), (prompt, words) in zip(got[3:], bad.items()):
        assert result is None and words in error, prompt


# ---------------------------------------------------------------- 8: proxies from the environment

class CountingProxy:
    """A forward HTTP proxy on 127.0.0.1, in its own thread, that counts what it forwards."""

    def __init__(self) -> None:
        self.forwarded: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    async def _start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._session = aiohttp.ClientSession()
        return f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]

    async def _forward(self, request: web.Request) -> web.Response:
        self.forwarded.append(request.raw_path)  # absolute-form: the whole target URL
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "proxy-connection")}
        async with self._session.request(request.method, request.raw_path, data=await request.read(),
                                         headers=headers) as reply:
            return web.Response(body=await reply.read(), status=reply.status, content_type=reply.content_type)

    def close(self) -> None:
        async def stop() -> None:
            await self._session.close()
            await self._runner.cleanup()
        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@pytest.fixture
def proxy():
    server = CountingProxy()
    yield server
    server.close()


def worker_environment(spark, monkeypatch, **variables):
    """Python workers get their environment from the JVM, fixed when it started, plus the context's
    ``environment`` (spark.executorEnv.*), which a UDF takes when it is built: a new set starts new workers.
    A variable not given is set empty in lowercase, which (as urllib, requests and httpx read them) hides
    both spellings of one the JVM may have inherited."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        given = {spelled: variables[spelled] for spelled in (name, name.lower()) if spelled in variables}
        for spelled, value in (given or {name.lower(): ""}).items():
            monkeypatch.setitem(spark.sparkContext.environment, spelled, value)


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "http_proxy", "ALL_PROXY"])
def test_requests_go_through_the_environments_proxy(spark, srv, endpoints, proxy, monkeypatch, variable):
    worker_environment(spark, monkeypatch, **{variable: proxy.url})
    prompts = [f"via proxy {variable} {i}" for i in range(3)]
    assert outcomes(spark, prompts) == [(text(p), None) for p in prompts]
    assert sorted(proxy.forwarded) == [srv.url + "/v1/chat/completions"] * 3


@pytest.mark.parametrize("no_proxy", ["127.0.0.1", "localhost,127.0.0.0/8", "*"])
def test_no_proxy_goes_direct(spark, srv, endpoints, proxy, monkeypatch, no_proxy):
    worker_environment(spark, monkeypatch, HTTP_PROXY=proxy.url, NO_PROXY=no_proxy)
    prompts = [f"direct {no_proxy} {i}" for i in range(3)]
    assert outcomes(spark, prompts) == [(text(p), None) for p in prompts]
    assert proxy.forwarded == [] and [calls(srv, p) for p in prompts] == [1, 1, 1]
