"""The endpoint client: retries, Retry-After, limits and error text, first against a scripted transport,
then over real HTTP against the local endpoint with its fault directives."""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import time

import httpx
import pytest

from batch._client import EndpointClient
from batch.config import EndpointConfig
from batch._engine import answer_rows
from batch.errors import (HTTPRequestError, InvalidResponseError, NoAnswerError, ParseCastError, QuotaExceededError,
                          RateLimitError, ServerError, TransportError)
from batch._flow.law import FIRST_PROBE_GAP
from batch.serve import simulated_answer
from batch._transport import TRANSPORTS, make_transport
from support import FAST, FakeTime, poll, run

MOCK_URL = "http://mock.test/v1"


def chat_json(text: str, usage: dict | None = None) -> dict:
    body = {"id": "x", "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}
    if usage is not None:
        body["usage"] = usage
    return body


class Script:
    """A MockTransport handler that plays one step per request, then answers normally."""

    def __init__(self, *steps, answer=None, time: FakeTime | None = None) -> None:
        self.steps = list(steps)
        self.answer = answer or (lambda request: httpx.Response(200, json=chat_json("ok")))
        self.requests: list[httpx.Request] = []
        self.times: list[float] = []
        self.time = time

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.time is not None:
            self.times.append(self.time.now)
        if self.steps:
            step = self.steps.pop(0)
            if isinstance(step, Exception):
                raise step
            if callable(step):
                return step(request)
            return step
        return self.answer(request)


def mock_client(handler, t: FakeTime, *, rand=0.0, **keys) -> EndpointClient:
    entry = dict(name="mock-chat", api="openai", base_url=MOCK_URL, task="chat", max_retries=4,
                 initial_backoff=0.1, max_backoff=1.0, timeout=5.0)
    entry.update(keys)
    return EndpointClient(EndpointConfig(**entry), transport=httpx.MockTransport(handler), clock=t.clock,
                          sleep=t.sleep, rand=lambda: rand)


def call(client: EndpointClient, *inputs, **kwargs):
    async def go():
        try:
            return await client.call(list(inputs) or ["hello"], **kwargs)
        finally:
            await client.aclose()
    return run(go())


def status(code: int, body=None, headers=None, content: bytes | None = None):
    def respond(request):
        if content is not None:
            return httpx.Response(code, content=content, headers=headers)
        return httpx.Response(code, json=body if body is not None else {"error": {"message": f"status {code}"}},
                              headers=headers)
    return respond


# ================================================================ A: scripted transport

def test_answer_usage_and_request():
    t = FakeTime()
    usage = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
    script = Script(answer=lambda r: httpx.Response(200, json=chat_json("the answer", usage)))
    client = mock_client(script, t, headers={"X-Team": "data", "User-Agent": "custom-agent"}, model="gpt-x")
    result = call(client, "What is Spark?", params={"max_tokens": 16, "temperature": 0.1})
    assert result.results == ["the answer"] and result.error is None
    assert (result.attempts, result.rate_limited) == (1, 0)
    assert (result.usage.prompt_tokens, result.usage.completion_tokens, result.usage.total_tokens) == (5, 7, 12)
    [request] = script.requests
    assert request.method == "POST" and str(request.url) == MOCK_URL + "/chat/completions"
    assert json.loads(request.content) == {"model": "gpt-x",
                                           "messages": [{"role": "user", "content": "What is Spark?"}],
                                           "max_tokens": 16, "temperature": 0.1}
    assert request.headers["content-type"] == "application/json"
    assert request.headers["host"] == "mock.test"
    assert request.headers["content-length"] == str(len(request.content))
    assert request.headers["x-team"] == "data"
    assert request.headers.get_list("user-agent") == ["custom-agent"]  # the entry's header replaces ours
    assert "authorization" not in request.headers
    assert request.extensions["timeout"]["read"] == 5.0
    assert t.sleeps == []
    stats = client.stats
    assert (stats.requests, stats.attempts, stats.failed, stats.usage.total_tokens) == (1, 1, 0, 12)


def test_usage_adds_up_over_calls():
    t = FakeTime()
    usage = {"prompt_tokens": 2, "completion_tokens": 3}
    client = mock_client(Script(answer=lambda r: httpx.Response(200, json=chat_json("a", usage))), t)

    async def go():
        results = await asyncio.gather(*(client.call([f"p{i}"]) for i in range(10)))
        await client.aclose()
        return results
    results = run(go())
    assert all(r.usage.total_tokens == 5 for r in results)
    assert (client.stats.requests, client.stats.usage.prompt_tokens, client.stats.usage.completion_tokens,
            client.stats.usage.total_tokens) == (10, 20, 30, 50)


@pytest.mark.parametrize("code", [408, 429, 500, 502, 503, 504])
def test_transient_statuses_are_retried(code):
    t = FakeTime()
    script = Script(status(code), status(code), time=t)
    client = mock_client(script, t)
    result = call(client)
    assert result.error is None and result.results == ["ok"]
    assert result.attempts == 3 and len(script.requests) == 3
    assert result.rate_limited == (2 if code == 429 else 0)
    # no server hint: equal-jitter exponential backoff (rand=0 gives the lower half)
    assert t.sleeps == pytest.approx([0.05, 0.1])
    assert script.times == pytest.approx([1000.0, 1000.05, 1000.15])


@pytest.mark.parametrize("exc", [
    httpx.ReadTimeout("read timed out"), httpx.ConnectTimeout("connect timed out"),
    httpx.WriteTimeout("write timed out"), httpx.PoolTimeout("pool timed out"),
    httpx.ConnectError("connection refused"), httpx.RemoteProtocolError("server disconnected"),
    httpx.ReadError("connection reset"),
])
def test_transport_failures_are_retried(exc):
    t = FakeTime()
    script = Script(exc, exc)
    result = call(mock_client(script, t))
    assert result.error is None and result.attempts == 3 and len(t.sleeps) == 2


def test_timeouts_exhausted_say_timeout():
    t = FakeTime()
    script = Script(*[httpx.ReadTimeout("slow")] * 10)
    result = call(mock_client(script, t, max_retries=2, timeout=7.5))
    assert isinstance(result.error, TransportError) and result.error.retryable
    assert result.attempts == 3 and "7.5s (timeout)" in str(result.error) and "mock-chat" in str(result.error)


def test_connection_errors_exhausted_say_why():
    t = FakeTime()
    script = Script(*[httpx.ConnectError("connection refused")] * 10)
    result = call(mock_client(script, t, max_retries=1))
    assert isinstance(result.error, TransportError) and "connection refused" in str(result.error)
    assert result.attempts == 2


@pytest.mark.parametrize("content", [
    b'{"id": "x", "choices": [{"message": {"content": "cut sh',  # truncated JSON
    b"<html><body>502 Bad Gateway</body></html>",
    b"",
    b"\xff\xfe\x00garbage",
])
def test_unreadable_200_bodies_are_retried(content):
    t = FakeTime()
    script = Script(status(200, content=content), status(200, content=content))
    result = call(mock_client(script, t))
    assert result.error is None and result.results == ["ok"] and result.attempts == 3


def test_unreadable_200_exhausted():
    t = FakeTime()
    script = Script(*[status(200, content=b"<html>oops</html>")] * 10)
    result = call(mock_client(script, t, max_retries=2))
    error = result.error
    assert isinstance(error, InvalidResponseError) and error.retryable and result.attempts == 3
    assert "AI_FUNCTION_INVALID_HTTP_RESPONSE" in str(error) and "not JSON" in str(error)
    assert error.detail == "unexpected answer (not JSON but an HTML page: oops)"


@pytest.mark.parametrize("code,body,text", [
    (400, {"error": {"message": "This model's maximum context length is 8192 tokens", "type": "invalid_request_error",
                     "code": "context_length_exceeded"}},
     "context_length_exceeded: This model's maximum context length is 8192 tokens"),
    (401, {"error": {"message": "Incorrect API key provided", "type": "authentication_error",
                     "code": "invalid_api_key"}},
     "invalid_api_key: Incorrect API key provided"),
    (403, {"error_code": "PERMISSION_DENIED", "message": "no access to endpoint"},
     "PERMISSION_DENIED: no access to endpoint"),
    (404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "Endpoint mock-chat does not exist"},
     "RESOURCE_DOES_NOT_EXIST: Endpoint mock-chat does not exist"),
    (422, {"detail": "bad field"}, '{"detail": "bad field"}'),
    (501, {"error": "not implemented here"}, "not implemented here"),
])
def test_refusals_are_not_retried_and_carry_the_endpoints_text(code, body, text):
    t = FakeTime()
    script = Script(*[status(code, body)] * 5)
    result = call(mock_client(script, t))
    error = result.error
    assert type(error) is HTTPRequestError and not error.retryable
    assert result.attempts == 1 and len(script.requests) == 1 and t.sleeps == []
    message = str(error)
    assert text in message and f"HTTP {code}" in message and "'mock-chat'" in message
    assert "AI_FUNCTION_HTTP_REQUEST_ERROR" in message
    assert result.results is None


