"""The handler every model-serving route shares: authentication, rate limit, parsing, latency, faults, answer.

A request is checked in the order a real endpoint checks it: the bearer token (401), a request-count
limit (429), the body (400), a token-count limit (429), the prompt length (400), then latency, a
scripted or random fault, and the answer. The hot path logs nothing and allocates little beyond one JSON
document, so a single core serves thousands of requests per second.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

from . import limits
from . import simulate as sim
from .answers import ANSWERS
from .faults import draw, fault_reply, scripted
from .oauth import authorized
from .parse import BadRequest, ParsedRequest, parse_request
from .replies import encode, reply_bytes, reply_error
from .state import STATE, State

__all__ = ["data_handler", "list_models"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MODELS = ("simulated-chat", "simulated-completions", "simulated-embeddings")


def data_handler(task: str | None, databricks: bool) -> Handler:
    """The handler for one route: ``task`` is chat, completions, embeddings or responses (None: read from the
    body, as Databricks ``invocations`` needs); ``databricks`` answers errors in Databricks' format and adds
    its ``served-model-name`` header."""
    async def handler(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        stats = state.stats
        stats.requests += 1
        state.in_flight += 1
        if state.in_flight > stats.max_in_flight:
            stats.max_in_flight = state.in_flight
        try:
            return await _serve(request, state, task, databricks)
        finally:
            state.in_flight -= 1
    return handler


async def _serve(request: web.Request, state: State, task: str | None, databricks: bool) -> web.StreamResponse:
    if state.auth_required and not authorized(state, request.headers.get("Authorization")):
        state.stats.auth_failures += 1
        return reply_error(state.stats, 401, "missing or invalid bearer token", databricks)
    limiter = state.limiter
    if limiter is not None and not limiter.by_tokens:
        refused = limiter.admit(1.0, state.in_flight)
        if refused:
            return reply_error(state.stats, 429, refused.message, databricks, headers=refused.headers)
    try:
        parsed = await parse_request(request, task)
    except BadRequest as exc:
        return reply_error(state.stats, 400, str(exc), databricks)
    if limiter is not None and limiter.by_tokens:
        cost = limits.request_cost(parsed.body, sum(map(sim.count_tokens, parsed.texts)))
        refused = limiter.admit(cost, state.in_flight)
        if refused:
            return reply_error(state.stats, 429, refused.message, databricks, headers=refused.headers)
    state.stats.accept()
    model = request.match_info.get("name") or parsed.body.get("model") or "simulated"
    response = await _respond(request, state, parsed, str(model), databricks)
    extra = limiter.headers() if limiter is not None and response.status == 200 else None
    if extra and not response.prepared:
        response.headers.update(extra)
    return response


async def _respond(request: web.Request, state: State, parsed: ParsedRequest, model: str,
                   databricks: bool) -> web.StreamResponse:
    settings = state.settings
    state.stats.by_task[parsed.task] += 1
    state.stats.inputs_received += parsed.inputs
    if settings.record:
        _record(state, parsed)
    limit = settings.max_prompt_chars
    if limit and parsed.chars and max(parsed.chars) > limit:
        return reply_error(state.stats, 400, f"prompt of {max(parsed.chars)} characters exceeds the maximum "
                           f"context length of {limit} characters", databricks, code="context_length_exceeded")
    await _latency(state)
    script = scripted(state, parsed.texts) if parsed.texts else None
    if script and script[0] == "fail":
        return reply_error(state.stats, script[1], f"simulated failure {script[1]}", databricks)
    fault = script[1] if script else draw(state)
    if fault:
        early = await fault_reply(fault, state, request, databricks)
        if early is not None:
            return early
    return _deliver(state, parsed, model, databricks, truncated=fault == "truncated")


async def _latency(state: State) -> None:
    settings = state.settings
    seconds = settings.latency_ms
    if settings.latency_jitter_ms > 0:
        seconds += state.jitter.uniform(0, settings.latency_jitter_ms)
    if seconds > 0:
        await asyncio.sleep(seconds / 1000)


def _deliver(state: State, parsed: ParsedRequest, model: str, databricks: bool, truncated: bool) -> web.Response:
    payload, prompt_tokens, completion_tokens = ANSWERS[parsed.task](parsed, model, state)
    shape = sim.answer_shape(parsed.texts[0]) if parsed.texts else None
    if shape == "no-usage":
        payload.pop("usage", None)
    body = encode(payload).encode()
    if shape == "badutf8":  # the last byte of the tail's "é" cut off, as a server cutting tokens mid-character does
        head, tail, rest = body.rpartition(sim.BADUTF8_TAIL.encode())
        body = head + tail[:-1] + rest
    stats = state.stats
    if truncated:
        return reply_bytes(stats, 200, body[: len(body) // 2])
    stats.answered += 1
    stats.inputs += parsed.inputs
    stats.prompt_tokens += prompt_tokens
    stats.completion_tokens += completion_tokens
    stats.by_status[200] += 1
    if state.settings.record and parsed.task != "custom":
        state.answers.update(parsed.texts)
    headers = {"served-model-name": model} if databricks else None
    return web.Response(body=body, content_type="application/json", headers=headers)


def _record(state: State, parsed: ParsedRequest) -> None:
    state.bodies.append(parsed.body)
    if parsed.task != "custom":
        state.calls.update(parsed.texts)


async def list_models(request: web.Request) -> web.Response:
    """OpenAI's ``GET /v1/models`` list: the three simulated model ids."""
    data = [{"id": m, "object": "model", "created": 0, "owned_by": "batch.serve"} for m in MODELS]
    return web.json_response({"object": "list", "data": data})