def test_refusal_with_a_plain_text_body():
    t = FakeTime()
    script = Script(status(400, content=b"prompt too long for this model"))
    result = call(mock_client(script, t))
    assert "prompt too long for this model" in str(result.error) and result.attempts == 1


@pytest.mark.parametrize("body", [{"result": "surprise"}, {"choices": []}, {"choices": [{"message": "text"}]}, []])
def test_wrong_shape_200_is_not_retried(body):
    t = FakeTime()
    script = Script(*[status(200, body)] * 5)
    result = call(mock_client(script, t))
    error = result.error
    assert isinstance(error, InvalidResponseError) and not error.retryable
    assert result.attempts == 1 and len(script.requests) == 1
    assert "unexpected answer" in str(error) and "HTTP 200" in str(error)


@pytest.mark.parametrize("headers,expected", [
    ({"Retry-After": "3"}, 3.0),
    ({"retry-after-ms": "1500", "Retry-After": "2"}, 1.5),
    ({"Retry-After": "0"}, 0.0),
])
def test_retry_after_is_honoured_on_429(headers, expected):
    t = FakeTime()
    script = Script(status(429, headers=headers), time=t)
    client = mock_client(script, t)
    result = call(client)
    assert result.error is None and result.attempts == 2 and result.rate_limited == 1
    if expected:
        assert t.sleeps == [pytest.approx(expected)]  # the pause the server asked for, to the millisecond
        assert client.flow.paused_until == pytest.approx(1000.0 + expected)
    assert script.times[1] - script.times[0] == pytest.approx(expected)


def test_retry_after_http_date_is_honoured():
    t = FakeTime()
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    script = Script(status(429, headers={"Retry-After": when}))
    call(mock_client(script, t))
    assert len(t.sleeps) == 1 and 28.0 <= t.sleeps[0] <= 31.0


def test_retry_after_gets_at_most_ten_percent_jitter():
    t = FakeTime()
    script = Script(status(429, headers={"Retry-After": "4"}))
    call(mock_client(script, t, rand=1.0))
    assert t.sleeps == [pytest.approx(4.4)]


def test_retry_after_is_honoured_on_503():
    t = FakeTime()
    script = Script(status(503, headers={"Retry-After": "2"}), time=t)
    client = mock_client(script, t)
    result = call(client)
    assert result.error is None and t.sleeps == [pytest.approx(2.0)] and result.rate_limited == 0
    assert client.flow.paused_until == 0.0  # a 503 waits alone; only a 429 pauses the pool


def test_retry_after_beyond_reason_falls_back_to_backoff():
    t = FakeTime()
    script = Script(status(429, headers={"Retry-After": "86400"}))
    call(mock_client(script, t))
    assert t.sleeps == [pytest.approx(0.05)]


@pytest.mark.parametrize("max_retries", [0, 1, 3, 6])
def test_max_retries_is_respected(max_retries):
    t = FakeTime()
    script = Script(answer=status(500, {"error": {"message": "always broken"}}))
    result = call(mock_client(script, t, max_retries=max_retries, initial_backoff=0.1, max_backoff=0.5))
    assert isinstance(result.error, ServerError) and result.error.status == 500
    assert "always broken" in str(result.error)
    assert result.attempts == max_retries + 1 and len(script.requests) == max_retries + 1
    assert t.sleeps == pytest.approx([0.05, 0.1, 0.2, 0.25, 0.25, 0.25][:max_retries])


def test_rate_limited_requests_exhausted():
    t = FakeTime()
    script = Script(answer=status(429, {"error_code": "REQUEST_LIMIT_EXCEEDED", "message": "slow down"},
                                  headers={"Retry-After": "1"}))
    result = call(mock_client(script, t, max_retries=2))
    assert isinstance(result.error, RateLimitError) and result.error.retry_after == 1.0
    assert result.attempts == 3 and result.rate_limited == 3
    assert "REQUEST_LIMIT_EXCEEDED: slow down" in str(result.error)


def test_a_storm_pauses_the_pool_and_probes_end_the_pause():
    """The busy period's first answer is a 429: a storm. The request that got it waits what the server asked;
    the pool pauses too, but sends probes after FIRST_PROBE_GAP instead of sitting out the whole Retry-After,
    and the first probe answered ends the pause."""
    t = FakeTime(advance=False)  # time stands still: every admission shows the wait it was given
    first = {"done": False}

    def handler(request):
        prompt = json.loads(request.content)["messages"][0]["content"]
        if prompt == "first" and not first["done"]:
            first["done"] = True
            return httpx.Response(429, headers={"Retry-After": "5"}, json={"error": {"message": "rate"}})
        return httpx.Response(200, json=chat_json("ok"))

    client = mock_client(handler, t)

    async def go():
        a = await client.call(["first"])  # its 429 pauses the pool...
        assert client.flow.paused_until == pytest.approx(1005.0)
        others = await asyncio.gather(*(client.call([f"other {i}"]) for i in range(3)))  # ...which probes end
        await client.aclose()
        return a, others

    a, others = run(go())
    assert a.error is None and all(o.error is None and o.attempts == 1 for o in others)
    assert t.sleeps[0] == pytest.approx(5.0)  # the refused request waited as asked
    assert t.sleeps[1:] and all(s == pytest.approx(FIRST_PROBE_GAP) for s in t.sleeps[1:])  # nobody else did


def test_a_429_after_answers_paces_the_pool_below_what_was_delivered():
    t = FakeTime()
    script = Script(status(429, headers={"Retry-After": "0.01"}))
    script.steps = [script.answer] * 20 + script.steps  # 20 answers, then the 429
    client = mock_client(script, t, max_concurrency=10)

    async def go():
        for i in range(20):  # 20 answers in 0.4 s: 50 per second delivered
            await client.call([f"q{i}"])
            t.now += 0.02
        await client.call(["the one that hits the cap"])
        await client.aclose()

    run(go())
    delivered = 20 / 0.4  # 20 answers in 0.4 s
    # Cut to just below it; the answer to the retry may already have started the climb back to it.
    assert 0.95 * delivered * 0.99 <= client.flow.pace.rate <= delivered * 1.001
    assert client.flow.limit.limit == 10  # the cap is not what is cut


def test_in_flight_cap_holds():
    t = FakeTime()
    state = {"now": 0, "max": 0}

    async def handler(request):
        state["now"] += 1
        state["max"] = max(state["max"], state["now"])
        for _ in range(3):
            await asyncio.sleep(0)
        state["now"] -= 1
        return httpx.Response(200, json=chat_json("ok"))

    client = mock_client(handler, t, max_concurrency=4)

    async def go():
        results = await asyncio.gather(*(client.call([f"p{i}"]) for i in range(40)))
        await client.aclose()
        return results
    results = run(go())
    assert all(r.error is None for r in results)
    assert state["max"] == 4 and client.flow.limit.in_flight == 0


def test_cancelled_call_gives_its_slot_back():
    t = FakeTime()
    gate = {}

    async def handler(request):
        gate.setdefault("event", asyncio.Event())
        await gate["event"].wait()
        return httpx.Response(200, json=chat_json("late"))

    client = mock_client(handler, t, max_concurrency=1)

    async def go():
        task = asyncio.create_task(client.call(["stuck"]))
        for _ in range(10):
            await asyncio.sleep(0)
        assert client.flow.limit.in_flight == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert client.flow.limit.in_flight == 0
        gate["event"].set()
        return await asyncio.wait_for(client.call(["next"]), 5)
    assert run(go()).results == ["late"]


def test_cancelled_batch_cancels_every_call_and_gives_every_slot_back():
    t = FakeTime()
    started = []

    async def handler(request):
        started.append(request)
        await asyncio.Event().wait()  # never answers

    client = mock_client(handler, t, max_concurrency=3)

    async def go():
        task = asyncio.create_task(answer_rows(client, [f"row {i}" for i in range(10)]))
        for _ in range(20):
            await asyncio.sleep(0)
        assert len(started) == 3 and client.flow.limit.in_flight == 3
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert client.flow.limit.in_flight == 0  # no call outlives the batch, as with asyncio.gather
        for _ in range(20):
            await asyncio.sleep(0)
        assert len(started) == 3  # and none of the queued rows went out after all
    run(go())


def test_retries_are_logged_at_debug(caplog):
    caplog.set_level(logging.DEBUG, logger="batch._client")
    t = FakeTime()
    call(mock_client(Script(status(503, {"error": {"message": "busy"}})), t))
    [record] = [r for r in caplog.records if r.name == "batch._client"]
    assert record.levelno == logging.DEBUG
    assert "retrying mock-chat" in record.getMessage() and "busy" in record.getMessage()


def test_databricks_and_multi_input_requests():
    t = FakeTime()

    def handler(request):
        body = json.loads(request.content)
        if "input" in body:
            data = [{"index": i, "embedding": [float(i)]} for i in reversed(range(len(body["input"])))]
            return httpx.Response(200, json={"data": data, "usage": {"prompt_tokens": 3, "total_tokens": 3}})
        return httpx.Response(200, json={"predictions": [r["x"] * 2 for r in body["dataframe_records"]]})

    script = Script(answer=handler)
    embed = EndpointClient(EndpointConfig(name="dbx-embed", api="databricks", host="https://ws.example",
                                          task="embeddings"), transport=httpx.MockTransport(script), sleep=t.sleep)
    result = run(embed.call(["a", "b", "c"]))
    assert result.results == [[0.0], [1.0], [2.0]] and result.usage.total_tokens == 3
    assert str(script.requests[0].url) == "https://ws.example/serving-endpoints/dbx-embed/invocations"
    assert json.loads(script.requests[0].content) == {"input": ["a", "b", "c"]}
    custom = EndpointClient(EndpointConfig(name="scorer", api="databricks", host="ws.example", task="custom"),
                            transport=httpx.MockTransport(script), sleep=t.sleep)
    assert run(custom.call([{"x": 1}, {"x": 4}])).results == [2, 8]


def test_client_repr_is_short_and_safe():
    client = mock_client(Script(), FakeTime())
    assert repr(client).startswith("EndpointClient('mock-chat', FlowControl(")


# ---------------------------------------------------------------- answers in other shapes, status in bodies

async def call_and_pause(client):
    """One call, and the pool-wide pause it left behind."""
    result = await client.call(["hello"])
    paused = client.flow.paused_until
    await client.aclose()
    return result, paused


def test_a_429_inside_a_200_is_retried_as_a_rate_limit():
    t = FakeTime(advance=False)
    script = Script(status(200, {"error": {"message": "Rate limit exceeded: free-models-per-min", "code": 429}},
                           headers={"Retry-After": "2"}))
    client = mock_client(script, t)

    result, paused = run(call_and_pause(client))
    assert result.error is None and result.results == ["ok"] and (result.attempts, result.rate_limited) == (2, 1)
    assert paused == pytest.approx(1002.0)  # the pool slows down, as for a 429


@pytest.mark.parametrize("body,cls,status,attempts", [
    ({"error": {"message": "bad model", "code": 400}}, HTTPRequestError, 400, 1),
    ({"error": {"message": "upstream", "code": 502}}, ServerError, 502, 3),
    ({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "later"}, ServerError, 503, 3),
    ({"error": {"message": "what now", "code": "mystery"}}, InvalidResponseError, 200, 1),
])
def test_an_error_inside_a_200_is_judged_by_its_code(body, cls, status, attempts):
    result = call(mock_client(Script(answer=lambda request: httpx.Response(200, json=body)), FakeTime(),
                              max_retries=2))
    assert type(result.error) is cls and result.error.status == status and result.attempts == attempts
    assert result.error.detail.endswith("(an error sent inside an HTTP 200 answer)")


def test_insufficient_quota_is_not_retried_and_does_not_slow_the_pool():
    t = FakeTime(advance=False)
    body = {"error": {"message": "You exceeded your current quota", "type": "insufficient_quota",
                      "code": "insufficient_quota"}}
    script = Script(answer=status(429, body, headers={"Retry-After": "20"}))
    client = mock_client(script, t)

    result, paused = run(call_and_pause(client))
    assert isinstance(result.error, QuotaExceededError) and not isinstance(result.error, RateLimitError)
    assert (result.attempts, result.rate_limited, len(script.requests), t.sleeps) == (1, 0, 1, [])
    assert paused <= t.now
    assert result.error.detail == ("insufficient_quota: You exceeded your current quota (the account has no quota "
                                   "left, so the request is not retried: add credit or raise the quota, then run "
                                   "again)")


def test_a_body_cut_inside_a_character_is_read_with_replacement():
    content = json.dumps(chat_json("café", {"prompt_tokens": 1, "completion_tokens": 2}),
                         ensure_ascii=False).encode().replace("é".encode(), "é".encode()[:1])
    result = call(mock_client(Script(status(200, content=content)), FakeTime()))
    assert result.error is None and result.results == ["caf\ufffd"] and result.attempts == 1
    assert result.usage.total_tokens == 3


def test_answers_without_text_are_not_retried_and_keep_their_tokens():
    answer = {"choices": [{"message": {"content": "", "reasoning_content": "hmm"}, "finish_reason": "length"}],
              "usage": {"prompt_tokens": 5, "completion_tokens": 32,
                        "completion_tokens_details": {"reasoning_tokens": 32}}}
    script = Script(answer=lambda request: httpx.Response(200, json=answer))
    result = call(mock_client(script, FakeTime()), params={"max_tokens": 32})
    assert isinstance(result.error, NoAnswerError) and not result.error.retryable and result.attempts == 1
    assert "(max_tokens=32 from modelParameters) on reasoning (32 reasoning tokens)" in result.error.detail
    assert (result.usage.prompt_tokens, result.usage.completion_tokens, result.usage.total_tokens) == (5, 32, 37)


@pytest.mark.parametrize("response_format,params,error", [
    ({"type": "json_object"}, {"max_completion_tokens": 9}, "(max_tokens=9 from modelParameters) before the "
                                                            "requested JSON"),
    ({"type": "json_schema", "json_schema": {"name": "r", "schema": {}}}, None, "the endpoint's default"),
    ({"type": "text"}, {"max_tokens": 9}, None),
    (None, None, None),
])
def test_a_cut_answer_is_an_error_only_when_json_was_asked(response_format, params, error):
    cut = {"choices": [{"message": {"content": '{"a": "b'}, "finish_reason": "length"}]}
    result = call(mock_client(Script(answer=lambda request: httpx.Response(200, json=cut)), FakeTime()),
                  params=params, response_format=response_format)
    if error is None:
        assert result.error is None and result.results == ['{"a": "b']
    else:
        assert isinstance(result.error, NoAnswerError) and error in result.error.detail


def test_json_nested_too_deeply_is_a_row_error_not_a_crash():
    result = call(mock_client(Script(answer=status(200, content=b"[" * 200_000 + b"]" * 200_000)), FakeTime()))
    assert isinstance(result.error, InvalidResponseError) and not result.error.retryable
    assert result.error.detail == "unexpected answer (JSON nested too deeply to read)"


async def answer_and_close(client, values, **keys):
    """The rows' outcomes, with the client closed whatever happens."""
    try:
        return await answer_rows(client, values, **keys)
    finally:
        await client.aclose()


def test_a_packed_call_refused_for_quota_is_not_asked_row_by_row():
    body = {"error": {"message": "no credit", "type": "insufficient_quota", "code": "insufficient_quota"}}
    script = Script(answer=status(429, body))
    client = mock_client(script, FakeTime(), task="embeddings", batch_size=4)

    rows = run(answer_and_close(client, ["a", "b", "c"]))
    assert len(script.requests) == 1 and all(isinstance(r.error, QuotaExceededError) for r in rows)


def test_tokens_of_a_failed_packed_call_add_up_over_its_rows():
    answer = {"data": [{"index": 0, "embedding": [1.0]}], "usage": {"prompt_tokens": 7, "total_tokens": 7}}
    client = mock_client(Script(answer=lambda request: httpx.Response(200, json=answer)), FakeTime(),
                         task="embeddings", batch_size=4)

    rows = run(answer_and_close(client, ["a", "b", "c"]))
    assert all(isinstance(r.error, InvalidResponseError) for r in rows)
    assert [r.total_tokens for r in rows] == [3, 2, 2] and [r.requests for r in rows] == [1, 0, 0]


def test_a_conversion_error_of_any_kind_is_the_rows_error():
    def convert(value):
        raise RecursionError("too deep")

    client = mock_client(Script(), FakeTime())

    (row,) = run(answer_and_close(client, ["a"], convert=convert))
    assert isinstance(row.error, ParseCastError) and not row.answered
    assert row.error.detail == "the answer could not be converted to the result type (RecursionError: too deep)"


# ================================================================ B: real HTTP against batch.serve

# The suite's simulator: conftest's ``srv``, every option back to its default for each test.

def http_client(srv, transport: str = "aiohttp", *, api: str = "openai", task: str = "chat", rand=None,
                **keys) -> EndpointClient:
    entry = dict(FAST)
    entry.update(keys)
    if api == "openai":
        config = EndpointConfig(name="local-" + task, api="openai", base_url=srv.url + "/v1", task=task, **entry)
    else:
        config = EndpointConfig(name="dbx-" + task, api="databricks", host=srv.url, task=task, **entry)
    extra = {"rand": rand} if rand is not None else {}
    return EndpointClient(config, transport=make_transport(transport), **extra)


async def calls(client: EndpointClient, prompts, **kwargs):
    try:
        return await asyncio.gather(*(client.call([p], **kwargs) for p in prompts))
    finally:
        await client.aclose()


RETRYABLE = ["429", "429-bare", "500", "502", "503", "504", "drop", "malformed", "truncated", "stall",
             "dbx-limit", "dbx-unavailable"]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("kind", RETRYABLE)
def test_every_retryable_fault_recovers(srv, transport, kind):
    keys = {}
    if kind == "stall":
        srv.configure(stall_seconds=5)
        keys["timeout"] = 0.3
    api = "databricks" if kind.startswith("dbx-") else "openai"
    client = http_client(srv, transport, api=api, **keys)
    prompt = f"[[flaky:2:{kind}]] recover from {kind}"
    [result] = run(calls(client, [prompt]))
    assert result.error is None, result.error
    assert result.results == [simulated_answer(prompt)[0]]
    assert result.attempts == 3
    assert result.rate_limited == (2 if kind in ("429", "429-bare", "dbx-limit") else 0)
    stats = srv.stats()
    assert stats["faults"] == {kind: 2} and stats["answered"] == 1
    if kind == "stall":  # the abandoned attempts end on the server too, leaving nothing in flight behind
        assert poll(lambda: srv.stats()["in_flight"] == 0)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_random_faults_lose_nothing(srv, transport):
    srv.configure(fault_rate=0.3, faults="429,429-bare,500,502,503,504,drop,malformed,truncated", seed=11)
    client = http_client(srv, transport, max_retries=10, max_concurrency=16)
    prompts = [f"row {i}" for i in range(120)]

    outcomes = run(answer_and_close(client, prompts))
    assert [o.value for o in outcomes] == [simulated_answer(p)[0] for p in prompts]
    assert all(o.error is None for o in outcomes)
    stats = srv.stats()
    assert sum(stats["faults"].values()) > 0
    assert stats["answered"] == 120 and client.stats.attempts >= stats["requests"] > 120


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("prompt,api,code,text", [
    ("[[fail:400]] refuse me", "openai", 400, "simulated failure 400"),
    ("[[fail:404]] refuse me", "openai", 404, "not_found: simulated failure 404"),
    ("[[fail:400]] refuse me", "databricks", 400, "BAD_REQUEST: simulated failure 400"),
    ("[[flaky:3:dbx-bad-request]] refuse me", "databricks", 400, "BAD_REQUEST: Simulated bad request"),
])
def test_refusals_surface_the_endpoints_message(srv, transport, prompt, api, code, text):
    client = http_client(srv, transport, api=api)
    [result] = run(calls(client, [prompt]))
    error = result.error
    assert isinstance(error, HTTPRequestError) and error.status == code and not error.retryable
    assert text in str(error) and f"HTTP {code}" in str(error)
    assert result.attempts == 1 and srv.stats()["requests"] == 1


def test_context_length_refusal(srv):
    srv.configure(max_prompt_chars=20)
    client = http_client(srv)
    short, long = "short prompt", "a very long prompt " * 5
    ok, refused = run(calls(client, [short, long]))
    assert ok.results == [simulated_answer(short)[0]]
    assert "context_length_exceeded" in str(refused.error) and "maximum context length" in str(refused.error)
    assert refused.attempts == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_unexpected_shape_is_reported_not_retried(srv, transport):
    client = http_client(srv, transport)
    [result] = run(calls(client, ["[[flaky:3:unexpected]] shape"]))
    assert isinstance(result.error, InvalidResponseError) and not result.error.retryable
    assert "surprise" in str(result.error) and result.attempts == 1


def test_retry_after_is_honoured_over_http(srv):
    # The server's own cap checks the client: had the retry come before the wait the server asked
    # for, its empty bucket would have answered 429 a second time.
    srv.configure(rate_limit=2, burst=1, retry_after="auto")
    client = http_client(srv, rand=lambda: 0.5, initial_backoff=0.001, max_backoff=0.002)

    async def go():
        try:
            started = time.monotonic()
            first = await client.call(["takes the only token"])
            second = await client.call(["has to wait"])
            return first, second, time.monotonic() - started
        finally:
            await client.aclose()
    first, second, elapsed = run(go())
    assert first.error is None and first.attempts == 1
    assert second.error is None and second.attempts == 2 and second.rate_limited == 1
    stats = srv.stats()
    assert stats["rate_limited"] == 1 and stats["answered"] == 2
    assert elapsed >= 0.45  # the bucket refills one token in 1 / rate = 0.5 s; only a lower bound


def test_fixed_retry_after_is_honoured_over_http(srv):
    srv.configure(retry_after=0.4)
    client = http_client(srv, rand=lambda: 0.0, initial_backoff=0.001, max_backoff=0.002)
    started = time.monotonic()
    [result] = run(calls(client, ["[[flaky:1:429]] wait for it"]))
    elapsed = time.monotonic() - started
    assert result.error is None and result.rate_limited == 1 and result.attempts == 2
    assert elapsed >= 0.4


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_in_flight_cap_holds_over_http(srv, transport):
    srv.configure(latency_ms=40)
    client = http_client(srv, transport, max_concurrency=8)
    prompts = [f"concurrent {i}" for i in range(48)]
    results = run(calls(client, prompts))
    assert [r.results[0] for r in results] == [simulated_answer(p)[0] for p in prompts]
    stats = srv.stats()
    assert 2 <= stats["max_in_flight"] <= 8


def test_requests_per_minute_budget_holds(srv):
    client = http_client(srv, requests_per_minute=1200, max_concurrency=64)  # 20/s, bursts of 2
    prompts = [f"budgeted {i}" for i in range(60)]
    started = time.monotonic()
    outcomes = run(answer_and_close(client, prompts))
    elapsed = time.monotonic() - started
    assert all(o.error is None for o in outcomes)
    stats = srv.stats()
    assert stats["requests"] == 60 and stats["rate_limited"] == 0
    assert max(stats["per_second"]) <= 20 + 2
    assert elapsed >= (60 - 2) / 20.0 - 0.05  # lower bound only


def test_a_429_pauses_the_pool_over_http(srv):
    srv.configure(retry_after=0.5)
    client = http_client(srv, rand=lambda: 0.0)

    async def go():
        try:
            limited = asyncio.create_task(client.call(["[[flaky:1:429]] pause everyone"]))
            while client.flow.paused_until == 0.0 and not limited.done():
                await asyncio.sleep(0.005)
            until = client.flow.paused_until
            others = await asyncio.gather(*(client.call([f"bystander {i}"]) for i in range(5)))
            return await limited, others, until, time.monotonic()
        finally:
            await client.aclose()
    limited, others, until, finished = run(go())
    assert limited.error is None and limited.rate_limited == 1
    assert all(o.error is None and o.rate_limited == 0 for o in others)
    assert until > 0 and finished >= until  # the bystanders waited out the pause too


def test_connection_refused_is_a_transport_error():
    config = EndpointConfig(name="nowhere", base_url="http://127.0.0.1:9/v1", max_retries=1, initial_backoff=0.01,
                            max_backoff=0.01, connect_timeout=2.0)
    client = EndpointClient(config)
    [result] = run(calls(client, ["anyone there?"]))
    assert isinstance(result.error, TransportError) and result.attempts == 2
    assert "'nowhere'" in str(result.error) and "connection failed" in str(result.error)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_every_task_over_http(srv, transport):
    async def go():
        out = {}
        for api in ("openai", "databricks"):
            for task in ("chat", "completions", "embeddings"):
                client = http_client(srv, transport, api=api, task=task)
                try:
                    out[api, task] = await client.call(["one two"] if task != "embeddings" else ["a", "b"])
                finally:
                    await client.aclose()
        client = http_client(srv, transport, api="databricks", task="custom")
        try:
            out["custom"] = await client.call([{"x": 1, "s": "abc"}, {"x": 2.5, "s": None}])
        finally:
            await client.aclose()
        return out
    out = run(go())
    for api in ("openai", "databricks"):
        assert out[api, "chat"].results == [simulated_answer("one two")[0]]
        assert out[api, "completions"].results == [simulated_answer("one two")[0]]
        assert len(out[api, "embeddings"].results) == 2 and len(out[api, "embeddings"].results[0]) == 16
        assert out[api, "chat"].usage.total_tokens == 2 + 3
    assert out["custom"].results == [4.0, 2.5]


def test_a_fixed_window_is_spent_over_the_window_not_in_its_first_moment(srv):
    # 300 requests a window of one second, refilled at the turn, Retry-After in whole seconds: sending
    # as fast as the first window allowed would spend every later window at once and then take 429s
    # until its turn. After two turns the pace is the window's budget over its length.
    srv.configure(limit_profile="window", rate_limit=300, window_s=1.0, latency_ms=20)
    client = http_client(srv)

    async def go():
        try:
            outcomes = await answer_rows(client, [f"window {i}" for i in range(1500)])
            return outcomes, client.flow.pace.rate
        finally:
            await client.aclose()
    outcomes, rate = run(go())
    stats = srv.stats()
    assert [o.error for o in outcomes if o.error] == []
    assert rate is not None and 150 <= rate <= 330  # about 300 a second, not the thousands of a burst
    # The first two windows are spent in bursts (all that is in flight when one runs out is refused); the
    # later ones are paced. Without the pool's pause and its probes, most requests would be refused.
    assert stats["rate_limited"] < 0.3 * stats["requests"]
